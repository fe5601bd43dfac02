"""The three storage backends behind EventStore, each on an eventsourcing process recorder.

A backend owns: the recorder (events + tracking, one transaction), a way to wait for new
events (PostgreSQL LISTEN/NOTIFY, SQLite ``data_version`` polling, an in-process event for
memory), and a summary of streams (which the recorders do not offer).
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import logging
import math
import os
import random
import re
import select
import socket
import sqlite3
import struct
import sys
import threading
import time
import weakref
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, unquote, urlsplit

from eventsourcing.persistence import (
    ConnectionPoolClosedError,
    DatabaseError,
    DataError,
    IntegrityError,
    InterfaceError,
    InternalError,
    Notification,
    NotSupportedError,
    OperationalError,
    PersistenceError,
    ProcessRecorder,
    ProgrammingError,
)
from eventsourcing.utils import retry

if TYPE_CHECKING:
    from eventsourcing.postgres import PostgresProcessRecorder
    from eventsourcing.sqlite import SQLiteProcessRecorder

from .errors import ConfigurationError, StoreUnavailable

log = logging.getLogger(__name__)

DEFAULT_SQLITE_PATH = Path(".agentledger") / "ledger.db"
_NOTIFY_SUFFIX = "-notify"  # the file beside a database its appends touch
STORE_ENV = "AGENTLEDGER_STORE"
_MAX_VERSION = 2**62


@dataclass(frozen=True)
class StreamSummary:
    """One stream of the log: its name, current version and where it sits in the global order."""

    stream: str
    version: int
    first_position: int
    last_position: int


class Waiter(ABC):
    """Blocks until the log may have changed (spurious wake-ups are allowed, missed ones not)."""

    @abstractmethod
    def arm(self) -> None:
        """Called before each read; a change after ``arm`` makes the next ``wait`` return."""

    @abstractmethod
    def wait(self, timeout: float) -> None:
        """Return when the log may have changed since ``arm``, or after ``timeout`` seconds."""

    def woken_for(self, kinds: Sequence[str]) -> bool:
        """Whether something appended since ``arm`` may concern events of ``kinds`` (types,
        all when empty), told without waiting: False only if the waiter can tell that nothing
        was appended since (a reader that read everything up to ``arm`` then has nothing to
        read), or that what was is of other types only (then it forgets it: the next ``wait``
        waits for what comes after). A waiter that cannot tell says True."""
        return True

    def close(self) -> None:  # noqa: B027 - optional hook: most waiters hold nothing
        """Release what the waiter holds."""


class ClockWaiter(Waiter):
    """Wakes only when its timeout passes: for a subscriber to which a fraction of a second
    does not matter, so that it takes no part in each append (no LISTEN connection to notify,
    no SQLite polling)."""

    def arm(self) -> None:
        pass

    def wait(self, timeout: float) -> None:
        time.sleep(timeout)


_FILTER_PAGE = 1000  # rows looked through per query when a backend filters in Python


class Lease(ABC):
    """An exclusive claim on a name (a consumer's), held until released or until the holding
    process dies, however it dies: the operating system or the database server drops it."""

    @abstractmethod
    def release(self) -> None:
        """Give the name up (idempotent)."""

    @abstractmethod
    def held(self) -> bool:
        """Whether the name is still this holder's: False once released, or once what kept
        it is gone (a PostgreSQL session the server ended). May cost a round trip to the
        server: a holder asks now and then, not per event."""


class _HeldLease(Lease):
    """A lease kept by holding something open: a locked file, a database session.

    ``check`` says whether that thing still holds the lease (while not released); once it
    says no, the lease stays lost.
    """

    def __init__(self, close: Callable[[], None], check: Callable[[], bool] = lambda: True) -> None:
        self._close: Callable[[], None] | None = close
        self._check = check

    def release(self) -> None:
        close, self._close = self._close, None
        if close is not None:
            close()

    def held(self) -> bool:
        if self._close is None:
            return False
        if not self._check():
            self._check = lambda: False
            return False
        return True


# The descriptors of the file locks this process holds as leases (see SQLiteBackend.try_lease).
_LEASE_FDS: set[int] = set()


def _drop_leases_in_child() -> None:
    # A forked child shares its parent's locked files, and an flock lasts until every
    # descriptor of it is closed: the child's copies are closed, so a lease goes with the
    # process that took it (released, or dead), not with a child that process forked.
    for fd in list(_LEASE_FDS):
        with contextlib.suppress(OSError):
            os.close(fd)
    _LEASE_FDS.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_drop_leases_in_child)


class Backend(ABC):
    """A storage backend: a process recorder plus what the recorder does not offer."""

    recorder: ProcessRecorder
    """Writes (events and tracking), and reads where the backend has no separate reader."""
    reader: ProcessRecorder
    """Reads: selects, positions, tracking look-ups."""
    url: str

    @abstractmethod
    def waiter(self) -> Waiter:
        """A fresh waiter for one subscription."""

    @abstractmethod
    def stream_summaries(self, prefix: str = "") -> list[StreamSummary]:
        """Every stream (optionally those starting with ``prefix``), in order of first position."""

    def read_page(
        self, after: int, limit: int, kinds: Sequence[str], stop: int | None
    ) -> list[tuple[int, str, int, str, bytes]]:
        """Rows after ``after`` in position order, as (position, stream, version, topic, state).

        ``kinds``: only rows of these event types, at *any* schema version (a topic is
        ``type@version``): a row a newer writer stored at a version this reader does not know
        must reach the decoder and fail there, never be passed over unseen. The read path's
        page query: backends may answer it with plain tuples, cheaper than the recorder's
        ``Notification`` objects.
        """
        wanted = frozenset(kinds)
        out: list[tuple[int, str, int, str, bytes]] = []
        start = after
        while len(out) < limit:
            rows = self.reader.select_notifications(
                start, _FILTER_PAGE, stop=stop, inclusive_of_start=False
            )
            for n in rows:
                if not wanted or n.topic.partition("@")[0] in wanted:
                    out.append((n.id, str(n.originator_id), n.originator_version, n.topic, n.state))
                    if len(out) == limit:
                        break
            if len(rows) < _FILTER_PAGE:
                break
            start = rows[-1].id
        return out

    @abstractmethod
    def select_stream(self, stream: str, gt: int, lte: int | None) -> list[Notification]:
        """The rows of one stream with their global positions (the recorders omit positions)."""

    def version_at(self, stream: str, position: int) -> int:
        """The newest version of ``stream`` stored at or before global ``position`` (0: none)."""
        rows = [n for n in self.select_stream(stream, 0, None) if n.id <= position]
        return rows[-1].originator_version if rows else 0

    def head_position(self) -> int:
        """The position of the newest event (0 when the log is empty)."""
        return self.reader.max_notification_id() or 0

    def read_page_to_head(
        self, after: int, limit: int, kinds: Sequence[str]
    ) -> tuple[list[tuple[int, str, int, str, bytes]], int]:
        """``read_page`` up to the newest position, and that position: every row up to it was
        looked at (commit order is position order), whether or not it is of ``kinds``."""
        head = self.head_position()
        return self.read_page(after, limit, kinds, head), head

    def tracked_position(self, consumer: str) -> int:
        """The newest position ``consumer`` recorded (0 if none)."""
        return self.reader.max_tracking_id(consumer) or 0

    @abstractmethod
    def tracked_positions(self, prefix: str) -> dict[str, int]:
        """Every consumer whose name starts with ``prefix`` and the newest position it
        recorded (the recorders have no "list consumers")."""

    @abstractmethod
    def try_lease(self, name: str) -> Lease | None:
        """The lease of ``name`` if no one (no other process, no other store object) holds
        it, else None at once."""

    def notify_local(self) -> None:  # noqa: B027 - optional hook
        """Wake this process's waiters after a local append (a latency shortcut, not a need)."""

    def close(self) -> None:  # noqa: B027 - optional hook: the memory backend holds nothing
        """Close connections."""


# ---------------------------------------------------------------- memory


class _EventWaiter(Waiter):
    def __init__(self, listeners: list[threading.Event], lock: threading.Lock) -> None:
        self._event = threading.Event()
        self._listeners, self._lock = listeners, lock
        with lock:
            listeners.append(self._event)

    def arm(self) -> None:
        self._event.clear()

    def wait(self, timeout: float) -> None:
        self._event.wait(timeout)

    def woken_for(self, kinds: Sequence[str]) -> bool:
        return self._event.is_set()

    def close(self) -> None:
        with self._lock:
            if self._event in self._listeners:
                self._listeners.remove(self._event)


class MemoryBackend(Backend):
    """In-memory store, for unit tests only: nothing survives the process."""

    def __init__(self) -> None:
        from eventsourcing.popo import POPOProcessRecorder

        self.url = "memory://"
        self.recorder = self.reader = POPOProcessRecorder()
        self._listeners: list[threading.Event] = []
        self._lock = threading.Lock()
        self._leases: set[str] = set()

    def waiter(self) -> Waiter:
        return _EventWaiter(self._listeners, self._lock)

    def try_lease(self, name: str) -> Lease | None:
        with self._lock:
            if name in self._leases:
                return None
            self._leases.add(name)

        def close() -> None:
            with self._lock:
                self._leases.discard(name)

        return _HeldLease(close)

    def notify_local(self) -> None:
        with self._lock:
            for event in self._listeners:
                event.set()

    def _scan(self) -> Iterator[Notification]:
        start = 0
        while True:
            batch = self.recorder.select_notifications(start, 1000, inclusive_of_start=False)
            yield from batch
            if len(batch) < 1000:
                return
            start = batch[-1].id

    def select_stream(self, stream: str, gt: int, lte: int | None) -> list[Notification]:
        return [
            n
            for n in self._scan()
            if n.originator_id == stream
            and n.originator_version > gt
            and (lte is None or n.originator_version <= lte)
        ]

    def tracked_positions(self, prefix: str) -> dict[str, int]:
        with self._lock:
            tracked = dict(self.recorder._max_tracking_ids)  # type: ignore[attr-defined]
        return {
            name: position
            for name, position in sorted(tracked.items())
            if name.startswith(prefix) and position is not None
        }

    def stream_summaries(self, prefix: str = "") -> list[StreamSummary]:
        summaries: dict[str, StreamSummary] = {}
        for n in self._scan():
            name = str(n.originator_id)
            if name.startswith(prefix):
                first = summaries[name].first_position if name in summaries else n.id
                summaries[name] = StreamSummary(name, n.originator_version, first, n.id)
        return sorted(summaries.values(), key=lambda s: s.first_position)


# ---------------------------------------------------------------- SQLite


_FORKS = [0]  # forks of this process so far, in the child: a connection is not carried over
_LIVE_SQLITE: weakref.WeakSet[SQLiteBackend] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    # Before any other thread exists in the child: the fork is counted (the parent's
    # connections are not used), and each store makes its locks anew (the parent's may have
    # been held by threads the child does not have; its count of operations under way counts
    # theirs).
    _FORKS[0] += 1
    for backend in list(_LIVE_SQLITE):
        backend._locks_for_this_process()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)

