"""The run state machine: where a run is (planning, running, waiting, paused, ended) and why.

The legal transitions are written down once, in ``TRANSITIONS``. An event that would make an
illegal transition is *not* applied: it is recorded as an ``Anomaly`` with its position, so a
damaged or hand-edited log is reported, never silently "fixed".
"""

from __future__ import annotations

from collections.abc import Collection
from datetime import datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, Field, JsonValue

from agentledger.events import (
    ActionExecuted,
    ActionFailed,
    ActionOutcomeUnknown,
    ActionProposed,
    ActionRiskAssessed,
    AgentLedgerError,
    ApprovalDenied,
    ApprovalExpired,
    ApprovalGranted,
    ApprovalRequested,
    Envelope,
    Event,
    RiskLevel,
    Role,
    RunCancelled,
    RunCompleted,
    RunFailed,
    RunForked,
    RunPaused,
    RunResumed,
    RunStarted,
    TaskAssigned,
    TaskCompleted,
    TaskFailed,
    TaskPlanned,
    TaskReviewed,
)
from agentledger.events.handlers import on

from .base import Anomaly, Projection


class RunStatus(StrEnum):
    """Where a run is."""

    NOT_STARTED = "not_started"
    PLANNING = "planning"
    RUNNING = "running"
    WAITING_FOR_APPROVAL = "waiting_for_approval"
    PAUSED = "paused"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


TERMINAL = frozenset({RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.CANCELLED})
ACTIVE = (RunStatus.PLANNING, RunStatus.RUNNING, RunStatus.WAITING_FOR_APPROVAL)
"""Statuses in which agents work on a run (started, not paused, not ended)."""

# (status, event type) -> status after it. Anything missing here is illegal. "approval.*"
# decisions and "run.resumed" resolve to a computed status (see _resolve); they are marked None.
TRANSITIONS: dict[tuple[RunStatus, str], RunStatus | None] = {
    (RunStatus.NOT_STARTED, "run.forked"): RunStatus.NOT_STARTED,
    (RunStatus.NOT_STARTED, "run.started"): RunStatus.PLANNING,
    (RunStatus.PLANNING, "task.planned"): RunStatus.PLANNING,
    (RunStatus.PLANNING, "task.assigned"): RunStatus.RUNNING,
    (RunStatus.PAUSED, "run.resumed"): None,
    **{(s, "task.planned"): s for s in (RunStatus.RUNNING, RunStatus.WAITING_FOR_APPROVAL)},
    **{(s, "task.assigned"): s for s in (RunStatus.RUNNING, RunStatus.WAITING_FOR_APPROVAL)},
    **{(s, "approval.requested"): RunStatus.WAITING_FOR_APPROVAL for s in ACTIVE},
    # An agent mid-step when the run was paused may still ask; the run stays paused.
    (RunStatus.PAUSED, "approval.requested"): RunStatus.PAUSED,
    **{
        (s, t): None
        for s in (RunStatus.WAITING_FOR_APPROVAL, RunStatus.PAUSED)
        for t in ("approval.granted", "approval.denied", "approval.expired")
    },
    **{(s, "run.paused"): RunStatus.PAUSED for s in ACTIVE},
    **{(s, "run.completed"): RunStatus.COMPLETED for s in (RunStatus.PLANNING, RunStatus.RUNNING)},
    **{(s, "run.failed"): RunStatus.FAILED for s in (*ACTIVE, RunStatus.PAUSED)},
    **{(s, "run.cancelled"): RunStatus.CANCELLED for s in (*ACTIVE, RunStatus.PAUSED)},
}
# Events that change no status: legal while the run is started and not ended.
_ACTIVITY_ALLOWED = frozenset({*ACTIVE, RunStatus.PAUSED})
_STEERING = frozenset({"task.planned", "task.assigned"})


class IllegalTransition(AgentLedgerError):
    """An event the run state machine does not allow where it stands."""


