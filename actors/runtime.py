"""The runtime: each agent is a Ray actor that follows the log from its own tracked position.

An ``AgentWorker`` subscribes to the store after the position its agent last recorded,
keeps a view of each run it sees, hands the events it wants to the agent, and appends the
agent's reaction together with the handled event's position in one transaction. A crash
before that append means the event is handled again after the restart; a crash after it means
it is not: each event is reacted to exactly once per agent. Ray (``AgentActor``) places,
supervises and restarts the workers; agents never call each other.
"""

from __future__ import annotations

import collections
import contextlib
import gc
import hashlib
import logging
import os
import re
import threading
import time
import traceback
import unicodedata
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from agentledger.events import (
    MAX_REASONING,
    MAX_TEXT,
    AlreadyProcessed,
    ApprovalExpired,
    ConcurrencyConflict,
    ConfigurationError,
    ConsumerPosition,
    Envelope,
    Event,
    EventStore,
    InvalidEvent,
    Lease,
    NotAuthorized,
    NotFound,
    RiskLevel,
    Role,
    RunFailed,
    RunForked,
    RunStarted,
    StoreUnavailable,
    Subscription,
    TaskFailed,
)
from agentledger.projections import RunState, RunStateProjection, RunStatus
from agentledger.projections.memory import LongTermMemory, Scratchpad, ScratchpadProjection
from agentledger.projections.run_state import TERMINAL
from agentledger.projections.runner import run_events

from .agent import (
    Agent,
    AgentSettings,
    FlushRefused,
    HandlerFailed,
    ModelChoice,
    RunView,
    failed_turn_records,
)
from .extensions import Extension, load_extensions, role_class, tool_registry
from .memory_manager import MemoryManager
from .models import ModelProvider, ModelSpec
from .notify import DECISION_TYPES, Notifier, open_requests
from .offline import OfflineProvider
from .policy import RiskPolicy
from .providers import ProviderSettings, provider_for

_log = logging.getLogger(__name__)

RUN_PREFIX = "run-"
DEFAULT_MODEL = "offline:offline-rules"
NAMESPACE = "agentledger"
EXPIRY_ACTOR = "expiry-1"
MAX_GOAL_CHARS = MAX_REASONING  # as run.started's goal field
_CONTROL_CHAR = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")  # not \t \n \r
_CACHED_RUNS = 256
_ACTION_TYPES = (
    "action.proposed",
    "action.risk_assessed",
    "action.executed",
    "action.failed",
    "action.outcome_unknown",
    "approval.requested",
    "approval.granted",
    "approval.denied",
    "approval.expired",
)
_CONTROL_TYPES = frozenset({"run.paused", "run.cancelled", "run.resumed"})
_MEMORY_TYPE = "memory.stored"
_MEMORY_TOPIC = f"{_MEMORY_TYPE}@"
_CONTROL_TOPICS = tuple(f"{t}@" for t in sorted(_CONTROL_TYPES))
_END_TOPICS = tuple(f"{t}@" for t in ("run.cancelled", "run.completed", "run.failed"))
# An agent's process keeps each run's events decoded (its views) and allocates a lot per turn:
# with the default first threshold (700), the four agents of a 1,000-step run in one process
# spent 0.6 ms a step in the collector, mostly full passes over every kept event (which make
# no cycles); collecting the young generation every 10,000 allocations instead, 0.15 ms
# (bench/hop.py --in-process). Cyclic garbage is still collected, a little later. Set only in
# the processes the runtime owns (the agents' actors), never in a caller's process.
_AGENT_GC_THRESHOLD = (10_000, 10, 10)


def _collect_between_turns() -> None:
    """Collect the young generations now, when they are half full, rather than inside a
    later turn: an agent calls this after its reaction is appended, while the next agent is at
    work and nobody waits for this one. Left to its thresholds, the collector ran inside the
    turn whose allocation crossed one (a pass over the views' newest events: 3 to 14 ms, 0.34
    ms a step of the three handlers in bench/hop.py). A turn that allocates more than half a
    generation is still collected inside it, as before. The oldest generation is collected
    here too when this collection would be the one to reach it (else, the collector never
    running by itself, nothing would ever free old cyclic garbage: found by a review)."""
    (young, middle, oldest), (threshold, every, every_oldest) = gc.get_count(), gc.get_threshold()
    if young < threshold // 2:
        return
    generation = 0
    if middle + 1 >= every:
        generation = 2 if oldest + 1 >= every_oldest else 1
    gc.collect(generation)


_LEASE_RETRY_S = 1.0  # how often an agent standing by asks for its lease again
_LEASE_CHECK_S = 1.0  # how often an agent following the log asks whether its lease still holds
# How often a replica looks whether the replicas that no longer run can be lifted (one write
# and a read per replica of its role while one is behind, not one per event).
_LIFT_CHECK_S = 2.0
_TRACK_EVERY = 200  # skipped events between position records (a restart re-reads at most this)


class RuntimeConfig(BaseModel):
    """How the agents run: where the log is, which models, resources and limits."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    store_url: str
    namespace: str = NAMESPACE
    models: dict[str, str] = Field(
        default_factory=dict, description="role -> provider:model defaults for runs that name none"
    )
    openai: ProviderSettings = ProviderSettings()
    workspace_root: str = Field(description="absolute; each run gets <root>/<run id>")
    memory_dir: str | None = Field(
        default=None, description="where each agent keeps its LanceDB long-term memory index"
    )
    context_tokens: int = Field(default=8_000, ge=256)
    tool_timeout_s: float = Field(default=60.0, gt=0)
    record_prompts: Literal["full", "hash"] = Field(
        default="full",
        description="full: model.requested keeps the prompt text; hash: only its SHA-256 and "
        "the ids of the events its context was built from (smaller logs; the Memory Manager "
        "rebuilds the context as of any position)",
    )
    approval_ttl_s: float = Field(
        default=86_400.0, gt=0, description="how long an approval request stays open"
    )
    policy_file: str | None = Field(
        default=None, description="risk policy (TOML) overriding the tools' declared levels"
    )
    notify_command: str | None = Field(
        default=None, description="run with each notice (JSON) on stdin, e.g. a mail script"
    )
    notify_webhook: str | None = Field(
        default=None, description="loopback URL each notice (JSON) is POSTed to"
    )
    replicas: dict[str, int] = Field(default_factory=dict, description="role -> agents")
    num_cpus: float = Field(default=0.0, ge=0, description="CPUs a Ray actor reserves")
    memory_mb: int | None = Field(default=None, ge=64, description="memory a Ray actor reserves")
    max_restarts: int = Field(default=-1, ge=-1, description="-1: restart forever")
    extensions: tuple[str, ...] = Field(
        default=(),
        description="module:object names of Extensions (tools, providers, agent classes), "
        "imported in each agent's process",
    )

    def replicas_of(self, role: Role) -> int:
        """How many agents of ``role`` run (runs are partitioned among them)."""
        return max(1, self.replicas.get(role.value, 1))


# ---------------------------------------------------------------------------- models


class ModelRouter:
    """Which provider and model each role uses in a run: a fork's override (``run.forked``),
    else the run's own choice (``run.started``), else the runtime's default, else ``offline``."""

    def __init__(
        self,
        config: RuntimeConfig,
        extra: Mapping[str, ModelProvider] | None = None,
        extensions: Sequence[Extension] = (),
    ) -> None:
        self._config = config
        self._extra = dict(extra or {})
        self._factories = {n: f for e in extensions for n, f in e.providers.items()}
        self._providers: dict[str, ModelProvider] = {}
        self._lock = threading.Lock()

    def __call__(self, role: Role, run: RunView) -> ModelChoice:
        started, forked = run.started, run.forked
        chosen = forked.payload.model_overrides.get(role.value) if forked else None
        chosen = chosen or (started.payload.models.get(role.value) if started else None)
        text = chosen or self._config.models.get(role.value) or DEFAULT_MODEL
        provider_name, _, model = text.partition(":")
        if not model:
            raise ConfigurationError(f"model {role.value}={text!r} is not PROVIDER:MODEL")
        return ModelChoice(self._provider(role, provider_name, model), model)

    def _provider(self, role: Role, name: str, model: str) -> ModelProvider:
        with self._lock:
            if name in self._extra:
                return self._extra[name]
            if name == "offline":
                return self._providers.setdefault("offline", OfflineProvider())
            if name in self._factories and name not in self._providers:
                made = self._factories[name]()
                if not isinstance(made, ModelProvider):
                    raise ConfigurationError(
                        f"the extension provider {name!r} made a {type(made).__name__}, which "
                        "is not a ModelProvider (it needs a name and complete(request))"
                    )
                self._providers[name] = made
            if name not in self._providers:
                spec = ModelSpec(role=role, provider=name, model=model)
                self._providers[name] = provider_for(spec, self._config.openai)
            return self._providers[name]


def agent_for(
    role: Role,
    agent_id: str,
    config: RuntimeConfig,
    providers: Mapping[str, ModelProvider] | None = None,
) -> Agent:
    """Build the agent of ``role`` with its models, tools and memory."""
    extensions = load_extensions(config.extensions, source="RuntimeConfig.extensions")
    long_term = None
    if role is Role.RESEARCH and config.memory_dir:
        long_term = LongTermMemory(Path(config.memory_dir) / f"{role.value}-{agent_id}")
    tools = tool_registry(extensions)
    policy = RiskPolicy()
    if config.policy_file:
        policy = RiskPolicy.load(Path(config.policy_file))
        policy.check_tools(tools.names())
    settings = AgentSettings(
        models=ModelRouter(config, providers, extensions),
        tools=tools,
        policy=policy,
        memory=MemoryManager(long_term),
        workspace_root=Path(config.workspace_root),
        context_tokens=config.context_tokens,
        tool_timeout_s=config.tool_timeout_s,
        record_prompts=config.record_prompts,
        approval_ttl=timedelta(seconds=config.approval_ttl_s),
    )
    return role_class(role, extensions)(agent_id, settings)


def workers_for(
    config: RuntimeConfig, providers: Mapping[str, ModelProvider] | None = None
) -> list[AgentWorker]:
    """One worker per role, each with its own store connection, for running the agents in
    one process (tests, benchmarks): the actors' code without the Ray process boundary."""
    return [
        AgentWorker(agent_for(role, "1", config, providers), EventStore.open(config.store_url))
        for role in Role
    ]


