"""EventStore: the one log every agent appends to and every projection is folded from.

Built on eventsourcing's process recorders (SQLite, PostgreSQL, in-memory), which give an
atomic multi-event insert, a gapless global order whose commit order equals its id order, and
a tracking row written in the same transaction as the events (exactly-once consumers).
This module adds the typed envelope, optimistic concurrency by expected version, the hash
chain, live subscriptions and errors that say what to do.
"""

from __future__ import annotations

import logging
import os
import random
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from datetime import UTC
from types import TracebackType
from typing import NamedTuple, Self, cast

from eventsourcing.persistence import (
    IntegrityError,
    Notification,
    OperationalError,
    PersistenceError,
    StoredEvent,
    Tracking,
)
from pydantic import ValidationError
from pydantic_core import PydanticSerializationError

from ._backends import (
    DEFAULT_SQLITE_PATH,
    STORE_ENV,
    Backend,
    ClockWaiter,
    Lease,
    StreamSummary,
    open_backend,
)
from ._codec import (
    CURRENT_TOPICS,
    EnvelopeMapper,
    seal_as,
    split_state,
    topics_for,
)
from .catalogue import EVENT_LIST_ADAPTER, EVENT_TYPES, Event, RunForked
from .envelope import Envelope, PrincipalKind, principal_kind, restamped
from .errors import (
    AgentLedgerError,
    AlreadyProcessed,
    ConcurrencyConflict,
    InvalidEvent,
    NotAuthorized,
    NotFound,
    StoreUnavailable,
)
from .gcpause import collector_paused
from .verify import Report, verify_rows

log = logging.getLogger(__name__)

DEFAULT_STORE_URL = f"sqlite:///{DEFAULT_SQLITE_PATH}"
_STREAM_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:@\-]{0,199}$")
_PAGE = 1000
# Rows decoded per call: enough to spread the call's cost, few enough that a streaming reader
# (a fold) uses each event while it is still in cache and before a collection promotes it
# (a whole page at once made a rebuild slower than one call per row; bench/projections.py).
_DECODE_CHUNK = 32
# Event types that only some kinds of principal may append (approvals, expiry).
_RESTRICTED = frozenset(
    cls for cls in EVENT_TYPES.values() if cls.allowed_principals != frozenset(PrincipalKind)
)


def default_store_url() -> str:
    """``$AGENTLEDGER_STORE`` if set, else the embedded SQLite file ``./.agentledger/ledger.db``."""
    return os.environ.get(STORE_ENV, "").strip() or DEFAULT_STORE_URL


class EventHeader(NamedTuple):
    """Where an event is and what type it is, without its body: what ``read_headers`` gives for
    the events a reader did not ask to decode (decoding is most of the cost of reading). A
    named tuple: made once per event of a rebuild, it costs a quarter of a frozen dataclass."""

    position: int
    stream: str
    version: int
    type: str


@dataclass(frozen=True)
class Link:
    """A stream that inherits another's first events by reference (a fork, see ``RunForked``):
    its version 1 is the ``run.forked`` event at ``position``; its versions 2..``inherits`` + 1
    are the parent's versions 1..``inherits``, read through the parent; its own events follow,
    chained to its ``run.forked``, which is chained to the parent's event ``inherits``."""

    parent: str
    inherits: int
    position: int

    @property
    def head_version(self) -> int:
        """The version of the last inherited event: the fork's head before its own events."""
        return self.inherits + 1


@dataclass(frozen=True)
class ConsumerPosition:
    """A consumer's position to record atomically with the events it appends."""

    consumer: str
    position: int