_SQLITE_ERRORS: tuple[tuple[type[Exception], type[PersistenceError]], ...] = (
    (sqlite3.InterfaceError, InterfaceError),
    (sqlite3.DataError, DataError),
    (sqlite3.OperationalError, OperationalError),
    (sqlite3.IntegrityError, IntegrityError),
    (sqlite3.InternalError, InternalError),
    (sqlite3.ProgrammingError, ProgrammingError),
    (sqlite3.NotSupportedError, NotSupportedError),
    (sqlite3.DatabaseError, DatabaseError),
)


def _persistence_error(exc: sqlite3.Error) -> PersistenceError:
    """A sqlite3 error as eventsourcing's recorders raise it (their mapping, in order)."""
    for raw, ours in _SQLITE_ERRORS:
        if isinstance(exc, raw):
            return ours(exc)
    return PersistenceError(exc)


class _Gate:
    """Counts the operations under way on a store's connections, so that ``close()`` closes
    them only once none uses them: sqlite3 frees what a statement holds when its connection is
    closed, and a thread still executing on it crashed the process (eventsourcing's pool, too,
    closes the connections in use). A context manager of its own (``with gate:``): the
    hottest reads pass it (0.8 µs, against 2.2 through a generator and a Condition)."""

    def __init__(self, what: str) -> None:
        self._what = what
        self.reset()

    def reset(self) -> None:
        """Anew (a forked child: the parent's threads, and what they held, are not in it)."""
        self._lock = threading.Lock()
        self._idle = threading.Event()  # set while closing and no operation is under way
        self._users = 0
        self._closing = False

    def __enter__(self) -> None:
        with self._lock:
            if self._closing:
                raise ConnectionPoolClosedError(f"the store {self._what} is closed")
            self._users += 1

    def __exit__(self, *exc: object) -> None:
        with self._lock:
            self._users -= 1
            if self._closing and not self._users:
                self._idle.set()

    def close(self, timeout: float) -> bool:
        """Let no operation begin, and wait for those under way (False: some still are)."""
        with self._lock:
            self._closing = True
            if not self._users:
                self._idle.set()
        return self._idle.wait(timeout)


def _gated_datastore(gate: _Gate, **settings: Any) -> Any:
    """eventsourcing's SQLite datastore whose transactions pass ``gate``."""
    from eventsourcing.sqlite import SQLiteDatastore

    class GatedDatastore(SQLiteDatastore):
        @contextlib.contextmanager
        def transaction(self, *, commit: bool = False) -> Iterator[Any]:
            with gate, super().transaction(commit=commit) as cursor:
                yield cursor

    return GatedDatastore(**settings)


def _in_transaction(conn: sqlite3.Connection, work: Callable[[sqlite3.Cursor], Any]) -> Any:
    """``work(cursor)`` in a transaction of ``conn`` (in autocommit mode), committed if it
    returns, rolled back if it raises; sqlite3 errors as eventsourcing's recorders raise them
    (as its ``SQLiteTransaction`` does: a duplicate position or version is an IntegrityError,
    a lock not obtained in time an OperationalError). The caller holds ``conn`` alone (see
    ``SQLiteBackend._writing``)."""
    try:
        cursor = conn.cursor()
        try:
            if conn.in_transaction:
                # Left open by an interrupt between BEGIN and what guards it: nothing of it
                # was written; never carry on inside it.
                conn.rollback()
            cursor.execute("BEGIN")  # deferred, as eventsourcing's: the first insert locks
            try:
                result = work(cursor)
            except BaseException:
                with contextlib.suppress(sqlite3.Error):  # e.g. closed meanwhile
                    if conn.in_transaction:
                        conn.rollback()
                raise
            cursor.execute("COMMIT")
            return result
        finally:
            with contextlib.suppress(sqlite3.Error):
                cursor.close()
    except sqlite3.Error as exc:
        with contextlib.suppress(sqlite3.Error):  # COMMIT itself failed: nothing kept
            if conn.in_transaction:
                conn.rollback()
        raise _persistence_error(exc) from exc


class _FileWatch:
    """Linux inotify on one file: ``wait`` returns True when the file's attributes or contents
    changed since the last wait (events queue in the kernel, so none is lost between waits).
    ``open`` gives None where inotify is missing (other systems) or refuses."""

    _IN_MODIFY, _IN_ATTRIB, _IN_DELETE_SELF, _IN_IGNORED = 0x2, 0x4, 0x400, 0x8000
    _libc: Any = None

    def __init__(self, fd: int, path: str) -> None:
        self._fd, self._path = fd, path
        self._poll = select.poll()
        self._poll.register(fd, select.POLLIN)
        try:
            self._watch()
        except OSError:
            self.close()  # here only: a descriptor closed twice may be another's by then
            raise

    @classmethod
    def open(cls, path: str) -> _FileWatch | None:
        if not sys.platform.startswith("linux"):
            return None
        try:
            if cls._libc is None:
                cls._libc = ctypes.CDLL(None, use_errno=True)
            fd = cls._libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
            if fd < 0:
                return None
            try:
                return cls(fd, path)
            except OSError:
                return None
        except (OSError, AttributeError):  # no libc, or one without inotify
            return None

    def _watch(self) -> None:
        # The file may not exist yet (or was removed): make it, then watch it.
        with open(self._path, "ab"):
            pass
        mask = self._IN_MODIFY | self._IN_ATTRIB | self._IN_DELETE_SELF
        if self._libc.inotify_add_watch(self._fd, os.fsencode(self._path), mask) < 0:
            raise OSError(ctypes.get_errno(), f"inotify_add_watch {self._path}")

    def wait(self, timeout: float) -> bool:
        # Rounded up: a wait of less than a millisecond must not return at once (the caller
        # would spin through its last millisecond).
        if not self._poll.poll(max(0, math.ceil(timeout * 1000))):
            return False
        try:
            data = os.read(self._fd, 65536)  # drain: every queued event at once
        except BlockingIOError:
            return False
        # A removed file ends its watch: watch the new one (an append makes it again).
        offset = 0
        while offset + 16 <= len(data):
            mask, name_len = struct.unpack_from("=4xI4xI", data, offset)
            if mask & (self._IN_DELETE_SELF | self._IN_IGNORED):
                with contextlib.suppress(OSError):
                    self._watch()
            offset += 16 + name_len
        return True

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __del__(self) -> None:  # a subscription never closed must not keep an inotify instance
        with contextlib.suppress(Exception):
            self.close()