# ---------------------------------------------------------------------------- the worker


def take_up_consumer(consumer: str, fork: str) -> str:
    """The name under which ``consumer`` tracks, by their versions in the run ``fork``, the
    events of that run it handles out of its own log order: the events a fork inherits (see
    ``AgentWorker._take_up``), and events another replica of its role left behind, below this
    one's own position (see ``AgentWorker._start_position``)."""
    return f"{consumer}@{fork}"


def began_consumer(role: Role, run: str) -> str:
    """The name under which the agents of ``role`` mark, by version, the newest event of
    ``run`` whose handling they made durable with no event of its own (the empty flush before
    a granted high-risk call): whichever replica of the role did, so a replica that takes the
    run over after the number of replicas changed knows the call began."""
    return f"agent:{role.value}@{run}"


def share_consumer(consumer: str, count: int) -> str:
    """The name under which ``consumer``, one of ``count`` replicas of its role, records how far
    it handled its share of the runs among ``count`` (its own position may be ahead from
    another number of replicas, when runs that are its own now were another's): a replica that
    no longer runs is lifted once every one of the ``count`` passed it (see
    ``AgentWorker._lift_retired``)."""
    return f"{consumer}@of-{count}"


def replicas_tracked(store: EventStore, role: Role) -> dict[str, int]:
    """Every agent of ``role`` that recorded a position in ``store`` (its replicas, those that
    no longer run included), and that position; not their take-ups of forks."""
    return _replicas(store.positions(f"agent:{role.value}/"))


def _replicas(tracked: Mapping[str, int]) -> dict[str, int]:
    """Of a role's tracked consumers, its agents' own positions (``take_up_consumer`` names,
    ``agent@run``, and ``share_consumer`` names, ``agent@of-n``, are not)."""
    return {name: position for name, position in tracked.items() if "@" not in name}


def failed_reaction(principal: str, event: Event, view: RunView, exc: Exception) -> list[Envelope]:
    """What an agent's worker appends when handling ``event`` raised ``exc``: the records of
    what the turn did (``HandlerFailed.records``: its model calls and the tool calls that ran),
    then the failure naming the error. Verify rebuilds a failed reaction with it."""
    records = exc.records if isinstance(exc, HandlerFailed) else []
    return [*records, *_failure(principal, event, view, _described(exc))]


REFUSED_BY_THE_STORE = "invalid event from the agent: "
"""How the failure appended instead of a reaction the store refused begins its error."""


def refused_reactions(
    agent: Agent, event: Event, view: RunView, emitted: Sequence[Envelope], error: Exception
) -> list[list[Envelope]]:
    """What an agent's worker appends instead when the store refused the events ``emitted``
    by ``agent`` in reaction to ``event`` (``error``: ``InvalidEvent`` / ``NotAuthorized``), in
    the order it tries them: the records of what the turn did (``failed_turn_records``) then
    the failure; if the store refuses those too (a record was the invalid event), the failure
    alone. Verify rebuilds a refused reaction with it."""
    failure = _failure(agent.principal, event, view, f"{REFUSED_BY_THE_STORE}{error}")
    records = failed_turn_records(emitted, agent.records_of_failed_turns)
    return [[*records, *failure], failure] if records else [failure]


def refused_instead(emitted: Sequence[Envelope], appended: Sequence[Envelope]) -> bool:
    """Whether what was ``appended`` for the events ``emitted`` is something else: the store
    refused them and the failure was appended instead (``refused_reactions``)."""
    return [e.id for e in emitted] != [e.id for e in appended]


def _described(exc: Exception) -> str:
    """``Type: message`` of what a handler raised (not of the ``HandlerFailed`` around it)."""
    error = exc.error if isinstance(exc, HandlerFailed) else exc
    return f"{type(error).__name__}: {error}"


def failure_reason(principal: str, event: Event, error: str) -> str:
    """The reason of the failure an agent's worker records when it could not handle ``event``."""
    return f"{principal} could not handle {event.type} at position {event.position}: {error}"


def _failure(principal: str, event: Event, view: RunView, error: str) -> list[Envelope]:
    """``task.failed`` for the sub-task ``event`` is about, else ``run.failed`` (nothing once
    the run is no longer active)."""
    task_id = getattr(event.payload, "task_id", None)
    if not view.active:
        return []
    cause = event.caused_by(event)
    reason = failure_reason(principal, event, error)
    if isinstance(task_id, str) and event.type in ("task.assigned", "task.completed"):
        return [
            TaskFailed(
                actor=principal,
                payload={"task_id": task_id, "reason": reason[:MAX_TEXT], "retryable": False},
                **cause,
            )
        ]
    return [RunFailed(actor=principal, payload={"reason": reason[:MAX_TEXT]}, **cause)]


class _RunCache:
    """What an agent knows of one run: its delivered events (in log order) and their state,
    plus the agent's own reactions that the subscription has not delivered yet."""

    def __init__(self, run: str) -> None:
        self.run = run
        self.events: list[Event] = []
        self.state = RunState(run=run)
        self.pending: list[Event] = []
        self.reacted: set[uuid.UUID] = set()  # events this role reacted to before we saw them
        self.scratchpad = Scratchpad()
        self._fold = RunStateProjection()
        self._pad = ScratchpadProjection()

    def deliver(self, event: Event) -> None:
        if self.pending:  # by version: a fork's inherited events all share one position
            self.pending = [e for e in self.pending if e.version > event.version]
        self.events.append(event)
        self.state = self._fold.apply(self.state, event)
        if event.type == "scratchpad.updated":
            self.scratchpad = self._pad.apply(self.scratchpad, event)

    def view(self) -> RunView:
        if not self.pending:
            return RunView(self.run, self.events, self.state, self.scratchpad, len(self.events))
        # Our own reactions to earlier events count, though later events of others sit
        # between them in the log: an agent never decides twice on what it already did.
        state = self._fold.fold(self.pending, self.state.model_copy(deep=True))
        pad = self._pad.fold(self.pending, self.scratchpad.model_copy(deep=True))
        return RunView(self.run, [*self.events, *self.pending], state, pad, len(self.events))


@dataclass(frozen=True)
class Hop:
    """One handled event: how long after the event was created its handler started, how long
    the handler took, and how long appending its reaction took."""

    position: int
    event_type: str
    hop_ms: float  # from the event's creation (just before its append) to the handler's start
    handle_ms: float
    append_ms: float
    emitted: int
    handle_cpu_ms: float  # the handler thread's CPU time in each part (the rest: waiting)
    append_cpu_ms: float
    started_at: float  # epoch seconds: the handler started
    committed_at: float  # epoch seconds: the reaction's append returned
    first: int  # positions of the reaction's events
    last: int


