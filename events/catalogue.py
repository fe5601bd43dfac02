"""The event catalogue: one typed payload per event type, and the discriminated union of all.

Event types are dotted and past tense. Changing a payload's shape means a new
``schema_version`` on that event class and an upcaster in ``upcasting.py`` so older logs
stay readable; never edit a shape in place.
"""

from __future__ import annotations

import uuid
from enum import StrEnum
from typing import Annotated, ClassVar, Literal, Self

from pydantic import Field, JsonValue, TypeAdapter, model_validator

from .envelope import Envelope, Payload, PrincipalKind, UTCDateTime

MAX_TEXT = 100_000
"""The most characters a text field keeps (a prompt, an answer, a result, an error)."""
MAX_REASONING = 20_000
"""The most characters of a reasoning, and of a goal."""

Text = Annotated[str, Field(max_length=MAX_TEXT)]
Name = Annotated[str, Field(min_length=1, max_length=200)]
Reasoning = Annotated[
    str, Field(max_length=MAX_REASONING, description="why the agent decided this")
]
Hash = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]


class Role(StrEnum):
    """The four agent roles."""

    COORDINATOR = "coordinator"
    RESEARCH = "research"
    EXECUTION = "execution"
    REVIEW = "review"


class RiskLevel(StrEnum):
    """How much harm an action can do, and so which gate it passes."""

    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"


class EntryKind(StrEnum):
    """Kinds of blackboard entries."""

    FACT = "fact"
    HYPOTHESIS = "hypothesis"
    DECISION = "decision"
    ARTIFACT = "artifact"
    QUESTION = "question"


# ---------------------------------------------------------------- run lifecycle


class RunStartedPayload(Payload):
    goal: Annotated[str, Field(min_length=1, max_length=MAX_REASONING)]
    user: Name = "anonymous"
    models: dict[str, str] = Field(default_factory=dict, description="role -> provider:model")
    labels: dict[str, str] = Field(default_factory=dict)
    workspace: Annotated[str, Field(max_length=4_096)] | None = Field(
        default=None, description="directory the run's tools work in (default: one per run)"
    )
    docs: Annotated[str, Field(max_length=4_096)] | None = Field(
        default=None, description="local document folder the research agent searches"
    )


class RunStarted(Envelope):
    """A run began with a goal (schema 2 added ``user``, ``models`` and ``labels``; schema 3
    added ``workspace`` and ``docs``)."""

    event_type: ClassVar[str] = "run.started"
    current_schema_version: ClassVar[int] = 3
    type: Literal["run.started"] = "run.started"
    schema_version: Literal[3] = 3
    payload: RunStartedPayload


class ReasonPayload(Payload):
    reason: Text = ""


class RunPaused(Envelope):
    """A human or the system paused the run; agents stop at their next step."""

    event_type: ClassVar[str] = "run.paused"
    type: Literal["run.paused"] = "run.paused"
    schema_version: Literal[1] = 1
    payload: ReasonPayload = ReasonPayload()


class RunResumed(Envelope):
    """A paused run continues."""

    event_type: ClassVar[str] = "run.resumed"
    type: Literal["run.resumed"] = "run.resumed"
    schema_version: Literal[1] = 1
    payload: ReasonPayload = ReasonPayload()


class RunCancelled(Envelope):
    """The run was cancelled; nothing more happens in it."""

    event_type: ClassVar[str] = "run.cancelled"
    type: Literal["run.cancelled"] = "run.cancelled"
    schema_version: Literal[1] = 1
    payload: ReasonPayload = ReasonPayload()


class RunCompletedPayload(Payload):
    summary: Text
    artifacts: list[str] = Field(default_factory=list)


class RunCompleted(Envelope):
    """The run reached its goal."""

    event_type: ClassVar[str] = "run.completed"
    type: Literal["run.completed"] = "run.completed"
    schema_version: Literal[1] = 1
    payload: RunCompletedPayload


class RunFailedPayload(Payload):
    reason: Text
    error: Text | None = None


class RunFailed(Envelope):
    """The run gave up, with the reason."""

    event_type: ClassVar[str] = "run.failed"
    type: Literal["run.failed"] = "run.failed"
    schema_version: Literal[1] = 1
    payload: RunFailedPayload