class _SQLiteWaiter(Waiter):
    # PRAGMA data_version changes when another connection commits to the file: a read of a
    # few microseconds. Between reads, a waiter sleeps on the store's notify file (inotify,
    # which every append of this library touches after its commit: see
    # SQLiteBackend.notify_local), rechecking every _SAFETY_POLL_S for writers that do not
    # touch it; where inotify is missing it polls data_version, from 0.5 ms to 4 ms apart.
    _SAFETY_POLL_S = 0.05

    def __init__(self, path: str, local: threading.Event, notify_path: str | None) -> None:
        self._conn = sqlite3.connect(path, check_same_thread=False, uri=True)  # "file:" names
        self._local = local
        self._lock = threading.Lock()
        self._closed = False
        self._seen = self._armed = self._version()
        self._watch = _FileWatch.open(notify_path) if notify_path else None
        self._waiting = False

    def _version(self) -> int | None:
        # close() may come from another thread while one waits: never touch a closed handle.
        with self._lock:
            if self._closed:
                return None
            row = self._conn.execute("PRAGMA data_version").fetchone()
            return int(row[0])

    def arm(self) -> None:
        # With a watch, a commit after this point is an event queued for the next wait.
        self._armed = version = self._version()
        if self._watch is None:
            self._seen = version

    def woken_for(self, kinds: Sequence[str]) -> bool:
        # Any commit to the file since arm() (ours or another process's) changed it; of which
        # types, this waiter cannot tell.
        version = self._version()
        return version is None or version != self._armed

    def wait(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        if self._watch is not None:
            while (remaining := deadline - time.monotonic()) > 0:
                # Touched after a commit: the change is visible by now (see the class note).
                if self._watch_wait(min(remaining, self._SAFETY_POLL_S)):
                    return
                version = self._version()  # quiet for a while: a writer that does not touch?
                if version is None or version != self._seen:
                    self._seen = version
                    return
            return
        interval = 0.0005
        while True:
            version = self._version()
            if version is None or version != self._seen:
                return
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            # Back off from 0.5 ms to 4 ms while idle; a local append wakes us at once.
            if self._local.wait(min(interval, remaining)):
                self._local.clear()
                return
            interval = min(interval * 2, 0.004)

    def _watch_wait(self, timeout: float) -> bool:
        # close() from another thread while this one sleeps on the watch leaves the closing
        # of its descriptor to this thread (a descriptor closed under a poll can be reused).
        with self._lock:
            watch = self._watch
            if self._closed or watch is None:
                return True
            self._waiting = True
        try:
            return watch.wait(timeout)
        finally:
            with self._lock:
                self._waiting = False
                if self._closed:
                    self._close_watch()

    def _close_watch(self) -> None:
        if self._watch is not None:
            self._watch.close()
            self._watch = None

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._conn.close()
            if not self._waiting:
                self._close_watch()


def _of_kinds(topic: str, kinds: Sequence[str]) -> str:
    """The SQLite condition "the ``topic`` column's type is one of ``kinds``": the type before
    '@', whatever the schema version (see ``Backend.read_page``); one parameter per kind."""
    return f" AND substr({topic}, 1, instr({topic}, '@') - 1) IN ({','.join('?' * len(kinds))})"


def _batch_recorder(
    datastore: Any,
    connection: Callable[[], contextlib.AbstractContextManager[sqlite3.Connection]] | None = None,
) -> Any:
    """eventsourcing's SQLite process recorder, inserting a batch of one stream's consecutive
    versions with one ``executemany`` (the recorder executes its insert once per event to learn
    each row id): same statement, same transaction, tracking row included; the rows' ids are
    then known from the last one's (consecutive under the write lock, checked on the first).
    About 2 µs less per event.

    With ``connection`` (this thread's own connection to the file, see SQLiteBackend._writing),
    its writes (events with their tracking row, a tracking row alone) go straight to SQLite in
    a transaction of their own: the same statements, in the same order, and the same errors as
    through eventsourcing's pool, whose connection queue, transaction and cursor wrappers cost
    more than the inserts (bench: 213 → 117 µs of CPU per append of three events)."""
    from eventsourcing.sqlite import SQLiteCursor, SQLiteProcessRecorder

    class BatchInsertRecorder(SQLiteProcessRecorder):
        def insert_events(
            self, stored_events: Sequence[Any], **kwargs: Any
        ) -> Sequence[int] | None:
            if connection is None:
                return super().insert_events(stored_events, **kwargs)
            with connection() as conn:
                ids: Sequence[int] | None = _in_transaction(
                    conn, lambda c: self._insert_events(SQLiteCursor(c), stored_events, **kwargs)
                )
            return ids

        def insert_tracking(self, tracking: Any) -> None:
            if connection is None:
                super().insert_tracking(tracking)
                return
            with connection() as conn:
                _in_transaction(conn, lambda c: self._insert_tracking(SQLiteCursor(c), tracking))

        def _insert_events(
            self, c: Any, stored_events: Sequence[Any], **kwargs: Any
        ) -> Sequence[int] | None:
            first, last = (stored_events[0], stored_events[-1]) if stored_events else (None, None)
            if (
                first is None
                or last is None
                or len(stored_events) < 2
                or any(s.originator_id != first.originator_id for s in stored_events)
                or last.originator_version - first.originator_version != len(stored_events) - 1
            ):
                return super()._insert_events(c, stored_events, **kwargs)
            c.executemany(
                self.insert_events_statement,
                [(s.originator_id, s.originator_version, s.topic, s.state) for s in stored_events],
            )
            # The transaction holds the write lock, so SQLite gave the rows consecutive rowids
            # (one more than the largest each time); checked on the first row, else read back.
            c.execute(
                f"SELECT rowid FROM {self.events_table_name} WHERE rowid = "
                "last_insert_rowid() - ? AND originator_id = ? AND originator_version = ?",
                (len(stored_events) - 1, first.originator_id, first.originator_version),
            )
            found = c.fetchone()
            if found is not None:
                start = int(found[0])
                ids = list(range(start, start + len(stored_events)))
            else:  # pragma: no cover - only if SQLite chose rowids another way
                c.execute(
                    f"SELECT rowid FROM {self.events_table_name} WHERE originator_id = ? "
                    "AND originator_version BETWEEN ? AND ? ORDER BY originator_version",
                    (first.originator_id, first.originator_version, last.originator_version),
                )
                ids = [int(row[0]) for row in c.fetchall()]
            tracking = kwargs.get("tracking")
            if tracking is not None:  # as the process recorder does after its inserts
                self._insert_tracking(c, tracking)
            return ids

    return BatchInsertRecorder(datastore)


def _ensure_wal(path: Path, timeout: float) -> None:
    """Put the database file in WAL mode (it stays so) before eventsourcing's pool opens it.

    The pool switches the mode on its first connection; on a new file, processes or threads
    doing that at once fail with "database is locked" without waiting, since SQLite does not
    wait for the lock this needs. Here the switch is retried while the file is locked; any
    other answer (an in-memory name keeps its mode) is left to the pool, as before.
    """
    name = str(path)
    if ":memory:" in name or "mode=memory" in name:
        return
    deadline = time.monotonic() + timeout
    delay = 0.005
    while True:
        try:
            wait = max(deadline - time.monotonic(), 0.0)
            with contextlib.closing(sqlite3.connect(name, timeout=wait, uri=True)) as conn:
                conn.execute("PRAGMA journal_mode=WAL").fetchone()
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
        time.sleep(delay * (0.5 + random.random()))
        delay = min(delay * 2, 0.2)


# The tables eventsourcing's SQLite process recorder makes, and the columns it reads.
_SQLITE_TABLES = {
    "stored_events": ("originator_id", "originator_version", "topic", "state"),
    "tracking": ("application_name", "notification_id"),
}


def _sqlite_tables(file: Path) -> dict[str, list[str]] | None:
    """The tables of the SQLite file ``file`` with their columns, read without writing (None:
    no such file, or not readable as a database; opening it then says what is wrong)."""
    if not file.is_file():
        return None
    try:
        uri = f"{file.resolve().as_uri()}?mode=ro"
        with contextlib.closing(sqlite3.connect(uri, uri=True)) as conn:
            names = [row[0] for row in conn.execute("SELECT name FROM sqlite_master")]
            return {
                name: [row[1] for row in conn.execute(f"PRAGMA table_info({_quoted(name)})")]
                for name in names
            }
    except sqlite3.Error:
        return None


def _quoted(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _foreign_table(file: Path) -> str | None:
    """What shows the SQLite file ``file`` to be another program's, read without writing: a
    table of ours by name without a column we read (None: none such, or no file yet, or not
    readable as a database; opening it then says what is wrong)."""
    tables = _sqlite_tables(file) or {}
    for table, needed in _SQLITE_TABLES.items():
        have = tables.get(table, [])
        missing = [c for c in needed if c not in have]
        if have and missing:
            return f"its {table} table has no column {missing[0]} (its columns: {', '.join(have)})"
    return None


def _database_file(name: str) -> Path | None:
    """The file SQLite keeps the database ``name`` in (None: it keeps it in memory).

    Names are opened as URIs (``uri=True``, as eventsourcing opens them): a ``file:`` name's
    file is its URI path, percent-decoded, without the query (``file:/abs/ledger.db?mode=rwc``,
    ``file:///abs/ledger.db``, ``file:rel/ledger.db``); any other name is a path as it is.
    """
    if ":memory:" in name or "mode=memory" in name:
        return None
    if not name.startswith("file:"):
        return Path(name)
    path = unquote(urlsplit(name).path)
    return Path(path) if path else None  # "file:" alone: a private temporary database


class SQLiteBackend(Backend):
    """A SQLite file in WAL mode: the embedded default, no server needed."""

    LOCK_TIMEOUT_S = 30

    def __init__(self, path: Path) -> None:
        from eventsourcing.sqlite import SQLiteDatastore, SQLiteProcessRecorder

        path = path.expanduser()
        # The file itself: a "file:" URI name's folder is not the name's parent.
        self._file = _database_file(str(path))
        try:
            if self._file is not None:
                self._file.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreUnavailable(f"cannot create the folder for {path}: {exc}") from exc
        self.path = path
        self.url = f"sqlite:///{path}"

        def datastore() -> SQLiteDatastore:
            return _gated_datastore(  # type: ignore[no-any-return]
                self._gate,
                db_name=str(path),
                lock_timeout=self.LOCK_TIMEOUT_S,
                originator_id_type="text",
                pool_size=2,
                max_overflow=6,
                # The pool's writes (the tables' creation; every write of a database SQLite
                # keeps in memory) queue for its writer connection; wait as long as SQLite
                # itself waits for the file lock, not the pool's default 5 s.
                pool_timeout=self.LOCK_TIMEOUT_S,
            )

        self._gate = _Gate(self.url)
        self._reads = threading.local()
        self._writes = threading.local()
        # Every plain connection of this store (a thread's reads or writes), closed by close().
        self._conns: list[tuple[threading.Thread, sqlite3.Connection, int]] = []
        self._closed = False
        if self._file is not None and (foreign := _foreign_table(self._file)) is not None:
            # As PostgreSQL refuses such a table (creating the tables fails on it), and before
            # anything (WAL mode, a tracking table) is written to another program's file.
            raise StoreUnavailable(
                f"{self._file} is not an agentledger store: {foreign}. Give --store (or "
                f"${STORE_ENV}) another file, or move this one away; it was left as it was"
            )
        self._locks_for_this_process()
        _LIVE_SQLITE.add(self)
        try:
            _ensure_wal(path, self.LOCK_TIMEOUT_S)
            self.datastore = datastore()
            # Writes go on a plain connection per thread too (see _batch_recorder), for a file;
            # a name SQLite keeps in memory is shared through the pool's connections only.
            self.recorder: SQLiteProcessRecorder = _batch_recorder(
                self.datastore, self._writing if self._file is not None else None
            )
            self._create_tables()
            # Reads get their own pool: eventsourcing's pool queues every request behind a
            # writer that waits for the file lock, and in WAL mode reads need not wait at all.
            self.read_datastore = datastore()
            self.reader = SQLiteProcessRecorder(self.read_datastore)
        except Exception as exc:
            raise StoreUnavailable(
                f"cannot open the SQLite store {path}: {exc}. Check that the path is a "
                "writable file (or does not exist yet)."
            ) from exc
        self._local = threading.Event()
        self._polling: weakref.WeakSet[_SQLiteWaiter] = weakref.WeakSet()
        # The hot reads (subscription pages, heads, stream reads) go on a plain connection per
        # thread (see _read); a name SQLite keeps in memory has no file to open it on.
        name = str(path)
        self._plain_reads = self._file is not None
        # (Not for a "file:" URI name: the sidecar's path would be wrong; such a store polls.)
        plain_file = self._plain_reads and not name.startswith("file:")
        self._notify_path = f"{name}{_NOTIFY_SUFFIX}" if plain_file else None

    def _read(self, statement: str, params: Sequence[Any] = ()) -> list[Any]:
        """The rows of one read statement, on this thread's own connection.

        In WAL mode a statement outside a transaction reads one consistent snapshot by itself
        and never waits for the writer. eventsourcing's pool wraps each read in a pool lock,
        BEGIN and ROLLBACK: 30-50 µs a read against 3-6 µs this way, and every agent reads
        after every append (a subscription's page and head). Errors are raised as the
        recorders raise them; after ``close()`` as the closed pool did.
        """
        if not self._plain_reads:
            with self.read_datastore.transaction(commit=False) as cursor:
                raw = cursor.sqlite_cursor
                raw.row_factory = None
                raw.execute(statement, params)
                return raw.fetchall()
        with self._gate:
            try:
                return self._thread_conn(self._reads).execute(statement, params).fetchall()
            except sqlite3.Error as exc:
                raise _persistence_error(exc) from exc

    def _locks_for_this_process(self) -> None:
        # Made here, and anew in a forked child (_after_fork_in_child): the parent's may have
        # been held by a thread that does not exist in the child (it would wait forever).
        # Threads appending through this store take turns, handed over at once (as the
        # pool's writer lock did): waiting on the file lock instead, they slept in SQLite's
        # busy handler (1 to 100 ms at a time), in no order. Another store object, or
        # another process, still waits on the file lock.
        self._write_lock = threading.Lock()
        self._conns_lock = threading.Lock()
        self._writes.active = False  # the forking thread's, if it forked mid-append
        self._gate.reset()

    @contextlib.contextmanager
    def _writing(self) -> Iterator[sqlite3.Connection]:
        """This thread's connection for writes, held alone for one transaction."""
        local = self._writes
        if getattr(local, "active", False):
            # An append from inside another of this thread (a signal handler, a callback):
            # its BEGIN would fail, and the rollback that follows would end the outer
            # transaction, whose rest would then commit piecemeal (or it would wait for the
            # lock its own thread holds).
            raise OperationalError(
                "an append of this thread is under way (this one was made from inside it); "
                "nothing was written"
            )
        local.active = True
        try:
            with self._gate:
                if not self._write_lock.acquire(timeout=self.LOCK_TIMEOUT_S):
                    raise OperationalError(
                        "database is locked: another thread appends through this store"
                    )
                try:
                    yield self._thread_conn(local, writes=True)
                finally:
                    self._write_lock.release()
        finally:
            local.active = False

    def _thread_conn(self, local: threading.local, *, writes: bool = False) -> sqlite3.Connection:
        """This thread's plain connection in ``local`` (its reads', or its writes'), made on
        first use, and again in a forked child (a connection is not carried over)."""
        if self._closed:
            raise ConnectionPoolClosedError(f"the store {self.url} is closed")
        conn: sqlite3.Connection | None = getattr(local, "conn", None)
        if conn is None or local.forks != _FORKS[0]:
            try:
                conn = local.conn = self._open_connection(writes=writes)
            except sqlite3.Error as exc:
                raise _persistence_error(exc) from exc
            local.forks = _FORKS[0]
        return conn

    def _open_connection(self, *, writes: bool) -> sqlite3.Connection:
        with self._conns_lock:
            if self._closed:
                raise ConnectionPoolClosedError(f"the store {self.url} is closed")
            conn = sqlite3.connect(
                str(self.path),
                timeout=self.LOCK_TIMEOUT_S,
                # Autocommit: no implicit BEGIN; each read its own snapshot, each write in the
                # transaction it begins and ends itself.
                isolation_level=None,
                check_same_thread=False,  # closed by close(), from another thread
                uri=True,  # as eventsourcing opens it ("file:" names)
            )
            if not writes:
                conn.execute("PRAGMA query_only = ON")
            # Those of threads that have ended are closed (a server's request threads; threads
            # not started by Python never end for `threading`, and keep theirs until close()).
            # Those a fork carried over are the parent's: kept, never closed nor collected here.
            live = []
            for thread, other, forks in self._conns:
                if forks != _FORKS[0] or thread.is_alive():
                    live.append((thread, other, forks))
                else:
                    other.close()
            self._conns = [*live, (threading.current_thread(), conn, _FORKS[0])]
            return conn

    def head_position(self) -> int:
        return int(self._read("SELECT MAX(rowid) FROM stored_events")[0][0] or 0)

    def tracked_position(self, consumer: str) -> int:
        rows = self._read(
            "SELECT MAX(notification_id) FROM tracking WHERE application_name = ?", (consumer,)
        )
        return int(rows[0][0] or 0)

    def tracked_positions(self, prefix: str) -> dict[str, int]:
        rows = self._read(
            "SELECT application_name, MAX(notification_id) FROM tracking "
            "WHERE application_name >= ? AND application_name < ? "
            "GROUP BY application_name ORDER BY application_name",
            (prefix, prefix + "\U0010ffff"),
        )
        return {str(r[0]): int(r[1]) for r in rows}

    def _create_tables(self) -> None:
        # Processes opening a new file at once race in the recorder's first-time setup (both
        # insert its "__migration__" tracking row); the loser finds the tables made: retry.
        for attempt in range(5):
            try:
                self.recorder.create_table()
                return
            except PersistenceError:
                if attempt == 4:
                    raise
                time.sleep(0.05 * (attempt + 1))

    def try_lease(self, name: str) -> Lease | None:
        # An flock on a file per name beside the database file (a "file:" URI store's too):
        # the kernel drops it when the process dies, however it dies, and it is not inherited
        # by the commands tools run (os.open's descriptors are not inheritable). A database
        # SQLite keeps in memory needs none: no other process can open it, so no second
        # `serve` or `run` can follow it (what a lease keeps out).
        if self._file is None:
            return _HeldLease(lambda: None)
        import fcntl

        folder = Path(f"{self._file}-leases")
        try:
            folder.mkdir(exist_ok=True)
            fd = os.open(
                folder / hashlib.sha256(name.encode()).hexdigest()[:32],
                os.O_RDWR | os.O_CREAT,
                0o600,
            )
        except OSError as exc:
            raise StoreUnavailable(f"cannot take the lease of {name!r} in {folder}: {exc}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        except OSError as exc:  # a file system without locks: no guard, as before leases
            log.warning("no lease for %s (%s): file locks refused: %s", name, folder, exc)
        with contextlib.suppress(OSError):  # who holds it, for a person looking
            os.ftruncate(fd, 0)
            os.write(fd, f"{name} pid {os.getpid()} on {socket.gethostname()}\n".encode())
        _LEASE_FDS.add(fd)

        def close() -> None:
            _LEASE_FDS.discard(fd)
            os.close(fd)

        # An flock lasts while its descriptor is open: until released, or in a forked child
        # (whose copies are closed at the fork).
        return _HeldLease(close, lambda: fd in _LEASE_FDS)

    def waiter(self) -> Waiter:
        waiter = _SQLiteWaiter(str(self.path), self._local, self._notify_path)
        if waiter._watch is None:
            self._polling.add(waiter)
        return waiter

    def notify_local(self) -> None:
        if self._polling:  # only waiters that poll wait on it (the others sleep on inotify)
            self._local.set()
        # Wake the subscriptions of every process (inotify on this file; see _SQLiteWaiter):
        # after the commit, so what wakes them is visible. A few microseconds.
        if self._notify_path is not None:
            try:
                os.utime(self._notify_path)
            except FileNotFoundError:
                with contextlib.suppress(OSError), open(self._notify_path, "ab"):
                    pass
            except OSError:  # e.g. a read-only folder: the waiters' polls still see it
                pass

    def select_stream(self, stream: str, gt: int, lte: int | None) -> list[Notification]:
        statement = (
            "SELECT rowid, originator_id, originator_version, topic, state FROM stored_events "
            "WHERE originator_id = ? AND originator_version > ? AND originator_version <= ? "
            "ORDER BY originator_version"
        )
        rows = self._read(statement, (stream, gt, _MAX_VERSION if lte is None else lte))
        return [Notification(r[1], r[2], r[3], r[4], r[0]) for r in rows]

    def version_at(self, stream: str, position: int) -> int:
        # Versions and positions grow together in a stream: walk its index from the newest.
        statement = (
            "SELECT originator_version FROM stored_events WHERE originator_id = ? AND rowid <= ? "
            "ORDER BY originator_version DESC LIMIT 1"
        )
        rows = self._read(statement, (stream, position))
        return int(rows[0][0]) if rows else 0

    def read_page(
        self, after: int, limit: int, kinds: Sequence[str], stop: int | None
    ) -> list[tuple[int, str, int, str, bytes]]:
        # Plain tuples straight from sqlite3: building sqlite3.Row and Notification objects
        # cost more per row than the query itself (bench/store.py).
        statement = (
            "SELECT rowid, originator_id, originator_version, topic, state FROM stored_events "
            "WHERE rowid > ?"
        )
        params: list[Any] = [after]
        if stop is not None:
            statement += " AND rowid <= ?"
            params.append(stop)
        if kinds:
            statement += _of_kinds("topic", kinds)
            params.extend(kinds)
        statement += " ORDER BY rowid LIMIT ?"
        params.append(limit)
        return self._read(statement, params)

    def read_page_to_head(
        self, after: int, limit: int, kinds: Sequence[str]
    ) -> tuple[list[tuple[int, str, int, str, bytes]], int]:
        # One statement, one snapshot: the head, and the page up to it (a subscription to a
        # few types asks for both on every wake-up).
        statement = (
            "SELECT h.m, e.rowid, e.originator_id, e.originator_version, e.topic, e.state "
            "FROM (SELECT MAX(rowid) AS m FROM stored_events) AS h "
            "LEFT JOIN stored_events AS e ON e.rowid > ? AND e.rowid <= h.m"
        )
        params: list[Any] = [after]
        if kinds:
            statement += _of_kinds("e.topic", kinds)
            params.extend(kinds)
        statement += " ORDER BY e.rowid LIMIT ?"
        params.append(limit)
        found = self._read(statement, params)
        head = int(found[0][0] or 0) if found else 0
        return [r[1:] for r in found if r[1] is not None], head

    def stream_summaries(self, prefix: str = "") -> list[StreamSummary]:
        # The recorders have no "list streams"; one aggregate query over the primary key.
        statement = (
            "SELECT originator_id, MAX(originator_version), MIN(rowid), MAX(rowid) "
            "FROM stored_events WHERE originator_id >= ? AND originator_id < ? "
            "GROUP BY originator_id ORDER BY MIN(rowid)"
        )
        rows = self._read(statement, (prefix, prefix + "\U0010ffff"))
        return [StreamSummary(r[0], r[1], r[2], r[3]) for r in rows]

    def close(self) -> None:
        self._closed = True
        # The operations under way end first (see _Gate); none begins after. One that still
        # runs after the lock timeout (a read of minutes) is interrupted, then waited for.
        if not self._gate.close(self.LOCK_TIMEOUT_S):
            with self._conns_lock:
                running = [c for _, c, forks in self._conns if forks == _FORKS[0]]
            for conn in running:
                conn.interrupt()
            if not self._gate.close(5.0):
                log.warning("closing the store %s while a thread still uses it", self.url)
        self.datastore.close()
        self.read_datastore.close()
        with self._conns_lock:
            conns = self._conns
            self._conns = [c for c in conns if c[2] != _FORKS[0]]  # a parent's: kept
        for _, conn, forks in conns:
            if forks == _FORKS[0]:
                conn.close()


# ---------------------------------------------------------------- PostgreSQL


@dataclass(frozen=True)
class PostgresSettings:
    """Connection settings parsed from a ``postgresql://`` URL."""

    host: str
    port: int
    dbname: str
    user: str
    password: str
    schema: str
    pool_size: int
    connection: tuple[tuple[str, str], ...] = ()
    """libpq connection options from the URL (TLS, application name), passed on as given."""

    def describe(self) -> str:
        """The URL with the password masked, safe to print."""
        auth = f"{self.user}:***@" if self.password else f"{self.user}@"
        options = "".join(f"&{k}={v}" for k, v in self.connection)
        return (
            f"postgresql://{auth}{self.host}:{self.port}/{self.dbname}?schema={self.schema}"
            + options
        )


# libpq's connection options a store URL may carry (none is a secret: a key file's passphrase,
# sslpassword, is not among them), and the values of sslmode.
_LIBPQ_OPTIONS = (
    "sslmode",
    "sslrootcert",
    "sslcert",
    "sslkey",
    "sslcrl",
    "application_name",
    "target_session_attrs",
)
_SSLMODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")
# NAMEDATALEN - 1: the longest name PostgreSQL keeps whole (it truncates longer ones).
_MAX_NAME_BYTES = 63
# What an option left out of a store URL means.
_DEFAULTS = {"schema": "public", "pool_size": "4", "sslmode": "prefer"}


def _pg_connect(s: PostgresSettings) -> Any:
    """A plain autocommit connection with the store's settings (the pool makes the others)."""
    import psycopg
    from psycopg.conninfo import make_conninfo

    return psycopg.connect(
        make_conninfo("", **dict(s.connection)),
        host=s.host,
        port=s.port,
        dbname=s.dbname,
        user=s.user,
        password=s.password or None,
        connect_timeout=5,
        autocommit=True,
    )


def parse_postgres_url(url: str) -> PostgresSettings:
    """Parse ``postgresql://user:pass@host:port/db?schema=s&pool_size=n`` (clear errors)."""
    try:
        parts = urlsplit(url)
        hostname = parts.hostname
    except ValueError as exc:  # a bracketed host that is no IPv6 address, or an unclosed one
        raise ConfigurationError(
            f"store URL {_mask(url)} has an invalid host ({exc}); e.g. "
            "postgresql://user@127.0.0.1:5432/db, or an IPv6 host in brackets: "
            "postgresql://user@[::1]:5432/db"
        ) from None
    try:
        port = parts.port or 5432
    except ValueError:
        raise ConfigurationError(
            f"store URL has an invalid port: {_mask(url)}; e.g. postgresql://user@127.0.0.1:5432/db"
        ) from None
    dbname = unquote(parts.path.lstrip("/"))
    if not hostname or not dbname:
        raise ConfigurationError(
            f"store URL {_mask(url)} needs a host and a database name, "
            "e.g. postgresql://postgres@127.0.0.1:5432/agentledger"
        )
    # Blank values kept: "schema=" dropped would mean the public schema, said nowhere.
    query = parse_qs(parts.query, keep_blank_values=True)
    unknown = set(query) - {"schema", "pool_size", *_LIBPQ_OPTIONS}
    if unknown:
        raise ConfigurationError(
            f"store URL has unknown option(s) {', '.join(sorted(unknown))}; "
            f"known: schema, pool_size, {', '.join(_LIBPQ_OPTIONS)}"
        )
    repeated = sorted(k for k, values in query.items() if len(values) > 1)
    if repeated:
        raise ConfigurationError(
            f"store URL gives {', '.join(repeated)} more than once "
            f"({'; '.join(', '.join(query[k]) for k in repeated)}); give each option once"
        )
    blank = sorted(k for k, values in query.items() if not values[0])
    if blank:
        defaults = [f"{k} {_DEFAULTS[k]}" for k in blank if k in _DEFAULTS]
        raise ConfigurationError(
            f"store URL option(s) {', '.join(f'{k}=' for k in blank)} have no value; give "
            "one, or leave the option out"
            + (f" (default: {', '.join(defaults)})" if defaults else "")
        )
    sslmode = query.get("sslmode", [_DEFAULTS["sslmode"]])[0]
    if sslmode not in _SSLMODES:
        raise ConfigurationError(
            f"sslmode {sslmode!r} in the store URL is not one of {', '.join(_SSLMODES)}"
        )
    schema = query.get("schema", [_DEFAULTS["schema"]])[0]
    if not schema.replace("_", "").isalnum():
        raise ConfigurationError(f"schema {schema!r} must be letters, digits and underscores")
    size = len(schema.encode())
    if size > _MAX_NAME_BYTES:
        # PostgreSQL would cut it to its first 63 bytes without a word: the log would be in a
        # schema of another name than every message gives, shared with any of that prefix.
        raise ConfigurationError(
            f"schema {schema!r} in the store URL is {size} bytes long; PostgreSQL keeps only "
            f"the first {_MAX_NAME_BYTES} bytes of a name: give a shorter one"
        )
    try:
        pool_size = int(query.get("pool_size", [_DEFAULTS["pool_size"]])[0])
    except ValueError:
        raise ConfigurationError("pool_size in the store URL must be a whole number") from None
    if pool_size < 1:
        raise ConfigurationError(
            f"pool_size={pool_size} in the store URL: it must be 1 or more (connections each "
            "process keeps open; default 4)"
        )
    return PostgresSettings(
        host=hostname,
        port=port,
        dbname=dbname,
        user=unquote(parts.username or os.environ.get("PGUSER", "postgres")),
        password=unquote(parts.password or os.environ.get("PGPASSWORD", "")),
        schema=schema,
        pool_size=pool_size,
        connection=tuple((k, query[k][0]) for k in _LIBPQ_OPTIONS if k in query),
    )


def _mask(url: str) -> str:
    try:
        password = urlsplit(url).password
    except ValueError:  # a malformed host: the password is what lies between ':' and '@'
        match = re.match(r"[^:/]*://[^/@:]*:([^/@]*)@", url)
        password = match[1] if match else None
    if password:
        return url.replace(f":{password}@", ":***@")
    return url


class _PostgresWaiter(Waiter):
    # A dedicated connection LISTENs on the recorder's channel: every insert transaction
    # NOTIFYs it on commit, which sets our flag. Ours (AppendFunctionRecorder) say which types
    # the append held, so a subscription to other types need not read (``woken_for``);
    # eventsourcing's own recorder, or an older agentledger, notifies with no payload: then
    # any subscription reads.
    def __init__(self, connect: Any, channel: str) -> None:
        import psycopg
        from psycopg import sql

        self._flag = threading.Event()
        self._lock = threading.Lock()
        self._types: set[str] = set()  # notified since arm()
        self._unknown = False  # a notification since arm() said no types
        self._stop = threading.Event()
        self._conn: psycopg.Connection[Any] = connect()
        self._conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))
        self._thread = threading.Thread(target=self._listen, name="agentledger-listen", daemon=True)
        self._thread.start()

    def _listen(self) -> None:
        try:
            while not self._stop.is_set():
                for notify in self._conn.notifies(timeout=0.25, stop_after=1):
                    with self._lock:
                        if notify.payload:
                            self._types.update(notify.payload.split(","))
                        else:
                            self._unknown = True
                        self._flag.set()
        except Exception:  # connection closed under us on close(), or the server went away
            if not self._stop.is_set():
                log.warning("LISTEN connection lost; subscription falls back to polling")
            with self._lock:
                self._unknown = True
                self._flag.set()

    def arm(self) -> None:
        with self._lock:
            self._flag.clear()
            self._types.clear()
            self._unknown = False

    def woken_for(self, kinds: Sequence[str]) -> bool:
        with self._lock:
            if self._unknown or not self._thread.is_alive():
                return True
            if not kinds:
                return self._flag.is_set()
            if not self._types.isdisjoint(kinds):
                return True
            self._flag.clear()  # only other types' appends (or nothing, a timeout) since arm()
            self._types.clear()
            return False

    def wait(self, timeout: float) -> None:
        # If the LISTEN thread died, poll every 50 ms rather than sleep for the whole timeout.
        self._flag.wait(timeout if self._thread.is_alive() else min(timeout, 0.05))

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=1.0)
        self._conn.close()