class AgentWorker:
    """Follows the log for one agent (see the module docstring)."""

    def __init__(
        self,
        agent: Agent,
        store: EventStore,
        *,
        partition: tuple[int, int] = (0, 1),
    ) -> None:
        self.agent = agent
        self.store = store
        self.consumer = agent.principal
        self.partition = partition
        # What every agent of this role (each replica, current or not) had recorded when this
        # worker started: where it starts, and which take-ups of forks were under way.
        self._role_tracked: dict[str, int] = {}
        self._retired: dict[str, int] = {}  # replicas no longer run: their positions
        self._lifted: set[str] = set()  # those of them this worker lifted since it started
        self._siblings: list[str] = []  # with several replicas: every one of them, this included
        self._lift_at = 0.0  # when to look again whether the retired ones can be lifted
        self._shared = 0  # the position this replica last recorded for its share
        self._own_start = 0  # this agent's own position when it started
        self.handled = 0
        self.failures = 0
        self.last_error: str | None = None
        self.position = 0
        self.hops: collections.deque[Hop] = collections.deque(maxlen=200_000)
        # In the agents' own processes (AgentActor): see _collect_between_turns.
        self.collect_between_turns = False
        self._types = agent.handled_types()
        # Long-term memory (the research agent's): caught up to each event it reacts to.
        memory = getattr(agent.settings, "memory", None)
        self._memory: LongTermMemory | None = getattr(memory, "long_term", None)
        # Up to where the subscription showed every row since the table's catch-up at the
        # start, and the newest memory.stored among them (0: none).
        self._memory_seen = 0
        self._memory_last = 0
        self._runs: collections.OrderedDict[str, _RunCache] = collections.OrderedDict()
        self._untracked = 0  # newest position passed over without recording it
        self._subscription: Subscription | None = None
        # stream -> (position, type) of its last control event in the batch being delivered
        self._controls: dict[str, tuple[int, str]] = {}
        self._skipped = 0
        self._held: Lease | None = None  # the lease this worker follows the log under
        self._lease_due = 0.0  # when to ask again whether it holds (time.monotonic())
        self._lost = False  # it did not: stop following

    # --------------------------------------------------------------- loop

    def run(self, stop: threading.Event, poll_timeout: float = 0.5) -> None:
        """Take this agent's lease, recover what a crash interrupted, then handle events
        until ``stop`` is set. A lease lost meanwhile (see ``_leased``) stops the handling:
        the worker stands by until it can take the lease again, then starts over."""
        while not stop.is_set():
            lease = self._lease(stop)
            if lease is None:
                return
            try:
                self._follow_leased(lease, stop, poll_timeout)
            finally:
                lease.release()

    def _follow_leased(self, lease: Lease, stop: threading.Event, poll_timeout: float) -> None:
        """Under ``lease``: start from the tracked positions, recover, then handle events
        until ``stop`` is set or the lease is lost."""
        self._held, self._lost = lease, False
        self._lease_due = time.monotonic() + _LEASE_CHECK_S
        # Taken again after a loss: what this worker knew may be stale (another process may
        # have followed the log as this agent meanwhile); the log says what was done.
        self._runs.clear()
        self._untracked = self._skipped = 0
        try:
            self.position = self._start_position()
            _log.info("%s starts after position %d", self.consumer, self.position)
            if self._memory is not None:
                # Only up to where it goes on (each reaction catches up to its event): a table
                # ahead of the event handled ranks its search differently (full-text scores
                # count every row, not only those as of the event). Under the lease: two
                # processes adding the same rows to one table would store them twice.
                self._memory.catch_up(self.store, to_position=self.position)
            self._memory_seen, self._memory_last = self.position, 0
            self.recover()
            subscription = self.store.subscribe(self.position)
            self._subscription = subscription
            try:
                while not stop.is_set() and not self._lost:
                    self._follow(subscription, stop, poll_timeout)
            finally:
                subscription.close()
                self._subscription = None
                if not self._lost:  # else nothing more is written as this agent
                    self._track_skipped()
                    if self._retired:
                        self._lift_retired(final=True)
        finally:
            self._held = None

    def _start_position(self) -> int:
        """Where to follow the log from: the lowest position any replica of this role recorded,
        this one's own included. A run's replica depends on how many replicas run, so after that
        number changes a run may fall to this one whose previous replica had not reached its
        events while this one had passed them (a replica that stopped behind, then fewer
        replicas): from its own position alone, nobody would handle them. What another replica
        already reacted to is not handled again (``_cache``: the run's events say so)."""
        own = self._own_start = self.store.position_of(self.consumer)
        self._role_tracked = self.store.positions(f"agent:{self.agent.role.value}/")
        if self.consumer not in self._role_tracked:
            # A row from the start, at 0 if need be: a replica that dies before it records any
            # position must still be seen behind by the others when their number changes.
            with contextlib.suppress(AlreadyProcessed):
                self.store.record_position(self.consumer, own)
        replicas = _replicas(self._role_tracked)
        start = min([own, *replicas.values()])
        if start < own:
            _log.warning(
                "%s starts after position %d, not its own %d: %s",
                self.consumer,
                start,
                own,
                ", ".join(f"{n} recorded {p}" for n, p in sorted(replicas.items()) if p < own),
            )
        # The replicas that no longer run are lifted once those that run have passed them (see
        # _lift_retired), or every later start would read the log again from there.
        count = self.partition[1]
        self._lifted = set()
        if count == 1:
            self._retired = {n: p for n, p in replicas.items() if n != self.consumer}
        else:
            # The runtime names replica i of n "<role>/<i + 1>": the others are retired.
            prefix = f"agent:{self.agent.role.value}/"
            siblings = [f"{prefix}{i + 1}" for i in range(count)]
            if self.consumer in siblings:
                self._siblings = siblings
                self._retired = {n: p for n, p in replicas.items() if n not in siblings}
        return start

    def _lift_retired(self, final: bool = False) -> None:
        """Record, for the replicas that no longer run (see ``_start_position``), a position
        every replica that runs now has passed: everything up to it is handled (each run a
        retired one left is now one of theirs).

        The only replica knows it by its own position. Several know it by the share each
        recorded since it started with this number of replicas (``share_consumer``), not by
        their own positions: one that was ahead of the retired one before the number changed
        has not handled yet the runs it took over from it (and may not run yet). Looked at every
        ``_LIFT_CHECK_S`` at most. Under each retired one's lease: one may still run in a
        process of an older configuration (then it is left as it is).

        Lifted again as this worker goes on (every ``_TRACK_EVERY`` positions, and when it
        stops: ``final``), or the next start would read the log again from the first lift."""
        now = time.monotonic()
        if now < self._lift_at and not final:
            return
        self._lift_at = now + _LIFT_CHECK_S
        handled = self.position
        if self._siblings:
            count = len(self._siblings)
            try:
                if self.position > self._shared:
                    with contextlib.suppress(AlreadyProcessed):
                        self.store.record_position(
                            share_consumer(self.consumer, count), self.position
                        )
                    self._shared = self.position
                handled = min(
                    self.store.position_of(share_consumer(name, count)) for name in self._siblings
                )
            except StoreUnavailable as exc:
                self.last_error = str(exc)
                return
        for name, recorded in list(self._retired.items()):
            if handled <= recorded:
                continue
            if name in self._lifted and handled - recorded < _TRACK_EVERY and not final:
                continue  # lifted already: again once well ahead (one write, not one a check)
            lease = self.store.lease(name)
            if lease is None:
                continue
            try:
                self.store.record_position(name, handled)
            except AlreadyProcessed:
                pass
            except StoreUnavailable as exc:
                self.last_error = str(exc)
                return
            finally:
                lease.release()
            self._retired[name] = handled
            self._lifted.add(name)

    def _leased(self) -> bool:
        """Whether this worker still holds its lease, asked of the store at most every
        ``_LEASE_CHECK_S`` (a round trip on PostgreSQL); once not, it stops following and
        says so. (True when not following under a lease: ``_follow`` called directly.)

        A PostgreSQL lease is lost when the server ends its session while this process runs
        on (an admin's pg_terminate_backend, a restart, an idle-session timeout, keepalives
        after a network cut); a process standing by then takes it. This check bounds how long
        this worker goes on after the loss: up to one interval plus the handler in progress
        (a model or tool call may take minutes). It does not close that window: meanwhile
        both may handle the same event and call the model for it, but only one reaction is
        appended (its tracking row, in the same transaction, makes the other append a
        duplicate delivery, AlreadyProcessed, dropped), and a non-idempotent call is flushed
        with that row before it runs, so the second handler stops before running it again
        (an idempotent one may run twice: at least once, as always). The new holder, starting
        meanwhile, may take this worker's call in progress for one a crash cut short (outcome
        unknown: it asks a human), as a restart would.
        """
        if self._lost:
            return False
        if self._held is None or time.monotonic() < self._lease_due:
            return True
        self._lease_due = time.monotonic() + _LEASE_CHECK_S
        if self._held.held():
            return True
        self._lost = True
        self.last_error = (
            f"lost the lease of {self.consumer} after position {self.position} (the database "
            "session that held it ended): stopped following the log; takes it again when no "
            "other process holds it"
        )
        _log.warning("%s: %s", self.consumer, self.last_error)
        return False

    def _lease(self, stop: threading.Event) -> Lease | None:
        """This agent's lease in the store, once no other process holds it (None if ``stop``
        came first). Two processes following the log as one agent (a second ``serve`` or
        ``run`` with agents of its own on another Ray) would each call the model for the
        same events, and the one starting would take the other's action in progress for one
        a crash cut short (outcome unknown, a human asked to run it again). The lease goes
        with its process, however that dies: a restarted agent takes over at once."""
        waiting = False
        while not stop.is_set():
            lease = self.store.lease(self.consumer)
            if lease is not None:
                if waiting:
                    self.last_error = None
                    _log.warning("%s took over the log", self.consumer)
                elif self._lost:  # nobody took it meanwhile
                    self.last_error = (
                        f"lost the lease of {self.consumer} after position {self.position} "
                        "(the database session that held it ended), and took it again"
                    )
                    _log.warning("%s took its lost lease again", self.consumer)
                return lease
            if not waiting:
                waiting = True
                self.last_error = (
                    f"standing by: another process follows the log as {self.consumer} (another "
                    "`agentledger serve` or `run` with agents of its own on this store); this "
                    "one takes over when that one stops"
                )
                _log.warning("%s: %s", self.consumer, self.last_error)
            stop.wait(_LEASE_RETRY_S)
        return None

    def _follow(
        self, subscription: Subscription, stop: threading.Event, poll_timeout: float
    ) -> None:
        """Follow the log from ``self.position`` until ``stop``, or until what to follow changes.

        While it takes part in no run in progress, an agent follows only the types it handles
        (with run control and forks): the appends of runs it has no part in then cost it no
        read. When it first acts in a run it follows every event again, from that event on
        (its view of the run needs them all), until its runs have ended.
        """
        narrow = self._narrow()
        memory = self._memory is not None  # its rows are noted (see _catch_up_memory)
        kinds = self._types | _CONTROL_TYPES | {"run.forked", *([_MEMORY_TYPE] if memory else [])}
        subscription.restart(self.position, sorted(kinds) if narrow else [])
        try:
            while not stop.is_set() and self._leased():
                rows = subscription.poll_rows(poll_timeout)
                if not rows:
                    if narrow and subscription.scanned > self.position:
                        # Everything up to the scan mark was looked at: nothing there for us.
                        self.position = self._untracked = subscription.scanned
                        if memory:
                            self._memory_seen = max(self._memory_seen, subscription.scanned)
                    self._track_skipped()
                    if self._retired:
                        self._lift_retired()
                    if not narrow and self._narrow():
                        return
                    continue
                # The last pause/resume/cancel of each run in this batch, found once per batch
                # (the look-ahead of _halted_ahead, without rescanning the batch per event).
                self._controls = {
                    stream: (position, topic.partition("@")[0])
                    for position, stream, _, topic, _ in rows
                    if topic.startswith(_CONTROL_TOPICS)
                }
                ended = False
                for row in rows:
                    if stop.is_set() or not self._leased():
                        return
                    if memory:
                        if row[3].startswith(_MEMORY_TOPIC):
                            self._memory_last = row[0]
                        self._memory_seen = row[0]
                    if self._passes_over(row[1], row[3]):
                        self.position = row[0]
                        self._skip(row[0])
                        continue
                    self.deliver(self._appended(row) or subscription.decode(row))
                    if narrow and self._runs:
                        return  # a part in a run: every event from here on
                    ended = ended or row[3].startswith(_END_TOPICS)
                # A run of ours ended in this batch: narrow now, not only when the log is
                # quiet (a busy log of other runs never is).
                if ended and not narrow and self._narrow():
                    return
        finally:
            self._controls = {}

    def _appended(self, row: tuple[int, str, int, str, bytes]) -> Event | None:
        """The event of ``row`` if this agent appended it and still holds it (its reactions
        not delivered yet): exactly what decoding the row gives (the store parses what it
        returns from the stored bytes), without decoding it again."""
        cache = self._runs.get(row[1])
        if cache is not None:
            for event in cache.pending:
                if event.position == row[0]:
                    return event
        return None

    def _narrow(self) -> bool:
        """Whether this agent takes part in no run in progress (views of ended runs go)."""
        for run in [run for run, cache in self._runs.items() if cache.state.status in TERMINAL]:
            del self._runs[run]
        return not self._runs

    def _passes_over(self, stream: str, topic: str) -> bool:
        """Whether ``deliver`` would certainly skip the event of this stream and topic, so it
        need not be decoded: not a run's, or a run this agent keeps no view of (yet) and a type
        it has no handler for (or a run of another replica's partition). Most events of a busy
        log, for most agents: decoding each in every agent's process cost more than the rest."""
        if stream in self._runs:
            return False
        if not stream.startswith(RUN_PREFIX):
            return True
        kind = topic.partition("@")[0]
        if kind == "run.forked":
            return False
        return kind not in self._types or not self._mine(stream)

    def deliver(self, event: Event) -> None:
        """Take one event of the log (in global order) and react to it if it is ours."""
        position = event.position or 0
        self.position = position
        if not event.stream.startswith(RUN_PREFIX):
            self._skip(position)
            return
        if isinstance(event, RunForked) and event.inherits and self._mine(event.stream):
            self._take_up(event)
            self._skip(position)
            return
        handles = event.type in self._types and self._mine(event.stream) and self.agent.cares(event)
        cache = self._runs.get(event.stream)
        if cache is None and not handles:
            # A run this agent has nothing to do in (yet): no view to keep. Built from the
            # log when it first has to react there.
            self._skip(position)
            return
        cache = self._cache(event)
        cache.deliver(event)
        if not handles or event.id in cache.reacted or self._halted_ahead(event):
            self._skip(position)
            return
        mark = ConsumerPosition(self.consumer, position)
        if position <= self._own_start:
            # Left behind by another replica (see _start_position): this agent's own position
            # is past it, so its reaction is tracked for this run, by version, as a take-up's.
            mark = ConsumerPosition(take_up_consumer(self.consumer, event.stream), event.version)
        self._react(event, cache, mark)

    def _take_up(self, forked: RunForked) -> None:
        """A fork by reference: react, in order, to the events it inherits that agents of this
        role did not react to in it (the subscription never delivers them: they are the
        parent's). Each reaction is tracked under a consumer of its own for this fork, by the
        inherited event's version: exactly once, and an empty flush before a side effect
        leaves the same mark as on the live path. ``run.forked`` itself is tracked only when
        the walk is done, so a process that dies half-way walks again and skips what it did."""
        events = self.store.read(forked.stream)
        inherits = forked.inherits
        consumer = take_up_consumer(self.consumer, forked.stream)
        done = self._taken_up(forked.stream)
        role = f"agent:{self.agent.role.value}/"
        cache = _RunCache(forked.stream)
        mine: dict[uuid.UUID, list[Event]] = {}
        for e in events[1:]:
            if e.actor.startswith(role) and e.causation_id is not None:
                cache.reacted.add(e.causation_id)
                mine.setdefault(e.causation_id, []).append(e)
        self._runs[forked.stream] = cache
        while len(self._runs) > _CACHED_RUNS:
            self._runs.popitem(last=False)
        cache.deliver(forked)
        for event in events[1 : inherits + 1]:
            cache.deliver(event)
            # Our reactions to it count in the view from here on, though other events sit
            # between them in the log (as for a live worker's own reactions).
            cache.pending.extend(mine.get(event.id, ()))
            if (
                event.version > done
                and event.id not in cache.reacted
                and event.type in self._types
                and self.agent.cares(event)
                and not self._halted_ahead(event)
            ):
                self._react(event, cache, ConsumerPosition(consumer, event.version))

    def _taken_up(self, fork: str) -> int:
        """How far agents of this role took ``fork`` up (by version): this replica, or another
        that took it up before the number of replicas changed (a take-up is one walk of the
        fork in order, by whichever replica the fork is for)."""
        suffix = "@" + fork
        before = [p for n, p in self._role_tracked.items() if n.endswith(suffix)]
        return max([self.store.position_of(take_up_consumer(self.consumer, fork)), *before])

    def _catch_up_memory(self, memory: LongTermMemory, position: int) -> None:
        """Long-term memory caught up to ``position``: with no read of the log when this
        worker's subscription showed every row up to it and the newest ``memory.stored`` among
        them is in the table already (the subscription follows them, whatever runs it
        follows); the read was a round trip a turn on PostgreSQL. A worker driven by
        ``deliver`` alone (no subscription) reads each time."""
        if self._memory_seen >= position and self._memory_last <= memory.caught_up_to:
            memory.passed(position)
            return
        memory.catch_up(self.store, to_position=position)

    def _mark_began(self, event: Event) -> None:
        """Mark ``event`` of its run as one whose handling this role made durable with no event
        (see ``began_consumer``); before its tracking, so a crash between the two leaves a
        call that never ran marked as begun (a human asked), never the reverse."""
        delay = 0.05
        while True:
            try:
                self.store.record_position(
                    began_consumer(self.agent.role, event.stream), event.version
                )
                return
            except AlreadyProcessed:
                return  # a later event of the run was marked: this one was handled before it
            except StoreUnavailable as exc:
                self.last_error = str(exc)
                time.sleep(delay)
                delay = min(delay * 2, 5.0)

    def _react(self, event: Event, cache: _RunCache, mark: ConsumerPosition) -> None:
        """Handle ``event`` with the run's view and append the reaction, tracked by ``mark``
        (this worker's position, or a fork take-up's)."""
        position = event.position or 0
        live = mark.consumer == self.consumer
        started = time.time()
        started_cpu = time.thread_time()
        hop_ms = (started - event.at.timestamp()) * 1000
        view = cache.view()
        flushed: list[Event] = []
        tracked = False

        def flush(events: list[Envelope]) -> None:
            # Before a side effect that must not be repeated blindly: what the turn emitted so
            # far, with this event's position (once), durable now. A duplicate delivery
            # stops the handler here, before the side effect.
            nonlocal tracked
            if not tracked and not events:
                self._mark_began(event)
            recorded = self._append(
                event,
                events,
                view,
                None if tracked else mark,
                after=flushed,
                duplicate="raise",
            )
            tracked = True
            flushed.extend(recorded)
            if refused_instead(events, recorded):
                raise FlushRefused  # the failure is recorded: the turn ends here

        try:
            if self._memory is not None:
                # Its searches are as of this event: every memory stored up to it is in its
                # table, however long ago this worker started (as in verify's).
                self._catch_up_memory(self._memory, position)
            emitted = self.agent.handle(event, view, flush)
        except AlreadyProcessed:
            return  # another instance of this agent handled it (a duplicate delivery)
        except FlushRefused:
            emitted = []  # what the store took instead of the flush is the whole reaction
        except Exception as exc:  # one handler's failure is an event, not a crash
            self.failures += 1
            self.last_error = _described(exc)
            _log.error(
                "%s failed on %s at %d:\n%s",
                self.consumer,
                event.type,
                position,
                traceback.format_exc(),
            )
            emitted = failed_reaction(self.consumer, event, view, exc)
        if not emitted and not tracked:
            if live:
                self._skip(position)
            return
        appending, appending_cpu = time.time(), time.thread_time()
        recorded = flushed + self._append(
            event, emitted, view, None if tracked else mark, after=flushed
        )
        done, done_cpu = time.time(), time.thread_time()
        self.handled += 1
        if live:
            # Its tracking row is this agent's position: what it passed over before is behind
            # it (no record of its own needed, every _TRACK_EVERY events, as when idle).
            self._untracked = self._skipped = 0
        cache.pending.extend(e for e in recorded if e.version > event.version)
        self.hops.append(
            Hop(
                position=position,
                event_type=event.type,
                hop_ms=hop_ms,
                handle_ms=(appending - started) * 1000,
                append_ms=(done - appending) * 1000,
                emitted=len(recorded),
                handle_cpu_ms=(appending_cpu - started_cpu) * 1000,
                append_cpu_ms=(done_cpu - appending_cpu) * 1000,
                started_at=started,
                committed_at=done,
                first=recorded[0].position or 0 if recorded else 0,
                last=recorded[-1].position or 0 if recorded else 0,
            )
        )
        if self.collect_between_turns:
            _collect_between_turns()

    def _append(
        self,
        event: Event,
        emitted: list[Envelope],
        view: RunView,
        tracking: ConsumerPosition | None,
        *,
        after: Sequence[Event] = (),
        duplicate: Literal["skip", "raise"] = "skip",
    ) -> list[Event]:
        """Append a reaction (with ``tracking`` in the same transaction, if given); ``after``:
        what this reaction already appended (its newest version is the stream's head)."""
        if not emitted and tracking is None:
            return []
        # The stream's newest version we know of: usually still the head (the other agents
        # wait for this reaction), and then the append needs no read of the head first.
        newest = after[-1] if after else (view.events[-1] if view.events else None)
        known: int | None = newest.version if newest is not None else None
        delay = 0.05
        instead: list[list[Envelope]] | None = None  # once the store refused ``emitted``
        while True:
            try:
                try:
                    return self.store.append(event.stream, emitted, known, tracking=tracking)
                except ConcurrencyConflict:
                    known = None  # someone appended since: at the end, whatever the version
                    return self.store.append(event.stream, emitted, tracking=tracking)
            except AlreadyProcessed:
                _log.info("%s already handled position %s", self.consumer, event.position)
                if duplicate == "raise":
                    raise
                return []
            except (InvalidEvent, NotAuthorized) as exc:
                # The agent produced an event the log refuses: record why, and what its turn
                # did, not the event.
                if instead is None:
                    self.failures += 1
                    self.last_error = str(exc)
                    instead = refused_reactions(self.agent, event, view, emitted, exc)
                elif not instead:
                    raise  # the failure alone was refused: a bug of ours, not the agent's
                emitted = instead.pop(0)
                if not emitted:
                    if tracking is not None:
                        self.store.record_position(tracking.consumer, tracking.position)
                    return []
            except StoreUnavailable as exc:
                # Never skip an event because the store blinked: wait and try again.
                self.last_error = str(exc)
                _log.warning("%s: %s; retrying in %.1fs", self.consumer, exc, delay)
                time.sleep(delay)
                delay = min(delay * 2, 5.0)

    def recover(self) -> int:
        """Find the actions this role began and never finished (the process died while they
        ran) and let the agent react: outcome unknown, then a retry or a human. Returns how
        many it found. Runs before the worker follows the log."""
        role = f"agent:{self.agent.role.value}/"
        mine: dict[tuple[str, str], str] = {}  # the role's proposals, and their proposer
        last: dict[tuple[str, str], Event] = {}
        inherited: set[uuid.UUID] = set()  # of forks by reference: tracked by take-up
        for e in self._action_events(inherited):
            key = (e.stream, getattr(e.payload, "action_id", ""))
            if e.type == "action.proposed":
                if e.actor.startswith(role):
                    mine[key] = e.actor
                continue  # a proposal alone was never begun
            last[key] = e
        orphans = []
        for key in sorted(mine.keys() & set(last)):
            e = last[key]
            began = (e.type == "action.risk_assessed" and e.payload.risk is not RiskLevel.HIGH) or (
                e.type == "approval.granted" and self._grant_begun(e, e.id in inherited, mine[key])
            )
            if began and self._mine(e.stream):
                orphans.append(e)
        for cause in orphans:
            cache = _RunCache(cause.stream)
            for e in self.store.read(cause.stream):
                cache.deliver(e)
            view = cache.view()
            if cause.type == "action.risk_assessed":
                tool = getattr(cause.payload, "action_id", "")
                info = view.state.actions.get(tool)
                known = self.agent.settings.tools
                if info is None or (info.tool in known and known.get(info.tool).idempotent):
                    continue  # idempotent calls are never begun ahead of their result
            _log.warning(
                "%s: action %s in %s began and never ended",
                self.consumer,
                getattr(cause.payload, "action_id", "?"),
                cause.stream,
            )
            self._recover_one(cause, view)
        return len(orphans)

    def _action_events(self, inherited: set[uuid.UUID]) -> Iterator[Event]:
        """Every action event of the log in order, forks' inherited ones included (their ids
        are added to ``inherited``)."""
        for e in self.store.read_all(types=(*_ACTION_TYPES, "run.forked")):
            if e.type != "run.forked":
                yield e
                continue
            for x in self.store.inherited(e):
                if x.type in _ACTION_TYPES:
                    inherited.add(x.id)
                    yield x

    def _grant_begun(self, grant: Event, inherited: bool, proposer: str) -> bool:
        """Whether an agent of this role made its handling of ``grant`` durable (the empty
        flush before the call), so the call may have run. For a fork's inherited grant: the
        role's take-up of the fork passed it. Otherwise where it acts on the grant — the grant
        itself, or, for a grant made while the run was paused (passed over then), the resume
        after it — was marked as begun by any replica of the role (``began_consumer``: the
        replica that began it may not be the one the run is for now), reacted to by the role,
        or passed by the tracking of both this agent and the replica that proposed the call
        (logs from before the mark)."""
        if inherited:
            return self._taken_up(grant.stream) >= grant.version
        events = self.store.read(grant.stream)
        acting = grant
        state = RunStateProjection().fold(e for e in events if e.version <= grant.version)
        if state.status is RunStatus.PAUSED:
            resumed = next(
                (e for e in events if e.version > grant.version and e.type == "run.resumed"),
                None,
            )
            if resumed is None:
                return False
            acting = resumed
        if self.store.position_of(began_consumer(self.agent.role, grant.stream)) >= acting.version:
            return True
        role = f"agent:{self.agent.role.value}/"
        if any(e.causation_id == acting.id and e.actor.startswith(role) for e in events):
            return True
        # Both the replica the run was for when the call was proposed and this one passed it
        # (the same one unless the number of replicas changed): one passing over another's
        # run says nothing was begun.
        passed = min(self.store.position_of(self.consumer), self.store.position_of(proposer))
        return (acting.position or 0) <= passed

    def _recover_one(self, cause: Event, view: RunView) -> None:
        flushed: list[Event] = []

        def flush(events: list[Envelope]) -> None:
            flushed.extend(self._append(cause, events, view, None, after=flushed))

        emitted = self.agent.recover(cause, view, flush)
        self._append(cause, emitted, view, None, after=flushed)

    def _halted_ahead(self, event: Event) -> bool:
        # A pause or cancel already in the log behind this event: honour it now rather than
        # act on the backlog (what was skipped is taken up on run.resumed).
        last = None
        control = self._controls.get(event.stream)
        if control is not None and control[0] > (event.position or 0):
            last = control[1]
        if self._subscription is not None:  # rows fetched beyond the batch (rarely any)
            for row_stream, topic in self._subscription.buffered():
                if row_stream == event.stream and topic.startswith(_CONTROL_TOPICS):
                    last = topic.partition("@")[0]
        return last is not None and last != "run.resumed"

    def _skip(self, position: int) -> None:
        self._untracked = position
        self._skipped += 1
        if self._skipped >= _TRACK_EVERY:
            self._track_skipped()

    def _track_skipped(self) -> None:
        if self._untracked:
            try:
                self.store.record_position(self.consumer, self._untracked)
            except AlreadyProcessed:
                pass
            except StoreUnavailable as exc:
                self.last_error = str(exc)
                return
            self._untracked = 0
        self._skipped = 0

    def _mine(self, stream: str) -> bool:
        index, count = self.partition
        if count == 1:
            return True
        digest = hashlib.sha256(stream.encode()).digest()
        return int.from_bytes(digest[:8], "big") % count == index

    def _cache(self, event: Event) -> _RunCache:
        cache = self._runs.get(event.stream)
        if cache is not None:
            self._runs.move_to_end(event.stream)
            return cache
        # First sight of a run (a new run, a restart, or a log older than this agent): the
        # view is rebuilt from the log, with what agents of this role already did after this
        # point — our reactions count as ours, and an event they reacted to is not handled again.
        cache = _RunCache(event.stream)
        role = f"agent:{self.agent.role.value}/"
        seen: set[uuid.UUID] = set()
        for e in self.store.read(event.stream):
            if e.version < event.version:
                cache.deliver(e)
                seen.add(e.id)
            elif e.version > event.version and e.actor.startswith(role):
                if e.causation_id in seen:
                    cache.pending.append(e)
                if e.causation_id is not None:
                    cache.reacted.add(e.causation_id)
        self._runs[event.stream] = cache
        while len(self._runs) > _CACHED_RUNS:
            self._runs.popitem(last=False)
        return cache

    def status(self) -> dict[str, Any]:
        """What this worker has done, for ``agentledger serve`` and tests."""
        return {
            "agent": self.consumer,
            "position": self.position,
            "handled": self.handled,
            "failures": self.failures,
            "last_error": self.last_error,
            "runs_cached": len(self._runs),
        }


