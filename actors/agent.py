"""The Agent base: declared reactions to events, and the recorded edges a reaction may reach.

An agent declares handlers with ``@on(EventClass)``. A handler gets the event and a ``Turn``:
the read-only view of the run as of that event (``turn.run``) and the only ways out of pure
code — asking a model (``turn.ask``) and calling a tool (``turn.propose`` / ``turn.execute``),
both recorded as events. What the handler emits is appended by the runtime in one transaction
with the agent's new position, so a reaction happens exactly once. Agents never call each
other: a handler cannot reach another agent except by the events it emits.

Ids are derived from the handled event (``turn.new_id``) and times from its timestamp, so
running the same handler on the same events gives the same events (re-execution compares them).
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, ClassVar, Literal, TypeVar

from pydantic import BaseModel, JsonValue, ValidationError

from agentledger.blackboard import BlackboardProjection, Board
from agentledger.events import (
    MAX_REASONING,
    MAX_TEXT,
    ActionExecuted,
    ActionFailed,
    ActionProposed,
    ActionRiskAssessed,
    AlreadyProcessed,
    ApprovalRequested,
    Envelope,
    Event,
    ModelFailed,
    ModelRequested,
    ModelResponded,
    NotificationSent,
    RiskLevel,
    Role,
    RunForked,
    RunStarted,
    TaskCompleted,
)
from agentledger.events.handlers import collect_handlers
from agentledger.projections import ActionInfo, ActionStatus, RunState, TaskInfo
from agentledger.projections.memory import Scratchpad, forked_from
from agentledger.projections.run_state import ACTIVE

from .decisions import ANSWER_FORMAT, DECISIONS, Prompt, answer_schema, answer_schema_text
from .memory_manager import Context, ExtractiveSummarizer, MemoryManager
from .models import ModelError, ModelProvider, ModelRequest
from .policy import RiskPolicy
from .sandbox import ToolError, Workspace
from .tools import InvalidToolArguments, ToolContext, ToolRegistry, action_hash

_log = logging.getLogger(__name__)

D = TypeVar("D", bound=BaseModel)

Flush = Callable[[list[Envelope]], object]
"""Appends a turn's events so far, with the handled event's position (given by the runtime)."""
APPROVAL_TTL = timedelta(hours=24)
"""How long an approval request stays open before it may expire."""
POLICY_PRINCIPAL = "system:policy"
"""Who assesses risk: the policy decides, not the agent (a low-risk call is auto-approved by it)."""


MODEL_CALL_TYPES = frozenset(
    {"context.summarized", "model.requested", "model.responded", "model.failed"}
)
"""The events that record a turn's model calls: each request (with the prompt or its hash),
its answer or failure, and a summary of older history a prompt was built from."""
ACTION_RECORD_TYPES = frozenset(
    {
        "action.proposed",
        "action.risk_assessed",
        "action.executed",
        "action.failed",
        "notification.sent",
    }
)
"""The events that record a tool call: proposal, risk assessment, outcome, and the notice a
medium-risk call sends once it ran."""
_OUTCOME_TYPES = frozenset({"action.executed", "action.failed"})

FailedTurnRecords = Literal["all", "model calls", "none"]
"""Which records of a turn whose handler raised the runtime keeps (``failed_turn_records``):
all of them; only its model calls (as agents did from 4e93675 until its tool calls were kept
too); none, only the failure (as before that)."""


def failed_turn_records(
    emitted: Sequence[Envelope], kept: FailedTurnRecords = "all"
) -> list[Envelope]:
    """Of the events a failed turn emitted and had not flushed, the records of what happened,
    in the order they were emitted: its model calls, and each tool call whose outcome it
    recorded (``action.executed`` / ``action.failed``) with that call's proposal, assessment
    and notice among them. Not its decisions (completions, posts, approval requests, …), nor a
    call proposed without an outcome: a proposal alone would look like a call a crash
    interrupted, and recovery would ask a human about a call that never ran."""
    if kept == "none":
        return []
    ran = (
        {getattr(e.payload, "action_id", None) for e in emitted if e.type in _OUTCOME_TYPES}
        if kept == "all"
        else set()
    )
    return [
        e
        for e in emitted
        if e.type in MODEL_CALL_TYPES
        or (e.type in ACTION_RECORD_TYPES and getattr(e.payload, "action_id", None) in ran)
    ]


class HandlerFailed(Exception):
    """A handler raised ``error``. ``records``: the records of what its turn did and had not
    flushed (``failed_turn_records``: its model calls and the tool calls that ran), in order,
    which the runtime appends before the failure: the tokens spent, the answers received and
    the side effects stay in the log; nothing else the failed turn decided does."""

    def __init__(self, error: Exception, records: list[Envelope]) -> None:
        super().__init__(f"{type(error).__name__}: {error}")
        self.error = error
        self.records = records


class FlushRefused(Exception):
    """The store refused what a turn flushed (an event it emitted is invalid, or not the
    agent's to append): the runtime recorded the failure instead, with the turn's records.
    Raised by the flush, it ends the turn there, before the side effect the flush was for: a
    call that must not run blindly never runs without its proposal in the log, and nothing
    the turn decides after it lands after its failure."""


class DecisionFailed(Exception):
    """A model gave no usable decision after its retries (the reason is already recorded)."""

    def __init__(self, reason: str, *, retryable: bool) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retryable = retryable


@dataclass(frozen=True)
class ModelChoice:
    """The provider and model a role uses in one run."""

    provider: ModelProvider
    model: str

    @property
    def label(self) -> str:
        """``provider:model``, as shown to users."""
        return f"{self.provider.name}:{self.model}"


@dataclass
class RunView:
    """One run as the agent sees it when handling an event: the run's events up to that event
    plus the agent's own reactions to earlier events, and their run state. Read-only."""

    run: str
    events: Sequence[Event]
    state: RunState
    scratchpad: Scratchpad | None = None
    settled: int = 0
    """How many of the first ``events`` the agent was delivered, in log order: across its
    turns these only ever grow at the end (its own reactions, after them, may later move
    before others' events). The Memory Manager reads again only what lies past them."""

    @property
    def started(self) -> RunStarted | None:
        """The run's ``run.started`` event."""
        for event in self.events:
            if isinstance(event, RunStarted):
                return event
        return None

    @property
    def forked(self) -> RunForked | None:
        """The run's ``run.forked`` event, if it is a fork (its first event)."""
        first = self.events[0] if self.events else None
        return first if isinstance(first, RunForked) else None

    @property
    def active(self) -> bool:
        """True while the run is started and not paused or ended."""
        return self.state.status in ACTIVE

    def board(self) -> Board:
        """The run's blackboard."""
        return Board(BlackboardProjection().fold(self.events))

    def task(self, task_id: str) -> TaskInfo | None:
        """A sub-task by id."""
        return self.state.tasks.get(task_id)

    def completion(self, task_id: str) -> TaskCompleted | None:
        """The newest ``task.completed`` of a sub-task."""
        for event in reversed(self.events):
            if isinstance(event, TaskCompleted) and event.payload.task_id == task_id:
                return event
        return None


@dataclass(frozen=True)
class AgentSettings:
    """What an agent needs besides the log: its models, tools and memory."""

    models: Callable[[Role, RunView], ModelChoice]
    tools: ToolRegistry
    memory: MemoryManager = field(default_factory=MemoryManager)
    workspace_root: Path = Path(".agentledger/workspaces")
    context_tokens: int = 8_000
    model_attempts: int = 2
    tool_timeout_s: float = 60.0
    record_prompts: Literal["full", "hash"] = "full"
    approval_ttl: timedelta = APPROVAL_TTL
    policy: RiskPolicy = field(default_factory=RiskPolicy)


class Turn:
    """One handling of one event: the run view, the recorded edges, and the events emitted."""

    def __init__(
        self,
        agent: Agent,
        cause: Event,
        run: RunView,
        settings: AgentSettings,
        flush: Flush | None = None,
    ) -> None:
        self._flush = flush
        self.agent = agent
        self.cause = cause
        self.run = run
        self.settings = settings
        self.emitted: list[Envelope] = []
        self._ids = 0
        self._workspace: Workspace | None = None

    # ------------------------------------------------------------------ emitting

    def emit(
        self, event_class: type[Envelope], *, as_: str | None = None, **payload: Any
    ) -> Envelope:
        """Emit an event of ``event_class`` caused by the handled event (``as_``: the principal
        that decided it, when that is not the agent — the risk policy's assessments)."""
        event = event_class(
            actor=as_ or self.agent.principal,
            payload=payload,
            **self.cause.caused_by(self.cause),
        )
        self.emitted.append(event)
        return event

    def flush(self) -> None:
        """Make what this turn emitted so far durable now (with the handled event's position),
        before a side effect that must not be repeated blindly: if the process dies during it,
        the log shows the action began and never ended (its outcome is unknown)."""
        if self._flush is not None:
            self._flush(self.emitted)
            self.emitted = []

    def add(self, event: Envelope) -> None:
        """Emit an event built elsewhere (e.g. a blackboard post)."""
        self.emitted.append(event)

    def new_id(self, prefix: str) -> str:
        """An id unique in the run and the same on every re-execution of this handler."""
        self._ids += 1
        digest = hashlib.sha256(f"{self.cause.id}/{self._ids}".encode()).hexdigest()
        return f"{prefix}-{digest[:12]}"

    # ------------------------------------------------------------------ context

    def context(self, sub_goal: str) -> Context:
        """What the Memory Manager gives this agent for ``sub_goal``; a summary of older
        history is emitted first when it has outgrown its share of the budget."""
        memory = self.settings.memory
        events: Sequence[Event] = self.run.events
        role = self.agent.role.value
        summary = memory.plan_summary(
            events,
            role,
            self.settings.context_tokens,
            ExtractiveSummarizer(memory.count),  # the manager's counter, its counts kept
            actor=self.agent.principal,
            settled=self.run.settled,
        )
        if summary is not None:
            self.emitted.append(summary)
            events = [*events, summary]  # a copy only when the history gained a summary
        user = self.run.started.payload.user if self.run.started else None
        return memory.assemble(
            events,
            role,
            sub_goal,
            self.settings.context_tokens,
            user=user,
            scratchpad=self.run.scratchpad,
            settled=self.run.settled,
        )

    # ------------------------------------------------------------------ models

    def ask(
        self,
        purpose: str,
        prompt: Prompt,
        *,
        context: Context | None = None,
    ) -> Any:
        """Ask the role's model and parse its answer into the purpose's decision model.

        Each attempt is recorded (``model.requested``, then ``model.responded`` or
        ``model.failed``). An answer that does not follow the schema is retried with the
        validation errors in the prompt; ``DecisionFailed`` when no attempt gave a decision.
        """
        decision = DECISIONS[purpose]
        choice = self.settings.models(self.agent.role, self.run)
        schema = answer_schema(purpose)
        schema_text = answer_schema_text(purpose)
        base = prompt.text()
        if context is not None:
            base = f"{base}\n\n{context.text()}"
        context_ids = list(context.event_ids) if context else []
        feedback = ""
        for attempt in range(1, self.settings.model_attempts + 1):
            text = base + (f"\n\n## previous answer was invalid\n{feedback}" if feedback else "")
            text += f"\n\n## {ANSWER_FORMAT}\nJSON following this schema: " + schema_text
            request_id = self.new_id("m")
            # A prompt longer than the log keeps is recorded as with record_prompts = "hash".
            full = self.settings.record_prompts == "full" and len(text) <= MAX_TEXT
            self.emit(
                ModelRequested,
                request_id=request_id,
                provider=choice.provider.name,
                model=choice.model,
                prompt_hash=hashlib.sha256(text.encode()).hexdigest(),
                prompt=text if full else None,
                context_event_ids=context_ids,
            )
            request = ModelRequest(
                role=self.agent.role,
                model=choice.model,
                purpose=purpose,
                prompt=text,
                response_schema=schema,
                context_event_ids=context_ids,
            )
            started = time.perf_counter()
            try:
                reply = choice.provider.complete(request)
                if len(reply.content) > MAX_TEXT:
                    # The log cannot keep it as an answer: a failed call, so the log still
                    # shows that the model was asked, and why nothing came of it.
                    raise ModelError(
                        f"the answer has {len(reply.content):,} characters, more than the "
                        f"{MAX_TEXT:,} the log keeps of one; nothing was done with it"
                    )
            except ModelError as exc:
                retryable = bool(getattr(exc, "retryable", False))
                self.emit(ModelFailed, request_id=request_id, error=str(exc), retryable=retryable)
                raise DecisionFailed(f"{choice.label} failed: {exc}", retryable=retryable) from exc
            latency = reply.latency_ms or (time.perf_counter() - started) * 1000
            self.emit(
                ModelResponded,
                request_id=request_id,
                model=reply.model[:200] or choice.model,  # a Name, as the log keeps it
                content=reply.content,
                input_tokens=reply.input_tokens,
                output_tokens=reply.output_tokens,
                latency_ms=round(latency, 3),
            )
            try:
                return decision.model_validate_json(_strip_fences(reply.content))
            except ValidationError as exc:
                feedback = _validation_summary(exc)
                self.emit(
                    ModelFailed,
                    request_id=request_id,
                    error=f"the answer does not follow the {decision.__name__} schema: {feedback}",
                    retryable=attempt < self.settings.model_attempts,
                )
        raise DecisionFailed(
            f"{choice.label} gave no valid {decision.__name__} in "
            f"{self.settings.model_attempts} attempts: {feedback}",
            retryable=False,
        )

    # ------------------------------------------------------------------ tools

    @property
    def workspace(self) -> Workspace:
        """The run's workspace (created on first use)."""
        if self._workspace is None:
            started = self.run.started
            chosen = (
                Path(started.payload.workspace) if started and started.payload.workspace else None
            )
            runs = self.settings.workspace_root
            parent = self.run.state.parent_run
            if parent is None:
                root = chosen or runs / self.run.run
            else:
                # A fork works in its own copy of its nearest ancestor's workspace (a fork
                # that never acted made none), never in the ancestor's; the first run's is the
                # one it was started with, if any.
                root = runs / self.run.run
                lineage = [runs / ancestor for ancestor, _ in forked_from(self.run.events)]
                source = next((p for p in lineage if p.is_dir()), chosen)
                if source is not None and not root.exists():
                    _copy_workspace(source, root)
            self._workspace = self.agent.workspace_at(root)
        return self._workspace

    def propose(
        self, tool: str, arguments: Mapping[str, JsonValue], reasoning: str, task_id: str | None
    ) -> ActionProposed:
        """Record a proposed tool call (nothing runs yet)."""
        action_id = self.new_id("a")
        event = self.emit(
            ActionProposed,
            action_id=action_id,
            task_id=task_id,
            tool=tool,
            arguments=dict(arguments),
            reasoning=reasoning[:MAX_REASONING],  # a model's: unbounded
            idempotency_key=f"{self.run.run}/{action_id}",
        )
        assert isinstance(event, ActionProposed)
        return event

    def execute(self, proposal: ActionProposed, *, durable: bool = False) -> ActionOutcome:
        """Assess a proposed call's risk; run it if low or medium (recording the result and,
        for medium, notifying); for high, request approval and do not run it.

        ``durable``: a call that is not idempotent is begun only after the proposal and its
        assessment are in the log (see ``flush``).
        """
        p = proposal.payload
        tools = self.settings.tools
        declared = tools.get(p.tool).risk if p.tool in tools else None
        assessed = self.settings.policy.assess(p.tool, p.arguments, declared)
        risk, rule = assessed.risk, assessed.rule
        digest = action_hash(self.run.run, p.action_id, p.tool, p.arguments)
        self.emit(
            ActionRiskAssessed,
            as_=POLICY_PRINCIPAL,
            action_id=p.action_id,
            risk=risk,
            action_hash=digest,
            rule=rule,
        )
        if p.tool not in tools:
            return self._failed(
                p.action_id, f"unknown tool {p.tool!r}; tools: {', '.join(tools.names())}"
            )
        try:  # before any approval: no human is asked to grant a call that cannot run
            if self.agent.validate_before_approval:
                tools.validate(p.tool, p.arguments)
        except InvalidToolArguments as exc:
            return self._failed(p.action_id, str(exc))
        if risk is RiskLevel.HIGH:
            refused = denied_call(self.run.state, p.tool, p.arguments)
            if refused is not None and not self.agent.ask_again_after_denial:
                return self._failed(
                    p.action_id,
                    f"not asked again: {refused.decided_by} denied the same call "
                    f"({refused.action_id}, {_preview(p.tool, p.arguments)}) in this run: "
                    f"{refused.decision_note}",
                )
            self.emit(
                ApprovalRequested,
                action_id=p.action_id,
                action_hash=digest,
                tool=p.tool,
                risk=risk,
                preview=_preview(p.tool, p.arguments),
                reasoning=p.reasoning,
                expires_at=self.cause.at + self.settings.approval_ttl,
            )
            return ActionOutcome(p.action_id, waiting=True)
        if durable and not tools.get(p.tool).idempotent:
            self.flush()
        return self.run_tool(proposal, risk)

    def run_tool(self, proposal: ActionProposed, risk: RiskLevel) -> ActionOutcome:
        """Run an assessed (and, if high risk, approved) call and record what happened."""
        p = proposal.payload
        started = self.run.started
        docs = Path(started.payload.docs) if started and started.payload.docs else None
        ctx = ToolContext(
            workspace=self.workspace,
            docs=docs,
            # The run executing the call: a fork running a call it inherits proposed is never
            # deduplicated against its parent's.
            idempotency_key=f"{self.run.run}/{p.action_id}",
            timeout_s=self.settings.tool_timeout_s,
        )
        began = time.perf_counter()
        try:
            result = self.settings.tools.execute(p.tool, p.arguments, ctx)
        except ToolError as exc:
            return self._failed(p.action_id, str(exc))
        duration = (time.perf_counter() - began) * 1000
        self.emit(
            ActionExecuted, action_id=p.action_id, result=result, duration_ms=round(duration, 3)
        )
        if risk is RiskLevel.MEDIUM:
            self.emit(
                NotificationSent,
                action_id=p.action_id,
                channel="inbox",
                message=f"{self.agent.principal} ran {_preview(p.tool, p.arguments)} (medium risk)",
            )
        return ActionOutcome(p.action_id, result=result)

    def _failed(self, action_id: str, error: str) -> ActionOutcome:
        self.emit(ActionFailed, action_id=action_id, error=error[:MAX_TEXT], retryable=False)
        return ActionOutcome(action_id, error=error)


def denied_call(
    state: RunState, tool: str, arguments: Mapping[str, JsonValue]
) -> ActionInfo | None:
    """The action of the run a human denied that is the same call (tool and arguments), if
    any: a human's no is not asked again in the run."""
    for info in state.actions.values():
        if info.status is ActionStatus.DENIED and info.tool == tool and info.arguments == arguments:
            return info
    return None


@dataclass(frozen=True)
class ActionOutcome:
    """What became of one tool call in this turn."""

    action_id: str
    result: JsonValue = None
    error: str | None = None
    waiting: bool = False

    @property
    def ok(self) -> bool:
        """True when the call ran without error."""
        return self.error is None and not self.waiting


class Agent:
    """Base of the four roles: declare ``role`` and ``@on`` handlers ``(self, event, turn)``."""

    role: ClassVar[Role]
    _handlers: ClassVar[dict[str, str]] = {}
    # Behaviours of earlier versions, which verify sets to re-execute the runs recorded then.
    ask_again_after_denial = False
    """Request approval of a call a human already denied in the run."""
    validate_before_approval = True
    """Check a call's arguments before requesting approval (earlier: only once granted)."""
    records_of_failed_turns: FailedTurnRecords = "all"
    """Which records of a turn whose handler raised are kept (earlier: its model calls only,
    and before that none, only the failure)."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls._handlers = collect_handlers(cls)

    def __init__(self, agent_id: str, settings: AgentSettings) -> None:
        self.agent_id = agent_id
        self.settings = settings
        self.principal = f"agent:{self.role.value}/{agent_id}"
        self._workspaces: dict[Path, Workspace] = {}

    def workspace_at(self, root: Path) -> Workspace:
        """The workspace at ``root`` (kept per agent: opening one probes the sandbox)."""
        workspace = self._workspaces.get(root)
        if workspace is None:
            if len(self._workspaces) >= 256:
                self._workspaces.clear()
            workspace = self._workspaces[root] = Workspace(root)
        return workspace

    @classmethod
    def handled_types(cls) -> frozenset[str]:
        """The event types this agent has handlers for."""
        return frozenset(cls._handlers)

    def cares(self, event: Event) -> bool:
        """A cheap first look at the event alone (no view of the run is built for events an
        agent does not care about): False when it will certainly not react."""
        return True

    def wants(self, event: Event, run: RunView) -> bool:
        """Whether this agent reacts to ``event`` (after the type matched a handler)."""
        return True

    def handle(self, event: Event, run: RunView, flush: Flush | None = None) -> list[Envelope]:
        """Run the handler for ``event`` and return the events it emitted (after any that
        ``flush`` already made durable). ``HandlerFailed`` if the handler raised."""
        name = self._handlers.get(event.type)
        if name is None or not self.wants(event, run):
            return []
        turn = Turn(self, event, run, self.settings, flush)
        try:
            getattr(self, name)(event, turn)
        except (AlreadyProcessed, FlushRefused):
            # From flush: another instance handled this event, or the failure is recorded.
            raise
        except Exception as exc:
            records = failed_turn_records(turn.emitted, self.records_of_failed_turns)
            raise HandlerFailed(exc, records) from exc
        return turn.emitted

    def recover(self, cause: Event, run: RunView, flush: Flush | None = None) -> list[Envelope]:
        """React to an action this role began but never finished (the process died while it
        ran); ``cause`` is the last event recorded for it. Roles that begin such actions
        override ``_recover``."""
        turn = Turn(self, cause, run, self.settings, flush)
        self._recover(cause, turn)
        return turn.emitted

    def _recover(self, cause: Event, turn: Turn) -> None:
        return None


def _strip_fences(content: str) -> str:
    # Models asked for JSON often wrap it in a Markdown code fence; accept that.
    text = content.strip()
    if text.startswith("```"):
        text = text.split("\n", 1)[1] if "\n" in text else ""
        if text.rstrip().endswith("```"):
            text = text.rstrip()[:-3]
    return text.strip()


def _copy_workspace(source: Path, target: Path) -> None:
    """``target`` made a copy of the folder ``source`` as it is now (symbolic links copied as
    links, never followed), unless another agent made it first. Copied beside ``target``
    and renamed into place, so no agent ever sees a half-made copy."""
    if not source.is_dir():
        return
    partial = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.partial")
    try:
        shutil.copytree(source, partial, symlinks=True)
        partial.rename(target)
    except OSError:
        if not target.is_dir():
            raise
    finally:
        shutil.rmtree(partial, ignore_errors=True)


def _validation_summary(exc: ValidationError) -> str:
    parts = []
    for error in exc.errors()[:8]:
        where = ".".join(str(p) for p in error["loc"]) or "(answer)"
        parts.append(f"{where}: {error['msg']}")
    return "; ".join(parts)


def _preview(tool: str, arguments: Mapping[str, JsonValue]) -> str:
    body = json.dumps(arguments, sort_keys=True, ensure_ascii=False)
    if len(body) > 200:
        body = body[:199] + "…"
    return f"{tool} {body}"
