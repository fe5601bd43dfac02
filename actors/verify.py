"""Verify a run by re-execution: run every agent's handlers again against the recorded log,
feeding back the recorded model answers and tool results, and compare what they emit with what
was recorded — the content of every event, not only their order.

No model is called and no tool runs: a model call is answered by the recorded
``model.responded`` (or fails as the recorded ``model.failed`` did), a tool call returns the
recorded ``action.executed`` result (or raises the recorded ``action.failed`` error). Each
agent sees the run as it saw it live: the events up to the one it handles, plus its own earlier
reactions. The first event that differs is reported with both versions.

A fork inherits its parent's first events, reactions included: those were executed in the
parent, with the parent's view and under its name (the idempotency keys of its tool calls
name it), so they are re-executed as the parent's — its events up to the fork point, read
from the parent, and so on up a fork of a fork — and in the fork they count as the agents'
earlier reactions, as for the live workers that take the fork up. The fork's own reactions,
to its own events and to the inherited ones it took up, are re-executed in the fork.
"""

from __future__ import annotations

import tempfile
import uuid
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal

from pydantic import JsonValue

from agentledger.events import Envelope, Event, EventStore, InvalidEvent, NotAuthorized, Role
from agentledger.projections import RunState
from agentledger.projections.memory import LongTermMemory
from agentledger.projections.runner import run_events

from .agent import (
    MODEL_CALL_TYPES,
    Agent,
    AgentSettings,
    FailedTurnRecords,
    Flush,
    FlushRefused,
    HandlerFailed,
    ModelChoice,
    RunView,
    denied_call,
)
from .decisions import SOURCES, sections
from .extensions import Extension, provider_names, role_class, tool_registry
from .memory_manager import MemoryManager
from .models import ModelEndpointError, ModelReply, ModelRequest
from .policy import RiskPolicy
from .roles import Research
from .sandbox import ToolError
from .tools import InvalidToolArguments, ToolContext, ToolRegistry

# Measured, not decided: differ on every execution.
_TIMINGS = frozenset({"duration_ms", "latency_ms"})
# Payload fields a schema added after logs were written without them (None when upcast).
_ADDED_LATER = {"context.summarized": frozenset({"from_event", "to_event"})}
_HALTS = frozenset({"run.paused", "run.cancelled"})


class _Diverged(Exception):
    """Re-execution asked for something the recording does not have."""


class _Unanswered(_Diverged):
    """Re-execution asked a model more often than the recording shows."""


class _NotRecorded(_Diverged):
    """Re-execution ran a tool call whose outcome the recording does not have."""


class _Interrupted(Exception):
    """The recorded reaction was cut short by a crash while this tool ran (its outcome was
    recorded as unknown): re-execution stops at the same point."""


@dataclass(frozen=True)
class Divergence:
    """The first difference between the recorded log and the re-execution."""

    agent: str
    cause_position: int | None  # the event the agent was handling
    position: int | None  # the recorded event that differs (None: re-execution emitted more)
    expected: dict[str, Any] | None
    actual: dict[str, Any] | None
    message: str


