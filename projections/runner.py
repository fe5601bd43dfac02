"""Running projections: catch up from the checkpoint, follow live, and look into the past.

``ProjectionRunner`` folds the log into a projection's state and commits state and position
together (see ``checkpoints``), every ``commit_every`` events and at the end of each batch.
Every ``snapshot_every`` positions it also keeps a snapshot, which ``as_of`` starts from.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Generic, cast

from pydantic import BaseModel

from agentledger.events import Event, EventStore, NotFound
from agentledger.events.gcpause import collector_paused

from .base import Projection, S
from .checkpoints import CheckpointStore, KeyedState, PositionOutOfRange

log = logging.getLogger(__name__)


class ProjectionRunner(Generic[S]):
    """Keeps one projection's state up to date with the log, exactly once per event."""

    def __init__(
        self,
        store: EventStore,
        projection: Projection[S],
        checkpoints: CheckpointStore,
        *,
        commit_every: int | None = None,
        commit_seconds: float = 5.0,
        snapshot_every: int = 100_000,
    ) -> None:
        self.store = store
        self.projection = projection
        self.checkpoints = checkpoints
        # A commit writes the whole state, whose size grows with the log: commit by time (and
        # at the end of each catch-up), so the cost stays a bounded share of the work. An
        # event count can be given too (tests use small ones to make commits frequent).
        self.commit_every = commit_every
        self.commit_seconds = commit_seconds
        self.snapshot_every = snapshot_every
        self._last_commit_at = time.monotonic()
        self.position = 0
        self._committed = 0
        self._last_snapshot = 0
        self.state: S = projection.initial()
        # A keyed projection's changes since the last commit: key -> its last folded stream
        # version, and the position where each key first changed in that span.
        self._touched: dict[str, int] = {}
        self._first_touch: dict[str, int] = {}
        self._load()

    def _load(self) -> None:
        p = self.projection
        if p.keyed:
            keyed = self.checkpoints.load_keyed(p.name, p.version)
            if keyed is not None:
                position, rows = keyed
                self.state = p.from_keys({k.key: p.load_key(k.state) for k in rows})
                self.position = self._committed = position
                self._last_snapshot = position - position % self.snapshot_every
            return
        checkpoint = self.checkpoints.load(p.name, p.version)
        if checkpoint is not None:
            self.state = p.load(checkpoint.state)
            self.position = self._committed = checkpoint.position
            snapshots = self.checkpoints.snapshot_positions(p.name, p.version)
            self._last_snapshot = snapshots[-1] if snapshots else 0

    def _commit(self) -> None:
        if self.position == self._committed:
            return
        p = self.projection
        snapshot = self.position - self._last_snapshot >= self.snapshot_every
        if p.keyed:
            # Only the keys that changed; each key keeps its newest row per snapshot epoch.
            streams = self.state.__dict__["streams"]
            changed = [
                KeyedState(key, self.position, version, p.dump_key(self.state, key), first)
                for key, version in self._touched.items()
                if key in streams
                for first in (self._first_touch[key],)
            ]
            self.checkpoints.save_keyed(
                p.name,
                p.version,
                after=self._committed,
                position=self.position,
                changed=changed,
                epoch=self.position // self.snapshot_every,
            )
            self._touched.clear()
            self._first_touch.clear()
        else:
            self.checkpoints.save(
                p.name,
                p.version,
                after=self._committed,
                position=self.position,
                state=p.dump(self.state),
                snapshot=snapshot,
            )
        self._committed = self.position
        self._last_commit_at = time.monotonic()
        if snapshot:
            # Keyed states are kept per epoch of snapshot_every positions.
            self._last_snapshot = self.position - (
                self.position % self.snapshot_every if p.keyed else 0
            )

    def _touch(self, events: list[Event]) -> None:
        # Note the keys these events change (keyed projections only).
        key_of, touched = self.projection.key_of, self._touched
        for event in events:
            key = key_of(event)
            if key is not None:
                if key not in touched:
                    self._first_touch[key] = event.position or self.position
                touched[key] = event.version

    def _commit_due(self, since_commit: int, *, check_clock: bool = True) -> bool:
        return (
            (self.commit_every is not None and since_commit >= self.commit_every)
            or self.position - self._last_snapshot >= self.snapshot_every
            or (check_clock and time.monotonic() - self._last_commit_at >= self.commit_seconds)
        )

    def catch_up(self, progress: Callable[[int], None] | None = None) -> S:
        """Fold every event after the checkpoint up to the current end of the log."""
        apply, state = self.projection.apply, self.state
        since_commit = 0
        # Fix the end first: events of other types up to it count as folded (they change
        # nothing), and an event appended after this read is left for the next catch-up.
        head = self.store.head_position()
        events = _read(self.store, self.projection, self.position, head)
        inherits = self.projection.folds_inherited
        # This loop is the rebuild's hot path: what decides a commit is checked in full only
        # when a count or a position limit is reached, and the clock every 1,000 events.
        every = 1000 if self.commit_every is None else max(1, self.commit_every)
        snapshot_at = self._last_snapshot + self.snapshot_every
        position = self.position
        keyed = self.projection.keyed
        apply_keyed, touched, first_touch = (
            self.projection.apply_keyed,
            self._touched,
            self._first_touch,
        )
        with collector_paused():
            try:
                for event in events:
                    if inherits and event.type == "run.forked":
                        folded = _folded(self.store, self.projection, event)
                        state = self.projection.fold(folded, state)
                        if keyed:
                            self._touch(folded)
                    elif keyed:
                        key = apply_keyed(state, event)
                        if key is not None:
                            if key not in touched:
                                first_touch[key] = event.position or position
                            touched[key] = event.version
                    else:
                        state = apply(state, event)
                    position = event.position or position
                    since_commit += 1
                    if since_commit % every and since_commit % 1000 and position < snapshot_at:
                        continue
                    self.position = position
                    if self._commit_due(since_commit, check_clock=since_commit % 1000 == 0):
                        self.state = state
                        self._commit()
                        since_commit = 0
                        snapshot_at = self._last_snapshot + self.snapshot_every
                        if progress is not None:
                            progress(self.position)
                    elif progress is not None and since_commit % 10_000 == 0:
                        progress(self.position)
            finally:
                # The state folded and the position it is at stay together, even when a read or
                # a fold fails part-way (folds mutate the state in place).
                self.state, self.position = state, position
        self.position = max(self.position, head)
        self._commit()
        if progress is not None:
            progress(self.position)
        return state

    def follow(self, stop: threading.Event, on_change: Callable[[S], None] | None = None) -> None:
        """Fold new events as they are appended until ``stop`` is set (then commit)."""
        since_commit = 0
        with self.store.subscribe(self.position, _types(self.projection)) as subscription:
            while not stop.is_set():
                batch = subscription.poll(timeout=0.25)
                for event in batch:
                    folded = _folded(self.store, self.projection, event)
                    self.state = self.projection.fold(folded, self.state)
                    if self.projection.keyed:
                        self._touch(folded)
                    self.position = event.position or self.position
                since_commit += len(batch)
                if since_commit and self._commit_due(since_commit):
                    self._commit()
                    since_commit = 0
                if batch and on_change is not None:
                    on_change(self.state)
        self._commit()

    def rebuild(self, progress: Callable[[int], None] | None = None) -> S:
        """Drop the stored state and fold the whole log again."""
        p = self.projection
        self.checkpoints.reset(p.name)
        self.state, self.position, self._committed, self._last_snapshot = p.initial(), 0, 0, 0
        self._touched.clear()
        self._first_touch.clear()
        return self.catch_up(progress)