# ---------------------------------------------------------------------------- expiry


class ExpiryWatcher:
    """Appends ``approval.expired`` (as ``system:expiry``) for requests nobody decided in time.

    Not an agent: agents may never append ``approval.*``. It follows the log for open requests
    and wakes when the next one falls due; an expiry is appended at the version it was checked
    against, so a human's decision that lands first wins.
    """

    principal = "system:expiry"

    def __init__(self, store: EventStore) -> None:
        self.store = store
        self.position = 0
        self.expired = 0
        # (run, action id) -> (expires at, action hash, request event)
        self._open: dict[tuple[str, str], tuple[datetime, str, Event]] = {}

    def run(self, stop: threading.Event) -> None:
        """Watch until ``stop`` is set."""
        # Expiries are due in minutes or days: looking a few times a second is soon enough,
        # and this subscriber then takes no part in each append (not woken by it).
        types = [*_APPROVAL_TYPES, *_RUN_ENDS, "run.forked"]
        with self.store.subscribe(0, types, wake=False) as subscription:
            while not stop.is_set():
                due = min((v[0] for v in self._open.values()), default=None)
                wait = 1.0
                if due is not None:
                    wait = max(0.0, min(wait, (due - datetime.now(UTC)).total_seconds()))
                for event in subscription.poll(wait):
                    for e in open_requests(self.store.inherited(event)):
                        self._note(e)  # a fork's open requests are its own
                    if event.type != "run.forked":
                        self._note(event)
                    self.position = event.position or self.position
                self._expire_due()

    def _note(self, event: Event) -> None:
        if event.type in _RUN_ENDS:  # nothing in an ended run can be decided, nor expire
            for key in [key for key in self._open if key[0] == event.stream]:
                del self._open[key]
            return
        key = (event.stream, getattr(event.payload, "action_id", ""))
        if event.type == "approval.requested":
            expires = event.payload.expires_at
            if expires is not None:
                self._open[key] = (expires, event.payload.action_hash, event)
        else:
            self._open.pop(key, None)

    def _expire_due(self) -> None:
        now = datetime.now(UTC)
        for key, (expires, digest, request) in sorted(self._open.items()):
            if expires > now:
                continue
            run, action_id = key
            version = self.store.stream_version(run)
            # Decided, or its run ended: the run's end may lie beyond what ``_note`` has seen
            # (a later page of the log, for a watcher that starts on an old one).
            settled = any(
                (e.type in _DECISIONS and getattr(e.payload, "action_id", None) == action_id)
                or e.type in _RUN_ENDS
                for e in self.store.read(run, from_version=request.version + 1)
            )
            if not settled:
                event = ApprovalExpired(
                    actor=self.principal,
                    payload={"action_id": action_id, "action_hash": digest},
                    **request.caused_by(request),
                )
                try:
                    self.store.append(run, [event], expected_version=version)
                    self.expired += 1
                except ConcurrencyConflict:
                    continue  # the run moved: look again on the next round
            self._open.pop(key, None)