def _append_recorder_class() -> type[PostgresProcessRecorder]:
    """eventsourcing's PostgreSQL process recorder, appending through one database function.

    The stock recorder sends LOCK TABLE, NOTIFY, INSERT and the tracking upsert as a pipeline
    inside an explicit transaction: two round trips per append. Its own database-function
    option (9.5.6) makes one round trip but takes no table lock and skips the tracking row, so
    commit order could differ from position order and exactly-once would be lost. This
    function does all four in one statement, in autocommit: one round trip, same guarantees.
    """
    from eventsourcing.persistence import StoredEvent, Tracking
    from eventsourcing.postgres import PostgresProcessRecorder
    from eventsourcing.utils import retry
    from psycopg.sql import SQL, Identifier, Literal

    class AppendFunctionRecorder(PostgresProcessRecorder):
        def __init__(self, datastore: Any) -> None:
            super().__init__(datastore)
            schema = Identifier(self.datastore.schema)
            self._function = f"agentledger_append_{self.datastore.originator_id_type}"
            self.sql_create_statements.append(
                SQL(
                    "CREATE OR REPLACE FUNCTION {schema}.{fn}("
                    "events {schema}.{event_type}[], tracking_name text, tracking_id bigint) "
                    "RETURNS SETOF bigint LANGUAGE plpgsql AS $BODY$ BEGIN "
                    "SET LOCAL lock_timeout = '{timeout}s'; "
                    "IF tracking_name IS NOT NULL THEN "
                    "  INSERT INTO {schema}.{tracking} VALUES (tracking_name, tracking_id) "
                    "  ON CONFLICT (application_name) DO UPDATE SET notification_id = tracking_id "
                    "  WHERE {schema}.{tracking}.notification_id < tracking_id; "
                    "  IF NOT FOUND THEN RAISE unique_violation USING MESSAGE = "
                    "    'position ' || tracking_id || ' already processed by ' || tracking_name; "
                    "  END IF; "
                    "END IF; "
                    "IF coalesce(array_length(events, 1), 0) > 0 THEN "
                    # Serialise inserters so commit order equals notification_id order.
                    "  LOCK TABLE {schema}.{table} IN EXCLUSIVE MODE; "
                    # The types appended, for subscriptions to some types (_PostgresWaiter).
                    "  PERFORM pg_notify({channel_name}, (SELECT string_agg(DISTINCT "
                    "    split_part(e.topic, '@', 1), ',') FROM unnest(events) AS e)); "
                    "  RETURN QUERY INSERT INTO {schema}.{table} "
                    "  (originator_id, originator_version, topic, state) "
                    "  SELECT originator_id, originator_version, topic, state FROM unnest(events) "
                    "  RETURNING notification_id; "
                    "END IF; "
                    "END; $BODY$"
                ).format(
                    schema=schema,
                    fn=Identifier(self._function),
                    event_type=Identifier(self.stored_event_type_name),
                    timeout=self.datastore.lock_timeout,
                    tracking=Identifier(self.tracking_table_name),
                    table=Identifier(self.events_table_name),
                    channel_name=Literal(self.channel_name),
                )
            )
            # The events go in binary (%b): as text, psycopg escapes each composite row with
            # a regex over its bytea's hex, 0.3 ms of CPU for a 20 KB event (a recorded prompt).
            self._call = SQL("SELECT * FROM {schema}.{fn}(%b, %s, %s)").format(
                schema=schema, fn=Identifier(self._function)
            )

        @retry((InterfaceError, OperationalError), max_attempts=10, wait=0.2)
        def insert_events(
            self, stored_events: Sequence[StoredEvent], **kwargs: Any
        ) -> Sequence[int] | None:
            tracking: Tracking | None = kwargs.get("tracking")
            rows = [
                self.construct_pg_stored_event(
                    e.originator_id, e.originator_version, e.topic, e.state
                )
                for e in stored_events
            ]
            with self.datastore.get_connection() as conn, conn.cursor() as curs:
                curs.execute(
                    self._call,
                    (
                        rows,
                        tracking.application_name if tracking else None,
                        tracking.notification_id if tracking else None,
                    ),
                    prepare=True,
                )
                return [row[self._function] for row in curs.fetchall()]

    return AppendFunctionRecorder


