"""`verify` re-executes a run's agents against its log with the recorded model answers and tool
results, and finds the first event whose content differs — tested on real runs, including a
mutated handler (it must fail, at the right position)."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from agentledger.actors.providers import ScriptedProvider
from agentledger.actors.roles import Review
from agentledger.actors.runtime import ENDED, follow_run, start_run
from agentledger.actors.verify import comparable, verify_run
from agentledger.cli import app
from agentledger.demo import DEMO_GOAL, prepare_demo
from agentledger.events import ContextSummarized, EventStore, NotFound


@pytest.fixture
def demo_run(tmp_path: Path, threaded_agents: Any) -> tuple[str, str]:
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    docs, workspace = prepare_demo(tmp_path)
    with threaded_agents(url, tmp_path), EventStore.open(url) as store:
        run = start_run(store, DEMO_GOAL, docs=docs, workspace=workspace).stream
        follow_run(store, run, timeout=60)
    return url, run


def test_an_untouched_run_verifies(demo_run: tuple[str, str]) -> None:
    url, run = demo_run
    with EventStore.open(url) as store:
        report = verify_run(store, run)
        total = len(store.read(run))
    assert report.ok, report.divergence
    assert report.reactions >= 14 and report.events == total - 1  # all but the human's start
    result = CliRunner().invoke(app, ["verify", run, "--store", url])
    assert result.exit_code == 0 and "verified" in result.output


def test_a_changed_handler_fails_verification_where_it_first_acts_differently(
    demo_run: tuple[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    url, run = demo_run
    original = Review._checks

    def stricter(self: Review, turn: Any, task: Any, done: Any) -> list[str]:
        return [*original(self, turn, task, done), "PASS: one more check"]

    monkeypatch.setattr(Review, "_checks", stricter)
    with EventStore.open(url) as store:
        report = verify_run(store, run)
        events = store.read(run)
    first_review_request = next(
        e for e in events if e.type == "model.requested" and e.actor.startswith("agent:review/")
    )
    d = report.divergence
    assert d is not None and d.agent.startswith("agent:review/")
    assert d.position == first_review_request.position  # its prompt (with the checks) differs
    assert d.expected and d.actual
    assert d.expected["payload"]["prompt_hash"] != d.actual["payload"]["prompt_hash"]
    result = CliRunner().invoke(app, ["verify", run, "--store", url, "--json"])
    assert result.exit_code == 1
    assert json.loads(result.output)["divergence"]["position"] == first_review_request.position


def test_retries_and_failures_replay_as_recorded(tmp_path: Path, threaded_agents: Any) -> None:
    plan = {"reasoning": "one", "steps": [{"task_id": "t1", "goal": "do", "role": "execution"}]}
    answers = {
        "plan": ["not json", json.dumps(plan)],  # a validation failure, then a plan
        "act": [
            json.dumps(
                {
                    "reasoning": "r",
                    "actions": [{"tool": "write_file", "arguments": {"content": "no path"}}],
                }
            )
        ],
        "review": [json.dumps({"accepted": True, "reasons": "ok"})],
    }

    def brain(request: Any) -> str:
        queue = answers[request.purpose]
        return queue.pop(0) if len(queue) > 1 else queue[0]

    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    models = {r: "scripted:b" for r in ("coordinator", "research", "execution", "review")}
    with (
        threaded_agents(url, tmp_path, {"scripted": ScriptedProvider(brain)}),
        EventStore.open(url) as store,
    ):
        run = start_run(store, "do it", models=models).stream
        state = follow_run(store, run, until=ENDED, timeout=60)
        report = verify_run(store, run)
    assert state.status.value == "failed"  # the tool call was invalid, twice (after a replan)
    assert report.ok, report.divergence
    assert report.reactions >= 5


def test_verify_refuses_an_unknown_run(memory_store: EventStore) -> None:
    with pytest.raises(NotFound, match="no run 'run-nope'"):
        verify_run(memory_store, "run-nope")


def test_a_summary_recorded_before_schema_2_compares_without_the_fields_it_lacks() -> None:
    # A log written before summaries named their events by id holds them as None once upcast;
    # re-executing today names them, and that is not a divergence. Where the log has them,
    # they are compared like any other field.
    payload = {
        "agent": "research",
        "from_position": 3,
        "to_position": 9,
        "summary": "earlier: three sources",
        "model": "scripted",
    }
    old = ContextSummarized(actor="agent:research/memory", payload=payload)
    first, last = uuid.uuid4(), uuid.uuid4()
    today = ContextSummarized(
        actor="agent:research/memory", payload={**payload, "from_event": first, "to_event": last}
    )
    assert comparable(today, old) == comparable(old, old)
    other = today.model_copy(
        update={"payload": today.payload.model_copy(update={"to_event": first})}
    )
    assert comparable(other, today) != comparable(today, today)
    changed = today.model_copy(
        update={"payload": today.payload.model_copy(update={"to_position": 8})}
    )
    assert comparable(changed, old) != comparable(old, old)