class RunForkedPayload(Payload):
    parent_run: Name
    parent_position: Annotated[int, Field(ge=0)]
    note: Text = ""
    model_overrides: dict[str, str] = Field(default_factory=dict)
    # The fork inherits the parent's first ``prefix_version`` events by reference (0: they
    # were copied after this event, as forks made before schema version 2 did).
    prefix_version: Annotated[int, Field(ge=0)] = 0
    # The hash of the parent's event at ``prefix_version``: the fork's chain goes on from it.
    parent_hash: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")] | None = None

    @model_validator(mode="after")
    def _linked(self) -> Self:
        if (self.prefix_version > 0) != (self.parent_hash is not None):
            raise ValueError("prefix_version and parent_hash go together (a fork by reference)")
        return self


class RunForked(Envelope):
    """This run is a fork of another run, taken at a position of the parent's log.

    A fork by reference (``prefix_version`` > 0) is its stream's version 1; the parent's first
    ``prefix_version`` events are its versions 2.. ``prefix_version + 1`` (read through the
    parent, never copied) and its own events follow, their chain going on from ``parent_hash``.
    """

    event_type: ClassVar[str] = "run.forked"
    current_schema_version: ClassVar[int] = 2
    type: Literal["run.forked"] = "run.forked"
    schema_version: Literal[2] = 2
    payload: RunForkedPayload

    @property
    def inherits(self) -> int:
        """How many of the parent's events this fork inherits by reference (0: none)."""
        return self.payload.prefix_version

    @property
    def head_version(self) -> int:
        """The stream's version once this event is its newest: for a fork by reference, the
        last inherited one (its own events follow it), else this event's own."""
        return self.inherits + 1 if self.inherits else self.version


# ---------------------------------------------------------------- tasks


class TaskPlannedPayload(Payload):
    task_id: Name
    goal: Annotated[str, Field(min_length=1, max_length=MAX_REASONING)]
    role: Role
    depends_on: list[str] = Field(default_factory=list)
    reasoning: Reasoning = ""


class TaskPlanned(Envelope):
    """The coordinator planned a sub-task (with its dependencies)."""

    event_type: ClassVar[str] = "task.planned"
    type: Literal["task.planned"] = "task.planned"
    schema_version: Literal[1] = 1
    payload: TaskPlannedPayload


class TaskAssignedPayload(Payload):
    task_id: Name
    role: Role
    reasoning: Reasoning = ""


class TaskAssigned(Envelope):
    """A sub-task was handed to the worker role that has the capability."""

    event_type: ClassVar[str] = "task.assigned"
    type: Literal["task.assigned"] = "task.assigned"
    schema_version: Literal[1] = 1
    payload: TaskAssignedPayload


class TaskCompletedPayload(Payload):
    task_id: Name
    result: Text
    sources: list[str] = Field(default_factory=list)
    reasoning: Reasoning = ""


class TaskCompleted(Envelope):
    """A worker finished a sub-task, with its result and sources."""

    event_type: ClassVar[str] = "task.completed"
    type: Literal["task.completed"] = "task.completed"
    schema_version: Literal[1] = 1
    payload: TaskCompletedPayload


class TaskFailedPayload(Payload):
    task_id: Name
    reason: Text
    retryable: bool = False


class TaskFailed(Envelope):
    """A sub-task failed, with the reason."""

    event_type: ClassVar[str] = "task.failed"
    type: Literal["task.failed"] = "task.failed"
    schema_version: Literal[1] = 1
    payload: TaskFailedPayload


class TaskReviewedPayload(Payload):
    task_id: Name
    accepted: bool
    reasons: Annotated[str, Field(min_length=1, max_length=MAX_REASONING)]
    checks: list[Annotated[str, Field(max_length=2_000)]] = Field(
        default_factory=list, description="each check the reviewer ran, with PASS or FAIL"
    )


class TaskReviewed(Envelope):
    """The review agent accepted a sub-task's result or sent it back, with its reasons."""

    event_type: ClassVar[str] = "task.reviewed"
    type: Literal["task.reviewed"] = "task.reviewed"
    schema_version: Literal[1] = 1
    payload: TaskReviewedPayload