def _like_prefix(prefix: str) -> str:
    """A LIKE pattern (backslash escapes, PostgreSQL's default) for names starting with
    ``prefix`` taken literally."""
    return prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


class PostgresBackend(Backend):
    """PostgreSQL through psycopg with a connection pool: for agents on several machines."""

    def __init__(self, settings: PostgresSettings) -> None:
        from eventsourcing.postgres import PostgresDatastore

        self.settings = settings
        self.url = settings.describe()
        self._page_statements: dict[tuple[bool, bool], Any] = {}
        self._prepare(lambda: self._make_recorder(PostgresDatastore))

    def _make_recorder(self, datastore_class: Any) -> None:
        settings = self.settings
        self.datastore = datastore_class(
            dbname=settings.dbname,
            host=settings.host,
            port=settings.port,
            user=settings.user,
            password=settings.password,
            schema=settings.schema,
            pool_size=settings.pool_size,
            max_overflow=settings.pool_size * 2,
            connect_timeout=10,
            lock_timeout=30,
            originator_id_type="text",
        )
        # The pool opens later; its connections get the URL's libpq options (TLS) too.
        self.datastore.pool.kwargs.update(settings.connection)
        self.recorder: PostgresProcessRecorder = _append_recorder_class()(self.datastore)
        self.reader = self.recorder

    def _connect(self) -> Any:
        return _pg_connect(self.settings)

    def _prepare(self, make_recorder: Callable[[], None]) -> None:
        """Check the server is reachable, then create schema, tables and functions.

        The DDL runs under a session advisory lock: many agents opening the same store at once
        would otherwise race on CREATE TYPE / CREATE OR REPLACE FUNCTION ("tuple concurrently
        updated").
        """
        import psycopg
        from psycopg import sql

        try:
            probe = self._connect()
        except psycopg.OperationalError as exc:
            lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
            reason = lines[0] if lines else type(exc).__name__
            if self.settings.password:
                reason = reason.replace(self.settings.password, "***")
            raise StoreUnavailable(
                f"cannot reach PostgreSQL at {self.settings.host}:{self.settings.port} "
                f"(database {self.settings.dbname!r}, user {self.settings.user!r}): {reason}. "
                "Is the server running, listening there, and the database created? (On "
                "Debian: `pg_lsclusters` shows the servers, `pg_ctlcluster VERSION main "
                "start` starts one, `createdb NAME` creates a database.)"
            ) from None
        with probe:
            try:
                lock_key = f"agentledger:{self.settings.schema}"
                probe.execute("SELECT pg_advisory_lock(hashtext(%s))", (lock_key,))
                make_recorder()
                try:
                    probe.execute(
                        sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(
                            sql.Identifier(self.settings.schema)
                        )
                    )
                    self.recorder.create_table()
                except (psycopg.errors.InsufficientPrivilege, PersistenceError) as exc:
                    # PostgreSQL checks the privilege to create before whether the object
                    # exists: a role that may only read (an auditor's) is refused even
                    # CREATE … IF NOT EXISTS. A store made by its owner is read as it is.
                    denied = isinstance(exc, psycopg.errors.InsufficientPrivilege) or isinstance(
                        exc.__cause__, psycopg.errors.InsufficientPrivilege
                    )
                    if not denied or not self._created(probe):
                        raise
                    self.datastore.register_type_adapters()
            except psycopg.Error as exc:
                raise StoreUnavailable(
                    f"PostgreSQL at {self.settings.host}:{self.settings.port} refused to prepare "
                    f"schema {self.settings.schema!r}: {exc}{self._privilege_hint(exc)}"
                ) from None
            except PersistenceError as exc:
                raise StoreUnavailable(
                    f"PostgreSQL at {self.settings.host}:{self.settings.port} failed to create "
                    f"the event tables in schema {self.settings.schema!r}: "
                    f"{exc}{self._privilege_hint(exc.__cause__)}"
                ) from None

    def _privilege_hint(self, exc: BaseException | None) -> str:
        import psycopg

        if not isinstance(exc, psycopg.errors.InsufficientPrivilege):
            return ""
        return (
            f". User {self.settings.user!r} may not create this store: open it once as a "
            "user that may (CREATE on the database), then grant this one USAGE on the schema "
            "and SELECT on its tables (INSERT and EXECUTE too, to append)"
        )

    def _created(self, probe: Any) -> bool:
        """Whether this store's tables and append function are all in its schema."""
        schema = self.settings.schema
        found = probe.execute(
            "SELECT to_regclass(%s) IS NOT NULL AND to_regclass(%s) IS NOT NULL "
            "AND EXISTS (SELECT 1 FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace "
            "WHERE n.nspname = %s AND p.proname = %s)",
            (
                f'"{schema}"."{self.recorder.events_table_name}"',
                f'"{schema}"."{self.recorder.tracking_table_name}"',
                schema,
                self.recorder._function,  # type: ignore[attr-defined]
            ),
        ).fetchone()
        return bool(found and found[0])

    def try_lease(self, name: str) -> Lease | None:
        # A session advisory lock on a connection of its own: the server drops it when the
        # session ends, so when the holding process dies (its connection closes).
        import psycopg

        key = f"agentledger-lease:{self.settings.schema}:{name}"
        try:
            conn = self._connect()
        except psycopg.Error as exc:
            raise StoreUnavailable(f"cannot take the lease of {name!r}: {exc}") from exc
        try:
            # A session the network cut is found dead in ~40 s (TCP keepalives) and its lock
            # dropped, not kept until the kernel's default two hours; the holder's next
            # append fails meanwhile, as every other client's would.
            conn.execute("SET tcp_keepalives_idle = 20")
            conn.execute("SET tcp_keepalives_interval = 5")
            conn.execute("SET tcp_keepalives_count = 4")
            row = conn.execute("SELECT pg_try_advisory_lock(hashtextextended(%s, 0))", (key,))
            held = bool(row.fetchone()[0])
        except psycopg.Error as exc:
            conn.close()  # not left open behind the error
            raise StoreUnavailable(f"cannot take the lease of {name!r}: {exc}") from exc
        if not held:
            conn.close()
            return None

        def check() -> bool:
            # Nothing here unlocks it: the lock goes only with its session, so the session
            # answering is the lock held. A session the server ended (pg_terminate_backend,
            # a restart, an idle-session timeout, keepalives after a network cut) fails.
            try:
                conn.execute("SELECT 1")
            except psycopg.Error as exc:
                log.warning("lease of %s lost: its session ended: %s", name, exc)
                return False
            return True

        return _HeldLease(conn.close, check)

    def waiter(self) -> Waiter:
        return _PostgresWaiter(self._connect, self.recorder.channel_name)

    @contextlib.contextmanager
    def _autocommit(self) -> Iterator[Any]:
        # One read statement needs no transaction: the pool's connections are in autocommit,
        # and eventsourcing's transaction() adds a BEGIN and a ROLLBACK, two more round trips.
        with self.datastore.get_connection() as conn, conn.cursor() as cursor:
            yield cursor

    def select_stream(self, stream: str, gt: int, lte: int | None) -> list[Notification]:
        from psycopg import sql

        statement = sql.SQL(
            "SELECT notification_id, originator_id, originator_version, topic, state FROM {}.{} "
            "WHERE originator_id = %s AND originator_version > %s AND originator_version <= %s "
            "ORDER BY originator_version"
        ).format(
            sql.Identifier(self.settings.schema), sql.Identifier(self.recorder.events_table_name)
        )
        with self._autocommit() as cursor:
            cursor.execute(statement, (stream, gt, _MAX_VERSION if lte is None else lte))
            return [
                Notification(
                    r["originator_id"],
                    r["originator_version"],
                    r["topic"],
                    bytes(r["state"]),
                    r["notification_id"],
                )
                for r in cursor.fetchall()
            ]

    @retry((InterfaceError, OperationalError), max_attempts=10, wait=0.2)
    def read_page(
        self, after: int, limit: int, kinds: Sequence[str], stop: int | None
    ) -> list[tuple[int, str, int, str, bytes]]:
        # The recorder's select_notifications with plain tuple rows: psycopg's dict rows and
        # the Notification objects built from them cost more per row than the decoding.
        from psycopg import sql
        from psycopg.rows import tuple_row

        key = (bool(kinds), stop is not None)
        statement = self._page_statements.get(key)
        if statement is None:
            text = (
                "SELECT notification_id, originator_id, originator_version, topic, state "
                "FROM {}.{} WHERE notification_id > %s"
            )
            if stop is not None:
                text += " AND notification_id <= %s"
            if kinds:  # the type before '@', whatever the schema version
                text += " AND split_part(topic, '@', 1) = ANY(%s)"
            text += " ORDER BY notification_id LIMIT %s"
            statement = sql.SQL(text).format(
                sql.Identifier(self.settings.schema),
                sql.Identifier(self.recorder.events_table_name),
            )
            self._page_statements[key] = statement
        params: list[Any] = [after]
        if stop is not None:
            params.append(stop)
        if kinds:
            params.append(list(kinds))
        params.append(limit)
        with self.datastore.get_connection() as conn, conn.cursor(row_factory=tuple_row) as cur:
            cur.execute(statement, params, prepare=True)
            rows: list[tuple[int, str, int, str, bytes]] = cur.fetchall()
            return rows

    def version_at(self, stream: str, position: int) -> int:
        from psycopg import sql

        statement = sql.SQL(
            "SELECT originator_version FROM {}.{} WHERE originator_id = %s "
            "AND notification_id <= %s ORDER BY originator_version DESC LIMIT 1"
        ).format(
            sql.Identifier(self.settings.schema), sql.Identifier(self.recorder.events_table_name)
        )
        with self._autocommit() as cursor:
            cursor.execute(statement, (stream, position))
            row = cursor.fetchone()
            return int(row["originator_version"]) if row else 0

    def stream_summaries(self, prefix: str = "") -> list[StreamSummary]:
        from psycopg import sql

        statement = sql.SQL(
            "SELECT originator_id, MAX(originator_version) AS v, MIN(notification_id) AS f, "
            "MAX(notification_id) AS l FROM {}.{} WHERE originator_id LIKE %s "
            "GROUP BY originator_id ORDER BY MIN(notification_id)"
        ).format(
            sql.Identifier(self.settings.schema), sql.Identifier(self.recorder.events_table_name)
        )
        like = _like_prefix(prefix)
        with self._autocommit() as cursor:
            cursor.execute(statement, (like,))
            return [
                StreamSummary(r["originator_id"], r["v"], r["f"], r["l"]) for r in cursor.fetchall()
            ]

    def tracked_positions(self, prefix: str) -> dict[str, int]:
        from psycopg import sql

        statement = sql.SQL(
            "SELECT application_name AS c, MAX(notification_id) AS p FROM {}.{} "
            "WHERE application_name LIKE %s GROUP BY application_name ORDER BY application_name"
        ).format(
            sql.Identifier(self.settings.schema), sql.Identifier(self.recorder.tracking_table_name)
        )
        like = _like_prefix(prefix)
        with self._autocommit() as cursor:
            cursor.execute(statement, (like,))
            return {str(r["c"]): int(r["p"]) for r in cursor.fetchall()}

    def close(self) -> None:
        self.datastore.close()