_APPROVAL_TYPES = ("approval.requested", *DECISION_TYPES)
_DECISIONS = frozenset(DECISION_TYPES)
_RUN_ENDS = ("run.completed", "run.failed", "run.cancelled")


# ---------------------------------------------------------------------------- Ray


class AgentActor:
    """The Ray actor of one agent: a worker thread following the log (see ``Runtime``).

    Its methods only report and stop; no agent ever calls another's.
    """

    def __init__(
        self,
        role: str,
        agent_id: str,
        config: RuntimeConfig,
        partition: tuple[int, int] = (0, 1),
        providers: Mapping[str, ModelProvider] | None = None,
    ) -> None:
        logging.basicConfig(level=logging.WARNING)
        gc.set_threshold(*_AGENT_GC_THRESHOLD)
        self._stop = threading.Event()
        self._store = EventStore.open(config.store_url)
        agent = agent_for(Role(role), agent_id, config, providers)
        self._worker = AgentWorker(agent, self._store, partition=partition)
        self._worker.collect_between_turns = True
        # What the process holds now (its modules: Ray, pydantic, LanceDB, ~160,000 objects)
        # lives as long as it does: out of the collector's full passes, which took 96 ms each
        # over them alone (the passes between turns reach the oldest generation).
        gc.freeze()
        self._config = config
        self._scheduling = "not started"  # the worker thread's, once it runs
        self._thread = _exit_on_crash(self._loop, agent.principal)

    def _loop(self) -> None:
        self._scheduling = _batch_scheduling()
        self._worker.run(self._stop)

    def ready(self) -> str:
        """The agent's principal, once the actor is up."""
        return self._worker.consumer

    def status(self) -> dict[str, Any]:
        """Progress and the last error."""
        return {
            **self._worker.status(),
            "alive": self._thread.is_alive(),
            "pid": os.getpid(),
            "scheduling": self._scheduling,
        }

    def config(self) -> RuntimeConfig:
        """The settings this agent was started with (its workspace root, policy, budgets)."""
        return self._config

    def hops(self) -> list[Hop]:
        """Per handled event: latency from the event's append to its handler starting."""
        return list(self._worker.hops)

    def stop(self) -> None:
        """Stop following the log (the position so far is recorded)."""
        self._stop.set()
        self._thread.join(timeout=10)
        self._store.close()