# ---------------------------------------------------------------- models


class ModelRequestedPayload(Payload):
    request_id: Name
    provider: Name
    model: Name
    prompt_hash: Hash
    prompt: Text | None = Field(default=None, description="omitted when only the hash is kept")
    context_event_ids: list[uuid.UUID] = Field(default_factory=list)


class ModelRequested(Envelope):
    """An agent asked a model; the prompt (or its hash) and its context are recorded."""

    event_type: ClassVar[str] = "model.requested"
    type: Literal["model.requested"] = "model.requested"
    schema_version: Literal[1] = 1
    payload: ModelRequestedPayload


class ModelRespondedPayload(Payload):
    request_id: Name
    model: Name
    content: Text
    input_tokens: Annotated[int, Field(ge=0)] = 0
    output_tokens: Annotated[int, Field(ge=0)] = 0
    latency_ms: Annotated[float, Field(ge=0)] = 0.0


class ModelResponded(Envelope):
    """A model answered (schema 2 split ``tokens`` into input and output tokens)."""

    event_type: ClassVar[str] = "model.responded"
    current_schema_version: ClassVar[int] = 2
    type: Literal["model.responded"] = "model.responded"
    schema_version: Literal[2] = 2
    payload: ModelRespondedPayload


class ModelFailedPayload(Payload):
    request_id: Name
    error: Text
    retryable: bool = False


class ModelFailed(Envelope):
    """A model call gave no usable answer: the endpoint failed, or the answer did not follow
    the requested schema. Recorded so a replay meets the same failure without calling a model."""

    event_type: ClassVar[str] = "model.failed"
    type: Literal["model.failed"] = "model.failed"
    schema_version: Literal[1] = 1
    payload: ModelFailedPayload


# ---------------------------------------------------------------- actions


class ActionProposedPayload(Payload):
    action_id: Name
    task_id: Name | None = None
    tool: Name
    arguments: dict[str, JsonValue] = Field(default_factory=dict)
    reasoning: Reasoning = ""
    idempotency_key: Name


class ActionProposed(Envelope):
    """An agent proposed a tool call, with its reasoning."""

    event_type: ClassVar[str] = "action.proposed"
    type: Literal["action.proposed"] = "action.proposed"
    schema_version: Literal[1] = 1
    payload: ActionProposedPayload


class ActionRiskAssessedPayload(Payload):
    action_id: Name
    risk: RiskLevel
    action_hash: Hash
    rule: Text = Field(description="which declaration or policy rule set the level")


class ActionRiskAssessed(Envelope):
    """The policy assessed a proposed action's risk level."""

    event_type: ClassVar[str] = "action.risk_assessed"
    type: Literal["action.risk_assessed"] = "action.risk_assessed"
    schema_version: Literal[1] = 1
    payload: ActionRiskAssessedPayload


class ActionExecutedPayload(Payload):
    action_id: Name
    result: JsonValue = None
    duration_ms: Annotated[float, Field(ge=0)] = 0.0


class ActionExecuted(Envelope):
    """A tool call ran; its result is recorded so replays never run it again."""

    event_type: ClassVar[str] = "action.executed"
    type: Literal["action.executed"] = "action.executed"
    schema_version: Literal[1] = 1
    payload: ActionExecutedPayload


class ActionFailedPayload(Payload):
    action_id: Name
    error: Text
    retryable: bool = False


class ActionFailed(Envelope):
    """A tool call failed."""

    event_type: ClassVar[str] = "action.failed"
    type: Literal["action.failed"] = "action.failed"
    schema_version: Literal[1] = 1
    payload: ActionFailedPayload


class ActionOutcomeUnknownPayload(Payload):
    action_id: Name
    reason: Text


class ActionOutcomeUnknown(Envelope):
    """A tool call began but its result was never recorded (a crash in between)."""

    event_type: ClassVar[str] = "action.outcome_unknown"
    type: Literal["action.outcome_unknown"] = "action.outcome_unknown"
    schema_version: Literal[1] = 1
    payload: ActionOutcomeUnknownPayload