def sqlite_path(url: str) -> str | None:
    """The path a ``sqlite://`` store URL names, as ``open_backend`` reads it (None for other
    schemes): ``sqlite:///rel/path`` and ``sqlite:////abs/path``, as SQLAlchemy reads them.
    ``ConfigurationError`` for a ``file:`` URI naming a host (SQLite opens local files only)."""
    url = url.strip()
    if not url.lower().startswith("sqlite://"):
        return None
    path = url[len("sqlite://") :]
    path = path[1:] if path.startswith("/") else path
    if path.startswith("file://"):
        # A file: URI's authority, as SQLite reads it (case-sensitive, as its "file:" is):
        # empty or "localhost" (the same file); any other is SQLite's "invalid uri authority".
        # Dropped here, so that no reader of the name (pathlib collapses "//") takes the
        # authority for the path's first folder.
        authority, slash, rest = path[7:].partition("/")
        if authority not in ("", "localhost"):
            raise ConfigurationError(
                f"the store URL {url!r} names the host {authority!r} in its file: URI; SQLite "
                "opens local files only: write file:/path/to/ledger.db (or file:///path, "
                "file://localhost/path)"
            )
        path = "file://" + slash + rest  # file:///path, as SQLite and pathlib both read it
    return path


def sqlite_file(url: str) -> Path | None:
    """The database file a ``sqlite://`` store URL names, as the store opens it (a ``file:``
    URI's path, see ``_database_file``); None for other stores and in-memory databases."""
    path = sqlite_path(url)
    if not path:
        return None
    # As open_backend and SQLiteBackend read it: "~" is expanded in a plain path only (SQLite
    # takes a URI's "~" as a folder of that name).
    return _database_file(str(Path(path).expanduser()))