class EventStore:
    """The typed, hash-chained, append-only event log (see the module docstring)."""

    def __init__(self, backend: Backend) -> None:
        self._backend = backend
        self._recorder = backend.recorder
        self._reader = backend.reader
        self._mapper = EnvelopeMapper()
        # stream -> (version, hash) of the newest event this process knows of. Used only
        # when the caller's expected version matches it, so a stale entry costs a re-read,
        # never a wrong chain: the insert still fails on a version clash.
        self._heads: dict[str, tuple[int, str | None]] = {}
        self._heads_lock = threading.Lock()
        # stream -> its link (None: not a fork by reference). A stream's version 1 never
        # changes, so an entry is never stale; streams with no events are not cached.
        self._links: dict[str, Link | None] = {}

    @classmethod
    def open(cls, url: str | None = None) -> EventStore:
        """Open the store at ``url`` (default: ``$AGENTLEDGER_STORE`` or the SQLite file)."""
        return cls(open_backend(url or default_store_url()))

    @property
    def url(self) -> str:
        """The store's URL, with any password masked."""
        return self._backend.url

    def close(self) -> None:
        """Close the store's connections."""
        self._backend.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # ------------------------------------------------------------ writing

    def append(
        self,
        stream: str,
        events: Sequence[Envelope],
        expected_version: int | None = None,
        *,
        tracking: ConsumerPosition | None = None,
    ) -> list[Event]:
        """Append ``events`` to ``stream`` atomically (all or none) and return them as recorded.

        ``expected_version`` is the stream version the caller decided on (0 for a new stream);
        if the stream has moved, ``ConcurrencyConflict`` is raised and nothing is written.
        ``None`` appends at the end whatever the version. ``tracking`` records a consumer's
        position in the same transaction (a duplicate delivery raises ``AlreadyProcessed``).
        """
        self._check_stream(stream)
        if not events and tracking is None:
            raise InvalidEvent("append needs at least one event (or a tracking position)")
        for index, event in enumerate(events):
            self._check_event(stream, index, event)
        if tracking is not None and tracking.position < 1:
            raise InvalidEvent(f"tracking position must be ≥ 1, got {tracking.position}")
        for index, event in enumerate(events):
            if isinstance(event, RunForked) and event.inherits:
                self._check_link(stream, events, index, event, expected_version)
        if expected_version is not None:
            return self._append_once(stream, events, expected_version, tracking)
        # "At the end, whatever the version": under contention another writer may take the
        # version we read; re-read and retry with jittered backoff for up to ~30 seconds.
        delay = 0.001
        deadline = time.monotonic() + 30.0
        while True:
            try:
                return self._append_once(stream, events, None, tracking)
            except ConcurrencyConflict:
                if time.monotonic() > deadline:
                    raise
                time.sleep(delay * (0.5 + random.random()))
                delay = min(delay * 2, 0.05)

    def _append_once(
        self,
        stream: str,
        events: Sequence[Envelope],
        expected_version: int | None,
        tracking: ConsumerPosition | None,
    ) -> list[Event]:
        version, prev_hash = self._head(stream, expected_version)
        if expected_version is not None and version != expected_version:
            raise ConcurrencyConflict(stream, expected_version, version)
        first = events[0] if events else None
        if isinstance(first, RunForked) and first.inherits:
            # A fork by reference chains on from the parent's event it inherits last.
            prev_hash = first.payload.parent_hash
        states, prev_hash = self._sealed(stream, events, version, prev_hash)
        stored_state = self._mapper.stored_state
        stored = [
            stored_state(stream, version + i, CURRENT_TOPICS[event.type], state)
            for i, (event, state) in enumerate(zip(events, states, strict=True), start=1)
        ]
        version += len(events)
        # Parsed back from the sealed bytes, all in one call: what is returned carries the
        # hash, exactly as readers will see it.
        sealed = self._validated(stream, events, states)
        kwargs = {}
        if tracking is not None:
            kwargs["tracking"] = Tracking(tracking.consumer, tracking.position)
        try:
            ids = self._insert(stored, **kwargs)
        except IntegrityError:
            self._forget(stream)
            if tracking is not None:
                recorded = self.position_of(tracking.consumer)
                if recorded >= tracking.position:
                    raise AlreadyProcessed(tracking.consumer, tracking.position, recorded) from None
            actual = self._read_head(stream)[0]
            raise ConcurrencyConflict(
                stream,
                expected_version if expected_version is not None else version - len(events),
                actual,
            ) from None
        if events:
            if isinstance(first, RunForked) and first.inherits:
                version = first.head_version  # its own events go on after the inherited ones
            with self._heads_lock:
                self._heads[stream] = (version, prev_hash)
        self._backend.notify_local()
        positions: list[int | None] = list(ids) if ids else [None] * len(sealed)
        for draft, position in zip(sealed, positions, strict=True):
            # Positions come from the store after the insert; the drafts are ours alone.
            object.__setattr__(draft, "position", position)
        return sealed

    def _insert(self, stored: list[StoredEvent], **kwargs: object) -> list[int] | None:
        delay = 0.05
        for attempt in range(6):
            try:
                ids = self._recorder.insert_events(stored, **kwargs)
                return list(ids) if ids is not None else None
            except OperationalError as exc:
                # SQLite waits up to its lock timeout before "database is locked"; under a long
                # pile-up we retry with backoff rather than let that message reach a user.
                if "locked" not in str(exc) or attempt == 5:
                    raise StoreUnavailable(
                        f"the store {self.url} did not accept the append: {exc}. Nothing was "
                        "written; retry, or check that no process holds a long write transaction."
                    ) from exc
                log.warning("store busy, retrying append (%s)", exc)
                time.sleep(delay)
                delay *= 2
            except PersistenceError as exc:
                if isinstance(exc, IntegrityError):
                    raise
                raise StoreUnavailable(f"the store {self.url} failed the append: {exc}") from exc
        raise AssertionError("unreachable")  # pragma: no cover

    def check(self, stream: str, events: Sequence[Envelope]) -> None:
        """Raise what ``append`` raises for ``events`` themselves (``InvalidEvent``,
        ``NotAuthorized``), writing nothing: the same checks of stream name, catalogue, fields,
        encoding and principals, not those of the stream's version or a fork's link. Verify
        tells with it which reactions the store refused."""
        self._check_stream(stream)
        if not events:
            raise InvalidEvent("append needs at least one event (or a tracking position)")
        for index, event in enumerate(events):
            self._check_event(stream, index, event)
        states, _ = self._sealed(stream, events, 0, None)
        self._validated(stream, events, states)

    @staticmethod
    def _sealed(
        stream: str, events: Sequence[Envelope], version: int, prev_hash: str | None
    ) -> tuple[list[bytes], str | None]:
        """The stored states of ``events`` appended after ``version`` (whose hash is
        ``prev_hash``), each chained on the one before, and the last one's hash."""
        states: list[bytes] = []
        for index, event in enumerate(events):
            version += 1
            if event.at.tzinfo is not UTC:
                event = restamped(event, at=event.at.astimezone(UTC))
            try:
                state, prev_hash = seal_as(event, stream, version, prev_hash)
            except PydanticSerializationError as exc:
                # e.g. a lone surrogate in a JSON value (a file name that is not UTF-8)
                raise InvalidEvent(
                    f"event #{index} ({event.type}) for stream {stream!r} cannot be encoded: "
                    f"{exc}; nothing was written"
                ) from None
            states.append(state)
        return states, prev_hash

    def _check_link(
        self,
        stream: str,
        events: Sequence[Envelope],
        index: int,
        event: RunForked,
        expected_version: int | None,
    ) -> None:
        # A fork by reference starts its stream, alone, and names an existing prefix exactly.
        p = event.payload
        where = f"event #{index} (run.forked) for stream {stream!r}"
        if len(events) != 1 or expected_version != 0:
            raise InvalidEvent(
                f"{where} inherits {p.prefix_version} events of {p.parent_run!r}: it must be the "
                "new stream's first event, appended alone with expected_version=0; nothing was "
                "written"
            )
        if p.parent_run == stream:
            raise InvalidEvent(f"{where} names its own stream as parent; nothing was written")
        found = self.read(p.parent_run, p.prefix_version, p.prefix_version)
        if not found or found[0].hash != p.parent_hash:
            actual = f"hash {found[0].hash}" if found else "no such event"
            raise InvalidEvent(
                f"{where}: the parent {p.parent_run!r} at version {p.prefix_version} has "
                f"{actual}, not parent_hash {p.parent_hash}; nothing was written"
            )

    def _check_stream(self, stream: str) -> None:
        if not isinstance(stream, str) or not _STREAM_NAME.fullmatch(stream):
            raise InvalidEvent(
                f"stream name {stream!r} is invalid: 1-200 characters, letters, digits and "
                "_ . : @ -, starting with a letter or digit (e.g. 'run-<uuid>')"
            )

    def _check_event(self, stream: str, index: int, event: object) -> None:
        cls = type(event)
        if not isinstance(event, Envelope) or EVENT_TYPES.get(event.type) is not cls:
            raise InvalidEvent(
                f"event #{index} for stream {stream!r} is a {cls.__name__}, not an event of the "
                "catalogue (agentledger.events.EVENT_TYPES); nothing was written"
            )
        if event.stream and event.stream != stream:
            raise InvalidEvent(
                f"event #{index} ({event.type}) names stream {event.stream!r} but is appended to "
                f"{stream!r}; nothing was written"
            )

    @staticmethod
    def _validated(stream: str, events: Sequence[Envelope], states: list[bytes]) -> list[Event]:
        # Validate exactly the bytes readers will decode: an event made without validation
        # (model_construct, model_copy(update=...)), or whose lists were changed after it was
        # made, must not put an unreadable row in the log.
        try:
            checked = EVENT_LIST_ADAPTER.validate_json(b"".join((b"[", b",".join(states), b"]")))
        except ValidationError:
            # Find the event at fault (and its field) one by one; this also passes an event
            # nested exactly as deep as one event may be, which the array's level refuses.
            checked = [
                EventStore._validated_one(stream, index, events[index], state)
                for index, state in enumerate(states)
            ]
        for event in checked:
            cls = type(event)
            if cls in _RESTRICTED and principal_kind(event.actor) not in cls.allowed_principals:
                allowed = ", ".join(sorted(k.value for k in cls.allowed_principals))
                raise NotAuthorized(
                    f"{event.actor} may not append {event.type}: only a {allowed} principal "
                    "may. Nothing was written."
                )
        return checked

    @staticmethod
    def _validated_one(stream: str, index: int, event: Envelope, state: bytes) -> Event:
        try:
            return cast(Event, type(event).model_validate_json(state))
        except ValidationError as exc:
            first = exc.errors()[0]
            field = ".".join(str(p) for p in first["loc"]) or "(event)"
            raise InvalidEvent(
                f"event #{index} ({event.type}) for stream {stream!r} is invalid: field "
                f"{field}: {first['msg']}; nothing was written"
            ) from None

    def _head(self, stream: str, expected_version: int | None) -> tuple[int, str | None]:
        with self._heads_lock:
            cached = self._heads.get(stream)
        if cached is not None and expected_version is not None and cached[0] == expected_version:
            return cached
        return self._read_head(stream)

    def _read_head(self, stream: str) -> tuple[int, str | None]:
        rows = self._reader.select_events(stream, desc=True, limit=1)
        if not rows:
            return 0, None
        version = rows[0].originator_version
        if version == 1 and (link := self.link(stream)) is not None:
            version = link.head_version  # a fork with no event of its own yet
        split = split_state(self._mapper.plain_state(rows[0]))
        return version, split[1] if split else None

    def _note_head(self, event: Event) -> None:
        # A subscription saw this event: remember it as the stream's head (if it is the newest
        # we know), so an append that expects this version needs no read of the head first.
        version = event.head_version if isinstance(event, RunForked) else event.version
        with self._heads_lock:
            cached = self._heads.get(event.stream)
            if cached is None or cached[0] < version:
                self._heads[event.stream] = (version, event.hash)

    def _forget(self, stream: str) -> None:
        with self._heads_lock:
            self._heads.pop(stream, None)

    # ------------------------------------------------------------ reading

    def read(
        self, stream: str, from_version: int = 1, to_version: int | None = None
    ) -> list[Event]:
        """The events of ``stream`` from ``from_version`` to ``to_version`` (inclusive).

        A fork by reference reads as a whole stream: the events it inherits come from its
        parent, as this stream's versions 2..N + 1, at the position of its ``run.forked``
        (they entered this run when it was forked); their ids and hashes are the parent's.
        """
        rows = self._backend.select_stream(stream, max(from_version, 1) - 1, to_version)
        with collector_paused():  # see read_all
            events = self._mapper.decode_rows(
                [(r.id, str(r.originator_id), r.originator_version, r.topic, r.state) for r in rows]
            )
        link = self.link(stream)
        if link is None:
            return events
        last = link.head_version
        lo, hi = max(from_version, 2), last if to_version is None else min(to_version, last)
        if lo > hi:
            return events
        inherited = [
            restamped(e, stream=stream, version=e.version + 1, position=link.position)
            for e in self.read(link.parent, lo - 1, hi - 1)
        ]
        return [
            *(e for e in events if e.version < lo),
            *inherited,
            *(e for e in events if e.version > hi),
        ]

    def link(self, stream: str) -> Link | None:
        """How ``stream`` inherits its parent's first events, if it is a fork by reference."""
        try:
            return self._links[stream]
        except KeyError:
            pass
        rows = self._backend.select_stream(stream, 0, 1)
        if not rows:
            return None
        link = None
        if rows[0].topic.startswith("run.forked@"):
            first = self._mapper.decode(rows[0])
            if isinstance(first, RunForked) and first.inherits:
                p = first.payload
                link = Link(p.parent_run, first.inherits, rows[0].id)
        self._links[stream] = link
        return link

    def version_at(self, stream: str, position: int) -> int:
        """How many events ``stream`` had at global ``position`` (its version then; 0: none)."""
        version = self._backend.version_at(stream, position)
        link = self.link(stream) if version == 1 else None
        return link.head_version if link is not None else version

    def inherited(self, event: Event) -> list[Event]:
        """The events ``event`` brings into its run by reference: for a fork's ``run.forked``,
        the parent's events it inherits (as ``read`` gives them); for any other event none.
        Global readers (projections over ``read_all``) fold them right after it."""
        if isinstance(event, RunForked) and event.inherits and event.version == 1:
            return self.read(event.stream, 2, event.head_version)
        return []

    def stream_version(self, stream: str) -> int:
        """The current version of ``stream`` (0 if it has no events)."""
        return self._read_head(stream)[0]

    def read_all(
        self,
        after_position: int = 0,
        limit: int | None = None,
        types: Sequence[str] = (),
        to_position: int | None = None,
    ) -> Iterator[Event]:
        """Events in global order after ``after_position`` (optionally only of ``types``, at
        any schema version: one this version does not know fails to decode, unskipped)."""
        kinds = self._kinds(types)
        decode_rows = self._mapper.decode_rows
        remaining = limit
        start = max(after_position, 0)
        while remaining is None or remaining > 0:
            page = _PAGE if remaining is None else min(_PAGE, remaining)
            rows = self._backend.read_page(start, page, kinds, to_position)
            # A page is decoded whole with the cyclic collector paused: its events make no
            # cycles, and the collector's passes over them (and over what the caller keeps)
            # found nothing and cost a fifth of a read (bench/store.py).
            events: list[Event] = []
            failure: Exception | None = None
            with collector_paused():
                for i in range(0, len(rows), _DECODE_CHUNK):
                    chunk = rows[i : i + _DECODE_CHUNK]
                    try:
                        events.extend(decode_rows(chunk))
                    except Exception as exc:
                        failure = exc  # the events before the bad row are still read
                        events.extend(self._readable_prefix(chunk))
                        break
            yield from events
            if failure is not None:
                raise failure
            if remaining is not None:
                remaining -= len(rows)
            if len(rows) < page:
                return
            start = rows[-1][0]

    def _readable_prefix(self, rows: Sequence[tuple[int, str, int, str, bytes]]) -> list[Event]:
        """The events of ``rows`` up to the first that cannot be decoded."""
        events: list[Event] = []
        for row in rows:
            try:
                events.append(self._mapper.decode_row(*row))
            except Exception:
                break
        return events

    def read_headers(
        self,
        after_position: int = 0,
        *,
        decode: Sequence[str],
        to_position: int | None = None,
    ) -> Iterator[Event | EventHeader]:
        """Every event in global order after ``after_position``: those of the types in
        ``decode`` as typed events, the others as ``EventHeader``. Their bodies are not read,
        so not checked either: a damaged one passes here (``verify`` finds it); a body of a
        type or schema version this version does not know is decoded, to fail as in
        ``read_all``."""
        wanted = frozenset(self._topics(decode))
        # The type of each topic read as a header; any other topic is decoded (one this
        # version does not know, to fail as ``read_all`` does).
        header_type = {
            topic: topic.partition("@")[0]
            for topic in self._topics(list(EVENT_TYPES))
            if topic not in wanted
        }
        decode_rows = self._mapper.decode_rows
        start = max(after_position, 0)
        while True:
            rows = self._backend.read_page(start, _PAGE, (), to_position)
            for i in range(0, len(rows), _DECODE_CHUNK):
                chunk = rows[i : i + _DECODE_CHUNK]
                types = [header_type.get(row[3]) for row in chunk]
                decoded = iter(
                    decode_rows([r for r, t in zip(chunk, types, strict=True) if t is None])
                )
                for row, kind in zip(chunk, types, strict=True):
                    if kind is None:
                        yield next(decoded)
                    else:
                        yield EventHeader(row[0], row[1], row[2], kind)
            if len(rows) < _PAGE:
                return
            start = rows[-1][0]

    def read_stored(
        self,
        after_position: int = 0,
        limit: int | None = None,
        types: Sequence[str] = (),
        to_position: int | None = None,
    ) -> Iterator[Notification]:
        """Stored rows in global order, undecoded (for verification and export)."""
        topics = self._topics(types)
        remaining = limit
        start = max(after_position, 0)
        while remaining is None or remaining > 0:
            page = _PAGE if remaining is None else min(_PAGE, remaining)
            rows = self._reader.select_notifications(
                start, page, stop=to_position, topics=topics, inclusive_of_start=False
            )
            yield from rows
            if remaining is not None:
                remaining -= len(rows)
            if len(rows) < page:
                return
            start = rows[-1].id

    def decode(self, row: StoredEvent) -> Event:
        """The typed event of a stored row (upcast to the current schema)."""
        return self._mapper.decode(row)

    def decode_row(
        self, position: int | None, stream: str, version: int, topic: str, state: bytes
    ) -> Event:
        """The typed event of a row given as its columns (the read path's page tuples)."""
        return self._mapper.decode_row(position, stream, version, topic, state)

    def plain_state(self, row: StoredEvent) -> bytes:
        """The stored bytes of a row with any cipher or compressor undone."""
        return self._mapper.plain_state(row)

    @staticmethod
    def _kinds(types: Sequence[str]) -> list[str]:
        """``types`` checked: the read path filters rows by type, at any schema version."""
        for name in types:
            if name not in EVENT_TYPES:
                raise NotFound(
                    f"unknown event type {name!r}; known types: {', '.join(sorted(EVENT_TYPES))}"
                )
        return list(types)

    @staticmethod
    def _topics(types: Sequence[str]) -> list[str]:
        """Every stored topic of ``types`` this version knows (all their schema versions)."""
        return [topic for name in EventStore._kinds(types) for topic in topics_for(name)]

    def head_position(self) -> int:
        """The position of the newest event in the log (0 when empty)."""
        return self._backend.head_position()

    def streams(self, prefix: str = "") -> list[StreamSummary]:
        """Every stream, in order of first appearance (optionally only those with ``prefix``)."""
        summaries = self._backend.stream_summaries(prefix)
        # A fork by reference with no event of its own yet: its version counts what it inherits.
        return [
            replace(s, version=self.stream_version(s.stream))
            if s.version == 1 and self.link(s.stream) is not None
            else s
            for s in summaries
        ]

    # ------------------------------------------------------------ consumers

    def subscribe(
        self, after_position: int = 0, types: Sequence[str] = (), *, wake: bool = True
    ) -> Subscription:
        """Every event after ``after_position`` in global order: catch-up, then live.

        ``wake=False``: look for new events a few times a second instead of being woken by
        each append, for a consumer to which that delay does not matter (an approval's expiry):
        it then costs the appends nothing (no LISTEN connection, no SQLite polling).
        """
        return Subscription(self, after_position, self._kinds(types), wake=wake)

    def record_position(self, consumer: str, position: int) -> None:
        """Record that ``consumer`` processed everything up to ``position`` (nothing to append)."""
        try:
            self._recorder.insert_tracking(Tracking(consumer, position))
        except IntegrityError:
            raise AlreadyProcessed(consumer, position, self.position_of(consumer)) from None

    def position_of(self, consumer: str) -> int:
        """The last position ``consumer`` recorded (0 if none)."""
        return self._backend.tracked_position(consumer)

    def positions(self, prefix: str) -> dict[str, int]:
        """Every consumer whose name starts with ``prefix`` that recorded a position, and
        its last position (e.g. ``agent:execution/``: every replica of a role that ever
        followed this log, replicas that no longer run included)."""
        return self._backend.tracked_positions(prefix)

    def lease(self, name: str) -> Lease | None:
        """An exclusive claim on ``name`` (a consumer's), or None at once if another process
        or store object holds it. Held until released or the holder dies, however it dies:
        so only one process at a time follows the log as one consumer. On PostgreSQL it is
        also lost when the server ends its session while the holder runs: holders ask
        ``Lease.held()`` now and then and stop following when it says no."""
        return self._backend.try_lease(name)

    def verify(self, progress: Callable[[int], None] | None = None) -> Report:
        """Check every event's hash and every stream's chain (see ``agentledger.events.verify``)."""

        def hash_at(stream: str, version: int) -> str | None:
            rows = self._backend.select_stream(stream, version - 1, version)
            split = split_state(self._mapper.plain_state(rows[0])) if rows else None
            return split[1] if split else None

        return verify_rows(self.read_stored(), self._mapper.plain_state, progress, hash_at)

    @property
    def backend(self) -> Backend:
        """The storage backend (for tests, benchmarks and the CLI's diagnostics)."""
        return self._backend