class WatcherActor:
    """The Ray actor of the system processes: the expiry watcher and, when configured, the
    notifier (neither is an agent)."""

    def __init__(self, config: RuntimeConfig) -> None:
        logging.basicConfig(level=logging.WARNING)
        self._stop = threading.Event()
        self._store = EventStore.open(config.store_url)
        self._watcher = ExpiryWatcher(self._store)
        self._thread = _exit_on_crash(lambda: self._watcher.run(self._stop), "the expiry watcher")
        self._notifier: Notifier | None = None
        self._notifying: threading.Thread | None = None
        if config.notify_command or config.notify_webhook:
            self._notifier = Notifier(
                EventStore.open(config.store_url),
                command=config.notify_command,
                webhook=config.notify_webhook,
            )
            notifier = self._notifier
            self._notifying = _exit_on_crash(lambda: notifier.run(self._stop), "the notifier")

    def ready(self) -> str:
        """Its principal, once up."""
        return self._watcher.principal

    def status(self) -> dict[str, Any]:
        """Progress."""
        return {
            "agent": self._watcher.principal,
            "position": self._watcher.position,
            "handled": self._watcher.expired,
            "failures": 0,
            "last_error": None,
            "alive": self._thread.is_alive(),
            "pid": os.getpid(),
        }

    def hops(self) -> list[Hop]:
        """None: it reacts to the clock, not to events."""
        return []

    def stop(self) -> None:
        """Stop watching."""
        self._stop.set()
        self._thread.join(timeout=10)
        self._store.close()
        if self._notifier is not None:
            if self._notifying is not None:
                self._notifying.join(timeout=10)  # its last delivery, before its store closes
            self._notifier.store.close()


def _batch_scheduling() -> str:
    """Run the calling thread (an agent's worker) under Linux's SCHED_BATCH: a thread woken by
    an append then waits for the appending one to block instead of taking its core at once.
    Each append wakes the agents that follow the run; on two cores the next agent preempted
    the appender inside its append call, and both paid the switches (bench/hop.py: wall per
    step 5-7% lower, the agents' summed handler-and-append time 15% lower). Elsewhere, or if
    refused, nothing changes."""
    try:
        os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))
        return "batch"
    except (AttributeError, OSError) as exc:  # not Linux, or not allowed here
        _log.debug("SCHED_BATCH not set for the agent's worker: %s", exc)
        return "default"


