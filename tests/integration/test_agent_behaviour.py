"""How the agents behave on bad input and at the approval gate.

The agents' workers run in threads of the test process (the runtime's code without the Ray
process boundary, which ``test_agents_on_ray.py`` covers); the store, tools, sandbox and the
offline model are real, and the HTTP provider talks to a closed local port.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from agentledger.actors.decisions import SUB_GOAL, sections
from agentledger.actors.models import ModelRequest
from agentledger.actors.providers import ProviderSettings, ScriptedProvider
from agentledger.actors.roles import Research
from agentledger.actors.runtime import (
    ENDED,
    AgentWorker,
    RuntimeConfig,
    agent_for,
    follow_run,
    start_run,
)
from agentledger.actors.verify import verify_run
from agentledger.demo import DEMO_GOAL, prepare_demo
from agentledger.events import (
    ApprovalGranted,
    ConfigurationError,
    Event,
    EventStore,
    InvalidEvent,
    NotFound,
    Role,
    ScratchpadUpdated,
)
from agentledger.projections import RunStatus

ALL_SCRIPTED = {r: "scripted:brain" for r in ("coordinator", "research", "execution", "review")}
ONE_STEP = {
    "reasoning": "one step",
    "steps": [{"task_id": "t1", "goal": "do it", "role": "execution"}],
}


class Brain:
    """Answers per purpose: a fixed answer, a list consumed in order, or a function."""

    def __init__(self, **answers: Any) -> None:
        self.answers = {
            "plan": json.dumps(ONE_STEP),
            "review": json.dumps({"accepted": True, "reasons": "ok"}),
            "research": json.dumps({"reasoning": "r", "answer": "a", "sources": ["s"]}),
        } | answers

    def __call__(self, request: ModelRequest) -> str:
        answer = self.answers[request.purpose]
        if isinstance(answer, list):
            return answer.pop(0) if len(answer) > 1 else answer[0]
        if callable(answer):
            return str(answer(request))
        return str(answer)


def _grant(store: EventStore, run: str, pending: Any) -> None:
    """A human grants the pending approval (as `agentledger approve` records it)."""
    store.append(
        run,
        [
            ApprovalGranted(
                actor="human:dpo",
                payload={"action_id": pending.action_id, "action_hash": pending.action_hash},
            )
        ],
    )


def _act(*calls: dict[str, Any]) -> str:
    return json.dumps({"reasoning": "scripted", "actions": list(calls)})


@pytest.fixture
def run_with(
    tmp_path: Path, threaded_agents: Any
) -> Callable[..., tuple[RunStatus, list[Event], Path]]:
    url = f"sqlite:///{tmp_path / 'ledger.db'}"

    def run(
        brain: Brain | None = None,
        *,
        goal: str = "Do the thing",
        models: dict[str, str] | None = None,
        until: frozenset[RunStatus] = ENDED,
        **config: Any,
    ) -> tuple[RunStatus, list[Event], Path]:
        providers = {"scripted": ScriptedProvider(brain or Brain())}
        with threaded_agents(url, tmp_path, providers, **config), EventStore.open(url) as store:
            started = start_run(store, goal, models=models or ALL_SCRIPTED)
            state = follow_run(store, started.stream, until=until, timeout=60)
            events = store.read(started.stream)
        return state.status, events, tmp_path / "workspaces" / started.stream

    return run


def _of(events: list[Event], kind: str) -> list[Any]:
    return [e for e in events if e.type == kind]


def test_an_unreachable_model_endpoint_is_recorded_and_fails_the_run(run_with: Any) -> None:
    settings = ProviderSettings(
        base_url="http://127.0.0.1:9/v1", timeout=2, max_retries=1, backoff=0.01
    )
    status, events, _ = run_with(models={"coordinator": "openai:gpt-4o-mini"}, openai=settings)
    assert status is RunStatus.FAILED
    (failed,) = _of(events, "model.failed")
    assert "127.0.0.1:9" in failed.payload.error
    assert failed.actor == "agent:coordinator/1"
    (end,) = _of(events, "run.failed")
    assert "could not plan" in end.payload.reason and "127.0.0.1:9" in end.payload.reason


def test_answers_and_prompts_longer_than_the_log_keeps_are_recorded_not_a_crash(
    tmp_path: Path, run_with: Any
) -> None:
    """An answer over the log's 100,000 characters failed the handler with a pydantic error,
    and the model call it had made vanished from the log (so verify diverged); a prompt over
    it did the same before the call."""
    huge = json.dumps({"reasoning": "x" * 150_000, "steps": ONE_STEP["steps"]})
    status, events, _ = run_with(Brain(plan=huge))
    assert status is RunStatus.FAILED
    (asked,) = _of(events, "model.requested")
    (failed,) = _of(events, "model.failed")
    assert failed.payload.request_id == asked.payload.request_id
    assert "150,0" in failed.payload.error and "100,000" in failed.payload.error
    assert "could not plan" in _of(events, "run.failed")[0].payload.reason
    runs = [(events[0].stream, 8_000)]

    # A goal of 20,000 characters (more than a model's step may have) with a planner's long
    # reasoning; then findings of 45,000 characters each that a big context budget takes in
    # whole, so that the last step is asked in a prompt of more than 100,000: it is kept by
    # its hash only.
    goal = "Do the thing. " + "word " * 3_990
    steps = [{"task_id": f"t{i}", "goal": f"find part {i}", "role": "research"} for i in (1, 2, 3)]
    steps.append({"task_id": "t4", "goal": "write", "role": "execution", "depends_on": ["t3"]})
    for i in (2, 3):
        steps[i - 1]["depends_on"] = [f"t{i - 1}"]
    plans = [json.dumps({"reasoning": "r" * 19_990, "steps": ONE_STEP["steps"]})]
    plans.append(json.dumps({"reasoning": "four", "steps": steps}))
    answer = json.dumps({"reasoning": "r", "answer": "found " * 7_500, "sources": ["s"]})
    act = _act({"tool": "write_file", "arguments": {"path": "a.txt", "content": "x"}})
    status, events, _ = run_with(Brain(plan=plans[0], act=act), goal=goal)
    assert status is RunStatus.COMPLETED, _of(events, "run.failed")
    assert _of(events, "task.planned")[0].payload.goal == goal.strip()
    runs.append((events[0].stream, 8_000))
    status, events, _ = run_with(
        Brain(plan=plans[1], research=answer, act=act), context_tokens=200_000
    )
    runs.append((events[0].stream, 200_000))
    assert status is RunStatus.COMPLETED, _of(events, "run.failed")
    asked = _of(events, "model.requested")
    assert any(e.payload.prompt is None for e in asked), [len(e.payload.prompt) for e in asked]
    with EventStore.open(f"sqlite:///{tmp_path / 'ledger.db'}") as store:
        for run, budget in runs:
            report = verify_run(store, run, context_tokens=budget)
            assert report.ok, report.divergence


def test_malformed_model_output_is_recorded_and_retried(run_with: Any) -> None:
    brain = Brain(
        plan=["this is not JSON", json.dumps(ONE_STEP)],
        act=_act({"tool": "write_file", "arguments": {"path": "a.txt", "content": "x"}}),
    )
    status, events, workspace = run_with(brain)
    assert status is RunStatus.COMPLETED
    (invalid,) = _of(events, "model.failed")
    assert "does not follow the Plan schema" in invalid.payload.error and invalid.payload.retryable
    second = _of(events, "model.requested")[1]
    assert "## previous answer was invalid" in second.payload.prompt
    assert (workspace / "a.txt").read_text() == "x"


def test_model_output_that_never_validates_fails_with_the_reason(run_with: Any) -> None:
    status, events, _ = run_with(Brain(plan='{"reasoning": "x", "steps": []}'))
    assert status is RunStatus.FAILED
    assert len(_of(events, "model.failed")) == 2
    (end,) = _of(events, "run.failed")
    assert "no valid Plan in 2 attempts" in end.payload.reason
    assert "steps" in end.payload.reason  # the field that was wrong


def test_a_tool_call_with_invalid_arguments_is_rejected_naming_the_field(run_with: Any) -> None:
    status, events, _ = run_with(
        Brain(act=_act({"tool": "write_file", "arguments": {"content": "x"}}))
    )
    assert status is RunStatus.FAILED
    rejected = _of(events, "action.failed")[0]
    assert "write_file" in rejected.payload.error and "'path'" in rejected.payload.error
    assert not _of(events, "action.executed")
    # The coordinator replanned once before giving up.
    assert [e.payload.task_id for e in _of(events, "task.failed")] == ["t1", "t1.replan-t1"]


def test_a_high_risk_call_with_invalid_arguments_fails_without_asking_a_human(
    run_with: Any,
) -> None:
    # A grant could never make it run: asking for one only wastes the approver's time.
    status, events, _ = run_with(
        Brain(act=_act({"tool": "delete_file", "arguments": {"path": ["a.txt"]}})),
        until=ENDED | frozenset({RunStatus.WAITING_FOR_APPROVAL}),
    )
    assert status is RunStatus.FAILED
    assert not _of(events, "approval.requested")
    rejected = _of(events, "action.failed")[0]
    assert rejected.payload.error.startswith("delete_file: argument 'path'")


@pytest.mark.parametrize("recorded_before_the_check", [False, True])
def test_runs_recorded_with_or_without_the_check_before_approval_verify(
    run_with: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, recorded_before_the_check: bool
) -> None:
    from agentledger.actors.agent import Agent

    monkeypatch.setattr(Agent, "validate_before_approval", not recorded_before_the_check)
    _, events, _ = run_with(
        Brain(act=_act({"tool": "delete_file", "arguments": {"path": ["a.txt"]}})),
        until=ENDED | frozenset({RunStatus.WAITING_FOR_APPROVAL}),
    )
    assert len(_of(events, "approval.requested")) == (1 if recorded_before_the_check else 0)
    monkeypatch.undo()  # verify with today's agents
    with EventStore.open(f"sqlite:///{tmp_path / 'ledger.db'}") as store:
        report = verify_run(store, events[0].stream)
    assert report.ok and report.reactions > 0, report.divergence


def test_a_write_that_tries_to_leave_the_workspace_is_escalated_and_refused(
    tmp_path: Path, threaded_agents: Any
) -> None:
    """The policy makes a path outside the workspace high risk (a human must look), and even
    approved, the sandbox refuses it."""
    brain = Brain(
        act=_act({"tool": "write_file", "arguments": {"path": "../../escaped.txt", "content": "x"}})
    )
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    with (
        threaded_agents(url, tmp_path, {"scripted": ScriptedProvider(brain)}),
        EventStore.open(url) as store,
    ):
        run = start_run(store, "escape", models=ALL_SCRIPTED).stream
        state = follow_run(store, run, timeout=60)
        assert state.status is RunStatus.WAITING_FOR_APPROVAL
        (pending,) = state.pending_approvals.values()
        assessed = _of(store.read(run), "action.risk_assessed")[0]
        assert "outside the workspace" in assessed.payload.rule
        grant = {"action_id": pending.action_id, "action_hash": pending.action_hash}
        store.append(run, [ApprovalGranted(actor="human:ada", payload=grant)])
        # It runs, the sandbox refuses it, the task fails, and the replan asks again.
        state = follow_run(store, run, timeout=60)
        assert pending.action_id not in state.pending_approvals
        failed = _of(store.read(run), "action.failed")[0]
        assert failed.payload.action_id == pending.action_id
    assert "escaped.txt" in failed.payload.error
    assert not list(tmp_path.rglob("escaped.txt"))


def test_a_sandboxed_command_that_times_out_fails_clearly(run_with: Any) -> None:
    brain = Brain(
        act=_act({"tool": "run_shell", "arguments": {"command": "sleep 30", "timeout_s": 1}})
    )
    status, events, _ = run_with(brain)
    assert status is RunStatus.FAILED
    error = _of(events, "action.failed")[0].payload.error
    assert "sleep 30" in error and "1" in error and "time" in error.lower()


def test_a_rejected_result_goes_back_with_the_reviewers_reasons(run_with: Any) -> None:
    reviews = [
        json.dumps({"accepted": False, "reasons": "the file must say done"}),
        json.dumps({"accepted": True, "reasons": "now it does"}),
    ]
    brain = Brain(
        act=_act({"tool": "write_file", "arguments": {"path": "a.txt", "content": "done"}}),
        review=reviews,
    )
    status, events, _ = run_with(brain)
    assert status is RunStatus.COMPLETED
    assigned = _of(events, "task.assigned")
    assert len(assigned) == 2 and "the file must say done" in assigned[1].payload.reasoning
    second_act = [
        e for e in _of(events, "model.requested") if e.actor.startswith("agent:execution")
    ][1]
    assert "the file must say done" in second_act.payload.prompt


def test_the_offline_demo_waits_for_approval_then_a_grant_runs_the_action(
    tmp_path: Path, threaded_agents: Any
) -> None:
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    docs, workspace = prepare_demo(tmp_path)
    with threaded_agents(url, tmp_path), EventStore.open(url) as store:
        started = start_run(store, DEMO_GOAL, user="demo", docs=docs, workspace=workspace)
        state = follow_run(store, started.stream, timeout=60)
        assert state.status is RunStatus.WAITING_FOR_APPROVAL
        (pending,) = state.pending_approvals.values()
        assert pending.tool == "delete_file" and (workspace / "notes.tmp").exists()
        events = store.read(started.stream)
        roles = {e.actor.split("/")[0] for e in events if e.actor.startswith("agent:")}
        assert roles == {f"agent:{r}" for r in ("coordinator", "research", "execution", "review")}
        assert len(state.tasks) == 5
        assert "retention" in (workspace / "report.md").read_text().lower()
        # Every model call of the demo is labelled as the rule-based offline provider.
        assert {e.payload.model for e in _of(events, "model.responded")} == {"offline-rules"}

        _grant(store, started.stream, pending)
        state = follow_run(store, started.stream, until=ENDED, timeout=60)
        assert state.status is RunStatus.COMPLETED, state.outcome
        assert not (workspace / "notes.tmp").exists()
        assert state.actions[pending.action_id].status.value == "executed"


def test_a_grant_for_another_hash_does_not_run_the_action(
    tmp_path: Path, threaded_agents: Any
) -> None:
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    docs, workspace = prepare_demo(tmp_path)
    with threaded_agents(url, tmp_path), EventStore.open(url) as store:
        started = start_run(store, DEMO_GOAL, docs=docs, workspace=workspace)
        state = follow_run(store, started.stream, timeout=60)
        (pending,) = state.pending_approvals.values()
        bogus = {"action_id": pending.action_id, "action_hash": "0" * 64}
        store.append(started.stream, [ApprovalGranted(actor="human:dpo", payload=bogus)])
        # The action fails, the coordinator replans, and the new attempt asks again.
        state = follow_run(store, started.stream, timeout=60)
    assert state.status is RunStatus.WAITING_FOR_APPROVAL
    (again,) = state.pending_approvals.values()
    assert again.action_id != pending.action_id and again.tool == "delete_file"
    assert (workspace / "notes.tmp").exists()
    assert "different action hash" in state.actions[pending.action_id].result


@pytest.mark.parametrize(
    ("goal", "words"),
    [
        ("", "the goal is empty"),
        ("   \n", "the goal is empty"),
        ("x" * 20_001, "20,001 characters"),
    ],
)
def test_an_empty_or_oversized_goal_is_refused_and_nothing_is_written(
    memory_store: EventStore, goal: str, words: str
) -> None:
    with pytest.raises(InvalidEvent, match=words):
        start_run(memory_store, goal)
    assert memory_store.head_position() == 0


def test_a_missing_docs_folder_is_refused(memory_store: EventStore, tmp_path: Path) -> None:
    with pytest.raises(NotFound, match="no such directory"):
        start_run(memory_store, "find x", docs=tmp_path / "nope")
    assert memory_store.head_position() == 0


def test_a_docs_file_is_refused_as_a_file(memory_store: EventStore, tmp_path: Path) -> None:
    notes = tmp_path / "notes.md"
    notes.write_text("# notes\n")
    with pytest.raises(ConfigurationError, match=r"notes\.md: is a file, not a folder; give the"):
        start_run(memory_store, "find x", docs=notes)
    assert memory_store.head_position() == 0


def test_the_scenario_brain_reads_the_sub_goal() -> None:
    # The scripted execution model relies on the sub-goal section the roles write.
    request = ModelRequest(
        role="execution", model="m", purpose="act", prompt="## sub-goal\nwrite x to a.md"
    )
    assert sections(request.prompt)[SUB_GOAL] == "write x to a.md"


def test_a_run_on_an_openai_compatible_endpoint(run_with: Any) -> None:
    """Every role on the HTTP provider, talking to a real chat-completions server on 127.0.0.1."""
    from fake_openai_server import ChatServer, Received, Reply, completion

    def answer(request: Received) -> Reply:
        prompt = request.body["messages"][-1]["content"]
        found = sections(prompt)
        if "result to review" in found:
            return completion(json.dumps({"accepted": True, "reasons": "looks right"}))
        if "tools" in found:
            call = {"tool": "write_file", "arguments": {"path": "out.txt", "content": "hi"}}
            return completion(json.dumps({"reasoning": "write it", "actions": [call]}))
        return completion(json.dumps(ONE_STEP))

    server = ChatServer(answer)
    try:
        settings = ProviderSettings(base_url=server.base_url, timeout=5, max_retries=0)
        models = {r: "openai:served-model" for r in ("coordinator", "execution", "review")}
        status, events, workspace = run_with(models=models, openai=settings)
    finally:
        server.stop()
    assert status is RunStatus.COMPLETED
    assert (workspace / "out.txt").read_text() == "hi"
    responded = _of(events, "model.responded")
    assert len(responded) == 3 == len(server.chat_requests)
    assert {
        (e.payload.model, e.payload.input_tokens, e.payload.output_tokens) for e in responded
    } == {("served-model-0001", 11, 7)}
    # Structured output: each request carried the decision's JSON Schema.
    for request in server.chat_requests:
        assert request.body["response_format"]["type"] in ("json_schema", "json_object")


def test_prompts_can_be_recorded_by_hash_only(run_with: Any) -> None:
    brain = Brain(act=_act({"tool": "write_file", "arguments": {"path": "a.txt", "content": "x"}}))
    status, events, _ = run_with(brain, record_prompts="hash")
    assert status is RunStatus.COMPLETED
    requested = _of(events, "model.requested")
    assert requested and all(e.payload.prompt is None for e in requested)
    assert all(len(e.payload.prompt_hash) == 64 for e in requested)
    assert any(e.payload.context_event_ids for e in requested)  # what the context came from


def test_diff_finds_where_two_runs_decided_differently(tmp_path: Path, run_with: Any) -> None:
    from typer.testing import CliRunner

    from agentledger.cli import app
    from agentledger.projections.diff import first_divergence

    write = {"tool": "write_file", "arguments": {"path": "a.txt", "content": "x"}}
    other = {"tool": "write_file", "arguments": {"path": "b.txt", "content": "x"}}
    _, first, _ = run_with(Brain(act=_act(write)))
    _, same, _ = run_with(Brain(act=_act(write)))
    _, changed, _ = run_with(Brain(act=_act(other)))
    assert first_divergence(first, same) is None  # ids, times and prompts differ; decisions not
    found = first_divergence(first, changed)
    assert found is not None and found.left is not None and found.right is not None
    assert found.left.type == found.right.type == "model.responded"
    assert found.left.actor.startswith("agent:execution/")
    assert "a.txt" in found.left.payload.content and "b.txt" in found.right.payload.content

    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    runner = CliRunner()
    result = runner.invoke(app, ["diff", first[0].stream, same[0].stream, "--store", url])
    assert result.exit_code == 0 and "same" in result.output
    result = runner.invoke(
        app, ["diff", first[0].stream, changed[0].stream, "--store", url], env={"COLUMNS": "200"}
    )
    assert result.exit_code == 1 and f"position {found.left.position}" in result.output
    result = runner.invoke(app, ["diff", first[0].stream, "run-nope", "--store", url])
    assert result.exit_code == 1 and "no run 'run-nope'" in result.output


# ---------------------------------------------------------------- what a worker decodes

_NOTE_PLAN = {"reasoning": "one", "steps": [{"task_id": "t1", "goal": "note", "role": "research"}]}


def _note_it(request: Any) -> str:
    if request.purpose == "plan":
        return json.dumps(_NOTE_PLAN)
    if request.purpose == "research":
        return json.dumps({"reasoning": "r", "answer": "noted", "sources": ["here"]})
    return json.dumps({"accepted": True, "reasons": "ok"})


def _follow(worker: AgentWorker, until: int) -> None:
    stop = threading.Event()
    thread = threading.Thread(target=worker.run, args=(stop, 0.05), daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while worker.position < until and time.monotonic() < deadline:
        time.sleep(0.02)
    stop.set()
    thread.join(timeout=10)
    assert worker.position == until


def test_a_worker_decodes_only_what_it_may_act_on(
    run_with: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    status, events, _ = run_with(_note_it)
    assert status is RunStatus.COMPLETED
    run = events[0].stream
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    notes = [
        ScratchpadUpdated(actor="human:ada", payload={"key": f"k{i}", "value": "v"})
        for i in range(50)
    ]
    with EventStore.open(url) as store:
        store.append("notes-1", notes)  # not a run: nobody's business
        head = store.head_position()
        log = list(store.read_all())

    decoded: list[int] = []
    decode_row = EventStore.decode_row

    def counting(self: EventStore, position: int | None, *row: Any) -> Any:
        decoded.append(position or 0)
        return decode_row(self, position, *row)

    monkeypatch.setattr(EventStore, "decode_row", counting)
    config = RuntimeConfig(store_url=url, workspace_root=str(tmp_path / "ws"))
    providers = {"scripted": ScriptedProvider(_note_it)}

    # The execution agent has no part in the run: of it, only the events of the types it
    # handles are decoded (to see whom a task is for); nothing of the stream that is no run's.
    execution = AgentWorker(agent_for(Role.EXECUTION, "2", config, providers), EventStore.open(url))
    _follow(execution, head)
    handled = execution.agent.handled_types()
    assert decoded == [e.position for e in log if e.type in handled]
    assert execution.handled == 0 and execution.status()["runs_cached"] == 0
    assert 0 < len(decoded) < len(log) - len(notes)

    # A reviewer has a part in it: once it first acts there, it reads the run whole (its view
    # is built from the log) and follows every event of it from there, and it reacts to
    # nothing twice (the first reviewer did).
    decoded.clear()
    review = AgentWorker(agent_for(Role.REVIEW, "2", config, providers), EventStore.open(url))
    _follow(review, head)
    assert review.handled == 0
    first_handled = next(e.position for e in log if e.type in review.agent.handled_types())
    seen = set(decoded)
    assert all(e.position in seen for e in log if e.stream == run and e.position >= first_handled)
    assert not seen & {e.position for e in log if e.stream == "notes-1"}


def test_a_worker_lets_go_of_a_run_once_it_ended_though_others_keep_the_log_busy(
    tmp_path: Path,
) -> None:
    from agentledger.events import RunCancelled, RunStarted, TaskAssigned, TaskPlanned

    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    config = RuntimeConfig(store_url=url, workspace_root=str(tmp_path / "ws"))
    providers = {"scripted": ScriptedProvider(_note_it)}
    worker = AgentWorker(agent_for(Role.RESEARCH, "1", config, providers), EventStore.open(url))
    stop = threading.Event()
    following = threading.Thread(target=worker.run, args=(stop, 0.5), daemon=True)
    with EventStore.open(url) as store:
        following.start()

        def busy() -> None:  # another run, none of this worker's business, never quiet
            while not stop.is_set():
                note = ScratchpadUpdated(actor="human:bob", payload={"key": "k", "value": "v"})
                store.append("run-busy", [note])
                time.sleep(0.05)

        store.append("run-busy", [RunStarted(actor="human:bob", payload={"goal": "other"})])
        other = threading.Thread(target=busy, daemon=True)
        other.start()
        try:
            store.append("run-a", [RunStarted(actor="human:ada", payload={"goal": "g"})])
            coordinator = "agent:coordinator/1"
            task = {"task_id": "t1", "role": "research"}
            store.append(
                "run-a",
                [
                    TaskPlanned(actor=coordinator, payload={**task, "goal": "look it up"}),
                    TaskAssigned(actor=coordinator, payload=task),
                ],
            )
            deadline = time.monotonic() + 20
            while worker.handled < 1 and time.monotonic() < deadline:
                time.sleep(0.05)
            assert worker.handled == 1 and worker.status()["runs_cached"] == 1
            store.append("run-a", [RunCancelled(actor="human:ada", payload={"reason": "enough"})])
            deadline = time.monotonic() + 10
            while worker.status()["runs_cached"] and time.monotonic() < deadline:
                time.sleep(0.05)
            assert worker.status()["runs_cached"] == 0  # its view went, as the run ended
        finally:
            stop.set()
            other.join(timeout=5)
            following.join(timeout=10)
            worker.store.close()


def test_a_worker_takes_its_own_events_back_from_the_log_without_decoding_them(
    run_with: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The subscription delivers an agent's own reaction after its append; the agent already
    # holds those events (the store parses what it returns from the stored bytes), so it
    # uses them instead of decoding the rows again. What it delivers must be what the log says.
    delivered: list[Event] = []
    reused: list[Event] = []
    deliver, appended = AgentWorker.deliver, AgentWorker._appended

    def recording(self: AgentWorker, event: Event) -> None:
        delivered.append(event)
        deliver(self, event)

    def counting(self: AgentWorker, row: Any) -> Event | None:
        event = appended(self, row)
        if event is not None:
            reused.append(event)
        return event

    monkeypatch.setattr(AgentWorker, "deliver", recording)
    monkeypatch.setattr(AgentWorker, "_appended", counting)
    status, events, _ = run_with(_note_it)
    assert status is RunStatus.COMPLETED
    by_position = {e.position: e for e in events}
    ours = [e for e in delivered if e.stream == events[0].stream]
    assert ours and all(e == by_position[e.position] for e in ours)
    assert reused and {e.position for e in reused} <= {e.position for e in ours}
    assert all(e.actor.startswith("agent:") for e in reused)


def test_context_shows_the_prompt_an_agent_sent_as_recorded_or_rebuilt(
    run_with: Any, tmp_path: Path
) -> None:
    from typer.testing import CliRunner

    from agentledger.cli import app

    brain = Brain(act=_act({"tool": "write_file", "arguments": {"path": "a.txt", "content": "x"}}))
    status, events, _ = run_with(brain)
    assert status is RunStatus.COMPLETED
    url, run = f"sqlite:///{tmp_path / 'ledger.db'}", events[0].stream
    [asked] = [e for e in _of(events, "model.requested") if e.actor.startswith("agent:execution/")]

    def context(*args: str) -> str:
        result = CliRunner().invoke(
            app,
            ["context", run, "--agent", "execution", "--store", url, *args],
            env={"COLUMNS": "400"},
        )
        assert result.exit_code == 0, result.output
        return " ".join(result.output.split())

    # The request's prompt, exactly as recorded and checked against its hash, also at a later
    # position (the agent's last request at or before it); before it, none.
    shown = context("--at", str(asked.position))
    assert "recorded prompt" in shown and "SHA-256 matches" in shown
    assert f"at position {asked.position}" in shown and asked.payload.request_id in shown
    lines = [line for line in asked.payload.prompt.splitlines() if line.strip()]
    assert all(" ".join(line.split()) in shown for line in lines[:12])
    assert context() == shown
    assert "asked no model" in context("--at", str((asked.position or 0) - 1))

    # Recorded by hash only: the context is assembled again, as of the request.
    status, events, _ = run_with(brain, record_prompts="hash")
    run = events[-1].stream
    rebuilt = context()
    assert "recorded by its hash only" in rebuilt and "context of execution" in rebuilt


def test_a_task_that_writes_then_deletes_a_file_passes_review_once_approved(
    tmp_path: Path, threaded_agents: Any
) -> None:
    # The offline model makes one execution task of "write … then delete …"; the reviewer
    # used to fail it because the file it wrote was gone, and every retry asked for the same
    # approval again (found by a walkthrough).
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    with threaded_agents(url, tmp_path), EventStore.open(url) as store:
        started = start_run(store, "Write hello to a.txt. Then delete a.txt")
        state = follow_run(store, started.stream, timeout=60)
        assert state.status is RunStatus.WAITING_FOR_APPROVAL, state.outcome
        (pending,) = state.pending_approvals.values()
        assert pending.tool == "delete_file"
        _grant(store, started.stream, pending)
        state = follow_run(store, started.stream, until=ENDED, timeout=60)
        events = store.read(started.stream)
    assert state.status is RunStatus.COMPLETED, state.outcome
    assert len(_of(events, "approval.requested")) == 1
    [review] = _of(events, "task.reviewed")
    assert review.payload.accepted
    assert any("deleted the file afterwards" in c for c in review.payload.checks)


def test_research_lists_the_runs_documents_before_earlier_runs_memories(
    tmp_path: Path, threaded_agents: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The person starting a run with --docs pointed at that folder: its passages come first,
    # what earlier runs left in long-term memory after them (found by a walkthrough, where the
    # offline model cited two earlier runs' summaries and one unrelated line).
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    docs, _ = prepare_demo(tmp_path)
    goal = "Find what the documents say about retention"
    with threaded_agents(url, tmp_path), EventStore.open(url) as store:
        first = start_run(store, goal, docs=docs).stream
        assert follow_run(store, first, until=ENDED, timeout=60).status is RunStatus.COMPLETED
        second = start_run(store, goal, docs=docs).stream
        assert follow_run(store, second, until=ENDED, timeout=60).status is RunStatus.COMPLETED
        events = store.read(second)
    [asked] = [e for e in _of(events, "model.requested") if e.actor.startswith("agent:research/")]
    sources = asked.payload.prompt.split("## sources\n", 1)[1].split("\n\n", 1)[0].splitlines()
    kinds = ["memory" if line.startswith("- memory ") else "document" for line in sources]
    assert "memory" in kinds and "document" in kinds, sources
    assert kinds == sorted(kinds), sources  # documents, then memories

    # A run recorded when memories came first (as before this order) still verifies.
    with monkeypatch.context() as patch:
        patch.setattr(Research, "memories_first", True)
        with threaded_agents(url, tmp_path), EventStore.open(url) as store:
            third = start_run(store, goal, docs=docs).stream
            assert follow_run(store, third, until=ENDED, timeout=60).status is RunStatus.COMPLETED
    with EventStore.open(url) as store:
        [asked] = [
            e
            for e in _of(store.read(third), "model.requested")
            if e.actor.startswith("agent:research/")
        ]
        assert asked.payload.prompt.split("## sources\n", 1)[1].startswith("- memory ")
        for run in (second, third):
            report = verify_run(store, run)
            assert report.ok, report.divergence


def test_a_replan_of_three_steps_or_fewer_hands_on_what_the_planner_proposes(
    tmp_path: Path, run_with: Any, threaded_agents: Any
) -> None:
    # Three steps or fewer go to one worker as one task. For a replan that task must be what
    # the planner now proposes: it was the goal that had just failed, so no replan of a small
    # task could change anything.
    replan = {
        "reasoning": "keep the file; write a note instead",
        "steps": [{"task_id": "t1", "goal": "write a note to note.md", "role": "execution"}],
    }

    def act(request: ModelRequest) -> str:
        if "note.md" in sections(request.prompt)[SUB_GOAL]:
            return _act({"tool": "write_file", "arguments": {"path": "note.md", "content": "n"}})
        return _act({"tool": "delete_file", "arguments": {"path": "a.txt"}})

    brain = Brain(plan=[json.dumps(ONE_STEP), json.dumps(replan)], act=act)
    status, events, workspace = run_with(brain, until=frozenset({RunStatus.WAITING_FOR_APPROVAL}))
    assert status is RunStatus.WAITING_FOR_APPROVAL
    [pending] = _of(events, "approval.requested")
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    from agentledger.control import Human, decide

    providers = {"scripted": ScriptedProvider(brain)}
    with threaded_agents(url, tmp_path, providers), EventStore.open(url) as store:
        run = events[0].stream
        ada = Human("ada", ("approver",))
        decide(store, run, pending.payload.action_id, ada, grant=False, note="keep a.txt")
        state = follow_run(store, run, until=ENDED, timeout=60)
        events = store.read(run)
    assert state.status is RunStatus.COMPLETED, state.outcome
    replanned = [e for e in _of(events, "task.planned") if e.payload.task_id != "t1"]
    assert [e.payload.goal for e in replanned] == ["write a note to note.md"]
    assert (workspace / "note.md").exists()