@dataclass
class VerifyReport:
    """What verification found for one run."""

    run: str
    reactions: int = 0
    events: int = 0
    divergence: Divergence | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when every re-executed reaction matched the recorded one."""
        return self.divergence is None


class _Replay:
    """The recorded edges of the reaction being re-executed."""

    def __init__(self) -> None:
        self.models: list[Event] = []
        self.tools: dict[str, Event] = {}

    def load(self, reaction: list[Event]) -> None:
        self.models = [e for e in reaction if e.type in ("model.responded", "model.failed")]
        self.tools = {
            e.payload.action_id: e
            for e in reaction
            if e.type in ("action.executed", "action.failed")
        }


class _ReplayProvider:
    """Answers each model call with the next recorded answer of the reaction."""

    def __init__(self, replay: _Replay, name: str) -> None:
        self._replay = replay
        self.name = name

    def complete(self, request: ModelRequest) -> ModelReply:
        while self._replay.models:
            event = self._replay.models.pop(0)
            p: Any = event.payload
            if event.type == "model.responded":
                # A validation failure recorded after this answer is produced again by the
                # agent's own check: drop it here.
                following = self._replay.models[0] if self._replay.models else None
                if (
                    following is not None
                    and following.type == "model.failed"
                    and getattr(following.payload, "request_id", None) == p.request_id
                ):
                    self._replay.models.pop(0)
                return ModelReply(
                    model=p.model,
                    content=p.content,
                    input_tokens=p.input_tokens,
                    output_tokens=p.output_tokens,
                    latency_ms=p.latency_ms or 0.001,
                )
            raise ModelEndpointError(
                p.error, endpoint="(recorded)", status=None, attempts=1, retryable=p.retryable
            )
        raise _Unanswered("the handler asked a model more often than the recording shows")


class _ReplayTools(ToolRegistry):
    """The real registry for names, arguments and risk; recorded results instead of runs."""

    def __init__(self, real: ToolRegistry, replay: _Replay, interrupted: set[str]) -> None:
        super().__init__()
        self._tools = real._tools
        self._replay = replay
        self.interrupted = interrupted

    def execute(self, name: str, arguments: Mapping[str, Any], ctx: ToolContext) -> JsonValue:
        self.validate(name, arguments)  # the same refusal as live, before any result
        action_id = ctx.idempotency_key.rsplit("/", 1)[-1]
        recorded = self._replay.tools.get(action_id)
        if recorded is None and action_id in self.interrupted:
            raise _Interrupted(action_id)
        if recorded is None:
            raise _NotRecorded(
                f"the handler ran {name} ({action_id}), which the recording never ran"
            )
        if recorded.type == "action.failed":
            raise ToolError(recorded.payload.error)
        result: JsonValue = recorded.payload.result  # type: ignore[union-attr]
        return result


def comparable(event: Envelope, recorded: Envelope | None = None) -> dict[str, Any]:
    """What is compared of an event: type, principal, payload without timings.

    ``recorded``: the event of the log that ``event`` is compared with. A field a later
    schema added, which the recorded event (written under the older one) holds as None, is
    not compared: the log was right when it was written."""
    payload = event.payload.model_dump(mode="json")
    skip = _TIMINGS
    added = _ADDED_LATER.get(event.type)
    if added and recorded is not None and recorded.type == event.type:
        skip = skip | {f for f in added if getattr(recorded.payload, f, None) is None}
    return {
        "type": event.type,
        "actor": event.actor,
        "payload": {k: v for k, v in payload.items() if k not in skip},
    }


@dataclass
class _Recording:
    """What the log says, indexed once for every role's re-execution."""

    events: list[Event]
    # (role, cause id) -> the role's reaction to that event: its events, with the policy's
    # assessments written within them.
    reactions: dict[tuple[str, uuid.UUID], list[Event]]
    principals: dict[str, str]  # role -> the principal that reacted for it
    requests: dict[str, Event]  # model request id -> model.requested
    interrupted: set[str]  # actions whose outcome a crash left unknown

    @classmethod
    def of(cls, events: list[Event]) -> _Recording:
        reactions: dict[tuple[str, uuid.UUID], list[Event]] = defaultdict(list)
        principals: dict[str, str] = {}
        owner: dict[uuid.UUID, str] = {}
        for e in events:
            if e.causation_id is None:
                continue
            if e.actor.startswith("agent:"):
                role = e.actor.split(":", 1)[1].split("/", 1)[0]
                principals.setdefault(role, e.actor)
                owner.setdefault(e.causation_id, role)
            if e.actor.startswith("agent:") or e.actor == "system:policy":
                reactor = owner.get(e.causation_id)
                if reactor is not None:
                    reactions[(reactor, e.causation_id)].append(e)
        return cls(
            events=events,
            reactions=reactions,
            principals=principals,
            requests={
                str(getattr(e.payload, "request_id", "")): e
                for e in events
                if e.type == "model.requested"
            },
            interrupted={
                str(getattr(e.payload, "action_id", ""))
                for e in events
                if e.type == "action.outcome_unknown"
            },
        )


@dataclass(frozen=True)
class _Shared:
    """The settings that shape what agents emit: those the run was executed with."""

    context_tokens: int
    record_prompts: Literal["full", "hash"]
    approval_ttl: timedelta
    policy: RiskPolicy
    extensions: Sequence[Extension] = ()


@dataclass(frozen=True)
class _Segment:
    """A run of the lineage being verified and the part of it re-executed: the reactions it
    recorded itself to its events up to version ``upto`` (``None``: the run verified, all of
    them; for an ancestor, the part its fork inherits, and only the reactions recorded there).
    The reactions among ``inherited`` (the versions it reads through its parent) are its
    parent's segment's."""

    run: str
    recording: _Recording
    inherited: range
    upto: int | None

    def theirs(self, reaction: list[Event]) -> bool:
        """True when ``reaction`` is not this segment's to re-execute: inherited, or (in an
        ancestor) recorded after the part the fork inherits, which the fork took up itself."""
        first = reaction[0].version
        return first in self.inherited or (self.upto is not None and first > self.upto)