# ---------------------------------------------------------------- approvals


class ApprovalRequestedPayload(Payload):
    action_id: Name
    action_hash: Hash
    tool: Name
    risk: RiskLevel
    preview: Text = ""
    reasoning: Reasoning = ""
    expires_at: UTCDateTime | None = None


class ApprovalRequested(Envelope):
    """A high-risk action waits for a human; it does not run until granted."""

    event_type: ClassVar[str] = "approval.requested"
    type: Literal["approval.requested"] = "approval.requested"
    schema_version: Literal[1] = 1
    payload: ApprovalRequestedPayload


class ApprovalGrantedPayload(Payload):
    action_id: Name
    action_hash: Hash
    comment: Text = ""


class ApprovalGranted(Envelope):
    """A human approved exactly this action (bound to its hash)."""

    event_type: ClassVar[str] = "approval.granted"
    allowed_principals: ClassVar[frozenset[PrincipalKind]] = frozenset({PrincipalKind.HUMAN})
    type: Literal["approval.granted"] = "approval.granted"
    schema_version: Literal[1] = 1
    payload: ApprovalGrantedPayload


class ApprovalDeniedPayload(Payload):
    action_id: Name
    action_hash: Hash
    reason: Annotated[str, Field(min_length=1, max_length=MAX_REASONING)]


class ApprovalDenied(Envelope):
    """A human denied an action, with the reason."""

    event_type: ClassVar[str] = "approval.denied"
    allowed_principals: ClassVar[frozenset[PrincipalKind]] = frozenset({PrincipalKind.HUMAN})
    type: Literal["approval.denied"] = "approval.denied"
    schema_version: Literal[1] = 1
    payload: ApprovalDeniedPayload


class ApprovalExpiredPayload(Payload):
    action_id: Name
    action_hash: Hash


class ApprovalExpired(Envelope):
    """An approval request passed its expiry without a decision."""

    event_type: ClassVar[str] = "approval.expired"
    allowed_principals: ClassVar[frozenset[PrincipalKind]] = frozenset({PrincipalKind.SYSTEM})
    type: Literal["approval.expired"] = "approval.expired"
    schema_version: Literal[1] = 1
    payload: ApprovalExpiredPayload


# ---------------------------------------------------------------- shared state and memory


class NotificationSentPayload(Payload):
    action_id: Name | None = None
    channel: Name = "inbox"
    message: Text


class NotificationSent(Envelope):
    """A human was told about something (e.g. a medium-risk action that ran)."""

    event_type: ClassVar[str] = "notification.sent"
    type: Literal["notification.sent"] = "notification.sent"
    schema_version: Literal[1] = 1
    payload: NotificationSentPayload


class BlackboardPostedPayload(Payload):
    entry_id: Name
    kind: EntryKind
    topic: Name
    content: Text
    reasoning: Reasoning = ""
    supersedes: Name | None = None


class BlackboardPosted(Envelope):
    """An agent posted an entry to the run's shared blackboard."""

    event_type: ClassVar[str] = "blackboard.posted"
    type: Literal["blackboard.posted"] = "blackboard.posted"
    schema_version: Literal[1] = 1
    payload: BlackboardPostedPayload


class ScratchpadUpdatedPayload(Payload):
    key: Name
    value: Text | None = Field(default=None, description="None removes the key")


class ScratchpadUpdated(Envelope):
    """The run's scratchpad (medium-term memory) changed."""

    event_type: ClassVar[str] = "scratchpad.updated"
    type: Literal["scratchpad.updated"] = "scratchpad.updated"
    schema_version: Literal[1] = 1
    payload: ScratchpadUpdatedPayload


class MemoryStoredPayload(Payload):
    memory_id: Name
    text: Annotated[str, Field(min_length=1, max_length=MAX_TEXT)]
    tags: list[str] = Field(default_factory=list)
    user: Name | None = None
    source_event_id: uuid.UUID | None = None


class MemoryStored(Envelope):
    """Something worth remembering across runs (long-term memory)."""

    event_type: ClassVar[str] = "memory.stored"
    type: Literal["memory.stored"] = "memory.stored"
    schema_version: Literal[1] = 1
    payload: MemoryStoredPayload