# The files SQLite keeps beside a database (its write-ahead log, shared memory and rollback
# journal), and the one this backend touches to wake subscribers (SQLiteBackend._notify_path).
_SIDECARS = ("-wal", "-shm", "-journal", _NOTIFY_SUFFIX)


def _scheme(url: str) -> str:
    """The scheme of a store URL, lower-case ("" for none)."""
    return url.split("://", 1)[0].lower() if "://" in url else ""


def store_files(url: str) -> list[Path]:
    """The files a ``sqlite://`` store URL's log lives in: the database file (``sqlite_file``)
    first, then its sidecars, existing or not; none for other stores and in-memory databases.
    Writing any of them over destroys or corrupts the log."""
    path = sqlite_file(url)
    if path is None:
        return []
    return [path, *(path.with_name(path.name + suffix) for suffix in _SIDECARS)]


def no_store_at(url: str, *, servers: bool = True) -> tuple[str, bool] | None:
    """Why ``url`` names no agentledger store, found without writing anything, and whether one
    may be made there (not in another program's SQLite database); None if it names one, a
    memory store, or a place the store's opening will report on itself (a server that does not
    answer, a file that is no database).

    Opening a store makes its tables: a command that only reads asks this first, so that a typo
    in a path or a schema, or another program's database, is reported, not given our tables.
    ``servers=False``: a server's store is not looked at (one may always be made there).
    """
    url = url.strip()
    scheme = _scheme(url)
    if scheme == "sqlite":
        file = sqlite_file(url)
        if file is None:
            return None
        if not file.exists():
            return f"no store at {file}", True
        tables = _sqlite_tables(file)
        if tables is None or "stored_events" in tables:
            return None
        if not tables:
            return f"no store at {file}: the file is empty", True
        return f"no store at {file}: it holds {', '.join(sorted(tables))}, not a log", False
    if scheme in ("postgresql", "postgres") and servers:
        settings = parse_postgres_url(url)
        try:
            with _pg_connect(settings) as conn:
                found = conn.execute(
                    "SELECT 1 FROM information_schema.tables "
                    "WHERE table_schema = %s AND table_name = 'stored_events'",
                    (settings.schema,),
                ).fetchone()
        except Exception:  # opening the store says what is wrong, clearly
            return None
        if found is None:
            return f"no store in {settings.describe()}: schema {settings.schema} has no log", True
    return None


