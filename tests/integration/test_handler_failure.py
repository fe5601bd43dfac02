"""A handler that raises after asking a model: the model calls its turn made stay in the log,
before the failure, and nothing else it decided does; verify reproduces that reaction, and
the reactions recorded before the calls were kept (the failure alone) still verify.

The agent is a user's research agent (an extension) with a bug; the workers run in threads of
the test process on a real SQLite log, with a scripted model.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from agentledger.actors import Extension, Research, ScriptedProvider, Turn
from agentledger.actors.decisions import FEEDBACK, SUB_GOAL, Findings, Prompt, sections
from agentledger.actors.extensions import load_extensions
from agentledger.actors.models import ModelRequest
from agentledger.actors.runtime import ENDED, follow_run, start_run
from agentledger.actors.verify import verify_run
from agentledger.events import (
    Event,
    EventStore,
    Role,
    ScratchpadUpdated,
    TaskAssigned,
    TaskCompleted,
    on,
)
from agentledger.projections import RunStatus

MODELS = {r: "scripted:brain" for r in ("coordinator", "research", "execution", "review")}
PLAN = {
    "reasoning": "one step",
    "steps": [{"task_id": "t1", "goal": "find it", "role": "research"}],
}


class CheckedResearch(Research):
    """Answers, makes the draft durable, asks the model to check it, then cites the checked
    answer's first source: its bug is an answer that cites none (after two model calls)."""

    @on(TaskAssigned)
    def research(self, event: TaskAssigned, turn: Turn) -> None:
        task = turn.run.task(event.payload.task_id)
        assert task is not None
        prompt = Prompt().add(SUB_GOAL, task.goal)
        draft: Findings = turn.ask("research", prompt, context=turn.context(task.goal))
        turn.emit(ScratchpadUpdated, key=f"draft.{task.task_id}", value=draft.answer)
        turn.flush()  # the draft is in the log, whatever happens next
        checked: Findings = turn.ask("research", prompt.add(FEEDBACK, f"check: {draft.answer}"))
        turn.emit(ScratchpadUpdated, key=f"findings.{task.task_id}", value=checked.answer)
        cited = checked.sources[0]  # IndexError: the checked answer cites nothing
        turn.emit(TaskCompleted, task_id=task.task_id, result=checked.answer, sources=[cited])


extension = Extension(agents={Role.RESEARCH: CheckedResearch})


def brain(request: ModelRequest) -> str:
    if request.purpose == "plan":
        return json.dumps(PLAN)
    checking = sections(request.prompt).get(FEEDBACK, "").startswith("check: ")
    return json.dumps(
        {
            "reasoning": "scripted",
            "answer": "checked" if checking else "draft",
            "sources": [] if checking else ["memo.md"],
        }
    )


def _run(tmp_path: Path, threaded_agents: Any) -> tuple[str, list[Event], str]:
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    providers = {"scripted": ScriptedProvider(brain)}
    with (
        threaded_agents(url, tmp_path, providers, extensions=(f"{__name__}:extension",)),
        EventStore.open(url) as store,
    ):
        run = start_run(store, "find it", models=MODELS).stream
        state = follow_run(store, run, until=ENDED, timeout=60)
        events = store.read(run)
        tracked = store.position_of("agent:research/1")
    assert state.status is RunStatus.FAILED  # the task failed, and so did its replan
    assignments = [e for e in events if e.type == "task.assigned"]
    assert len(assignments) == 2 and tracked >= (assignments[-1].position or 0)
    return url, events, run


def _reactions(events: list[Event]) -> list[list[Event]]:
    """Research's reaction to each assignment."""
    return [
        [x for x in events if x.causation_id == e.id and x.actor.startswith("agent:research/")]
        for e in events
        if e.type == "task.assigned"
    ]


def _verify(url: str, run: str) -> list[str]:
    """Verify the run (ok, every reaction re-executed) and return its notes."""
    with EventStore.open(url) as store:
        report = verify_run(store, run, extensions=load_extensions([f"{__name__}:extension"]))
    assert report.ok, report.divergence
    assert report.reactions == 5  # coordinator: plan, replan, give up; research: two failures
    return report.notes


def test_a_failed_turn_keeps_its_model_calls_before_the_failure(
    tmp_path: Path, threaded_agents: Any
) -> None:
    url, events, run = _run(tmp_path, threaded_agents)
    for reaction in _reactions(events):
        # The flushed draft once, then the check's call and the failure; not the findings
        # the turn emitted before it raised.
        assert [e.type for e in reaction] == [
            "model.requested",
            "model.responded",
            "scratchpad.updated",
            "model.requested",
            "model.responded",
            "task.failed",
        ]
        assert {e.actor for e in reaction} == {"agent:research/1"}
        requested, responded = reaction[3], reaction[4]
        assert responded.payload.request_id == requested.payload.request_id
        assert "check: draft" in (requested.payload.prompt or "")
        assert '"sources": []' in responded.payload.content
        assert "IndexError" in reaction[-1].payload.reason
    assert len({e.id for e in events}) == len(events)
    assert not [
        e for e in events if e.type == "scratchpad.updated" and "findings." in e.payload.key
    ]
    assert _verify(url, run) == []  # re-executed to the same reactions, calls included


def test_failed_turns_recorded_without_their_model_calls_still_verify(
    tmp_path: Path, threaded_agents: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(CheckedResearch, "keep_model_calls_of_failed_turns", False)  # as before
    url, events, run = _run(tmp_path, threaded_agents)
    for reaction in _reactions(events):
        assert [e.type for e in reaction] == [
            "model.requested",
            "model.responded",
            "scratchpad.updated",
            "task.failed",
        ]
    monkeypatch.undo()  # verify with today's agents
    notes = _verify(url, run)
    # The check's answer is not in the log: re-executed up to that call, failure as recorded.
    assert len(notes) == 2 and all("answer was not recorded" in n for n in notes), notes
