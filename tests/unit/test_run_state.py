"""The run state machine: every legal transition applies, every illegal one is an Anomaly.

Each test appends real events to an in-memory store (so events carry log positions) and folds
the run's stream with ``RunStateProjection``.
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from agentledger.events import (
    EVENT_TYPES,
    ActionProposed,
    ApprovalDenied,
    ApprovalExpired,
    ApprovalGranted,
    ApprovalRequested,
    Envelope,
    Event,
    EventStore,
    ModelRequested,
    RunCancelled,
    RunCompleted,
    RunFailed,
    RunForked,
    RunPaused,
    RunResumed,
    RunStarted,
    ScratchpadUpdated,
    TaskAssigned,
    TaskPlanned,
)
from agentledger.projections import (
    TRANSITIONS,
    ActionStatus,
    RunState,
    RunStateProjection,
    RunStatus,
)

HASH = "ab" * 32
COORD = "agent:coordinator/c1"
EXEC = "agent:execution/e1"
HUMAN = "human:alice"


def make(event_type: str, action_id: str = "a1", task_id: str = "t1") -> Envelope:
    """A valid event of ``event_type`` (approvals about ``action_id``, tasks about ``task_id``)."""
    approval = {"action_id": action_id, "action_hash": HASH}
    factories: dict[str, Any] = {
        "run.started": lambda: RunStarted(actor=HUMAN, payload={"goal": "tidy the data"}),
        "run.forked": lambda: RunForked(
            actor=HUMAN, payload={"parent_run": "run-parent", "parent_position": 7}
        ),
        "run.paused": lambda: RunPaused(actor=HUMAN),
        "run.resumed": lambda: RunResumed(actor=HUMAN),
        "run.completed": lambda: RunCompleted(actor=COORD, payload={"summary": "done"}),
        "run.failed": lambda: RunFailed(actor=COORD, payload={"reason": "broke"}),
        "run.cancelled": lambda: RunCancelled(actor=HUMAN, payload={"reason": "stop"}),
        "task.planned": lambda: TaskPlanned(
            actor=COORD, payload={"task_id": task_id, "goal": "count rows", "role": "execution"}
        ),
        "task.assigned": lambda: TaskAssigned(
            actor=COORD, payload={"task_id": task_id, "role": "execution"}
        ),
        "action.proposed": lambda: ActionProposed(
            actor=EXEC,
            payload={
                "action_id": action_id,
                "tool": "sql.execute",
                "arguments": {"sql": "DELETE"},
                "reasoning": "stale rows",
                "idempotency_key": f"k-{action_id}",
            },
        ),
        "approval.requested": lambda: ApprovalRequested(
            actor=EXEC,
            payload={**approval, "tool": "sql.execute", "risk": "high", "preview": "DELETE"},
        ),
        "approval.granted": lambda: ApprovalGranted(actor=HUMAN, payload={**approval}),
        "approval.denied": lambda: ApprovalDenied(
            actor=HUMAN, payload={**approval, "reason": "too risky"}
        ),
        "approval.expired": lambda: ApprovalExpired(actor="system", payload={**approval}),
        "model.requested": lambda: ModelRequested(
            actor=EXEC,
            payload={"request_id": "m1", "provider": "p", "model": "m", "prompt_hash": HASH},
        ),
        "scratchpad.updated": lambda: ScratchpadUpdated(
            actor=EXEC, payload={"key": "k", "value": "v"}
        ),
    }
    return factories[event_type]()  # type: ignore[no-any-return]


# Prefixes that bring a run to each status. The paused run has a pending approval for a1 (so
# approval decisions are legal while paused) and was waiting for it before the pause.
PREFIXES: dict[RunStatus, list[str]] = {
    RunStatus.NOT_STARTED: [],
    RunStatus.PLANNING: ["run.started", "task.planned"],
    RunStatus.RUNNING: ["run.started", "task.planned", "task.assigned"],
    RunStatus.WAITING_FOR_APPROVAL: [
        "run.started",
        "task.planned",
        "task.assigned",
        "action.proposed",
        "approval.requested",
    ],
    RunStatus.PAUSED: [
        "run.started",
        "task.planned",
        "task.assigned",
        "action.proposed",
        "approval.requested",
        "run.paused",
    ],
    RunStatus.COMPLETED: ["run.started", "task.planned", "task.assigned", "run.completed"],
    RunStatus.FAILED: ["run.started", "run.failed"],
    RunStatus.CANCELLED: ["run.started", "task.planned", "run.cancelled"],
}


class Run:
    """A fresh run stream in a store, folded after every append."""

    def __init__(self, store: EventStore) -> None:
        self.store = store
        self.stream = f"run-{uuid.uuid4()}"
        self.projection = RunStateProjection()

    def append(self, *events: Envelope) -> list[Event]:
        return self.store.append(self.stream, list(events))

    def add(self, *types: str, action_id: str = "a1") -> list[Event]:
        return self.append(*(make(t, action_id) for t in types))

    def state(self) -> RunState:
        return self.projection.fold(self.store.read(self.stream))


def run_at(store: EventStore, status: RunStatus) -> tuple[Run, RunState]:
    run = Run(store)
    if PREFIXES[status]:
        run.add(*PREFIXES[status])
    state = run.state()
    assert state.status is status and state.anomalies == [], state.anomalies
    return run, state


def expected_target(status: RunStatus, event_type: str) -> RunStatus:
    target = TRANSITIONS[(status, event_type)]
    if target is not None:
        return target
    if event_type == "run.resumed":
        return RunStatus.WAITING_FOR_APPROVAL  # the paused prefix was waiting before the pause
    # An approval decision: the only pending request (a1) is decided.
    return RunStatus.PAUSED if status is RunStatus.PAUSED else RunStatus.RUNNING


@pytest.mark.parametrize(
    ("status", "event_type"),
    sorted(TRANSITIONS, key=lambda k: (k[0].value, k[1])),
    ids=lambda v: v.value if isinstance(v, RunStatus) else v,
)
def test_every_legal_transition_is_applied(
    memory_store: EventStore, status: RunStatus, event_type: str
) -> None:
    run, before = run_at(memory_store, status)
    [event] = run.add(event_type)
    after = run.state()
    assert after.anomalies == []
    assert after.status is expected_target(status, event_type)
    assert after.events == before.events + 1
    assert after.last_position == event.position


ILLEGAL = [
    (RunStatus.RUNNING, "run.resumed", "not allowed when the run is running"),
    (RunStatus.PLANNING, "run.resumed", "not allowed when the run is planning"),
    (
        RunStatus.WAITING_FOR_APPROVAL,
        "run.completed",
        "not allowed when the run is waiting_for_approval",
    ),
    (RunStatus.PAUSED, "run.completed", "not allowed when the run is paused"),
    (RunStatus.PAUSED, "run.paused", "not allowed when the run is paused"),
    (RunStatus.PAUSED, "task.assigned", "not allowed when the run is paused"),
    (RunStatus.NOT_STARTED, "task.planned", "not allowed when the run is not_started"),
    (RunStatus.NOT_STARTED, "model.requested", "before the run started"),
    (RunStatus.PLANNING, "run.started", "not allowed when the run is planning"),
    (RunStatus.RUNNING, "approval.granted", "not allowed when the run is running"),
    (RunStatus.WAITING_FOR_APPROVAL, "run.resumed", "not allowed when the run is waiting"),
    (RunStatus.PLANNING, "run.forked", "not allowed when the run is planning"),
]


@pytest.mark.parametrize(("status", "event_type", "message"), ILLEGAL)
def test_illegal_transitions_are_anomalies_with_their_position(
    memory_store: EventStore, status: RunStatus, event_type: str, message: str
) -> None:
    run, before = run_at(memory_store, status)
    [event] = run.add(event_type)
    after = run.state()
    [anomaly] = after.anomalies
    assert anomaly.position == event.position is not None
    assert anomaly.stream == run.stream and anomaly.event_type == event_type
    assert message in anomaly.message
    # Not applied: nothing but the anomaly list changed.
    assert after.status is status
    assert after.events == before.events and after.last_position == before.last_position
    unchanged = {"anomalies", "run"}  # a refused first event still names the run
    assert after.model_dump(exclude=unchanged) == before.model_dump(exclude=unchanged)


TERMINAL_TYPES = sorted(
    {"run.started", "run.paused", "run.resumed", "run.completed", "run.failed"}
    | {"run.cancelled", "task.planned", "task.assigned", "approval.granted"}
    | {"model.requested", "scratchpad.updated", "action.proposed"}
)


@pytest.mark.parametrize("status", [RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.CANCELLED])
def test_nothing_is_applied_after_the_run_ended(
    memory_store: EventStore, status: RunStatus
) -> None:
    run, before = run_at(memory_store, status)
    recorded = run.add(*TERMINAL_TYPES)
    after = run.state()
    assert after.status is status
    assert after.events == before.events and after.ended_at == before.ended_at
    assert [a.position for a in after.anomalies] == [e.position for e in recorded]
    assert [a.event_type for a in after.anomalies] == TERMINAL_TYPES
    activity = [a for a in after.anomalies if not a.event_type.startswith(("run.", "approval."))]
    assert activity and all(
        "after the run ended" in a.message or status.value in a.message for a in activity
    )
    assert after.actions == before.actions and after.tasks == before.tasks


_MAKEABLE = {
    "run.started",
    "run.forked",
    "run.paused",
    "run.resumed",
    "run.completed",
    "run.failed",
    "run.cancelled",
    "task.planned",
    "task.assigned",
    "action.proposed",
    "approval.requested",
    "approval.granted",
    "approval.denied",
    "approval.expired",
    "model.requested",
    "scratchpad.updated",
}


def test_only_run_started_or_forked_begin_a_run(memory_store: EventStore) -> None:
    allowed = {"run.started", "run.forked"}
    for event_type in sorted(set(EVENT_TYPES) & _MAKEABLE - allowed):
        run = Run(memory_store)
        [event] = run.add(event_type)
        state = run.state()
        assert state.status is RunStatus.NOT_STARTED, event_type
        assert [(a.position, a.event_type) for a in state.anomalies] == [
            (event.position, event_type)
        ]


def test_activity_is_legal_while_active_or_paused(memory_store: EventStore) -> None:
    for status in (
        RunStatus.PLANNING,
        RunStatus.RUNNING,
        RunStatus.WAITING_FOR_APPROVAL,
        RunStatus.PAUSED,
    ):
        run, before = run_at(memory_store, status)
        run.add("model.requested", "scratchpad.updated")
        after = run.state()
        assert after.anomalies == [] and after.status is status
        assert after.events == before.events + 2


def test_a_refused_event_does_not_poison_what_follows(memory_store: EventStore) -> None:
    run, _ = run_at(memory_store, RunStatus.RUNNING)
    [bad] = run.add("run.resumed")
    [good] = run.add("run.completed")
    state = run.state()
    assert [a.position for a in state.anomalies] == [bad.position]
    assert state.status is RunStatus.COMPLETED and state.last_position == good.position
    assert state.outcome == "done" and state.ended_at == good.at


def test_approval_for_an_unknown_action_is_an_anomaly(memory_store: EventStore) -> None:
    run, _ = run_at(memory_store, RunStatus.WAITING_FOR_APPROVAL)
    [granted] = run.add("approval.granted", action_id="a9")
    state = run.state()
    [anomaly] = state.anomalies
    assert anomaly.position == granted.position and "'a9'" in anomaly.message
    assert state.status is RunStatus.WAITING_FOR_APPROVAL
    assert list(state.pending_approvals) == ["a1"]
    assert state.actions["a1"].status is ActionStatus.WAITING_FOR_APPROVAL

    # Deciding the same action twice: the second decision has nothing pending.
    run.add("approval.granted")
    [again] = run.add("approval.denied")
    state = run.state()
    assert state.status is RunStatus.RUNNING
    assert state.actions["a1"].status is ActionStatus.APPROVED
    assert [a.position for a in state.anomalies] == [granted.position, again.position]


@pytest.mark.parametrize(
    "prior",
    [RunStatus.PLANNING, RunStatus.RUNNING, RunStatus.WAITING_FOR_APPROVAL],
)
def test_pause_then_resume_returns_to_the_prior_status(
    memory_store: EventStore, prior: RunStatus
) -> None:
    run = Run(memory_store)
    run.add(*PREFIXES[prior])
    run.add("run.paused")
    paused = run.state()
    assert paused.status is RunStatus.PAUSED and paused.resume_to is prior
    run.add("run.resumed")
    resumed = run.state()
    assert resumed.status is prior and resumed.resume_to is None
    assert resumed.anomalies == []


def test_several_pending_approvals_wait_until_the_last_is_decided(
    memory_store: EventStore,
) -> None:
    run, _ = run_at(memory_store, RunStatus.RUNNING)
    for action in ("a1", "a2", "a3"):
        run.add("action.proposed", "approval.requested", action_id=action)
    state = run.state()
    assert state.status is RunStatus.WAITING_FOR_APPROVAL
    assert list(state.pending_approvals) == ["a1", "a2", "a3"]

    run.add("approval.granted", action_id="a2")
    state = run.state()
    assert state.status is RunStatus.WAITING_FOR_APPROVAL
    assert list(state.pending_approvals) == ["a1", "a3"]
    assert state.actions["a2"].status is ActionStatus.APPROVED
    assert state.actions["a2"].decided_by == HUMAN

    run.add("approval.denied", action_id="a1")
    state = run.state()
    assert state.status is RunStatus.WAITING_FOR_APPROVAL
    assert state.actions["a1"].status is ActionStatus.DENIED
    assert state.actions["a1"].decision_note == "too risky"

    run.add("approval.expired", action_id="a3")
    state = run.state()
    assert state.status is RunStatus.RUNNING and state.pending_approvals == {}
    assert state.actions["a3"].status is ActionStatus.EXPIRED
    assert state.anomalies == []


@pytest.mark.parametrize("end", ["run.cancelled", "run.failed"])
@pytest.mark.parametrize("paused", [False, True])
def test_an_ended_run_has_no_approvals_waiting(
    memory_store: EventStore, end: str, paused: bool
) -> None:
    run, _ = run_at(memory_store, RunStatus.WAITING_FOR_APPROVAL)
    if paused:
        run.add("run.paused")
    assert run.state().pending_approvals  # the inbox shows it while it can be decided
    run.add(end)
    state = run.state()
    assert state.status in (RunStatus.CANCELLED, RunStatus.FAILED)
    assert state.pending_approvals == {} and state.anomalies == []
    assert state.actions["a1"].status is ActionStatus.WAITING_FOR_APPROVAL  # never decided


def test_decisions_while_paused_stay_paused(memory_store: EventStore) -> None:
    run, _ = run_at(memory_store, RunStatus.RUNNING)
    run.add("action.proposed", "approval.requested", action_id="a1")
    run.add("action.proposed", "approval.requested", action_id="a2")
    run.add("run.paused", "approval.granted")
    state = run.state()
    assert state.status is RunStatus.PAUSED and list(state.pending_approvals) == ["a2"]
    run.add("run.resumed")
    state = run.state()
    assert state.status is RunStatus.WAITING_FOR_APPROVAL and state.anomalies == []


def test_resume_after_the_last_approval_was_decided_while_paused(
    memory_store: EventStore,
) -> None:
    run, _ = run_at(memory_store, RunStatus.WAITING_FOR_APPROVAL)
    run.add("run.paused", "approval.granted", "run.resumed")
    state = run.state()
    assert state.pending_approvals == {}
    assert state.status is RunStatus.RUNNING
    run.add("run.completed")
    assert run.state().status is RunStatus.COMPLETED


def test_fold_records_what_the_run_did(memory_store: EventStore) -> None:
    run = Run(memory_store)
    [forked] = run.add("run.forked")
    [started, *_] = run.add("run.started", "task.planned", "task.assigned")
    run.add("action.proposed", "approval.requested")
    [requested] = memory_store.read(run.stream)[-1:]
    state = run.state()
    assert state.run == run.stream
    assert (state.parent_run, state.parent_position) == ("run-parent", 7)
    assert state.goal == "tidy the data" and state.started_at == started.at
    assert state.forked_at == forked.at  # when the fork was made, beside its inherited start
    assert state.tasks["t1"].status.value == "assigned"
    pending = state.pending_approvals["a1"]
    assert pending.position == requested.position and pending.requested_by == EXEC
    assert state.events == 6 and forked.position is not None
