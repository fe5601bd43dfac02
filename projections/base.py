"""Projections: pure folds of the event log into state.

A projection's state is a pydantic model; ``apply`` folds one event into it and depends on
nothing but the state and the event (no clock, no randomness, no hash-order iteration), so the
same events give byte-identical state in any process. Folds mutate the state they are given,
for speed; a caller that needs the old state keeps a ``copy``. The ``version`` of a projection
is bumped whenever its fold changes: stored checkpoints of another version are discarded and
the projection is rebuilt from the log.
"""

from __future__ import annotations

from abc import ABC
from collections.abc import Callable, Iterable, Mapping
from functools import cached_property
from typing import Any, ClassVar, Generic, TypeVar

from pydantic import BaseModel, Field, create_model

from agentledger.events import Event
from agentledger.events.gcpause import collector_paused
from agentledger.events.handlers import collect_handlers

S = TypeVar("S", bound=BaseModel)


class Anomaly(BaseModel):
    """Something in the log a projection refused to apply (e.g. an illegal transition)."""

    position: int | None
    stream: str
    event_type: str
    message: str


class Projection(ABC, Generic[S]):
    """Base of every projection: declare ``state_type`` and ``@on`` handlers ``(state, event)``."""

    name: ClassVar[str]
    version: ClassVar[int] = 1
    state_type: ClassVar[type[BaseModel]]
    event_types: ClassVar[tuple[str, ...]] = ()
    reads_all_events: ClassVar[bool] = False
    # A per-run fold over the whole log: a fork by reference's ``run.forked`` must be followed
    # by the events it inherits (``EventStore.inherited``), which the global order holds only
    # under the parent's name. Runners read ``run.forked`` for it and fold them right after.
    folds_inherited: ClassVar[bool] = False
    # For event types it has no handler for, ``apply`` reads only the envelope's position,
    # stream, version and type: a runner may pass an ``EventHeader`` (bodies left unread, and
    # so not checked: a damaged body of such a type is for ``verify-log`` to find). Inherited
    # by subclasses: one that reads more of those events in ``apply`` must set it False.
    reads_headers: ClassVar[bool] = False
    # One state per key (``PerStream``): runners store a key per row and commit the keys that
    # changed; ``as_of`` with checkpoints reads the keys it is asked for (``key_of`` etc.).
    keyed: ClassVar[bool] = False
    _handlers: ClassVar[dict[str, str]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls._handlers = collect_handlers(cls)
        # Read only the types the fold handles (the store filters in its query), unless the
        # projection looks at every event (an empty tuple means "all types").
        cls.event_types = () if cls.reads_all_events else tuple(sorted(cls._handlers))

    @property
    def handled_types(self) -> tuple[str, ...]:
        """The event types with a handler (the ones whose bodies the fold reads)."""
        return tuple(sorted(self._handlers))

    def initial(self) -> S:
        """The state before any event."""
        return self.state_type()  # type: ignore[return-value]

    def apply(self, state: S, event: Event) -> S:
        """Fold one event into ``state`` (events of other types leave it unchanged)."""
        handler = self._bound.get(event.type)
        if handler is None:
            return state
        result = handler(state, event)
        return state if result is None else result

    @cached_property
    def _bound(self) -> dict[str, Callable[[S, Event], S | None]]:
        # The handlers bound once per projection (a getattr per event costs a tenth of a
        # run-state fold step).
        return {kind: getattr(self, name) for kind, name in self._handlers.items()}

    def fold(self, events: Iterable[Event], state: S | None = None) -> S:
        """Fold ``events`` into ``state`` (or into the initial state)."""
        current = self.initial() if state is None else state
        apply = self.apply
        with collector_paused():
            for event in events:
                current = apply(current, event)
        return current

    def dump(self, state: S) -> bytes:
        """The state as canonical JSON bytes (for checkpoints and snapshots)."""
        return type(state).__pydantic_serializer__.to_json(state)  # model_dump_json's bytes

    def load(self, data: bytes) -> S:
        """A state from ``dump`` output."""
        return self.state_type.model_validate_json(data)  # type: ignore[return-value]

    def copy(self, state: S) -> S:
        """An independent copy of ``state`` (folds mutate in place)."""
        return state.model_copy(deep=True)

    # Keyed projections (``keyed = True``) give these; see ``PerStream``.

    def key_of(self, event: Event) -> str | None:
        """The key whose state ``event`` is folded into (None: no key's)."""
        raise TypeError(f"{self.name} is not a keyed projection")

    def apply_keyed(self, state: S, event: Event) -> str | None:
        """``apply`` (in place), returning the key whose state ``event`` was folded into."""
        raise TypeError(f"{self.name} is not a keyed projection")

    def fold_key(self, inner: BaseModel | None, events: Iterable[Event]) -> BaseModel | None:
        """Fold the events of one key into its state (None: the key has none yet)."""
        raise TypeError(f"{self.name} is not a keyed projection")

    def dump_key(self, state: S, key: str) -> bytes:
        """One key's state as JSON bytes."""
        raise TypeError(f"{self.name} is not a keyed projection")

    def load_key(self, data: bytes) -> BaseModel:
        """One key's state from ``dump_key`` output."""
        raise TypeError(f"{self.name} is not a keyed projection")

    def from_keys(self, states: Mapping[str, BaseModel]) -> S:
        """The state holding ``states`` by key (a dict, or a lazy mapping)."""
        raise TypeError(f"{self.name} is not a keyed projection")


class PerStream(Projection[BaseModel]):
    """Fold a per-run projection over the whole log: one state per stream, keyed by stream.

    ``PerStream(RunStateProjection())`` is the state of every run; only streams whose names
    start with ``prefix`` (default ``run-``) are folded.
    """

    folds_inherited = True

    def __init__(self, inner: Projection[Any], prefix: str = "run-") -> None:
        self.inner = inner
        self.prefix = prefix
        self.name = f"{inner.name}_by_stream"  # type: ignore[misc]
        self.version = inner.version  # type: ignore[misc]
        self.event_types = inner.event_types  # type: ignore[misc]
        self.reads_headers = inner.reads_headers  # type: ignore[misc]
        self._types = frozenset(inner.event_types) if inner.event_types else None
        self.state_type = create_model(  # type: ignore[misc]
            f"{type(inner.initial()).__name__}ByStream",
            streams=(dict[str, inner.state_type], Field(default_factory=dict)),  # type: ignore[name-defined]
        )

    keyed = True

    @property
    def handled_types(self) -> tuple[str, ...]:
        return self.inner.handled_types

    def key_of(self, event: Event) -> str | None:
        stream = event.stream
        if not stream.startswith(self.prefix) or (
            self._types is not None and event.type not in self._types
        ):
            # Only what the inner fold reads: a full fold must equal a type-filtered one.
            return None
        return stream

    def apply(self, state: BaseModel, event: Event) -> BaseModel:
        self.apply_keyed(state, event)
        return state

    def apply_keyed(self, state: BaseModel, event: Event) -> str | None:
        stream = self.key_of(event)
        if stream is None:
            return None
        streams: dict[str, Any] = state.__dict__["streams"]
        inner = streams.get(stream)
        if inner is None:
            inner = self.inner.initial()
        streams[stream] = self.inner.apply(inner, event)
        return stream

    def fold_key(self, inner: BaseModel | None, events: Iterable[Event]) -> BaseModel | None:
        for event in events:
            if self.key_of(event) is not None:
                inner = self.inner.apply(self.inner.initial() if inner is None else inner, event)
        return inner

    def dump_key(self, state: BaseModel, key: str) -> bytes:
        return self.inner.dump(state.__dict__["streams"][key])

    def load_key(self, data: bytes) -> BaseModel:
        loaded: BaseModel = self.inner.load(data)
        return loaded

    def from_keys(self, states: Mapping[str, BaseModel]) -> BaseModel:
        return self.state_type.model_construct(streams=states)

    def dump(self, state: BaseModel) -> bytes:
        streams = state.__dict__["streams"]
        if not isinstance(streams, dict):  # a lazy view (``as_of``): every key is read
            state = self.from_keys(dict(streams.items()))
        return super().dump(state)