def advance(
    status: RunStatus, resume_to: RunStatus | None, pending: Collection[str], event: Envelope
) -> RunStatus:
    """The status after ``event``, or ``IllegalTransition`` saying why the event is not allowed.

    ``pending`` holds the action ids with an undecided approval request.
    """
    key = (status, event.type)
    if key in TRANSITIONS:
        target = TRANSITIONS[key]
        if target is not None:
            return target
        if event.type == "run.resumed":
            # Back to where the run was, unless approvals were decided (or requested) while
            # it was paused: then what is pending now decides.
            if pending:
                return RunStatus.WAITING_FOR_APPROVAL
            if resume_to in (RunStatus.PLANNING, RunStatus.RUNNING):
                return resume_to
            return RunStatus.RUNNING
        action_id = getattr(event.payload, "action_id", None)
        if action_id not in pending:
            raise IllegalTransition(
                f"{event.type} for action {action_id!r}, which has no pending approval request"
            )
        if status is RunStatus.PAUSED:
            return RunStatus.PAUSED
        return RunStatus.WAITING_FOR_APPROVAL if len(pending) > 1 else RunStatus.RUNNING
    if event.type.startswith(("run.", "approval.")) or event.type in _STEERING:
        raise IllegalTransition(f"{event.type} is not allowed when the run is {status.value}")
    if status in _ACTIVITY_ALLOWED:
        return status
    when = "after the run ended" if status in TERMINAL else "before the run started"
    raise IllegalTransition(f"{event.type} {when}")


class TaskStatus(StrEnum):
    """Where a sub-task is."""

    PLANNED = "planned"
    ASSIGNED = "assigned"
    COMPLETED = "completed"
    ACCEPTED = "accepted"
    REJECTED = "rejected"
    FAILED = "failed"


class TaskInfo(BaseModel):
    """A sub-task of the run."""

    task_id: str
    goal: str
    role: Role
    depends_on: list[str] = Field(default_factory=list)
    status: TaskStatus = TaskStatus.PLANNED
    result: str | None = None
    reasoning: str = ""
    attempts: int = 0
    completed_by: str | None = None
    review: str | None = None


class ActionStatus(StrEnum):
    """Where a proposed action is."""

    PROPOSED = "proposed"
    ASSESSED = "assessed"
    WAITING_FOR_APPROVAL = "waiting_for_approval"
    APPROVED = "approved"
    DENIED = "denied"
    EXPIRED = "expired"
    EXECUTED = "executed"
    FAILED = "failed"
    OUTCOME_UNKNOWN = "outcome_unknown"


class ActionInfo(BaseModel):
    """A tool call proposed in the run, with the reasoning shown beside it."""

    action_id: str
    task_id: str | None = None
    tool: str
    arguments: dict[str, JsonValue] = Field(default_factory=dict)
    reasoning: str = ""
    proposed_by: str
    risk: RiskLevel | None = None
    action_hash: str | None = None
    status: ActionStatus = ActionStatus.PROPOSED
    decided_by: str | None = None
    decision_note: str = ""
    result: JsonValue = None


class PendingApproval(BaseModel):
    """An approval request no human has decided yet."""

    action_id: str
    action_hash: str
    tool: str
    risk: RiskLevel
    preview: str
    reasoning: str
    requested_by: str
    requested_at: datetime
    expires_at: datetime | None
    position: int | None


class RunState(BaseModel):
    """The state of one run as of some position of its log."""

    run: str = ""
    status: RunStatus = RunStatus.NOT_STARTED
    resume_to: RunStatus | None = None
    goal: str = ""
    user: str = ""
    started_at: datetime | None = None
    ended_at: datetime | None = None
    outcome: str = ""
    parent_run: str | None = None
    parent_position: int | None = None
    forked_at: datetime | None = None
    """When this run was forked (``started_at`` is its first run's start, inherited)."""
    tasks: dict[str, TaskInfo] = Field(default_factory=dict)
    actions: dict[str, ActionInfo] = Field(default_factory=dict)
    pending_approvals: dict[str, PendingApproval] = Field(default_factory=dict)
    events: int = 0
    last_position: int | None = None
    anomalies: list[Anomaly] = Field(default_factory=list)


