"""Readers of a fork by reference beyond the agents: the human decision, the notifier, the
audit export of a fork of a fork, replay by event id, and the lineage in the run state."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from typer.testing import CliRunner

from agentledger.actors.notify import CONSUMER, Notifier
from agentledger.cli import app
from agentledger.control import Human, decide
from agentledger.events import EventStore, RunForked, ScratchpadUpdated
from agentledger.events.audit import export_run, verify_export
from agentledger.fork import fork_run
from agentledger.projections import RunStateProjection
from agentledger.sample import write_sample_run

NOTE = ScratchpadUpdated(actor="agent:execution/e1", payload={"key": "later", "value": "x"})


def test_a_decision_in_a_fork_is_caused_by_the_request_it_inherits(tmp_path: Path) -> None:
    with EventStore.open(f"sqlite:///{tmp_path / 'l.db'}") as store:
        run, events = write_sample_run(store)
        request = events[-1]
        [later] = store.append(run, [NOTE])  # the request is not the last inherited event
        fork, _ = fork_run(store, run, later.position or 0, by="human:ada")
        action_id = request.payload.action_id  # type: ignore[attr-defined]
        ada = Human("ada", ("approver",))
        granted = decide(store, fork, action_id, ada, grant=True, note="in this branch")
        assert granted.causation_id == request.id and granted.stream == fork
        assert RunStateProjection().fold(store.read(fork)).pending_approvals == {}
        assert RunStateProjection().fold(store.read(run)).pending_approvals  # still waits


def test_the_notifier_announces_the_requests_a_fork_inherits_open(
    tmp_path: Path, background: Any
) -> None:
    sink = tmp_path / "notices.jsonl"
    script = tmp_path / "sink.py"
    script.write_text(f"import sys\nopen({str(sink)!r}, 'a').write(sys.stdin.read() + '\\n')\n")
    url = f"sqlite:///{tmp_path / 'l.db'}"
    with EventStore.open(url) as store:
        run, events = write_sample_run(store)
        store.record_position(CONSUMER, store.head_position())  # the parent's was announced
        notifier = Notifier(EventStore.open(url), command=f"{sys.executable} {script}")
        with background(notifier.run) as running:
            fork, _ = fork_run(store, run, events[-1].position or 0, by="human:ada")
            running.until(lambda: notifier.delivered >= 1)
    notices = [json.loads(line) for line in sink.read_text().splitlines() if line]
    assert [(n["run"], n["type"]) for n in notices] == [(fork, "approval.requested")]
    assert notices[0]["action_id"] == events[-1].payload.action_id  # type: ignore[attr-defined]


def test_the_export_of_a_fork_taken_inside_what_its_parent_inherits_verifies(
    tmp_path: Path,
) -> None:
    with EventStore.open(f"sqlite:///{tmp_path / 'l.db'}") as store:
        run, events = write_sample_run(store)
        fork, _ = fork_run(store, run, events[-1].position or 0, by="human:ada")
        store.append(fork, [NOTE])
        # A fork of the fork at its version 6: inside what the fork inherits.
        at = store.read(fork, 6, 6)[0]
        payload = {
            "parent_run": fork,
            "parent_position": at.position,
            "prefix_version": 6,
            "parent_hash": at.hash,
        }
        store.append("run-deep", [RunForked(actor="human:ada", payload=payload)], 0)
        store.append("run-deep", [NOTE])
        assert [e.id for e in store.read("run-deep")[1:7]] == [e.id for e in store.read(fork)[:6]]
        assert store.verify().ok
        out = tmp_path / "deep.jsonl"
        export_run(store, "run-deep", out, exporter="human:auditor")
    report = verify_export(out)
    assert report.ok, str(report)


def test_replay_to_an_inherited_event_stops_there(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'l.db'}"
    with EventStore.open(url) as store:
        run, events = write_sample_run(store)
        fork, _ = fork_run(store, run, events[-1].position or 0, by="human:ada")
        second = store.read(fork)[1]  # the inherited run.started
    result = CliRunner().invoke(
        app, ["replay", fork, "--to-event", str(second.id), "--json", "--store", url]
    )
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)
    assert doc["run"]["events"] == 2 and doc["run"]["status"] == "planning"


def test_a_fork_of_a_fork_names_its_own_parent(tmp_path: Path) -> None:
    with EventStore.open(f"sqlite:///{tmp_path / 'l.db'}") as store:
        run, events = write_sample_run(store)
        fork, _ = fork_run(store, run, events[-1].position or 0, by="human:ada")
        [note] = store.append(fork, [NOTE])
        second, _ = fork_run(store, fork, note.position or 0, by="human:ada")
        state = RunStateProjection().fold(store.read(second))
    assert (state.parent_run, state.parent_position) == (fork, note.position)