def check_store_url(url: str) -> None:
    """``ConfigurationError`` if ``url`` is no store URL ``open_backend`` takes; nothing is
    opened or connected to (for a URL read from a settings file, checked where it is read)."""
    url = url.strip()
    scheme = _scheme(url)
    if scheme == "memory":
        return
    if scheme == "sqlite":
        if not sqlite_path(url):
            raise ConfigurationError(
                "sqlite store URL has no path; use sqlite:///relative/path.db "
                "or sqlite:////absolute/path.db"
            )
        return
    if scheme in ("postgresql", "postgres"):
        parse_postgres_url(url)
        return
    raise ConfigurationError(
        f"unknown store URL {_mask(url)!r}: use sqlite:///path/to/ledger.db (the default is "
        f"sqlite:///{DEFAULT_SQLITE_PATH}), postgresql://user@host:5432/db, or memory:// for tests"
    )


def open_backend(url: str) -> Backend:
    """The backend for a store URL: ``sqlite:///path``, ``postgresql://…`` or ``memory://``."""
    url = url.strip()
    check_store_url(url)
    scheme = _scheme(url)
    if scheme == "memory":
        return MemoryBackend()
    if scheme == "sqlite":
        return SQLiteBackend(Path(sqlite_path(url) or ""))
    return PostgresBackend(parse_postgres_url(url))