def _exit_on_crash(target: Callable[[], None], what: str) -> threading.Thread:
    """Run ``target`` in a daemon thread of this actor; if it crashes, end the process.

    A broken worker must not linger as a live actor that does nothing: Ray restarts the actor,
    which resumes from its tracked position.
    """

    def run() -> None:
        try:
            target()
        except Exception:
            _log.critical("%s crashed:\n%s", what, traceback.format_exc())
            os._exit(1)

    thread = threading.Thread(target=run, name=what, daemon=True)
    thread.start()
    return thread


# host:port (a bracketed IPv6 host too), as Ray's own parse_address takes it.
_HOST_PORT = re.compile(r"(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+):(\d{1,5})")


def ray_address(address: str | None = None) -> str | None:
    """The Ray cluster to join: ``address``, else ``$RAY_ADDRESS``, else None (run locally).
    ``ConfigurationError`` if it is of no form Ray takes, before Ray is touched (``ray.init``
    answers a malformed address with a bare ValueError)."""
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address is None or address in ("auto", "local"):
        return address
    scheme, sep, rest = address.partition("://")
    if sep and scheme not in ("ray", "http", "https"):
        return address  # a Ray client builder module's scheme (e.g. anyscale://): Ray's to say
    web = scheme in ("http", "https") and bool(sep)
    match = _HOST_PORT.fullmatch(rest if sep else address)
    if web or match is None or not 0 < int(match[1]) < 65536:
        hint = " (an http:// address is a web page's, e.g. the dashboard's)" if web else ""
        raise ConfigurationError(
            f"the Ray address {address!r} (--address or $RAY_ADDRESS) is not one Ray can join"
            f"{hint}: give host:port (the head node's, e.g. 10.0.0.5:6379), ray://host:port "
            "(Ray Client, e.g. ray://head:10001) or auto; leave both unset to run locally"
        )
    return address


def reachable_ray_address(address: str | None = None) -> str | None:
    """``ray_address``, with a ``host:port`` address checked to answer (``ConfigurationError``
    if nothing does), for a command to call before it makes anything: a new store's file, a
    fork's event. ``ray://`` and ``auto`` are Ray's to resolve, when it joins."""
    address = ray_address(address)
    if address is not None and not _answers(address):
        raise ConfigurationError(_nothing_answers(address))
    return address


def _nothing_answers(address: str) -> str:
    return (
        f"nothing answers at the Ray address {address!r}: is the cluster up (`ray status` "
        "on its head shows it)? Leave --address and RAY_ADDRESS unset to run locally."
    )


def ensure_ray(address: str | None = None, *, namespace: str = NAMESPACE) -> None:
    """Connect to Ray: ``address`` / ``$RAY_ADDRESS`` if given, else a new local instance."""
    import ray

    address = ray_address(address)
    if ray.is_initialized():
        return
    options = _ray_options(namespace)
    if address is None:
        ray.init(**options)
        return
    if not _answers(address):
        raise ConfigurationError(_nothing_answers(address))
    try:
        ray.init(address=address, **options)
    except (ConnectionError, RuntimeError, ray.exceptions.RayError) as exc:
        hint = ""
        if "auth" in str(exc.__cause__ or exc).lower():
            hint = (
                " The cluster refused this machine's token: give it the cluster's "
                "(RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token)."
                if os.environ.get(_RAY_AUTH_MODE)
                else " The cluster asks for a token: set RAY_AUTH_MODE=token (and "
                "RAY_AUTH_TOKEN or ~/.ray/auth_token to its token)."
            )
        raise ConfigurationError(
            f"cannot reach the Ray cluster at {address!r}: {exc}. Check the address "
            "(`ray status` shows it), or leave --address/RAY_ADDRESS unset to run locally." + hint
        ) from exc


def _ray_options(namespace: str) -> dict[str, Any]:
    return {
        "namespace": namespace,
        "include_dashboard": False,
        "logging_level": logging.WARNING,
        "log_to_driver": False,
    }


def attach_or_start(
    config: RuntimeConfig,
    address: str | None = None,
    providers: Mapping[str, ModelProvider] | None = None,
) -> tuple[Runtime, bool]:
    """The agents for a command: those served for this store (``agentledger serve``, found
    in the Ray cluster at ``address``, or on this machine), else new ones this command owns.
    Returns the runtime and whether this command started (and must stop) its agents."""
    import ray

    runtime = Runtime(config, providers=providers)
    explicit = ray_address(address)
    if not ray.is_initialized():
        if explicit is not None:
            ensure_ray(explicit, namespace=config.namespace)
        else:
            # The Ray instance that ``serve`` recorded for this store's namespace, if it runs
            # on this machine. Not Ray's own address="auto": it picks any one of several local
            # instances, and one of another user's asks for a token it retries for 20 s.
            served = served_ray(config.namespace)
            if served is not None:
                try:
                    ray.init(address=served, **_ray_options(config.namespace))
                except (ConnectionError, RuntimeError, ray.exceptions.RayError) as exc:
                    # Refused (e.g. this shell lacks its token): agents of our own instead.
                    _log.warning("cannot join the served agents' Ray at %s: %s", served, exc)
                else:
                    if runtime.find():
                        return runtime, False
                    ray.shutdown()  # its agents are gone: do not tie ours to its lifetime
            ray.init(**_ray_options(config.namespace))
    if runtime.find():
        return runtime, False
    runtime.start()
    return runtime, True


def _served_file(namespace: str) -> Path:
    return Path.home() / ".agentledger" / "served" / f"{namespace}.json"


@contextlib.contextmanager
def serving_record(namespace: str, address: str | None = None) -> Iterator[str]:
    """While open, this machine's commands find the agents of ``namespace`` in the Ray
    instance this process is connected to (``served_address``); yields its address (``address``
    if this process joined a cluster through a ``ray://`` client address: the cluster's own
    GCS address is not one a client here can reach).

    Written by ``agentledger serve`` (as ``~/.agentledger/served/<namespace>.json``, with this
    host's name and this process's id and start time) and removed when it stops; a record
    whose process is gone, or whose Ray port does not answer, is ignored. Where it cannot be
    written, commands start agents of their own."""
    import json
    import socket

    import ray

    gcs = ray.get_runtime_context().gcs_address
    if address is not None and address.startswith("ray://"):
        gcs = address
    path = _served_file(namespace)
    record = {
        "address": gcs,
        "pid": os.getpid(),
        "started": _process_start(os.getpid()),
        "host": socket.gethostname(),
        "auth": os.environ.get(_RAY_AUTH_MODE),  # what ray.init() chose for the instance
    }
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(f".{os.getpid()}.partial")
        partial.write_text(json.dumps(record))
        partial.replace(path)
    except OSError as exc:
        _log.warning("cannot record the served agents' Ray address in %s: %s", path, exc)
        yield gcs
        return
    try:
        yield gcs
    finally:
        with contextlib.suppress(OSError, ValueError):
            if json.loads(path.read_text()).get("pid") == os.getpid():
                path.unlink()


