"""kill -9 of the agents' process at many points of a run: after each restart the run goes on,
and at the end no event is lost or handled twice, and each side effect happened once — or, if a
kill hit while it ran, its outcome was recorded as unknown and a human decided to run it again.
"""

from __future__ import annotations

import random
import time
from collections import Counter
from pathlib import Path

import pytest
from agent_process import kill, spawn

from agentledger.actors.runtime import start_run
from agentledger.actors.verify import verify_run
from agentledger.events import ApprovalGranted, EventStore
from agentledger.projections import RunStateProjection, RunStatus

# Long enough that twenty kills land before the end however fast the agents get (each restart
# lets one or two steps through; at 30 steps a faster store let the run finish after 18).
STEPS = 60
WORDS = [f"s{i}" for i in range(1, STEPS + 1)]
# Every third step writes a file (idempotent); the others append to a log (not idempotent).
GOAL = ". Then ".join(
    f"write {w} to {w}.md" if i % 3 == 2 else f"run `echo {w} >> effects.log`"
    for i, w in enumerate(WORDS)
)
KILLS = 20


@pytest.mark.slow
def test_kill_9_at_twenty_points_loses_and_repeats_nothing(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    workspace = tmp_path / "ws"
    workspace.mkdir()
    rng = random.Random(20261129)
    fold = RunStateProjection()
    with EventStore.open(url) as store:
        run = start_run(store, GOAL, workspace=workspace).stream
        landed = 0
        granted: set[str] = set()
        for _ in range(KILLS * 3):
            before = store.stream_version(run)
            process = spawn(url, tmp_path)
            time.sleep(rng.uniform(0.05, 0.35))
            kill(process)
            after = store.stream_version(run)
            landed += after > before  # the agents were at work when the kill came
            state = fold.fold(store.read(run))
            for pending in state.pending_approvals.values():  # an outcome the kill left unknown
                grant = {"action_id": pending.action_id, "action_hash": pending.action_hash}
                store.append(run, [ApprovalGranted(actor="human:ops", payload=grant)])
                granted.add(pending.action_id)
            if state.status is RunStatus.COMPLETED or landed >= KILLS:
                break
        # Then let it finish undisturbed.
        process = spawn(url, tmp_path)
        try:
            deadline = time.monotonic() + 120
            while True:
                state = fold.fold(store.read(run))
                for pending in state.pending_approvals.values():
                    grant = {"action_id": pending.action_id, "action_hash": pending.action_hash}
                    store.append(run, [ApprovalGranted(actor="human:ops", payload=grant)])
                    granted.add(pending.action_id)
                if state.status in (RunStatus.COMPLETED, RunStatus.FAILED):
                    break
                assert time.monotonic() < deadline, state.status
                time.sleep(0.2)
        finally:
            kill(process)
        events = store.read(run)
        report = store.verify()
        reexecuted = verify_run(store, run)

    assert state.status is RunStatus.COMPLETED, state.outcome
    assert report.ok, report
    # Re-executing every reaction against the log gives the same events, kills and all.
    assert reexecuted.ok, reexecuted.divergence
    # No event lost or handled twice: each task completed and reviewed exactly once.
    outcomes = Counter(
        (e.type, e.payload.task_id) for e in events if e.type in ("task.completed", "task.reviewed")
    )
    assert set(outcomes.values()) == {1} and len(outcomes) == 2 * STEPS, outcomes
    # Each side effect once, unless its outcome was unknown and a human chose to run it again.
    unknown = {e.payload.action_id for e in events if e.type == "action.outcome_unknown"}
    assert unknown <= granted | unknown
    executed = Counter(e.payload.action_id for e in events if e.type == "action.executed")
    assert all(n == 1 for n in executed.values()), executed
    lines = Counter((workspace / "effects.log").read_text().split())
    for i, word in enumerate(WORDS):
        if i % 3 == 2:
            assert (workspace / f"{word}.md").exists()
        else:
            assert lines[word] >= 1, word
    repeated = {w for w, n in lines.items() if n > 1}
    assert len(repeated) <= len(unknown), (lines, unknown)
    assert landed >= KILLS, f"only {landed} kills landed mid-run"


@pytest.mark.slow
def test_a_kill_during_a_side_effect_leaves_its_outcome_unknown_for_a_human(
    tmp_path: Path,
) -> None:
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    workspace = tmp_path / "ws"
    workspace.mkdir()
    with EventStore.open(url) as store:
        run = start_run(store, "run `sleep 3 && echo done >> effects.log`", workspace=workspace)
        process = spawn(url, tmp_path)
        try:
            deadline = time.monotonic() + 60
            # The proposal and its assessment are in the log before the command starts.
            while not any(e.type == "action.risk_assessed" for e in store.read(run.stream)):
                assert time.monotonic() < deadline
                time.sleep(0.05)
            time.sleep(0.5)
        finally:
            kill(process)  # while `sleep 3` runs
            killed_at = time.monotonic()
        assert not (workspace / "effects.log").exists()
        process = spawn(url, tmp_path)
        try:
            deadline = time.monotonic() + 60
            while not (
                state := RunStateProjection().fold(store.read(run.stream))
            ).pending_approvals:
                assert time.monotonic() < deadline, state.status
                time.sleep(0.1)
            events = store.read(run.stream)
            (unknown,) = [e for e in events if e.type == "action.outcome_unknown"]
            (pending,) = state.pending_approvals.values()
            assert pending.action_id == unknown.payload.action_id
            assert "outcome is unknown" in pending.reasoning
            # The command outlived the killed agent and did finish (so its outcome really was
            # unknown to the agents); nothing ran it a second time while nobody had decided.
            time.sleep(max(0.0, killed_at + 3.5 - time.monotonic()))
            assert (workspace / "effects.log").read_text() == "done\n"
            grant = {"action_id": pending.action_id, "action_hash": pending.action_hash}
            store.append(run.stream, [ApprovalGranted(actor="human:ops", payload=grant)])
            while (state := RunStateProjection().fold(store.read(run.stream))).status not in (
                RunStatus.COMPLETED,
                RunStatus.FAILED,
            ):
                assert time.monotonic() < deadline, state.status
                time.sleep(0.1)
        finally:
            kill(process)
    assert state.status is RunStatus.COMPLETED, state.outcome
    assert (workspace / "effects.log").read_text() == "done\ndone\n"  # once more, as approved


@pytest.mark.slow
def test_a_second_agents_process_on_the_store_stands_by_and_takes_over_when_the_first_dies(
    tmp_path: Path,
) -> None:
    # Two `agentledger run` (or `serve`) with agents of their own on one store: the second
    # one's agents took the first one's command in progress for one a crash cut short
    # (outcome unknown, a human asked to run it again) and called the model for the same
    # events. Only one process follows the log as each agent; the other stands by.
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    workspace = tmp_path / "ws"
    workspace.mkdir()
    fold = RunStateProjection()
    with EventStore.open(url) as store:
        run = start_run(store, "run `sleep 2 && echo one >> effects.log`", workspace=workspace)
        first = spawn(url, tmp_path)
        second = None
        try:
            deadline = time.monotonic() + 60
            while not any(e.type == "action.risk_assessed" for e in store.read(run.stream)):
                assert time.monotonic() < deadline
                time.sleep(0.05)
            second = spawn(url, tmp_path)  # while `sleep 2` runs in the first
            while (state := fold.fold(store.read(run.stream))).status not in ENDS:
                assert time.monotonic() < deadline, state.status
                time.sleep(0.1)
            events = store.read(run.stream)
            assert state.status is RunStatus.COMPLETED, state.outcome
            assert not [e for e in events if e.type == "action.outcome_unknown"]
            assert not state.pending_approvals
            assert (workspace / "effects.log").read_text() == "one\n"
            # Each event was handled by one process: one model call per reaction.
            requests = Counter(e.causation_id for e in events if e.type == "model.requested")
            assert set(requests.values()) == {1}, requests
            # The first dies; the second takes over and runs what comes next.
            kill(first)
            first = None
            other = start_run(store, "run `echo two >> effects.log`", workspace=workspace)
            while (state := fold.fold(store.read(other.stream))).status not in ENDS:
                assert time.monotonic() < deadline + 60, state.status
                time.sleep(0.1)
        finally:
            for process in (first, second):
                if process is not None:
                    kill(process)
        assert state.status is RunStatus.COMPLETED, state.outcome
        assert (workspace / "effects.log").read_text() == "one\ntwo\n"
        assert verify_run(store, run.stream).ok
        assert verify_run(store, other.stream).ok


ENDS = (RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.CANCELLED)