def _lineage(store: EventStore, run: str) -> list[_Segment]:
    """``run`` and the ancestors whose events it inherits, oldest first. An ancestor is read
    whole, not only up to the fork point: a reaction the fork inherits the start of (another
    event landed between its parts) is compared whole, as it was recorded."""
    segments: list[_Segment] = []
    stream, upto = run, None
    while True:
        link = store.link(stream)
        inherited = range(2, link.head_version + 1) if link is not None else range(0)
        segments.append(_Segment(stream, _Recording.of(run_events(store, stream)), inherited, upto))
        if link is None:
            break
        # The parent's versions 1..inherits are this run's 2..inherits + 1.
        upto = link.inherits if upto is None else min(link.inherits, upto - 1)
        if upto < 1:
            break
        stream = link.parent
    return segments[::-1]


def verify_run(
    store: EventStore,
    run: str,
    *,
    context_tokens: int = 8_000,
    approval_ttl: timedelta = timedelta(hours=24),
    record_prompts: Literal["full", "hash"] = "full",
    policy: RiskPolicy | None = None,
    extensions: Sequence[Extension] = (),
) -> VerifyReport:
    """Re-execute every agent reaction of ``run`` and compare (see the module docstring).

    The settings must be those the run was executed with (the context budget shapes prompts,
    and the extensions' tools and agent classes what the agents do).
    """
    lineage = _lineage(store, run)
    report = VerifyReport(run)
    with tempfile.TemporaryDirectory(prefix="agentledger-verify-") as scratch:
        shared = _Shared(
            context_tokens, record_prompts, approval_ttl, policy or RiskPolicy(), extensions
        )
        for segment in lineage:
            reactions = report.reactions
            found: Divergence | None = None
            for role in Role:
                principal = segment.recording.principals.get(role.value, f"agent:{role.value}/1")
                divergence = _verify_role(
                    store, segment, role, principal, Path(scratch), shared, report
                )
                if divergence is not None and (
                    found is None or (divergence.cause_position or 0) < (found.cause_position or 0)
                ):
                    found = divergence
            if segment.run != run:
                if found is not None:
                    found = replace(
                        found,
                        message=f"{found.message} (a reaction of {segment.run}, whose events "
                        f"up to its version {segment.upto} {run} inherits)",
                    )
                report.notes.append(
                    f"{report.reactions - reactions} reactions inherited from {segment.run} "
                    f"(its events up to version {segment.upto}) re-executed as {segment.run}'s"
                )
            if found is not None:  # the earliest in the history: later runs go on from it
                report.divergence = replace(
                    found, message=found.message + _missing_extension(store, segment.run, shared)
                )
                break
    return report


def _missing_extension(store: EventStore, run: str, shared: _Shared) -> str:
    """Why a run may diverge for want of an extension: the tools and model providers its
    events name that are unknown here (empty if none)."""
    tools = tool_registry(shared.extensions)
    providers = {*provider_names(shared.extensions), "scripted"}
    unknown_tools: set[str] = set()
    unknown_providers: set[str] = set()
    for event in store.read(run):
        if event.type == "action.proposed" and event.payload.tool not in tools:
            unknown_tools.add(event.payload.tool)
        elif event.type == "model.requested" and event.payload.provider not in providers:
            unknown_providers.add(event.payload.provider)
    if not unknown_tools and not unknown_providers:
        return ""
    named = [
        f"{what} {', '.join(sorted(names))}"
        for what, names in (("tool(s)", unknown_tools), ("model provider(s)", unknown_providers))
        if names
    ]
    return (
        f". The run used {' and '.join(named)}, unknown here: it ran with an extension this "
        "verification lacks (name it in agentledger.toml `extensions`, its module importable; "
        "docs/extending.md)"
    )


