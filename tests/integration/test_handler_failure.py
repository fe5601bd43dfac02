"""A handler that raises after asking a model or running a tool: the records of what its turn
did (the model calls, and each tool call that ran) stay in the log, before the failure, and
nothing else it decided does; the same when the store refuses an event the agent emitted.
Verify reproduces those reactions, and the reactions recorded when less was kept (the failure
alone; the model calls only) still verify.

The agents are a user's research agents (extensions) with a bug; the workers run in threads of
the test process on a real SQLite log, with a scripted model.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from pydantic import JsonValue

from agentledger.actors import Extension, Research, ScriptedProvider, Turn
from agentledger.actors.decisions import FEEDBACK, SUB_GOAL, Findings, Prompt, sections
from agentledger.actors.extensions import load_extensions
from agentledger.actors.models import ModelRequest
from agentledger.actors.runtime import ENDED, follow_run, start_run
from agentledger.actors.tools import Tool, ToolArguments, ToolContext
from agentledger.actors.verify import verify_run
from agentledger.events import (
    ApprovalGranted,
    Event,
    EventStore,
    RiskLevel,
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


class SearchingResearch(Research):
    """Asks for a draft, looks it up in the run's documents, then cites the first hit: its bug
    is a search that finds nothing (after a model call and a tool call, with a second search
    proposed and never run)."""

    @on(TaskAssigned)
    def research(self, event: TaskAssigned, turn: Turn) -> None:
        task = turn.run.task(event.payload.task_id)
        assert task is not None
        draft: Findings = turn.ask("research", Prompt().add(SUB_GOAL, task.goal))
        search = turn.propose("search_docs", {"query": draft.answer}, "look it up", task.task_id)
        found = turn.execute(search)
        turn.propose("search_docs", {"query": task.goal}, "look again", task.task_id)
        turn.emit(ScratchpadUpdated, key=f"findings.{task.task_id}", value=draft.answer)
        assert isinstance(found.result, list)
        cited = found.result[0]  # IndexError: the search found nothing
        turn.emit(TaskCompleted, task_id=task.task_id, result=draft.answer, sources=[str(cited)])


class SelfApprovingResearch(Research):
    """Asks for a draft, looks it up, and grants itself an approval: its bug is an event the
    store refuses (only a human may append approval.granted)."""

    @on(TaskAssigned)
    def research(self, event: TaskAssigned, turn: Turn) -> None:
        task = turn.run.task(event.payload.task_id)
        assert task is not None
        draft: Findings = turn.ask("research", Prompt().add(SUB_GOAL, task.goal))
        search = turn.propose("search_docs", {"query": task.goal}, "look it up", task.task_id)
        turn.execute(search)
        turn.emit(ScratchpadUpdated, key=f"findings.{task.task_id}", value=draft.answer)
        turn.emit(
            ApprovalGranted,
            action_id=search.payload.action_id,
            action_hash=hashlib.sha256(b"anything").hexdigest(),
        )
        turn.emit(TaskCompleted, task_id=task.task_id, result=draft.answer, sources=["memo.md"])


extension = Extension(agents={Role.RESEARCH: CheckedResearch})
searching = Extension(agents={Role.RESEARCH: SearchingResearch})
self_approving = Extension(agents={Role.RESEARCH: SelfApprovingResearch})


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


def _run(
    tmp_path: Path, threaded_agents: Any, name: str = "extension", answer: Any = brain
) -> tuple[str, list[Event], str]:
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    providers = {"scripted": ScriptedProvider(answer)}
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "memo.md").write_text("find it here\n")  # no line with "draft"
    with (
        threaded_agents(url, tmp_path, providers, extensions=(f"{__name__}:{name}",)),
        EventStore.open(url) as store,
    ):
        run = start_run(store, "find it", models=MODELS, docs=docs).stream
        state = follow_run(store, run, until=ENDED, timeout=60)
        events = store.read(run)
        tracked = store.position_of("agent:research/1")
    assert state.status is RunStatus.FAILED  # the task failed, and so did its replan
    assignments = [e for e in events if e.type == "task.assigned"]
    assert len(assignments) == 2 and tracked >= (assignments[-1].position or 0)
    return url, events, run


def _reactions(events: list[Event]) -> list[list[Event]]:
    """Research's reaction to each assignment (with the policy's assessments in it)."""
    return [
        [
            x
            for x in events
            if x.causation_id == e.id
            and (x.actor.startswith("agent:research/") or x.actor == "system:policy")
        ]
        for e in events
        if e.type == "task.assigned"
    ]


def _verify(url: str, run: str, name: str = "extension") -> list[str]:
    """Verify the run (ok, every reaction re-executed) and return its notes."""
    with EventStore.open(url) as store:
        report = verify_run(store, run, extensions=load_extensions([f"{__name__}:{name}"]))
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
    monkeypatch.setattr(CheckedResearch, "records_of_failed_turns", "none")  # as before
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


def test_a_failed_turn_keeps_the_tool_calls_that_ran_before_the_failure(
    tmp_path: Path, threaded_agents: Any
) -> None:
    url, events, run = _run(tmp_path, threaded_agents, "searching")
    for reaction in _reactions(events):
        # The model call, then the search that ran (proposal, assessment, result) once, then
        # the failure: not the second search, proposed and never run, nor the findings.
        assert [e.type for e in reaction] == [
            "model.requested",
            "model.responded",
            "action.proposed",
            "action.risk_assessed",
            "action.executed",
            "task.failed",
        ]
        proposed, assessed, executed = reaction[2:5]
        action_id = proposed.payload.action_id
        assert assessed.payload.action_id == executed.payload.action_id == action_id
        assert proposed.payload.arguments == {"query": "draft"}
        assert assessed.actor == "system:policy" and assessed.payload.risk.value == "low"
        assert executed.payload.result == []
        assert "IndexError" in reaction[-1].payload.reason
    assert len([e for e in events if e.type == "action.proposed"]) == 2  # one per assignment
    assert not [e for e in events if e.type in ("scratchpad.updated", "task.completed")]
    assert _verify(url, run, "searching") == []  # re-executed to the same reactions


@pytest.mark.parametrize("kept", ["none", "model calls"])
def test_failed_turns_recorded_without_their_tool_calls_still_verify(
    tmp_path: Path, threaded_agents: Any, monkeypatch: pytest.MonkeyPatch, kept: str
) -> None:
    # As agents did before 4e93675 ("none": the failure alone) and with it (the model calls).
    monkeypatch.setattr(SearchingResearch, "records_of_failed_turns", kept)
    url, events, run = _run(tmp_path, threaded_agents, "searching")
    calls = ["model.requested", "model.responded"] if kept == "model calls" else []
    for reaction in _reactions(events):
        assert [e.type for e in reaction] == [*calls, "task.failed"]
    monkeypatch.undo()  # verify with today's agents
    notes = _verify(url, run, "searching")
    # The search's result (or the model's answer before it) is not in the log: re-executed
    # up to that call, the rest as recorded.
    what = "tool call whose result" if kept == "model calls" else "model call whose answer"
    assert len(notes) == 2 and all(f"after a {what} was not" in n for n in notes), notes


def test_a_turn_whose_event_the_store_refuses_keeps_its_records_before_the_failure(
    tmp_path: Path, threaded_agents: Any
) -> None:
    url, events, run = _run(tmp_path, threaded_agents, "self_approving")
    for reaction in _reactions(events):
        # What the turn did, then why it failed; none of what it decided (the approval the
        # store refused, the findings, the completion).
        assert [e.type for e in reaction] == [
            "model.requested",
            "model.responded",
            "action.proposed",
            "action.risk_assessed",
            "action.executed",
            "task.failed",
        ]
        reason = reaction[-1].payload.reason
        assert "invalid event from the agent" in reason and "approval.granted" in reason
    assert not [e for e in events if e.type.startswith("approval.")]
    assert _verify(url, run, "self_approving") == []  # verify tells the refusal as the store did


# ---------------------------------------------------------------- a refused flush

STAMPED: list[str] = []  # the calls the tool below ran (in this process's threads)


class StampArgs(ToolArguments):
    to: str


class StampPage(Tool[StampArgs]):
    """A side effect that must not be repeated blindly: flushed before it runs."""

    name = "stamp_page"
    description = "Stamp a page (test tool)."
    risk = RiskLevel.LOW
    idempotent = False
    arguments = StampArgs

    def run(self, args: StampArgs, ctx: ToolContext) -> JsonValue:
        """Record the call."""
        STAMPED.append(args.to)
        return {"stamped": args.to}


class SelfApprovingStamper(Research):
    """Grants itself an approval (refused by the store), then stamps: the call is flushed
    first (not idempotent), and that flush holds the refused approval."""

    @on(TaskAssigned)
    def research(self, event: TaskAssigned, turn: Turn) -> None:
        task = turn.run.task(event.payload.task_id)
        assert task is not None
        draft: Findings = turn.ask("research", Prompt().add(SUB_GOAL, task.goal))
        stamp = turn.propose("stamp_page", {"to": "memo"}, "stamp it", task.task_id)
        turn.emit(
            ApprovalGranted,
            action_id=stamp.payload.action_id,
            action_hash=hashlib.sha256(b"anything").hexdigest(),
        )
        turn.execute(stamp, durable=True)
        turn.emit(TaskCompleted, task_id=task.task_id, result=draft.answer, sources=["memo.md"])


self_approving_stamper = Extension(
    agents={Role.RESEARCH: SelfApprovingStamper}, tools=[StampPage()]
)


def test_a_turn_whose_flush_the_store_refuses_stops_before_its_side_effect(
    tmp_path: Path, threaded_agents: Any
) -> None:
    # The store refused what the turn flushed before a call that must not run blindly (here:
    # an approval the agent granted itself). The worker recorded the failure instead, and the
    # handler went on: the call ran though its proposal never reached the log, and the
    # turn's decisions (an action.executed with no proposal, task.completed) were appended
    # after the task.failed.
    STAMPED.clear()
    url, events, run = _run(tmp_path, threaded_agents, "self_approving_stamper")
    assert STAMPED == [], "the call ran though the flush before it was refused"
    for reaction in _reactions(events):
        # What the flush held that the log takes (the model call), then why it failed.
        assert [e.type for e in reaction] == ["model.requested", "model.responded", "task.failed"]
        assert "invalid event from the agent" in reaction[-1].payload.reason
    assert not [e for e in events if e.type in ("action.executed", "task.completed")]
    assert _verify(url, run, "self_approving_stamper") == []  # re-executed: stops there too


# ---------------------------------------------------------------- a failed turn's records refused


class DeepArgs(ToolArguments):
    query: str


class DeepLookup(Tool[DeepArgs]):
    """Answers with JSON nested deeper than the log keeps (200 levels): a valid result for
    Python, an event the store refuses."""

    name = "deep_lookup"
    description = "Look something up (test tool)."
    risk = RiskLevel.LOW
    idempotent = True
    arguments = DeepArgs

    def run(self, args: DeepArgs, ctx: ToolContext) -> JsonValue:
        """The deep answer."""
        result: JsonValue = args.query
        for _ in range(200):
            result = [result]
        return result


class DeepResearch(Research):
    """Asks for a draft, looks it up, then cites the lookup's first source: its bug is a
    lookup that gives none, after a tool call whose record the store refuses."""

    @on(TaskAssigned)
    def research(self, event: TaskAssigned, turn: Turn) -> None:
        task = turn.run.task(event.payload.task_id)
        assert task is not None
        draft: Findings = turn.ask("research", Prompt().add(SUB_GOAL, task.goal))
        lookup = turn.propose("deep_lookup", {"query": draft.answer}, "look it up", task.task_id)
        found = turn.execute(lookup)
        assert isinstance(found.result, dict)  # AssertionError: a list came back
        turn.emit(TaskCompleted, task_id=task.task_id, result=draft.answer, sources=["memo.md"])


deep = Extension(agents={Role.RESEARCH: DeepResearch}, tools=[DeepLookup()])


def test_a_failed_turn_whose_records_the_store_refuses_verifies(
    tmp_path: Path, threaded_agents: Any
) -> None:
    # Verify rebuilt a failed turn's reaction (its records, then the failure) without asking
    # the store whether it takes it: live, the store refused the tool call's record, and the
    # failure alone was appended; verify reported a divergence on a run that had none.
    url, events, run = _run(tmp_path, threaded_agents, "deep")
    for reaction in _reactions(events):
        assert [e.type for e in reaction] == ["task.failed"]
        reason = reaction[-1].payload.reason
        assert "invalid event from the agent" in reason and "action.executed" in reason
    notes = _verify(url, run, "deep")
    # The draft's answer went with the refused records: re-executed up to that call, the rest
    # taken as recorded, and said why (the note said the log was one of agents older than
    # failed turns' records).
    assert len(notes) == 2, notes
    for note in notes:
        assert "after a model call whose answer was not recorded (the store refused" in note
        assert "action.executed" in note and "before failed turns" not in note