_SUBSCRIPTION_PAGE = 500
# A subscription reads at least this often while it waits, whatever woke it.
_REFETCH_S = 1.0


class Subscription(Iterator[Event]):
    """Events in global order, first those already stored, then live ones; never skips one.

    Iterate it (blocks for the next event), or call ``poll(timeout)`` for a batch. The order
    guarantee comes from the recorders: commit order equals position order (a table lock on
    PostgreSQL, SQLite's single writer), so reading "after the last position seen" can never
    pass over an event that commits later with a smaller position.
    """

    def __init__(
        self, store: EventStore, after_position: int, kinds: list[str], *, wake: bool = True
    ) -> None:
        self._store = store
        self._kinds = kinds  # event types followed, at any schema version (all if empty)
        self.position = after_position
        # Where the next fetch reads from: past the last row fetched, or, for a subscription
        # to some types, past the newest position the last fetch looked through.
        self.scanned = after_position
        self._buffer: deque[tuple[int, str, int, str, bytes]] = deque()
        self._stopped = threading.Event()
        self._waiter = store.backend.waiter() if wake else ClockWaiter()
        # Whether the last read found everything appended before it (less than a page), and
        # when it was: until the waiter is woken, there is nothing new to read.
        self._current = False
        self._fetched_at = float("-inf")

    def _fetch(self) -> bool:
        self._waiter.arm()
        self._fetched_at = time.monotonic()
        self._current = False  # until this read returns: one that raises is tried again at once
        backend = self._store.backend
        if not self._kinds:
            rows = backend.read_page(self.scanned, _SUBSCRIPTION_PAGE, (), None)
            if rows:
                self.scanned = rows[-1][0]
        else:
            # Only some types: a page may hold none of them, so the next fetch starts after
            # the head as it was before this one (every position up to it was committed:
            # commit order is position order), not after the last matching row — else each
            # wake-up would look again through every other event since that row.
            rows, head = backend.read_page_to_head(self.scanned, _SUBSCRIPTION_PAGE, self._kinds)
            if len(rows) == _SUBSCRIPTION_PAGE:
                self.scanned = rows[-1][0]
            else:
                self.scanned = max(self.scanned, head)
        self._current = len(rows) < _SUBSCRIPTION_PAGE
        self._buffer.extend(rows)
        return bool(rows)

    def poll(self, timeout: float = 0.0) -> list[Event]:
        """The events available now, waiting up to ``timeout`` seconds for the first one.

        With a timeout, a subscription that read up to the head reads again when its waiter
        tells of an append: on PostgreSQL an event another connection committed a moment
        before (its notification on the way, about a millisecond) may come with the next poll.
        ``timeout=0`` always reads.

        A row that cannot be decoded stops the subscription *at* that row: the events before
        it are returned, and the next call raises the row's error (and keeps raising it until
        the reader is upgraded); nothing after it is skipped to.
        """
        self._wait_for_rows(timeout)
        out: list[Event] = []
        while self._buffer:
            try:
                out.append(self._take())
            except AgentLedgerError:
                if out:
                    break
                raise
        return out

    def restart(self, after_position: int, types: Sequence[str] = ()) -> None:
        """Follow from ``after_position`` again, now only events of ``types`` (all if empty),
        keeping what wakes this subscription (on PostgreSQL a listening connection): for a
        consumer whose interest changes as it goes, cheaper than a new subscription."""
        self._kinds = self._store._kinds(types)
        self._buffer.clear()
        self.position = self.scanned = after_position
        self._current = False

    def poll_rows(self, timeout: float = 0.0) -> list[tuple[int, str, int, str, bytes]]:
        """Like ``poll``, but the rows undecoded, as (position, stream, version, topic, state):
        for a consumer that passes over most events by their stream and type, and decodes
        (``decode``) only the rest. The subscription moves past every row returned."""
        self._wait_for_rows(timeout)
        rows = list(self._buffer)
        self._buffer.clear()
        if rows:
            self.position = rows[-1][0]
        return rows

    def decode(self, row: tuple[int, str, int, str, bytes]) -> Event:
        """The typed event of a row from ``poll_rows`` (raises as ``poll`` would on it)."""
        event = self._store.decode_row(*row)
        self._store._note_head(event)
        return event

    def _wait_for_rows(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        # Read at once when asked not to wait, when the last read did not reach the head, or
        # when something this subscription may want was appended since; else wait for it.
        # (Before, every call read at once: after each batch, in every subscription, a read
        # that found nothing, a round trip on PostgreSQL.)
        due = timeout <= 0 or not self._current or self._waiter.woken_for(self._kinds)
        while not self._buffer and not self._stopped.is_set():
            # Read again when the waiter woke for rows this subscription may want (one to some
            # types is told on PostgreSQL which types each append held: it need not read after
            # each append of others), or _REFETCH_S after the last read (the scan mark moves
            # on, and a waiter that missed something is caught up).
            refetch_at = self._fetched_at + _REFETCH_S
            if due or time.monotonic() >= refetch_at:
                if self._fetch():
                    return
                refetch_at = self._fetched_at + _REFETCH_S
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return
                self._waiter.wait(min(remaining, 0.25, max(0.0, refetch_at - time.monotonic())))
                if (
                    self._stopped.is_set()
                    or time.monotonic() >= refetch_at
                    or self._waiter.woken_for(self._kinds)
                ):
                    break
            due = True

    def buffered(self) -> list[tuple[str, str]]:
        """(stream, topic) of the rows fetched but not yet taken: a look ahead, e.g. for a
        pause that is already in the log behind the event being handled."""
        return [(row[1], row[3]) for row in self._buffer]

    def _take(self) -> Event:
        # Decode before consuming, so a failure leaves the row (and the position) in place.
        row = self._buffer[0]
        event = self.decode(row)
        self._buffer.popleft()
        self.position = row[0]
        return event

    def __next__(self) -> Event:
        while not self._buffer:
            if self._stopped.is_set():
                raise StopIteration
            if not self._fetch():
                self._waiter.wait(0.25)
        return self._take()

    def stop(self) -> None:
        """Stop the subscription (iteration ends within a fraction of a second)."""
        self._stopped.set()

    def close(self) -> None:
        """Stop and release the subscription's connection."""
        self.stop()
        self._waiter.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