def _verify_role(
    store: EventStore,
    segment: _Segment,
    role: Role,
    principal: str,
    scratch: Path,
    shared: _Shared,
    report: VerifyReport,
) -> Divergence | None:
    # The same view, and the same failed reaction, as the live worker's.
    from .runtime import (
        REFUSED_BY_THE_STORE,
        _RunCache,
        failed_reaction,
        failure_reason,
        replicas_tracked,
    )

    recording = segment.recording
    events, reactions = recording.events, recording.reactions
    replay = _Replay()
    long_term = None
    if role is Role.RESEARCH:  # caught up to each event before it is handled, as live
        long_term = LongTermMemory(scratch / f"memory-{segment.run}")
    provider = _ReplayProvider(replay, "recorded")

    def models(role_: Role, run: RunView) -> ModelChoice:
        # The provider and model the recorded request names (the next answer's request).
        upcoming = replay.models[0] if replay.models else None
        request_id = str(getattr(upcoming.payload, "request_id", "")) if upcoming else ""
        requested = recording.requests.get(request_id)
        payload = requested.payload if requested is not None else None
        provider.name = str(getattr(payload, "provider", "recorded"))
        return ModelChoice(provider, str(getattr(payload, "model", "recorded")))

    settings = AgentSettings(
        models=models,
        tools=_ReplayTools(tool_registry(shared.extensions), replay, recording.interrupted),
        memory=MemoryManager(long_term),
        workspace_root=scratch / "workspaces",
        context_tokens=shared.context_tokens,
        record_prompts=shared.record_prompts,
        approval_ttl=shared.approval_ttl,
        policy=shared.policy,
    )
    agent: Agent = role_class(role, shared.extensions)(principal.split("/", 1)[1], settings)
    types = agent.handled_types()
    cache = _RunCache(events[0].stream)
    # Where this agent has recorded handling the log up to (the run verified, not an ancestor):
    # an event after it with no reaction is not handled yet (a run waiting for its agents).
    # Every replica of the role counts, the lowest: after the number of replicas changed, the
    # run's events may fall to another one, which starts from there (see the runtime).
    tracked = None
    if segment.upto is None:
        replicas = replicas_tracked(store, role)
        tracked = min(replicas.values()) if replicas else store.position_of(principal)
    pending: list[int] = []
    for index, event in enumerate(events):
        if segment.upto is not None and event.version > segment.upto:
            break
        cache.deliver(event)
        recorded = reactions.get((role.value, event.id), [])
        if recorded and segment.theirs(recorded):
            # Re-executed in the segment of the run that recorded it (see the module
            # docstring); here, as for the live worker, this agent's earlier reaction.
            cache.pending.extend(e for e in recorded if e.version > event.version)
            continue
        if not recorded and segment.upto is not None:
            # An ancestor's event that its fork inherits unanswered by this role: the fork's
            # to take up, and re-executed in the fork's view, as the take-up handled it.
            continue
        if recorded and recorded[0].type == "action.outcome_unknown":
            # A worker's recovery after a crash (not a reaction to a delivered event): counted
            # as the agent's own events in its later views, not re-executed.
            report.notes.append(
                f"position {recorded[0].position}: recovery of an action interrupted by a crash "
                "(recorded, not re-executed)"
            )
            cache.pending.extend(e for e in recorded if e.version > event.version)
            continue
        if event.type not in types or not agent.cares(event):
            if recorded:
                return _diverged(
                    principal,
                    event,
                    recorded[0],
                    None,
                    "a reaction was recorded to an event this agent does not handle",
                )
            continue
        if not recorded and tracked is not None and (event.position or 0) > tracked:
            pending.append(event.position or 0)
            continue
        reactor = next(
            (e.actor for e in recorded if e.actor.startswith(f"agent:{role.value}/")), None
        )
        if reactor is not None:
            # As the replica that reacted (the run goes to another one when their number
            # changes): its principal is in what it emitted.
            agent.principal = reactor
            agent.agent_id = reactor.split("/", 1)[1]
        view = cache.view()
        replay.load(recorded)
        settings.memory.schema_1_summaries = any(
            e.type == "context.summarized" and e.payload.to_event is None for e in recorded
        )
        if isinstance(agent, Research):
            agent.memories_first = _memories_listed_first(recorded)
        requested = _requested_calls(recorded, view.state)
        agent.ask_again_after_denial = _asked_again(requested, view.state)
        agent.validate_before_approval = not _asked_for_invalid(requested, settings.tools)
        agent.records_of_failed_turns = _records_kept(recorded)
        flushed: list[Envelope] = []
        flush = _flush_as_live(store, agent, event, view, flushed)
        if long_term is not None:
            long_term.catch_up(store, to_position=event.position or 0)
        try:
            emitted = _as_appended(store, agent, event, view, agent.handle(event, view, flush))
        except FlushRefused:
            emitted = []  # as live: what the store took instead of the flush is the reaction
        except HandlerFailed as failed:
            error = failed.error
            if isinstance(error, _Interrupted):
                # Live, the process died here: what it had made durable is the whole reaction.
                emitted = []
                report.notes.append(
                    f"position {event.position}: the reaction stopped at action {error} (a "
                    "crash; its outcome was recorded as unknown)"
                )
            elif (
                rest := _older_failure(recorded, [*flushed, *failed.records], error, agent, event)
            ) is not None:
                # Recorded by agents that kept less of a failed turn: the answer or the result
                # the handler got here is not in the log, so what it did next cannot be
                # re-executed. What it had done up to there is compared, the rest (its later
                # model calls and the failure) taken as recorded.
                emitted = [*failed.records, *rest]
                what, outcome = (
                    ("model call", "answer")
                    if isinstance(error, _Unanswered)
                    else ("tool call", "result")
                )
                # Not recorded by older agents, or refused by the store with the turn's other
                # records (the failure alone was appended then): its reason tells which.
                refused = failure_reason(agent.principal, event, REFUSED_BY_THE_STORE)
                reason = str(getattr(rest[-1].payload, "reason", ""))
                why = reason[len(refused) :]
                because = (
                    "the store refused the turn's records: "
                    + (why if len(why) <= 200 else why[:199] + "…")
                    if reason.startswith(refused)  # not a failure that merely quotes one
                    else f"before failed turns kept their {what}s"
                )
                report.notes.append(
                    f"position {event.position}: the handler failed after a {what} whose "
                    f"{outcome} was not recorded ({because}); re-executed up to that call"
                )
            elif isinstance(error, _Diverged):
                return _diverged(
                    principal, event, recorded[0] if recorded else None, None, str(error)
                )
            else:
                # The handler raised: as live, the model calls its turn made, then the failure.
                emitted = failed_reaction(agent.principal, event, view, failed)
        emitted = [*flushed, *emitted]
        if emitted and not recorded and any(e.type in _HALTS for e in events[index + 1 :]):
            report.notes.append(
                f"position {event.position}: no reaction recorded; the run was paused or "
                "cancelled later, which the agent honoured (not a divergence)"
            )
            continue
        for position, (want, got) in enumerate(zip(recorded, emitted, strict=False)):
            if comparable(want, want) != comparable(got, want):
                return _diverged(
                    principal, event, want, got, f"event {position + 1} of the reaction differs"
                )
        if len(recorded) != len(emitted):
            extra_want = recorded[len(emitted)] if len(recorded) > len(emitted) else None
            extra_got = emitted[len(recorded)] if len(emitted) > len(recorded) else None
            return _diverged(
                principal,
                event,
                extra_want,
                extra_got,
                f"recorded {len(recorded)} events in the reaction, "
                f"re-execution emitted {len(emitted)}",
            )
        if recorded:
            report.reactions += 1
            report.events += len(recorded)
            cache.pending.extend(e for e in recorded if e.version > event.version)
    if pending:
        report.notes.append(
            f"{principal} has not handled position{'s' if len(pending) > 1 else ''} "
            f"{', '.join(map(str, pending))} yet (it has recorded up to {tracked}): not "
            "re-executed"
        )
    return None