def _set(model: BaseModel, **values: Any) -> None:
    """Assign fields of a fold state straight into the model: pydantic's ``__setattr__`` costs
    more than the rest of a fold step, and these models do not validate assignments anyway."""
    model.__dict__.update(values)


class RunStateProjection(Projection[RunState]):
    """Folds one run's events into its ``RunState`` (feed it the run's stream)."""

    name = "run_state"
    version = 5  # 4: an ended run has no pending approvals; 5: forked_at
    state_type = RunState
    reads_all_events = True  # every event counts, and activity after the end is an anomaly
    reads_headers = True  # ... by its type and place alone, for types without a handler

    def apply(self, state: RunState, event: Event) -> RunState:
        """Check the transition, then fold; an illegal event is recorded, not applied."""
        if not state.run:
            state.run = event.stream
        try:
            target = advance(state.status, state.resume_to, state.pending_approvals, event)
        except IllegalTransition as exc:
            state.anomalies.append(
                Anomaly(
                    position=event.position,
                    stream=event.stream,
                    event_type=event.type,
                    message=str(exc),
                )
            )
            return state
        # The rebuild's hot path: the three fields every event sets are written straight into
        # the model (pydantic's __setattr__ costs more than the rest of this fold; these
        # fields are not validated on assignment anyway).
        fields = state.__dict__
        fields["events"] += 1
        fields["last_position"] = event.position
        handler = self._bound.get(event.type)
        if handler is not None:
            handler(state, event)
        fields["status"] = target
        return state

    # ---------------------------------------------------------------- run

    @on(RunForked)
    def _forked(self, state: RunState, event: RunForked) -> None:
        if state.parent_run is None:  # a fork of a fork reads its parent's run.forked too
            state.parent_run = event.payload.parent_run
            state.parent_position = event.payload.parent_position
            state.forked_at = event.at

    @on(RunStarted)
    def _started(self, state: RunState, event: RunStarted) -> None:
        _set(state, goal=event.payload.goal, user=event.payload.user, started_at=event.at)

    @on(RunPaused)
    def _paused(self, state: RunState, event: RunPaused) -> None:
        _set(state, resume_to=state.status)

    @on(RunResumed)
    def _resumed(self, state: RunState, event: RunResumed) -> None:
        _set(state, resume_to=None)

    @on(RunCompleted)
    def _completed(self, state: RunState, event: RunCompleted) -> None:
        # As for a failed or cancelled run: nothing left open in it can be decided any more.
        _set(state, ended_at=event.at, outcome=event.payload.summary, pending_approvals={})

    @on(RunFailed, RunCancelled)
    def _ended(self, state: RunState, event: RunFailed | RunCancelled) -> None:
        # Requests left open can no longer be decided: they leave the approvals inbox.
        _set(state, ended_at=event.at, outcome=event.payload.reason, pending_approvals={})

    # ---------------------------------------------------------------- tasks

    @on(TaskPlanned)
    def _task_planned(self, state: RunState, event: TaskPlanned) -> None:
        p = event.payload
        state.tasks[p.task_id] = TaskInfo(
            task_id=p.task_id,
            goal=p.goal,
            role=p.role,
            depends_on=list(p.depends_on),
            reasoning=p.reasoning,
        )

    @on(TaskAssigned)
    def _task_assigned(self, state: RunState, event: TaskAssigned) -> None:
        task = state.tasks.get(event.payload.task_id)
        if task is not None:
            _set(task, status=TaskStatus.ASSIGNED, attempts=task.attempts + 1)

    @on(TaskCompleted)
    def _task_completed(self, state: RunState, event: TaskCompleted) -> None:
        task = state.tasks.get(event.payload.task_id)
        if task is not None:
            _set(
                task,
                status=TaskStatus.COMPLETED,
                result=event.payload.result,
                completed_by=event.actor,
            )

    @on(TaskReviewed)
    def _task_reviewed(self, state: RunState, event: TaskReviewed) -> None:
        task = state.tasks.get(event.payload.task_id)
        if task is not None:
            accepted = event.payload.accepted
            _set(
                task,
                status=TaskStatus.ACCEPTED if accepted else TaskStatus.REJECTED,
                review=event.payload.reasons,
            )

    @on(TaskFailed)
    def _task_failed(self, state: RunState, event: TaskFailed) -> None:
        task = state.tasks.get(event.payload.task_id)
        if task is not None:
            _set(task, status=TaskStatus.FAILED, result=event.payload.reason)

    # ---------------------------------------------------------------- actions and approvals

    @on(ActionProposed)
    def _action_proposed(self, state: RunState, event: ActionProposed) -> None:
        p = event.payload
        state.actions[p.action_id] = ActionInfo(
            action_id=p.action_id,
            task_id=p.task_id,
            tool=p.tool,
            arguments=dict(p.arguments),
            reasoning=p.reasoning,
            proposed_by=event.actor,
        )

    @on(ActionRiskAssessed)
    def _risk_assessed(self, state: RunState, event: ActionRiskAssessed) -> None:
        action = state.actions.get(event.payload.action_id)
        if action is not None:
            _set(
                action,
                risk=event.payload.risk,
                action_hash=event.payload.action_hash,
                status=ActionStatus.ASSESSED,
            )

    @on(ApprovalRequested)
    def _approval_requested(self, state: RunState, event: ApprovalRequested) -> None:
        p = event.payload
        state.pending_approvals[p.action_id] = PendingApproval(
            action_id=p.action_id,
            action_hash=p.action_hash,
            tool=p.tool,
            risk=p.risk,
            preview=p.preview,
            reasoning=p.reasoning,
            requested_by=event.actor,
            requested_at=event.at,
            expires_at=p.expires_at,
            position=event.position,
        )
        action = state.actions.get(p.action_id)
        if action is not None:
            _set(action, status=ActionStatus.WAITING_FOR_APPROVAL)

    @on(ApprovalGranted, ApprovalDenied, ApprovalExpired)
    def _approval_decided(
        self, state: RunState, event: ApprovalGranted | ApprovalDenied | ApprovalExpired
    ) -> None:
        state.pending_approvals.pop(event.payload.action_id, None)
        action = state.actions.get(event.payload.action_id)
        if action is None:
            return
        if isinstance(event, ApprovalGranted):
            status, note = ActionStatus.APPROVED, event.payload.comment
        elif isinstance(event, ApprovalDenied):
            status, note = ActionStatus.DENIED, event.payload.reason
        else:
            status, note = ActionStatus.EXPIRED, action.decision_note
        _set(action, decided_by=event.actor, status=status, decision_note=note)

    @on(ActionExecuted)
    def _action_executed(self, state: RunState, event: ActionExecuted) -> None:
        action = state.actions.get(event.payload.action_id)
        if action is not None:
            _set(action, status=ActionStatus.EXECUTED, result=event.payload.result)

    @on(ActionFailed)
    def _action_failed(self, state: RunState, event: ActionFailed) -> None:
        action = state.actions.get(event.payload.action_id)
        if action is not None:
            _set(action, status=ActionStatus.FAILED, result=event.payload.error)

    @on(ActionOutcomeUnknown)
    def _action_unknown(self, state: RunState, event: ActionOutcomeUnknown) -> None:
        action = state.actions.get(event.payload.action_id)
        if action is not None:
            _set(action, status=ActionStatus.OUTCOME_UNKNOWN)