def check_position(store: EventStore, position: int) -> None:
    """Raise ``PositionOutOfRange`` unless ``position`` is in the log (0 to its head): an
    answer "as of" a position past the end would look like a real, empty one."""
    head = store.head_position()
    if not 0 <= position <= head:
        raise PositionOutOfRange(
            f"position {position} is outside the log, which runs from 0 to {head}"
        )


def as_of(
    store: EventStore,
    projection: Projection[S],
    position: int,
    checkpoints: CheckpointStore | None = None,
) -> S:
    """The projection's state after the event at ``position`` (0: before any event).

    Starts from the newest snapshot at or before ``position`` when there is one. For a keyed
    projection with checkpoints, the state's keys are read when they are asked for
    (``KeysAsOf``): a run's state as of any position costs a row and its later events, however
    many runs the log holds.
    """
    check_position(store, position)
    if checkpoints is not None and projection.keyed:
        return projection.from_keys(KeysAsOf(store, projection, checkpoints, position))
    state, start = None, 0
    if checkpoints is not None:
        snapshot = checkpoints.snapshot_at_or_before(projection.name, projection.version, position)
        if snapshot is not None:
            state, start = projection.load(snapshot.state), snapshot.position
    events = _read(store, projection, start, position)
    if not projection.folds_inherited:
        return projection.fold(events, state)
    current = projection.initial() if state is None else state
    for event in events:
        if event.type == "run.forked":
            current = projection.fold(_folded(store, projection, event), current)
        else:
            current = projection.apply(current, event)
    return current