def _requested_calls(
    recorded: list[Event], state: RunState
) -> list[tuple[str, dict[str, JsonValue]]]:
    """The calls (tool, arguments) whose approval the reaction requests."""
    proposed = {e.payload.action_id: e.payload for e in recorded if e.type == "action.proposed"}
    calls = []
    for event in recorded:
        if event.type == "approval.requested":
            action_id = event.payload.action_id
            call = proposed.get(action_id) or state.actions.get(action_id)
            if call is not None:
                calls.append((call.tool, call.arguments))
    return calls


def _asked_again(requested: list[tuple[str, dict[str, JsonValue]]], state: RunState) -> bool:
    """Whether one of the calls is one a human had denied earlier in the run, as agents asked
    before they stopped asking again."""
    return any(denied_call(state, tool, arguments) is not None for tool, arguments in requested)


def _asked_for_invalid(
    requested: list[tuple[str, dict[str, JsonValue]]], tools: ToolRegistry
) -> bool:
    """Whether one of the calls has arguments its tool refuses, as agents asked before they
    checked arguments ahead of an approval."""
    for tool, arguments in requested:
        if tool in tools:
            try:
                tools.validate(tool, arguments)
            except InvalidToolArguments:
                return True
    return False


def _records_kept(recorded: list[Event]) -> FailedTurnRecords:
    """Which records of a failed turn the agents that recorded the reaction kept (it matters
    only if the handler fails): all, when the last event before the failure (or the last, when
    the run had ended and no failure was added) is one of the records kept last — a model
    call's, or a tool call's outcome or notice; else none, as before 4e93675 (the failure
    alone, or after what the turn had flushed: nothing, or up to an action's risk assessment).
    Agents of 4e93675 kept the model calls only: their reactions are re-executed as today's,
    which differ only where a tool ran (see ``_older_failure``)."""
    return "all" if any(e.type in MODEL_CALL_TYPES | _OUTCOMES for e in recorded[-2:]) else "none"