class ContextSummarizedPayload(Payload):
    agent: Name
    from_position: Annotated[int, Field(ge=0)]
    to_position: Annotated[int, Field(ge=0)]
    summary: Text
    model: Name
    # The first and last events summarized (schema 2). Positions alone cannot say where a
    # summary ends inside a fork, whose inherited events all carry the fork's position; ids
    # survive inheritance. None in a summary written under schema 1 (positions are used).
    from_event: uuid.UUID | None = None
    to_event: uuid.UUID | None = None


class ContextSummarized(Envelope):
    """Older history of an agent was summarized; the summary replaces that range in prompts
    (schema 2 names the first and last events summarized by id)."""

    event_type: ClassVar[str] = "context.summarized"
    current_schema_version: ClassVar[int] = 2
    type: Literal["context.summarized"] = "context.summarized"
    schema_version: Literal[2] = 2
    payload: ContextSummarizedPayload


class PreferenceRecordedPayload(Payload):
    user: Name
    key: Name
    value: Text


class PreferenceRecorded(Envelope):
    """A user preference, kept in a per-user stream that outlives runs."""

    event_type: ClassVar[str] = "preference.recorded"
    type: Literal["preference.recorded"] = "preference.recorded"
    schema_version: Literal[1] = 1
    payload: PreferenceRecordedPayload


EVENT_CLASSES: tuple[type[Envelope], ...] = (
    RunStarted,
    RunPaused,
    RunResumed,
    RunCancelled,
    RunCompleted,
    RunFailed,
    RunForked,
    TaskPlanned,
    TaskAssigned,
    TaskCompleted,
    TaskFailed,
    TaskReviewed,
    ModelRequested,
    ModelResponded,
    ModelFailed,
    ActionProposed,
    ActionRiskAssessed,
    ActionExecuted,
    ActionFailed,
    ActionOutcomeUnknown,
    ApprovalRequested,
    ApprovalGranted,
    ApprovalDenied,
    ApprovalExpired,
    NotificationSent,
    BlackboardPosted,
    ScratchpadUpdated,
    MemoryStored,
    ContextSummarized,
    PreferenceRecorded,
)

EVENT_TYPES: dict[str, type[Envelope]] = {cls.event_type: cls for cls in EVENT_CLASSES}

Event = Annotated[
    RunStarted
    | RunPaused
    | RunResumed
    | RunCancelled
    | RunCompleted
    | RunFailed
    | RunForked
    | TaskPlanned
    | TaskAssigned
    | TaskCompleted
    | TaskFailed
    | TaskReviewed
    | ModelRequested
    | ModelResponded
    | ModelFailed
    | ActionProposed
    | ActionRiskAssessed
    | ActionExecuted
    | ActionFailed
    | ActionOutcomeUnknown
    | ApprovalRequested
    | ApprovalGranted
    | ApprovalDenied
    | ApprovalExpired
    | NotificationSent
    | BlackboardPosted
    | ScratchpadUpdated
    | MemoryStored
    | ContextSummarized
    | PreferenceRecorded,
    Field(discriminator="type"),
]
"""Any agentledger event: the discriminated union of the whole catalogue."""

EVENT_ADAPTER: TypeAdapter[Event] = TypeAdapter(Event)
EVENT_LIST_ADAPTER: TypeAdapter[list[Event]] = TypeAdapter(list[Event])
"""Validates a JSON array of events in one call (the store's append and page reads)."""


def _check_catalogue() -> None:
    # Fail at import, not at run time, if a class and its Literal disagree.
    for name, cls in EVENT_TYPES.items():
        fields = cls.model_fields
        if fields["type"].default != name:
            raise TypeError(f"{cls.__name__}: type default must be {name!r}")
        if fields["schema_version"].default != cls.current_schema_version:
            raise TypeError(f"{cls.__name__}: schema_version must be {cls.current_schema_version}")
    if len(EVENT_TYPES) != len(EVENT_CLASSES):
        raise TypeError("two event classes declare the same type")


_check_catalogue()