def _folded(store: EventStore, projection: Projection[S], event: Event) -> list[Event]:
    """What folding ``event`` folds: for a projection that folds what forks inherit, a fork's
    ``run.forked`` and the events it inherits, read before any is folded (a read that fails
    leaves the state as it was); otherwise the event alone."""
    if projection.folds_inherited and event.type == "run.forked":
        return [event, *store.inherited(event)]
    return [event]


def _read(store: EventStore, projection: Projection[S], after: int, to: int) -> Iterator[Event]:
    """The events ``projection`` folds after position ``after`` up to ``to``: only its types,
    or, for a fold of every event that needs only headers of the types it does not handle,
    every event with only the handled ones decoded (decoding is most of a rebuild's cost)."""
    types = _types(projection)
    if types or not projection.reads_headers:
        return store.read_all(after, types=types, to_position=to)
    decode = (*projection.handled_types, "run.forked")
    # Headers reach only ``apply``'s envelope reads (``reads_headers``), typed as events here.
    return cast(Iterator[Event], store.read_headers(after, decode=decode, to_position=to))


def _types(projection: Projection[S]) -> tuple[str, ...]:
    """The event types a runner reads for ``projection`` (a fork's ``run.forked`` too, when it
    folds what forks inherit; empty: all types)."""
    types = projection.event_types
    if types and projection.folds_inherited and "run.forked" not in types:
        return (*types, "run.forked")
    return types


def run_events(store: EventStore, run: str) -> list[Event]:
    """Every event of ``run``, or ``NotFound`` saying how to find the runs there are."""
    events = store.read(run)
    if not events:
        raise NotFound(f"no run {run!r} in {store.url}; `agentledger runs` lists the runs")
    return events


def stream_as_of(store: EventStore, stream: str, position: int | None = None) -> list[Event]:
    """The events of ``stream`` up to global ``position`` (default: all), checked.

    Raises ``NotFound`` for a stream with no events and ``PositionOutOfRange`` for a position
    beyond the end of the log.
    """
    if position is not None:
        check_position(store, position)
    events = store.read(stream)
    if not events:
        raise NotFound(
            f"no run or stream {stream!r} in {store.url}; `agentledger runs` lists the runs, "
            "`agentledger streams` every stream"
        )
    if position is None:
        return events
    shown = [e for e in events if (e.position or 0) <= position]
    if not shown:
        raise PositionOutOfRange(
            f"{stream} starts at position {events[0].position}; position {position} is before it"
        )
    return shown


class KeysAsOf(Mapping[str, BaseModel]):
    """A keyed projection's states as of ``position``, each read when it is first asked for:
    its newest stored row at or before ``position``, then its stream's later events up to it.
    The keys (in the order they entered the state) are listed on first use of ``len``, ``in``
    or iteration."""

    def __init__(
        self,
        store: EventStore,
        projection: Projection[S],
        checkpoints: CheckpointStore,
        position: int,
    ) -> None:
        self._store, self._projection, self._checkpoints = store, projection, checkpoints
        self.position = position
        self._keys: dict[str, None] | None = None
        self._states: dict[str, BaseModel] = {}

    def __getitem__(self, key: str) -> BaseModel:
        state = self._states.get(key)
        if state is None:
            state = self._read(key)
            if state is None:
                raise KeyError(key)
            self._states[key] = state
        return state

    def _read(self, key: str) -> BaseModel | None:
        p, position = self._projection, self.position
        row = self._checkpoints.keyed_at_or_before(p.name, p.version, key, position)
        start = p.load_key(row.state) if row is not None else None
        last = self._store.version_at(key, position)
        first = row.stream_version + 1 if row is not None else 1
        events = self._store.read(key, first, last) if last >= first else []
        return p.fold_key(start, events)

    def _listed(self) -> dict[str, None]:
        if self._keys is None:
            p = self._projection
            committed, keys = self._checkpoints.keyed_keys(p.name, p.version, self.position)
            listed = dict.fromkeys(keys)
            if self.position > committed:  # keys that entered after the last commit
                for event in _read(self._store, p, committed, self.position):
                    for e in _folded(self._store, p, event):
                        key = p.key_of(e)
                        if key is not None and key not in listed:
                            listed[key] = None
            self._keys = listed
        return self._keys

    def __contains__(self, key: object) -> bool:
        return key in self._listed()

    def __iter__(self) -> Iterator[str]:
        return iter(self._listed())

    def __len__(self) -> int:
        return len(self._listed())

    def __deepcopy__(self, memo: dict[int, object]) -> dict[str, BaseModel]:
        # A copy of the state (``Projection.copy``) is a plain one: every key read.
        return {key: state.model_copy(deep=True) for key, state in self.items()}