_OUTCOMES = frozenset({"action.executed", "action.failed", "notification.sent"})
"""The records of a tool call that ran: its outcome, and the notice a medium-risk one sends."""


def _older_failure(
    recorded: list[Event], done: list[Envelope], error: Exception, agent: Agent, cause: Event
) -> list[Event] | None:
    """The rest of a failed reaction, after ``done`` (what re-execution emitted until the
    handler hit ``error``), when agents that kept less of a failed turn recorded it: its later
    model calls and the failure, which re-execution cannot reach. ``None`` if it is not such
    a reaction. ``error``: the handler asked for a model's answer, which agents before 4e93675
    did not keep; or it ran a tool call whose outcome is not recorded, which agents before
    4e93675 and of 4e93675 did not keep (today's do: a failure after a tool call's outcome
    was recorded by them)."""
    from .runtime import failure_reason

    if isinstance(error, _Unanswered):
        older = agent.records_of_failed_turns == "none"
    else:
        older = isinstance(error, _NotRecorded) and not (
            len(recorded) > 1 and recorded[-2].type in _OUTCOMES
        )
    rest = recorded[len(done) :]
    if not older or not rest or any(e.type not in MODEL_CALL_TYPES for e in rest[:-1]):
        return None
    last, reason = rest[-1], failure_reason(agent.principal, cause, "")
    if last.type not in ("task.failed", "run.failed"):
        return None
    return rest if str(getattr(last.payload, "reason", "")).startswith(reason) else None


def _flush_as_live(
    store: EventStore, agent: Agent, cause: Event, view: RunView, flushed: list[Envelope]
) -> Flush:
    """A turn's flush that does what the live worker's does (``_as_appended``), into
    ``flushed``: ``FlushRefused`` ends the turn when the store took the failure instead."""
    from .runtime import refused_instead

    def flush(events: list[Envelope]) -> None:
        appended = _as_appended(store, agent, cause, view, events)
        flushed.extend(appended)
        if refused_instead(events, appended):
            raise FlushRefused

    return flush


def _as_appended(
    store: EventStore, agent: Agent, cause: Event, view: RunView, emitted: list[Envelope]
) -> list[Envelope]:
    """What the live worker appended of the events ``emitted`` in reaction to ``cause``:
    those, or, if the store refuses them, what it appends instead (``refused_reactions``)."""
    from .runtime import refused_reactions

    if not emitted:
        return emitted
    try:
        store.check(cause.stream, emitted)
        return emitted
    except (InvalidEvent, NotAuthorized) as exc:
        *tried, last = refused_reactions(agent, cause, view, emitted, exc)
    for instead in tried:
        try:
            store.check(cause.stream, instead)
            return instead
        except (InvalidEvent, NotAuthorized):
            continue
    return last


def _memories_listed_first(recorded: list[Event]) -> bool:
    """Whether a recorded research prompt lists long-term memory before the run's documents,
    as research did before 999d651 (a prompt recorded by hash only cannot tell: no)."""
    for event in recorded:
        prompt = getattr(event.payload, "prompt", None) if event.type == "model.requested" else None
        sources = sections(prompt).get(SOURCES) if prompt else None
        if sources is not None:
            kinds = ["memory" if s.startswith("- memory ") else "doc" for s in sources.splitlines()]
            return "doc" in kinds and kinds.index("doc") > 0 and kinds[0] == "memory"
    return False


def _diverged(
    agent: str,
    cause: Event,
    want: Event | None,
    got: Envelope | None,
    message: str,
) -> Divergence:
    return Divergence(
        agent=agent,
        cause_position=cause.position,
        position=want.position if want is not None else None,
        expected=comparable(want, want) if want is not None else None,
        actual=comparable(got, want) if got is not None else None,
        message=message,
    )