def _process_start(pid: int) -> int | None:
    """When process ``pid`` started, in clock ticks since boot (Linux), to tell it from a later
    process given the same id; None where /proc does not say."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return int(stat.rpartition(")")[2].split()[19])  # field 22: starttime
    except (OSError, ValueError, IndexError):
        return None


def served_address(namespace: str) -> str | None:
    """The Ray address that a live ``agentledger serve`` on this machine recorded for
    ``namespace``, or None."""
    record = _served_record(namespace)
    return str(record["address"]) if record is not None else None


def served_ray(namespace: str) -> str | None:
    """``served_address``, with this process set to send that Ray instance its token if it
    authenticates by token (Ray's default for a local instance; the token is in
    ``~/.ray/auth_token``): Ray does so by itself only for an instance it finds, never for an
    address it is given. Call it just before connecting."""
    record = _served_record(namespace)
    if record is None:
        return None
    if record.get("auth") == "token" and not os.environ.get(_RAY_AUTH_MODE):
        from ray._raylet import Config  # type: ignore[attr-defined]

        os.environ[_RAY_AUTH_MODE] = "token"
        Config.initialize("")  # Ray caches its settings: read the mode again
    return str(record["address"])


def _served_record(namespace: str) -> dict[str, Any] | None:
    """The record ``serving_record`` wrote for ``namespace`` if its ``serve`` still runs: on
    this host, the same process (id and start time: ids are reused), its Ray port answering
    (a dead Ray makes ``ray.init`` retry for many minutes)."""
    import json
    import socket

    try:
        record: dict[str, Any] = json.loads(_served_file(namespace).read_text())
        address, pid = str(record["address"]), int(record["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    here = socket.gethostname()  # record is a dict: indexing anything else raised above
    if record.get("host", here) != here:
        return None
    try:
        os.kill(pid, 0)
    except OSError:  # gone, or another user's process: ids are reused (the record is ours)
        return None
    started = record.get("started")
    if started is not None and _process_start(pid) not in (None, started):
        return None  # another process, given the id of a serve that was killed
    if not _answers(address):
        return None
    return record


def _answers(address: str) -> bool:
    """Whether something accepts connections at a Ray ``host:port`` address within a second
    (``ray.init`` on a dead one retries for many minutes, deaf to Ctrl-C). Addresses of other
    forms (``ray://``, ``auto``, ``local``) are Ray's to resolve: True."""
    import socket

    host, _, port = address.rpartition(":")
    if address.startswith("ray://") or not host or not port.isdigit():
        return True
    try:
        with socket.create_connection((host, int(port)), timeout=1.0):
            return True
    except OSError:
        return False


_RAY_AUTH_MODE = "RAY_AUTH_MODE"


class Runtime:
    """Starts, finds and stops the agents of a namespace as named Ray actors."""

    def __init__(
        self,
        config: RuntimeConfig,
        *,
        providers: Mapping[str, ModelProvider] | None = None,
        roles: Iterable[Role] = tuple(Role),
    ) -> None:
        self.config = config
        self.providers = dict(providers or {})
        self.roles = tuple(roles)
        # The expiry watcher runs with the full set of agents (not for one-role test runtimes).
        self.watch_expiry = set(self.roles) == set(Role)
        self.actors: dict[str, Any] = {}

    def names(self) -> list[tuple[Role, int, str]]:
        """(role, replica index, actor name) of every agent."""
        return [
            (role, i, f"{role.value}-{i + 1}")
            for role in self.roles
            for i in range(self.config.replicas_of(role))
        ]

    def find(self) -> bool:
        """Attach to agents already running in the namespace (e.g. ``agentledger serve``)."""
        import ray

        found: dict[str, Any] = {}
        for _, _, name in self.names():
            try:
                found[name] = ray.get_actor(name, namespace=self.config.namespace)
            except ValueError:
                return False
        self.actors = found
        return True

    def start(self, *, detached: bool = False, timeout: float = 120.0) -> None:
        """Start every agent that is not running yet, and wait until all are up."""
        import ray

        for role, index, name in self.names():
            self.actors[name] = self._named(
                AgentActor,
                name,
                detached,
                role.value,
                str(index + 1),
                self.config,
                (index, self.config.replicas_of(role)),
                self.providers or None,
            )
        if self.watch_expiry:
            self.actors[EXPIRY_ACTOR] = self._named(
                WatcherActor, EXPIRY_ACTOR, detached, self.config
            )
        ray.get([a.ready.remote() for a in self.actors.values()], timeout=timeout)

    def _named(self, actor_class: type, name: str, detached: bool, *args: Any) -> Any:
        """The named actor of this namespace: the running one if any (get_if_exists), else a
        new one with the configured resources and restarts."""
        import ray

        options: dict[str, Any] = {
            "name": name,
            "namespace": self.config.namespace,
            "max_restarts": self.config.max_restarts,
            "num_cpus": self.config.num_cpus,
            "get_if_exists": True,
        }
        if self.config.memory_mb:
            options["memory"] = self.config.memory_mb * 1024 * 1024
        if detached:
            options["lifetime"] = "detached"
        return ray.remote(actor_class).options(**options).remote(*args)

    def status(self) -> list[dict[str, Any]]:
        """Each agent's status; one that cannot answer (dead and not restarted, or stuck) is
        shown as down, with why."""
        import ray

        principals = {name: f"agent:{role.value}/{i + 1}" for role, i, name in self.names()}
        asked = {name: actor.status.remote() for name, actor in self.actors.items()}
        rows: list[dict[str, Any]] = []
        for name, ref in asked.items():
            try:
                rows.append(ray.get(ref, timeout=30))
            except ray.exceptions.RayError as exc:
                why = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
                rows.append(
                    {"agent": principals.get(name, name), "alive": False, "position": "?"}
                    | {"handled": "?", "failures": "?", "last_error": why}
                )
        return rows

    def running_config(self) -> RuntimeConfig:
        """The settings the agents run with: for agents found running (``agentledger
        serve``) those they were started with, which need not be this runtime's config."""
        import ray

        execution = next(name for role, _, name in self.names() if role is Role.EXECUTION)
        try:
            asked = self.actors[execution].config
        except AttributeError:  # a handle has the methods of the class the actor was made of
            raise ConfigurationError(
                f"the agents served in namespace {self.config.namespace} run an older "
                "agentledger than this command; restart `agentledger serve` to update them"
            ) from None
        found: RuntimeConfig = ray.get(asked.remote(), timeout=30)
        return found

    def hops(self) -> list[Hop]:
        """Every agent's handled-event latencies."""
        import ray

        out: list[Hop] = []
        for hops in ray.get([a.hops.remote() for a in self.actors.values()], timeout=60):
            out.extend(hops)
        return out

    def stop(self) -> None:
        """Stop and remove the agents."""
        import ray

        # All asked at once, then waited for together (15 s in all, not 15 s each: five
        # actors one after another could take longer than a service manager waits).
        stopping = []
        for actor in self.actors.values():
            with contextlib.suppress(Exception):  # already dead or unreachable: killed below
                stopping.append(actor.stop.remote())
        with contextlib.suppress(Exception):
            ray.wait(stopping, num_returns=len(stopping), timeout=15)
        for actor in self.actors.values():
            ray.kill(actor, no_restart=True)
        self.actors = {}


# ---------------------------------------------------------------------------- clients


def validate_goal(goal: str) -> str:
    """The goal, stripped; ``InvalidEvent`` saying what to change if it is empty (or holds
    only characters that show nothing), too long, or holds control characters."""
    text = goal.strip()
    if not any(not c.isspace() and unicodedata.category(c) != "Cf" for c in text):
        raise InvalidEvent(
            "the goal is empty; say what the run should achieve, e.g. "
            'agentledger run "Summarise the docs into report.md"'
        )
    if len(text) > MAX_GOAL_CHARS:
        raise InvalidEvent(
            f"the goal is {len(text):,} characters; the limit is {MAX_GOAL_CHARS:,}. Put long "
            "material in a document folder (--docs DIR) and refer to it in the goal."
        )
    control = next((i for i, c in enumerate(text) if _CONTROL_CHAR.match(c)), None)
    if control is not None:
        raise InvalidEvent(
            f"the goal holds the control character {text[control]!r} at character "
            f"{control + 1:,}; a terminal would act on it wherever the goal is shown. Remove it "
            "(tabs and new lines are fine)"
        )
    return text


def check_docs(docs: Path) -> None:
    """``docs`` is a folder (the research agent's documents), else ``NotFound`` if there is
    nothing there, ``ConfigurationError`` if it is a file or other non-folder."""
    if docs.is_dir():
        return
    if not docs.exists():
        raise NotFound(f"--docs {docs}: no such directory; give the folder of the documents")
    what = "is a file, not a folder" if docs.is_file() else "is not a folder"
    raise ConfigurationError(
        f"--docs {docs}: {what}; give the folder the documents are in (a single document: "
        "put it in a folder of its own)"
    )


def start_run(
    store: EventStore,
    goal: str,
    *,
    user: str = "anonymous",
    models: Mapping[str, str] | None = None,
    workspace: Path | None = None,
    docs: Path | None = None,
    labels: Mapping[str, str] | None = None,
) -> RunStarted:
    """Append ``run.started`` for a new run (the agents pick it up from the log)."""
    text = validate_goal(goal)
    if docs is not None:
        check_docs(docs)
    stream = f"{RUN_PREFIX}{datetime.now(UTC).strftime('%Y%m%d-%H%M%S')}-{os.urandom(3).hex()}"
    event = RunStarted(
        actor=f"human:{user}",
        payload={
            "goal": text,
            "user": user,
            "models": dict(models or {}),
            "labels": dict(labels or {}),
            "workspace": str(workspace.resolve()) if workspace else None,
            "docs": str(docs.resolve()) if docs else None,
        },
    )
    (recorded,) = store.append(stream, [event], expected_version=0)
    assert isinstance(recorded, RunStarted)
    return recorded


WAITING = frozenset({RunStatus.WAITING_FOR_APPROVAL})
ENDED = TERMINAL


def follow_run(
    store: EventStore,
    run: str,
    *,
    until: frozenset[RunStatus] = ENDED | WAITING,
    on_event: Callable[[Event, RunState], None] | None = None,
    timeout: float | None = None,
    settle: float = 0.3,
) -> RunState:
    """Fold ``run``'s events as they are appended, until its status is one of ``until``.

    When the status reached is "waiting for approval", events already in flight (other steps
    of the run) are still shown for ``settle`` seconds of quiet. ``TimeoutError`` after
    ``timeout`` seconds (the run goes on; only following stops).
    """
    fold = RunStateProjection()
    state = RunState(run=run)
    events = run_events(store, run)
    deadline = None if timeout is None else time.monotonic() + timeout
    position = 0
    for event in events:
        state = fold.apply(state, event)
        position = event.position or position
        if on_event is not None:
            on_event(event, state)
    with store.subscribe(position) as subscription:
        quiet_since: float | None = None
        while True:
            if state.status in until:
                if state.status not in WAITING:
                    return state
                quiet_since = quiet_since or time.monotonic()
                if time.monotonic() - quiet_since >= settle:
                    return state
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"run {run} is still {state.status.value}")
            for row in subscription.poll_rows(0.1):
                if row[1] != run:
                    continue  # another run's: not even decoded
                event = subscription.decode(row)
                quiet_since = None
                state = fold.apply(state, event)
                if on_event is not None:
                    on_event(event, state)
