"""The EventStore contract: one behaviour spec, run against memory://, SQLite and PostgreSQL.

``StoreContract`` holds every test; each backend joins in a few lines by subclassing it and
providing ``store_url`` (a fresh, empty store) and, where the log is SQL rows, ``raw_log`` (direct
SQL on them, as a tamperer or a slow foreign writer would use). Capabilities the in-memory store
cannot have are class attributes; the tests that need them skip, with the reason, only there.
"""

from __future__ import annotations

import gc
import hashlib
import inspect
import itertools
import json
import multiprocessing
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import traceback
import uuid
from abc import ABC, abstractmethod
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Any, ClassVar

import psycopg
import pytest
from eventsourcing.persistence import StoredEvent
from psycopg import sql
from pydantic import BaseModel
from spies import calls_of

from agentledger.events import (
    ActionProposed,
    AlreadyProcessed,
    ApprovalDenied,
    ApprovalExpired,
    ApprovalGranted,
    ConcurrencyConflict,
    ConsumerPosition,
    CorruptEvent,
    Envelope,
    Event,
    EventHeader,
    EventStore,
    InvalidEvent,
    ModelResponded,
    NotAuthorized,
    NotFound,
    Problem,
    RunCompleted,
    RunForked,
    RunPaused,
    RunStarted,
    ScratchpadUpdated,
    StoreUnavailable,
    Subscription,
    TaskAssigned,
    UnknownEventType,
    UnsupportedSchemaVersion,
    _backends,
)
from agentledger.events import store as store_module
from agentledger.events._backends import _FileWatch
from agentledger.events._codec import seal

HASH_A = "a" * 64
WRITERS = 8
PER_WRITER = 25
PER_PROCESS = 12  # processes run truly in parallel: fewer appends give as many conflicts

# ---------------------------------------------------------------- events and raw rows


def started(goal: str = "find the answer", actor: str = "human:ada") -> RunStarted:
    return RunStarted(actor=actor, payload={"goal": goal, "user": "ada"})


def paused(reason: str = "", actor: str = "system", **kwargs: Any) -> RunPaused:
    return RunPaused(actor=actor, payload={"reason": reason}, **kwargs)


def note(key: str, value: str, actor: str = "agent:execution/x1") -> ScratchpadUpdated:
    return ScratchpadUpdated(actor=actor, payload={"key": key, "value": value})


def assigned(task_id: str = "t1") -> TaskAssigned:
    return TaskAssigned(
        actor="agent:coordinator/c1",
        payload={"task_id": task_id, "role": "research", "reasoning": "needs a search"},
    )


def proposed(action_id: str = "a1") -> ActionProposed:
    return ActionProposed(
        actor="agent:execution/e1",
        payload={
            "action_id": action_id,
            "tool": "shell",
            "arguments": {"cmd": "ls", "flags": ["-l"], "n": 3},
            "reasoning": "look first",
            "idempotency_key": f"k-{action_id}",
        },
    )


def granted(actor: str = "human:ada") -> ApprovalGranted:
    return ApprovalGranted(actor=actor, payload={"action_id": "a1", "action_hash": HASH_A})


class NotAnEvent(BaseModel):
    """Looks like an event to a duck, not to the store."""

    type: str = "run.paused"
    actor: str = "system"
    stream: str = ""


def sealed_row(
    event: Envelope, stream: str, version: int, prev_hash: str | None = None
) -> tuple[StoredEvent, str]:
    """A stored row exactly as the store writes it (current schema), and its hash."""
    draft = event.model_copy(update={"stream": stream, "version": version, "prev_hash": prev_hash})
    state, digest = seal(draft)
    return StoredEvent(stream, version, f"{event.type}@{event.schema_version}", state), digest


def sealed_document(document: dict[str, Any], topic: str) -> tuple[StoredEvent, str]:
    """A stored row for a raw JSON document, hashed as the store hashes (for older schemas)."""
    body = json.dumps(document, separators=(",", ":")).encode()
    digest = hashlib.sha256(body).hexdigest()
    state = body[:-1] + b',"hash":"' + digest.encode() + b'"}'
    return StoredEvent(document["stream"], document["version"], topic, state), digest


def v1_document(
    stream: str, version: int, type_: str, payload: dict[str, Any], **extra: Any
) -> dict[str, Any]:
    """A document as schema 1 wrote it."""
    return {
        "id": str(uuid.uuid4()),
        "stream": stream,
        "version": version,
        "type": type_,
        "schema_version": 1,
        "at": "2026-03-01T09:00:00Z",
        "actor": "agent:research/r1",
        "causation_id": None,
        "correlation_id": None,
        "payload": payload,
        **extra,
    }


def rows(store: EventStore) -> list[tuple[int, str, int, str, bytes]]:
    """Everything stored, byte for byte, to show that nothing changed."""
    return [
        (n.id, str(n.originator_id), n.originator_version, n.topic, n.state)
        for n in store.read_stored()
    ]


def positions(events: Sequence[Event]) -> list[int]:
    return [e.position for e in events]


def collect(sub: Subscription, count: int, timeout: float = 20.0) -> list[Event]:
    """Poll ``sub`` until it has delivered at least ``count`` events (or ``timeout`` passes)."""
    got: list[Event] = []
    deadline = time.monotonic() + timeout
    while len(got) < count and time.monotonic() < deadline:
        got.extend(sub.poll(timeout=0.5))
    return got


def write_with_retries(store: EventStore, stream: str, writer: int, count: int) -> int:
    """Append ``count`` events to ``stream`` by read-decide-append; return the conflicts met."""
    conflicts = done = 0
    while done < count:
        version = store.stream_version(stream)
        time.sleep(0.0005)  # deciding takes a moment, long enough for others to move the stream
        event = note(f"w{writer}", str(done), actor=f"agent:execution/w{writer}")
        try:
            store.append(stream, [event], expected_version=version)
        except ConcurrencyConflict:
            conflicts += 1
            continue
        done += 1
    return conflicts


def _process_writer(
    url: str,
    stream: str,
    writer: int,
    count: int,
    open_lock: Any,
    barrier: Any,
    results: Any,
) -> None:
    # Runs in a spawned process: it opens the store itself, like an agent does.
    try:
        # Opening is serialised here: concurrent opens have their own tests
        # (test_many_agents_open_*); this one is about concurrent appends.
        with open_lock:
            store = EventStore.open(url)
        with store:
            barrier.wait(timeout=120)
            conflicts = write_with_retries(store, stream, writer, count)
        results.put((writer, conflicts, ""))
    except BaseException:
        results.put((writer, -1, traceback.format_exc()))


def assert_contended_stream(
    store: EventStore, stream: str, conflicts: list[int], per_writer: int
) -> None:
    events = store.read(stream)
    total = WRITERS * per_writer
    assert len(events) == total
    assert [e.version for e in events] == list(range(1, total + 1))
    stream_positions = positions(events)
    assert stream_positions == sorted(set(stream_positions)), "positions must strictly increase"
    log_positions = [e.position for e in store.read_all()]
    assert log_positions == sorted(set(log_positions))
    assert len(log_positions) == total
    # Each writer's successes are in the log, once each and in its own order.
    by_writer: dict[str, list[int]] = defaultdict(list)
    for event in events:
        assert isinstance(event, ScratchpadUpdated)
        assert event.actor == f"agent:execution/{event.payload.key}"
        by_writer[event.payload.key].append(int(event.payload.value or "-1"))
    assert by_writer == {f"w{w}": list(range(per_writer)) for w in range(WRITERS)}
    assert store.verify().ok
    assert sum(conflicts) > 0, "the writers never met a conflict: the test did not contend"


# ---------------------------------------------------------------- direct SQL on the log


class RawLog(ABC):
    """Direct SQL on a store's events table, bypassing EventStore."""

    events_table: str
    position_column: str

    @abstractmethod
    def execute(self, statement: str, params: Sequence[object] = ()) -> list[tuple[Any, ...]]:
        """Run one statement in its own committed transaction (``{events}``, ``{pos}``, ``%s``)."""

    @abstractmethod
    @contextmanager
    def held_insert(self, row: StoredEvent) -> Iterator[int]:
        """Insert ``row`` the way the recorder does, and hold the transaction open until exit."""

    @abstractmethod
    def wait_for_blocked_writer(self) -> None:
        """Return once another writer is waiting for the held transaction (best effort)."""

    def state_at(self, position: int) -> bytes:
        [(state,)] = self.execute("SELECT state FROM {events} WHERE {pos} = %s", [position])
        return bytes(state)

    def set_state(self, position: int, state: bytes) -> None:
        self.execute("UPDATE {events} SET state = %s WHERE {pos} = %s", [state, position])

    def delete(self, position: int) -> None:
        self.execute("DELETE FROM {events} WHERE {pos} = %s", [position])

    def swap_versions(self, a: int, b: int, version_a: int, version_b: int) -> None:
        update = "UPDATE {events} SET originator_version = %s WHERE {pos} = %s"
        self.execute(update, [-1, a])
        self.execute(update, [version_a, b])
        self.execute(update, [version_b, a])

    def swap_positions(self, a: int, b: int) -> None:
        update = "UPDATE {events} SET {pos} = %s WHERE {pos} = %s"
        self.execute(update, [-1, a])
        self.execute(update, [a, b])
        self.execute(update, [b, -1])

    def insert(self, row: StoredEvent) -> None:
        self.execute(
            "INSERT INTO {events} (originator_id, originator_version, topic, state) "
            "VALUES (%s, %s, %s, %s)",
            [row.originator_id, row.originator_version, row.topic, row.state],
        )


class SQLiteRawLog(RawLog):
    def __init__(self, path: str) -> None:
        self.path = path

    def _sql(self, statement: str) -> str:
        return statement.format(events="stored_events", pos="rowid").replace("%s", "?")

    def execute(self, statement: str, params: Sequence[object] = ()) -> list[tuple[Any, ...]]:
        with closing(sqlite3.connect(self.path, isolation_level=None, timeout=30)) as conn:
            return conn.execute(self._sql(statement), list(params)).fetchall()

    @contextmanager
    def held_insert(self, row: StoredEvent) -> Iterator[int]:
        conn = sqlite3.connect(self.path, isolation_level=None, timeout=30)
        try:
            conn.execute("BEGIN IMMEDIATE")  # the write lock, as the recorder's insert takes it
            cursor = conn.execute(
                "INSERT INTO stored_events VALUES (?, ?, ?, ?)",
                (row.originator_id, row.originator_version, row.topic, row.state),
            )
            assert cursor.lastrowid is not None
            yield cursor.lastrowid
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        finally:
            conn.close()

    def wait_for_blocked_writer(self) -> None:
        time.sleep(0.3)  # SQLite does not show who waits for its lock


class PostgresRawLog(RawLog):
    def __init__(self, store: EventStore) -> None:
        settings = store.backend.settings
        self.conninfo: dict[str, Any] = {
            "host": settings.host,
            "port": settings.port,
            "dbname": settings.dbname,
            "user": settings.user,
            "password": settings.password or None,
        }
        self.schema = settings.schema
        self.table = store.backend.recorder.events_table_name

    def _sql(self, statement: str) -> sql.Composed:
        return sql.SQL(statement).format(
            events=sql.Identifier(self.schema, self.table),
            pos=sql.Identifier("notification_id"),
        )

    def execute(self, statement: str, params: Sequence[object] = ()) -> list[tuple[Any, ...]]:
        with psycopg.connect(**self.conninfo, autocommit=True) as conn:
            cursor = conn.execute(self._sql(statement), list(params))
            return cursor.fetchall() if cursor.description else []

    @contextmanager
    def held_insert(self, row: StoredEvent) -> Iterator[int]:
        with psycopg.connect(**self.conninfo) as conn:  # commits on a clean exit
            # The same table lock the recorder takes before it inserts.
            conn.execute(self._sql("LOCK TABLE {events} IN EXCLUSIVE MODE"))
            inserted = conn.execute(
                self._sql(
                    "INSERT INTO {events} (originator_id, originator_version, topic, state) "
                    "VALUES (%s, %s, %s, %s) RETURNING {pos}"
                ),
                [row.originator_id, row.originator_version, row.topic, row.state],
            ).fetchone()
            assert inserted is not None
            yield int(inserted[0])

    def wait_for_blocked_writer(self) -> None:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            [(waiting,)] = self.execute(
                "SELECT count(*) FROM pg_locks WHERE relation = %s::regclass AND NOT granted",
                [f'"{self.schema}"."{self.table}"'],
            )
            if waiting:
                return
            time.sleep(0.02)
        raise AssertionError("no writer ever waited for the held transaction")


# ---------------------------------------------------------------- the contract


class StoreContract(ABC):
    """Behaviour every EventStore backend has. Not collected itself (no ``Test`` prefix)."""

    #: Several OS processes (and several EventStore instances) can share one log.
    multiprocess: ClassVar[bool] = True
    #: The log is SQL rows that an outsider can read, edit or lock.
    raw_sql: ClassVar[bool] = True

    @pytest.fixture
    @abstractmethod
    def store_url(self) -> str:
        """The URL of a fresh, empty store for one test."""

    def raw_log(self, store: EventStore) -> RawLog:
        """Direct SQL on ``store``'s rows (only where ``raw_sql`` is true)."""
        raise AssertionError(f"{type(self).__name__} declares raw_sql but has no raw_log")

    @pytest.fixture
    def store(self, store_url: str) -> Iterator[EventStore]:
        with EventStore.open(store_url) as store:
            yield store

    @pytest.fixture
    def raw(self, store: EventStore) -> RawLog:
        if not self.raw_sql:
            pytest.skip(f"{type(self).__name__}: the log is not SQL rows, nothing to edit or lock")
        return self.raw_log(store)

    def require_multiprocess(self) -> None:
        if not self.multiprocess:
            pytest.skip(
                f"{type(self).__name__}: an in-memory log lives in one process and one "
                "EventStore instance; it cannot be shared"
            )

    # ------------------------------------------------------------ append and read

    def test_append_returns_the_recorded_events(self, store: EventStore) -> None:
        originals = [started(), assigned(), proposed(), note("plan", "search first")]
        recorded = store.append("run-1", originals, expected_version=0)

        assert [type(e) for e in recorded] == [type(e) for e in originals]
        assert [e.id for e in recorded] == [e.id for e in originals]
        assert [e.payload for e in recorded] == [e.payload for e in originals]
        assert [e.stream for e in recorded] == ["run-1"] * 4
        assert [e.version for e in recorded] == [1, 2, 3, 4]
        assert positions(recorded) == sorted(set(positions(recorded)))
        assert all(p is not None and p > 0 for p in positions(recorded))
        # The hash chain: each event names its predecessor's hash; the first names none.
        assert recorded[0].prev_hash is None
        for before, after in itertools.pairwise(recorded):
            assert after.prev_hash == before.hash
        assert len({e.hash for e in recorded}) == 4
        assert all(e.hash and len(e.hash) == 64 for e in recorded)
        # What was returned is what is read back, field for field.
        assert store.read("run-1") == recorded
        assert list(store.read_all()) == recorded

    def test_appends_continue_the_chain(self, store: EventStore) -> None:
        [first] = store.append("run-1", [started()], expected_version=0)
        [second, third] = store.append("run-1", [paused("a"), paused("b")], expected_version=1)
        assert (second.version, third.version) == (2, 3)
        assert second.prev_hash == first.hash and third.prev_hash == second.hash
        assert first.position < second.position < third.position
        assert store.verify().ok

    def test_read_a_version_range(self, store: EventStore) -> None:
        store.append("run-1", [started(), paused("1"), paused("2"), paused("3")])
        assert [e.version for e in store.read("run-1")] == [1, 2, 3, 4]
        assert [e.version for e in store.read("run-1", 2, 3)] == [2, 3]
        assert [e.version for e in store.read("run-1", 3)] == [3, 4]
        assert [e.version for e in store.read("run-1", to_version=2)] == [1, 2]
        assert [e.version for e in store.read("run-1", 4, 4)] == [4]
        assert store.read("run-1", 5) == []
        assert store.read("run-unknown") == []

    def test_read_all_after_position_with_limit_and_types(self, store: EventStore) -> None:
        a1, a2 = store.append("run-a", [started("a"), paused("a")])
        [b1] = store.append("run-b", [started("b")])
        a3, a4 = store.append("run-a", [assigned(), note("k", "v")])
        everything = [a1, a2, b1, a3, a4]

        assert list(store.read_all()) == everything
        assert list(store.read_all(after_position=a2.position)) == [b1, a3, a4]
        assert list(store.read_all(limit=2)) == [a1, a2]
        assert list(store.read_all(after_position=a1.position, limit=2)) == [a2, b1]
        assert list(store.read_all(types=["run.started"])) == [a1, b1]
        assert list(store.read_all(types=["run.paused", "scratchpad.updated"])) == [a2, a4]
        assert list(store.read_all(after_position=b1.position, types=["run.started"])) == []
        assert list(store.read_all(after_position=a4.position)) == []
        assert list(store.read_all(to_position=b1.position)) == [a1, a2, b1]
        with pytest.raises(NotFound, match=r"no\.such"):
            list(store.read_all(types=["no.such"]))

    def test_read_headers_decodes_only_the_types_asked_for(self, store: EventStore) -> None:
        a1, a2 = store.append("run-a", [started("a"), paused("a")])
        [b1] = store.append("run-b", [started("b")])
        read = list(store.read_headers(decode=["run.started"]))
        assert read == [a1, EventHeader(a2.position, "run-a", 2, "run.paused"), b1]
        assert list(store.read_headers(a1.position, decode=[], to_position=a2.position)) == [
            EventHeader(a2.position, "run-a", 2, "run.paused")
        ]
        with pytest.raises(NotFound, match=r"no\.such"):
            list(store.read_headers(decode=["no.such"]))

    def test_read_headers_leaves_bodies_it_does_not_decode_unchecked(
        self, store: EventStore, raw: RawLog
    ) -> None:
        a1, a2 = store.append("run-a", [started("a"), note("k", "v")])
        raw.set_state(a2.position, b'{"damaged": true}')
        # A header does not read the body; reading it, and verifying the log, find the damage.
        assert list(store.read_headers(decode=["run.started"])) == [
            a1,
            EventHeader(a2.position, "run-a", 2, "scratchpad.updated"),
        ]
        with pytest.raises(CorruptEvent, match=f"position {a2.position}"):
            list(store.read_all())
        assert not store.verify().ok

    def test_read_all_pages_through_a_long_log(self, store: EventStore) -> None:
        store.append("run-long", [paused(str(i)) for i in range(1105)])
        events = list(store.read_all())
        assert [e.payload.reason for e in events] == [str(i) for i in range(1105)]
        assert positions(events) == sorted(set(positions(events)))
        assert len(list(store.read_all(limit=1050))) == 1050
        after = events[99].position
        assert positions(list(store.read_all(after_position=after, limit=1001))) == positions(
            events[100:1101]
        )

    def test_streams_with_prefix(self, store: EventStore) -> None:
        assert store.streams() == []
        store.append("run_a", [started()])
        store.append("runXa", [started(), paused()])
        store.append("user-ada", [note("k", "v")])
        store.append("run_a", [paused(), paused()])

        summaries = store.streams()
        assert [(s.stream, s.version) for s in summaries] == [
            ("run_a", 3),
            ("runXa", 2),
            ("user-ada", 1),
        ]
        run_a = summaries[0]
        events = store.read("run_a")
        assert (run_a.first_position, run_a.last_position) == (
            events[0].position,
            events[-1].position,
        )
        # The prefix is literal: "_" is not a wildcard, and "run" matches both run streams.
        assert [s.stream for s in store.streams("run_")] == ["run_a"]
        assert [s.stream for s in store.streams("run")] == ["run_a", "runXa"]
        assert [s.stream for s in store.streams("user-")] == ["user-ada"]
        assert store.streams("nothing") == []

    def test_stream_version_and_head_position(self, store: EventStore) -> None:
        assert store.stream_version("run-1") == 0
        assert store.head_position() == 0
        store.append("run-1", [started(), paused()])
        [last] = store.append("run-2", [started()])
        assert store.stream_version("run-1") == 2
        assert store.stream_version("run-2") == 1
        assert store.stream_version("run-3") == 0
        assert store.head_position() == last.position

    def test_verify_a_sound_log(self, store: EventStore) -> None:
        [cause] = store.append("run-1", [started()])
        store.append("run-2", [paused("x", **cause.caused_by(cause)), paused("y")])
        report = store.verify()
        assert report.ok and report.findings == [] and report.first is None
        assert (report.events, report.streams) == (3, 2)

    # ------------------------------------------------------------ atomicity and conflicts

    def test_a_batch_whose_insert_fails_writes_none_of_its_events(self, store: EventStore) -> None:
        store.append("run-1", [started()], expected_version=0)
        # Another writer put version 3 in place (a row as the store writes it). The store knows
        # version 1 as the head it wrote itself, so the batch reaches the insert, whose second
        # row clashes: the first and third rows must not be written either.
        row, _ = sealed_row(paused("elsewhere"), "run-1", 3)
        store.backend.recorder.insert_events([row])
        before = rows(store)

        with pytest.raises(ConcurrencyConflict) as caught:
            store.append("run-1", [paused("a"), paused("b"), paused("c")], expected_version=1)

        assert caught.value.actual_version == 3
        assert rows(store) == before
        assert [e.version for e in store.read("run-1")] == [1, 3]

    def test_a_batch_with_a_duplicate_delivery_writes_none_of_its_events(
        self, store: EventStore
    ) -> None:
        store.append("run-1", [started()], tracking=ConsumerPosition("planner", 7))
        before = rows(store)
        with pytest.raises(AlreadyProcessed):
            store.append(
                "run-1",
                [paused("a"), paused("b"), paused("c")],
                expected_version=1,
                tracking=ConsumerPosition("planner", 7),
            )
        assert rows(store) == before
        assert store.position_of("planner") == 7
        # The stream is still writable at the version it had.
        [event] = store.append("run-1", [paused("d")], expected_version=1)
        assert event.version == 2

    def test_stale_expected_version_conflicts_and_writes_nothing(self, store: EventStore) -> None:
        store.append("run-1", [started(), paused()], expected_version=0)
        before = rows(store)
        with pytest.raises(ConcurrencyConflict) as caught:
            store.append("run-1", [paused("late")], expected_version=1)
        conflict = caught.value
        assert (conflict.stream, conflict.expected_version, conflict.actual_version) == (
            "run-1",
            1,
            2,
        )
        assert "run-1" in str(conflict) and "nothing was written" in str(conflict)
        assert rows(store) == before
        with pytest.raises(ConcurrencyConflict):
            store.append("run-1", [paused("new stream?")], expected_version=0)
        assert rows(store) == before

    def test_expected_version_ahead_of_the_stream_conflicts(self, store: EventStore) -> None:
        store.append("run-1", [started(), paused()])
        before = rows(store)
        with pytest.raises(ConcurrencyConflict) as caught:
            store.append("run-1", [paused("ahead")], expected_version=5)
        assert (caught.value.expected_version, caught.value.actual_version) == (5, 2)
        with pytest.raises(ConcurrencyConflict) as caught:
            store.append("run-new", [started()], expected_version=1)
        assert caught.value.actual_version == 0
        assert rows(store) == before
        assert store.read("run-new") == []

    def test_no_expected_version_appends_at_the_end(self, store: EventStore) -> None:
        store.append("run-1", [started(), paused()])
        [event] = store.append("run-1", [paused("whatever the version")], expected_version=None)
        assert event.version == 3
        assert event.prev_hash == store.read("run-1", 2, 2)[0].hash
        [other] = store.append("run-new", [started()])
        assert other.version == 1 and other.prev_hash is None

    def test_writers_on_threads_contend_without_loss(self, store: EventStore) -> None:
        barrier = threading.Barrier(WRITERS)

        def writer(w: int) -> int:
            barrier.wait(timeout=30)
            return write_with_retries(store, "run-contended", w, PER_WRITER)

        with ThreadPoolExecutor(WRITERS) as pool:
            conflicts = list(pool.map(writer, range(WRITERS)))
        assert_contended_stream(store, "run-contended", conflicts, PER_WRITER)

    def test_appends_without_expected_version_on_threads_all_land(self, store: EventStore) -> None:
        # expected_version=None means "at the end, whatever the version": contention between
        # writers is the store's to resolve, never the caller's.
        writers = 2 * WRITERS
        barrier = threading.Barrier(writers)

        def writer(w: int) -> None:
            barrier.wait(timeout=30)
            for i in range(20):
                store.append("run-any", [note(f"w{w}", str(i))], expected_version=None)

        with ThreadPoolExecutor(writers) as pool:
            list(pool.map(writer, range(writers)))
        events = store.read("run-any")
        assert [e.version for e in events] == list(range(1, writers * 20 + 1))
        assert store.verify().ok

    @pytest.mark.slow
    def test_writers_in_processes_contend_without_loss(
        self, store: EventStore, store_url: str
    ) -> None:
        self.require_multiprocess()
        ctx = multiprocessing.get_context("spawn")
        open_lock, barrier, results = ctx.Lock(), ctx.Barrier(WRITERS), ctx.Queue()
        workers = [
            ctx.Process(
                target=_process_writer,
                args=(store_url, "run-contended", w, PER_PROCESS, open_lock, barrier, results),
            )
            for w in range(WRITERS)
        ]
        for worker in workers:
            worker.start()
        try:
            outcomes = [results.get(timeout=180) for _ in workers]
        finally:
            for worker in workers:
                worker.join(timeout=30)
                if worker.is_alive():
                    worker.kill()
        failures = [tb for _, _, tb in outcomes if tb]
        assert not failures, failures[0]
        assert [w.exitcode for w in workers] == [0] * WRITERS
        assert_contended_stream(store, "run-contended", [c for _, c, _ in outcomes], PER_PROCESS)

    @staticmethod
    def _open_concurrently(url: str, count: int = WRITERS) -> list[str]:
        barrier = threading.Barrier(count)

        def opener(_: int) -> str:
            barrier.wait(timeout=30)
            try:
                with EventStore.open(url) as store:
                    store.head_position()
            except Exception as exc:
                return f"{type(exc).__module__}.{type(exc).__name__}: {exc}"
            return ""

        with ThreadPoolExecutor(count) as pool:
            return [error for error in pool.map(opener, range(count)) if error]

    def test_many_agents_open_a_new_store_at_once(self, store_url: str) -> None:
        # Agents start together; the first open of a store creates its tables.
        self.require_multiprocess()
        errors = self._open_concurrently(store_url)
        assert errors == []
        with EventStore.open(store_url) as store:
            store.append("run-1", [started()])
            assert store.verify().ok

    def test_many_agents_open_an_existing_store_at_once(
        self, store: EventStore, store_url: str
    ) -> None:
        self.require_multiprocess()
        store.append("run-1", [started()])
        for _ in range(3):  # a race: a few rounds make a lost one near certain to show
            assert self._open_concurrently(store_url) == []
        assert len(store.read("run-1")) == 1

    # ------------------------------------------------------------ subscriptions

    def test_subscribers_before_during_and_after_appends_see_the_same_log(
        self, store: EventStore
    ) -> None:
        batches, per_batch = 20, 3
        total = batches * per_batch
        half_written, during_subscribed = threading.Event(), threading.Event()

        def writer() -> None:
            for b in range(batches):
                stream = f"run-{b % 3}"
                store.append(stream, [paused(f"{b}.{i}") for i in range(per_batch)])
                if b == batches // 2:
                    half_written.set()
                    during_subscribed.wait(timeout=10)
                time.sleep(0.002)

        before = store.subscribe()
        during_events: list[Event] = []
        with ThreadPoolExecutor(3) as pool:
            got_before = pool.submit(collect, before, total)
            writing = pool.submit(writer)
            assert half_written.wait(timeout=10)
            during = store.subscribe()
            head_when_subscribed = store.head_position()
            during_subscribed.set()

            def iterate() -> None:
                for event in during:
                    during_events.append(event)
                    if len(during_events) == total:
                        return

            iterating = pool.submit(iterate)
            writing.result(timeout=30)
            try:
                iterating.result(timeout=20)
            finally:
                during.stop()
            before_events = got_before.result(timeout=30)
        with store.subscribe() as after:
            after_events = collect(after, total)
        before.close()
        during.close()

        log = list(store.read_all())
        assert len(log) == total
        assert 0 < head_when_subscribed < log[-1].position
        for seen in (before_events, during_events, after_events):
            assert positions(seen) == positions(log)
            assert [e.id for e in seen] == [e.id for e in log]

    def test_subscribe_after_a_position_and_to_types(self, store: EventStore) -> None:
        events = store.append("run-1", [started(), paused("1"), assigned(), paused("2")])
        with store.subscribe(after_position=events[1].position) as sub:
            assert collect(sub, 2) == events[2:]
            assert sub.poll(timeout=0.1) == []
            [later] = store.append("run-1", [paused("3")])
            assert sub.poll(timeout=5) == [later]
        with store.subscribe(types=["run.paused"]) as sub:
            assert collect(sub, 3) == [events[1], events[3], later]
        with pytest.raises(NotFound):
            store.subscribe(types=["no.such"])

    def test_a_subscription_to_some_types_looks_through_other_events_once(
        self, store: EventStore
    ) -> None:
        # A watcher of rare types (approvals) must not re-read every other event since the
        # last match on each wake-up: its scan mark follows the head, not the last match.
        store.append("run-1", [started()])
        store.append("run-1", [note(f"k{i}", "v") for i in range(620)])  # over one page
        with store.subscribe(types=["run.paused"]) as sub:
            assert sub.poll(timeout=0.1) == []
            assert sub.scanned == store.head_position()
            assert sub.position == 0  # nothing delivered yet
            [match] = store.append("run-1", [paused("p"), note("after", "v")])[:1]
            assert sub.poll(timeout=5) == [match]
            assert sub.position == match.position
            assert sub.scanned == store.head_position()
        # More matches than a page: each page continues after the last row it returned.
        many = store.append("run-2", [started(), *[paused(str(i)) for i in range(520)]])[1:]
        with store.subscribe(after_position=match.position, types=["run.paused"]) as sub:
            assert collect(sub, len(many)) == many

    def test_rows_polled_undecoded_decode_to_the_events_and_the_subscription_moves_on(
        self, store: EventStore
    ) -> None:
        events = store.append("run-1", [started(), paused("1"), assigned()])
        with store.subscribe() as sub:
            rows = sub.poll_rows(timeout=5)
            assert [r[0] for r in rows] == positions(events)
            assert [(r[1], r[2], r[3].partition("@")[0]) for r in rows] == [
                (e.stream, e.version, e.type) for e in events
            ]
            assert sub.position == events[-1].position
            assert [sub.decode(r) for r in rows] == events
            [later] = store.append("run-1", [paused("2")])
            assert sub.poll(timeout=5) == [later]

    def test_a_subscription_that_read_to_the_head_reads_again_only_after_an_append(
        self, store: EventStore, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        # Each agent polls again after each batch it handled: a read then, finding nothing,
        # was a round trip per subscription per append on PostgreSQL. Until something is
        # appended (or _REFETCH_S passes) a subscription that read to the head waits.
        monkeypatch.setattr(store_module, "_REFETCH_S", 60.0)  # however slow this machine is
        reads = calls_of(store.backend, "read_page")
        events = store.append("run-1", [started(), assigned()])
        with store.subscribe() as sub:
            assert [r[0] for r in sub.poll_rows(timeout=5)] == positions(events)
            before = len(reads)
            for _ in range(4):
                assert sub.poll_rows(timeout=0.05) == []
            idle = len(reads) - before
            [later] = store.append("run-1", [paused("1")])
            assert sub.poll(timeout=5) == [later]  # woken: read at once
            assert sub.poll(timeout=0) == []  # asked not to wait: reads now
            assert len(reads) - before == 2
        assert idle == 0, f"{idle} reads with nothing appended"

    def test_a_read_that_failed_is_tried_again_at_once(
        self, store: EventStore, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        # The waiter was armed before the read that raised: what that read missed must not
        # wait for the next append, nor for the periodic read a second later.
        monkeypatch.setattr(store_module, "_REFETCH_S", 60.0)
        store.append("run-1", [started()])
        read_page = store.backend.read_page
        with store.subscribe() as sub:
            assert len(sub.poll_rows(timeout=5)) == 1
            [later] = store.append("run-1", [assigned()])

            def fails(*args: Any, **kwargs: Any) -> Any:
                store.backend.read_page = read_page  # type: ignore[method-assign]
                raise StoreUnavailable("the read failed")

            store.backend.read_page = fails  # type: ignore[method-assign]
            with pytest.raises(StoreUnavailable):
                sub.poll_rows(timeout=5)
            assert [r[0] for r in sub.poll_rows(timeout=0.5)] == [later.position]

    def test_a_waiter_is_woken_by_an_append_after_it_was_armed(self, store: EventStore) -> None:
        store.append("run-1", [started()])
        waiter = store.backend.waiter()
        try:
            waiter.arm()
            assert not waiter.woken_for([])  # nothing appended since
            store.append("run-1", [assigned()])
            waiter.wait(10)  # PostgreSQL's notification comes after the commit
            assert waiter.woken_for([])
            waiter.arm()
            assert not waiter.woken_for([])
        finally:
            waiter.close()

    def test_a_subscription_not_woken_by_appends_still_sees_them_soon(
        self, store: EventStore
    ) -> None:
        store.append("run-1", [started()])
        with store.subscribe(types=["run.paused"], wake=False) as sub:
            assert sub.poll(timeout=0) == []
            [later] = store.append("run-1", [paused("now")])
            began = time.monotonic()
            assert sub.poll(timeout=5) == [later]
            assert time.monotonic() - began < 2  # it looks a few times a second

    def test_a_subscription_restarts_from_a_position_with_other_types(
        self, store: EventStore
    ) -> None:
        events = store.append("run-1", [started(), paused("1"), assigned(), paused("2")])
        with store.subscribe() as sub:
            assert collect(sub, 4) == events
            sub.restart(events[0].position, ["run.paused"])
            assert sub.poll(timeout=5) == [events[1], events[3]]
            [later] = store.append("run-1", [paused("3"), assigned("t2")])[:1]
            assert sub.poll(timeout=5) == [later]
            sub.restart(later.position)  # every type again, from there
            assert [e.type for e in sub.poll(timeout=5)] == ["task.assigned"]

    def test_a_subscription_to_some_types_misses_none_while_others_write(
        self, store: EventStore
    ) -> None:
        rounds = 60

        def writer(stream: str) -> None:
            store.append(stream, [started()])
            for i in range(rounds):
                store.append(
                    stream, [*(note(f"k{i}.{j}", "v") for j in range(i % 3)), paused(f"{i}")]
                )

        with store.subscribe(types=["run.paused"]) as sub:
            with ThreadPoolExecutor(3) as pool:
                done = [pool.submit(writer, f"run-{w}") for w in range(3)]
                got = collect(sub, 3 * rounds, timeout=60)
                for future in done:
                    future.result(timeout=60)
            assert sub.poll(timeout=0.2) == []
        log = list(store.read_all(types=["run.paused"]))
        assert len(log) == 3 * rounds
        assert [e.id for e in got] == [e.id for e in log]

    def test_closing_a_subscription_ends_iteration(self, store: EventStore) -> None:
        store.append("run-1", [started()])
        sub = store.subscribe()
        seen: list[Event] = []
        errors: list[BaseException] = []

        def iterate() -> None:
            try:
                seen.extend(sub)
            except BaseException as exc:
                errors.append(exc)

        iterating = threading.Thread(target=iterate, daemon=True)
        iterating.start()
        deadline = time.monotonic() + 10
        while not seen and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.1)  # the consumer now waits for the next event
        sub.close()
        iterating.join(timeout=5)
        assert not iterating.is_alive(), "iteration did not end after close()"
        assert errors == []
        assert len(seen) == 1
        assert sub.poll(timeout=0.1) == []

    def test_a_subscriber_on_another_store_instance_sees_appends(
        self, store: EventStore, store_url: str
    ) -> None:
        self.require_multiprocess()
        with EventStore.open(store_url) as reader, reader.subscribe() as sub:
            assert sub.poll(timeout=0.1) == []
            appended = store.append("run-1", [started(), paused()])
            later = store.append("run-2", [started()])
            assert collect(sub, 3, timeout=10) == appended + later

    def test_a_transaction_held_open_is_not_skipped(self, store: EventStore, raw: RawLog) -> None:
        [first] = store.append("run-a", [started()])
        with store.subscribe() as sub:
            assert collect(sub, 1) == [first]
            held_row, _ = sealed_row(paused("held"), "run-held", 1)
            later: list[Event] = []
            with raw.held_insert(held_row) as held_position:
                # The held row has a position but is not committed. An append made now must not
                # become visible before it: a subscriber would pass over the held one for good.
                appending = threading.Thread(
                    target=lambda: later.extend(store.append("run-b", [paused("later")]))
                )
                appending.start()
                raw.wait_for_blocked_writer()
                assert sub.poll(timeout=0.5) == []
                assert appending.is_alive() and later == []
            appending.join(timeout=30)
            assert len(later) == 1
            rest = collect(sub, 2)
        assert positions(rest) == [held_position, later[0].position]
        assert held_position < later[0].position
        assert [e.payload.reason for e in rest] == ["held", "later"]
        assert positions(list(store.read_all())) == [first.position, *positions(rest)]

    @pytest.mark.slow
    def test_appends_wait_out_a_long_write_transaction(
        self, store: EventStore, raw: RawLog
    ) -> None:
        # A long write transaction (a migration, a backup, a stuck client) must delay appends,
        # not fail them, well within the store's lock timeout (30 s).
        store.append("run-a", [started()])
        held_row, _ = sealed_row(paused("held"), "run-held", 1)
        outcomes: dict[str, str] = {}

        def append(stream: str) -> None:
            try:
                store.append(stream, [started()])
                outcomes[stream] = "ok"
            except Exception as exc:
                outcomes[stream] = f"{type(exc).__name__}: {exc}"

        def read() -> None:
            try:
                outcomes["reader"] = f"ok {len(list(store.read_all()))}"
            except Exception as exc:
                outcomes["reader"] = f"{type(exc).__name__}: {exc}"

        threads = [threading.Thread(target=append, args=(f"run-{i}",)) for i in range(2)]
        reader = threading.Thread(target=read)
        try:
            with raw.held_insert(held_row):
                for thread in threads:
                    thread.start()
                    time.sleep(0.1)
                hold_until = time.monotonic() + 6.0
                raw.wait_for_blocked_writer()
                reader.start()
                reader.join(timeout=3)
                reader_kept_up = not reader.is_alive()
                time.sleep(max(0.0, hold_until - time.monotonic()))
        finally:
            for thread in [*threads, reader]:
                if thread.ident is not None:
                    thread.join(timeout=30)
        assert reader_kept_up, f"a reader stalled behind waiting writers: {outcomes}"
        assert outcomes == {"run-0": "ok", "run-1": "ok", "reader": "ok 1"}
        assert len(list(store.read_all())) == 4

    def test_a_subscription_never_skips_an_event_it_cannot_decode(self, store: EventStore) -> None:
        good = store.append("run-1", [started(), paused("good")])
        document = v1_document("run-future", 1, "mystery.happened", {})
        bad_row, _ = sealed_document(document, "mystery.happened@1")
        store.backend.recorder.insert_events([bad_row])
        store.append("run-1", [paused("after the unknown one")])

        delivered: list[Event] = []
        errors = 0
        with store.subscribe() as sub:
            for _ in range(3):
                try:
                    delivered.extend(sub.poll(timeout=0.2))
                except UnknownEventType:
                    errors += 1
        # What comes before the unreadable row is delivered; nothing after it ever is, and the
        # subscriber keeps stopping at it until the reader is upgraded.
        assert positions(delivered) == positions(good)
        assert errors >= 1

    # ------------------------------------------------------------ tracking (exactly once)

    def test_tracking_is_written_with_the_events(self, store: EventStore) -> None:
        assert store.position_of("planner") == 0
        recorded = store.append(
            "run-1", [started(), paused()], tracking=ConsumerPosition("planner", 5)
        )
        assert store.position_of("planner") == 5
        assert store.read("run-1") == recorded
        assert store.position_of("reviewer") == 0

    @pytest.mark.parametrize("position", [5, 4, 1])
    def test_a_duplicate_delivery_raises_already_processed_and_writes_nothing(
        self, store: EventStore, position: int
    ) -> None:
        store.append("run-1", [started()], tracking=ConsumerPosition("planner", 5))
        before = rows(store)
        with pytest.raises(AlreadyProcessed) as caught:
            store.append("run-2", [started()], tracking=ConsumerPosition("planner", position))
        assert (caught.value.consumer, caught.value.position, caught.value.recorded) == (
            "planner",
            position,
            5,
        )
        assert rows(store) == before
        assert store.read("run-2") == []
        assert store.position_of("planner") == 5
        store.append("run-2", [started()], tracking=ConsumerPosition("planner", 6))
        assert store.position_of("planner") == 6

    def test_record_position_and_position_of(self, store: EventStore) -> None:
        store.record_position("projector", 3)
        store.record_position("auditor", 10)
        assert (store.position_of("projector"), store.position_of("auditor")) == (3, 10)
        store.record_position("projector", 4)
        assert store.position_of("projector") == 4
        for stale in (4, 2):
            with pytest.raises(AlreadyProcessed):
                store.record_position("projector", stale)
        assert store.position_of("projector") == 4
        # Only a tracking position, no events.
        store.append("run-1", [], tracking=ConsumerPosition("projector", 9))
        assert store.position_of("projector") == 9
        assert store.head_position() == 0

    def test_positions_lists_the_consumers_of_a_prefix(self, store: EventStore) -> None:
        # A worker starting after the number of replicas changed looks at every replica of its
        # role that ever followed the log (those that no longer run included).
        assert store.positions("agent:execution/") == {}
        store.record_position("agent:execution/1", 7)
        store.record_position("agent:execution/2", 3)
        store.record_position("agent:execution/1", 9)
        store.append("run-1", [], tracking=ConsumerPosition("agent:execution/3@run-2", 2))
        store.record_position("agent:executionist/1", 5)  # another prefix
        store.record_position("agent:review/1", 4)
        store.record_position("agent:review/2", 0)  # started; passed nothing yet
        assert store.positions("agent:execution/") == {
            "agent:execution/1": 9,
            "agent:execution/2": 3,
            "agent:execution/3@run-2": 2,
        }
        assert store.positions("agent:review/") == {"agent:review/1": 4, "agent:review/2": 0}
        assert store.position_of("agent:review/2") == 0
        store.record_position("agent:review/2", 1)
        assert store.position_of("agent:review/2") == 1
        # LIKE's wildcards are plain characters in a prefix.
        assert store.positions("agent:%") == store.positions("agent:re_iew/") == {}

    # ------------------------------------------------------------ leases

    def test_a_lease_is_held_by_one_holder_until_released(self, store: EventStore) -> None:
        held = store.lease("agent:execution/1")
        assert held is not None
        assert held.held()
        assert store.lease("agent:execution/1") is None  # held: refused at once
        other = store.lease("agent:review/1")  # another name is another lease
        assert other is not None
        held.release()
        assert not held.held() and other.held()
        held.release()  # idempotent
        again = store.lease("agent:execution/1")
        assert again is not None
        again.release()
        other.release()

    def test_a_lease_is_exclusive_across_processes_and_dies_with_its_holder(
        self, store: EventStore
    ) -> None:
        # Agents of one name on two Ray instances would both handle every event; a lease
        # the operating system or the server drops when its holder dies, however it dies,
        # lets a restarted agent take over at once.
        self.require_multiprocess()
        holder = (
            "import sys, time; from agentledger.events import EventStore\n"
            "s = EventStore.open(sys.argv[1])\n"
            "lease = s.lease('agent:execution/1')\n"
            "print('held' if lease else 'refused', flush=True)\n"
            "time.sleep(600)\n"
        )
        with EventStore.open(store.url) as second:
            mine = second.lease("agent:execution/1")  # another store object, same process
            assert mine is not None
            assert store.lease("agent:execution/1") is None
            process = subprocess.Popen(
                [sys.executable, "-c", holder, store.url], stdout=subprocess.PIPE, text=True
            )
            assert process.stdout is not None
            assert process.stdout.readline().strip() == "refused"
            process.kill()
            process.wait(timeout=30)
            mine.release()
        process = subprocess.Popen(
            [sys.executable, "-c", holder, store.url], stdout=subprocess.PIPE, text=True
        )
        assert process.stdout is not None
        try:
            assert process.stdout.readline().strip() == "held"
            assert store.lease("agent:execution/1") is None
        finally:
            process.kill()  # SIGKILL: no release, no clean-up
            process.wait(timeout=30)
        lease = None
        deadline = time.monotonic() + 30  # the server notices a closed connection soon
        while lease is None and time.monotonic() < deadline:
            lease = store.lease("agent:execution/1")
            time.sleep(0.05)
        assert lease is not None
        lease.release()

    def test_a_lease_goes_with_its_holder_not_with_a_child_it_forked(
        self, store: EventStore
    ) -> None:
        # A tool or a library forking the agent's process (multiprocessing's default on
        # Linux) must not keep the agent's lease once the agent releases it or dies: the
        # agent standing by would wait for a child it never heard of.
        self.require_multiprocess()
        lease = store.lease("agent:execution/1")
        assert lease is not None
        read, write = os.pipe()
        up_read, up_write = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: say it is up, wait until told, then go without any clean-up
            os.write(up_write, b"x")
            os.read(read, 1)
            os._exit(0)
        try:
            assert os.read(up_read, 1) == b"x"
            lease.release()
            with EventStore.open(store.url) as other:
                again = other.lease("agent:execution/1")
                assert again is not None, "the forked child kept the lease"
                again.release()
        finally:
            os.write(write, b"x")
            os.waitpid(pid, 0)
            for fd in (read, write, up_read, up_write):
                os.close(fd)

    # ------------------------------------------------------------ upcasting

    def test_rows_of_older_schemas_read_as_current_events(self, store: EventStore) -> None:
        start = v1_document("run-old", 1, "run.started", {"goal": "old goal"}, prev_hash=None)
        start_row, start_hash = sealed_document(start, "run.started@1")
        reply = v1_document(
            "run-old",
            2,
            "model.responded",
            {"request_id": "m1", "model": "offline", "text": "old reply", "tokens": 9},
            prev_hash=start_hash,
        )
        reply_row, _ = sealed_document(reply, "model.responded@1")
        store.backend.recorder.insert_events([start_row, reply_row])
        before = rows(store)

        first, second = store.read("run-old")
        assert isinstance(first, RunStarted)
        assert first.schema_version == RunStarted.current_schema_version == 3
        assert first.payload.goal == "old goal"
        assert (first.payload.user, first.payload.models, first.payload.labels) == (
            "anonymous",
            {},
            {},
        )
        assert str(first.id) == start["id"] and first.hash == start_hash
        assert isinstance(second, ModelResponded)
        assert second.schema_version == 2
        assert second.payload.content == "old reply"
        assert (second.payload.output_tokens, second.payload.input_tokens) == (9, 0)
        assert list(store.read_all()) == [first, second]
        assert list(store.read_all(types=["model.responded"])) == [second]
        # Reading never rewrites the log; the old chain verifies, and new events extend it.
        assert rows(store) == before
        assert store.verify().ok
        [third] = store.append("run-old", [RunCompleted(actor="system", payload={"summary": "ok"})])
        assert third.version == 3 and third.prev_hash == second.hash
        assert store.verify().ok

    @pytest.mark.parametrize(
        ("topic", "type_", "schema_version"),
        [("run.paused@2", "run.paused", 2), ("run.started@4", "run.started", 4)],
    )
    def test_a_read_of_some_types_stops_at_one_of_them_at_a_newer_schema_version(
        self, store: EventStore, topic: str, type_: str, schema_version: int
    ) -> None:
        # Filtered by type whatever the version: a row a newer writer stored must fail to
        # decode where it is, never be passed over unseen (and a consumer's position with it).
        store.append("run-1", [started(), paused("1")])
        document = v1_document("run-new", 1, type_, {"reason": "", "goal": "g"}, prev_hash=None)
        document["schema_version"] = schema_version
        row, _ = sealed_document(document, topic)
        store.backend.recorder.insert_events([row])
        with pytest.raises(UnsupportedSchemaVersion):
            list(store.read_all(types=[type_]))
        with store.subscribe(types=[type_]) as sub:
            assert [e.type for e in sub.poll(timeout=5)] == [type_]  # the one before it
            with pytest.raises(UnsupportedSchemaVersion):
                sub.poll(timeout=1)
            assert sub.position < store.head_position()

    @pytest.mark.parametrize(
        ("topic", "type_", "schema_version", "error", "message"),
        [
            ("mystery.happened@1", "mystery.happened", 1, UnknownEventType, "mystery.happened"),
            ("run.paused@2", "run.paused", 2, UnsupportedSchemaVersion, "schema version 2"),
            ("run.started@4", "run.started", 4, UnsupportedSchemaVersion, "schema version 4"),
        ],
    )
    def test_rows_this_version_cannot_read_raise_naming_the_position(
        self,
        store: EventStore,
        topic: str,
        type_: str,
        schema_version: int,
        error: type[Exception],
        message: str,
    ) -> None:
        [good] = store.append("run-1", [started()])
        document = v1_document("run-new", 1, type_, {"reason": "", "goal": "g"}, prev_hash=None)
        document["schema_version"] = schema_version
        row, _ = sealed_document(document, topic)
        store.backend.recorder.insert_events([row])
        before = rows(store)
        position = before[-1][0]

        for read in (
            lambda: store.read("run-new"),
            lambda: list(store.read_all()),
            lambda: list(store.read_headers(decode=[])),  # a body it cannot read is decoded
        ):
            with pytest.raises(error) as caught:
                read()
            assert f"position {position}" in str(caught.value)
            assert message in str(caught.value)
            assert "not modified" in str(caught.value)
        assert list(store.read_all(limit=1)) == [good]
        assert rows(store) == before

    # ------------------------------------------------------------ forks by reference

    @staticmethod
    def _link(store: EventStore, parent: str, version: int) -> dict[str, Any]:
        """The payload of a fork of ``parent`` inheriting its first ``version`` events."""
        at = store.read(parent, version, version)[0]
        return {
            "parent_run": parent,
            "parent_position": at.position,
            "prefix_version": version,
            "parent_hash": at.hash,
        }

    def _fork(self, store: EventStore, parent: str, version: int, stream: str) -> Event:
        payload = self._link(store, parent, version)
        [forked] = store.append(
            stream, [RunForked(actor="human:ada", payload=payload)], expected_version=0
        )
        return forked

    def test_a_fork_by_reference_reads_as_one_stream_and_stores_one_event(
        self, store: EventStore, store_url: str
    ) -> None:
        parent = store.append("run-p", [started(), assigned(), paused("1"), paused("2")])
        forked = self._fork(store, "run-p", 3, "run-f")
        assert [r.originator_version for r in store.backend.select_stream("run-f", 0, None)] == [1]
        inherited = store.read("run-f", 2, 4)
        # The parent's first 3 events, as the fork's versions 2..4, at the fork's position.
        assert [(e.id, e.hash, e.payload) for e in inherited] == [
            (e.id, e.hash, e.payload) for e in parent[:3]
        ]
        assert [(e.stream, e.version, e.position) for e in inherited] == [
            ("run-f", v, forked.position) for v in (2, 3, 4)
        ]
        assert store.inherited(forked) == inherited
        assert store.stream_version("run-f") == 4
        assert {s.stream: s.version for s in store.streams()} == {"run-p": 4, "run-f": 4}
        # Its own events go on from the inherited ones, chained to the parent's hash.
        [own] = store.append("run-f", [paused("own")], expected_version=4)
        assert forked.prev_hash == parent[2].hash and (own.version, own.prev_hash) == (
            5,
            forked.hash,
        )
        assert store.read("run-f") == [forked, *inherited, own]
        assert [e.version for e in store.read("run-f", 3, 5)] == [3, 4, 5]
        assert [e.version for e in store.read("run-f", 5)] == [5]
        assert [e.version for e in store.read("run-f", to_version=1)] == [1]
        assert store.version_at("run-f", forked.position - 1) == 0
        assert store.version_at("run-f", forked.position) == 4
        assert store.version_at("run-f", own.position) == 5
        assert store.version_at("run-p", parent[1].position) == 2
        # The parent is untouched and another store instance reads the same.
        assert store.read("run-p") == parent
        if self.multiprocess:
            with EventStore.open(store_url) as other:
                assert other.read("run-f") == store.read("run-f")
                assert other.stream_version("run-f") == 5
        assert store.verify().ok

    def test_a_fork_of_a_fork_resolves_through_both_parents(self, store: EventStore) -> None:
        parent = store.append("run-p", [started(), assigned(), paused("1")])
        self._fork(store, "run-p", 2, "run-f")
        [own] = store.append("run-f", [paused("f")], expected_version=3)
        # Fork the fork after its own event (version 4), and after its inherited ones only.
        second = self._fork(store, "run-f", 4, "run-g")
        third = self._fork(store, "run-f", 3, "run-h")
        g = store.read("run-g")
        assert g[0] == second and [e.id for e in g[1:]] == [e.id for e in store.read("run-f")]
        assert [e.id for e in g[2:4]] == [parent[0].id, parent[1].id] and g[4].id == own.id
        assert [e.version for e in g] == [1, 2, 3, 4, 5]
        h = store.read("run-h")
        assert h[0] == third and [e.id for e in h[1:]] == [e.id for e in store.read("run-f")[:3]]
        [g_own] = store.append("run-g", [paused("g")], expected_version=5)
        [h_own] = store.append("run-h", [paused("h")], expected_version=4)
        assert (second.prev_hash, g_own.prev_hash) == (own.hash, second.hash)
        assert (third.prev_hash, h_own.prev_hash) == (parent[1].hash, third.hash)
        report = store.verify()
        assert report.ok, [str(f) for f in report.findings]
        assert report.links == {"run-f": ("run-p", 2), "run-g": ("run-f", 4), "run-h": ("run-f", 3)}

    @pytest.mark.parametrize(
        ("change", "message"),
        [
            ({"parent_hash": HASH_A}, "not parent_hash"),
            ({"prefix_version": 9}, "no such event"),
            ({"parent_run": "run-nope"}, "no such event"),
            ({"parent_run": "run-f"}, "its own stream"),
        ],
    )
    def test_a_fork_that_does_not_name_its_prefix_exactly_is_refused(
        self, store: EventStore, change: dict[str, Any], message: str
    ) -> None:
        store.append("run-p", [started(), assigned()])
        payload = {**self._link(store, "run-p", 2), **change}
        with pytest.raises(InvalidEvent, match=message):
            store.append("run-f", [RunForked(actor="human:ada", payload=payload)], 0)
        assert store.read("run-f") == [] and len(rows(store)) == 2

    def test_a_fork_by_reference_must_start_its_stream_alone(self, store: EventStore) -> None:
        store.append("run-p", [started(), assigned()])
        payload = self._link(store, "run-p", 2)
        forked = RunForked(actor="human:ada", payload=payload)
        for events, expected in (([forked, paused("x")], 0), ([forked], None)):
            with pytest.raises(InvalidEvent, match="first event, appended alone"):
                store.append("run-f", events, expected)
        store.append("run-x", [started()])
        with pytest.raises(InvalidEvent, match="first event, appended alone"):
            store.append("run-x", [forked], 1)
        assert len(rows(store)) == 3
        with pytest.raises(Exception, match="prefix_version and parent_hash go together"):
            RunForked(actor="human:ada", payload={**payload, "parent_hash": None})

    def test_an_edited_fork_event_is_found(self, store: EventStore, raw: RawLog) -> None:
        store.append("run-p", [started(), assigned()])
        forked = self._fork(store, "run-p", 2, "run-f")
        [own] = store.append("run-f", [paused("own")], expected_version=3)
        # Another model written into the fork after the fact, and the event rehashed.
        payload = forked.payload.model_copy(update={"model_overrides": {"research": "x:y"}})
        state, _ = seal(forked.model_copy(update={"payload": payload}))
        raw.set_state(forked.position, state)
        assert self._first(store) == (own.position, Problem.CHAIN_BROKEN)

    def test_a_head_learnt_from_a_subscription_knows_what_a_fork_inherits(
        self, store: EventStore
    ) -> None:
        store.append("run-p", [started(), assigned()])
        forked = self._fork(store, "run-p", 2, "run-f")
        with store.subscribe(forked.position - 1) as subscription:
            assert collect(subscription, 1) == [forked]
        # No append may land among the inherited versions, where no reader would see it.
        with pytest.raises(ConcurrencyConflict):
            store.append("run-f", [paused("hidden")], expected_version=1)
        [own] = store.append("run-f", [paused("own")])
        assert own.version == 4 and store.read("run-f")[-1] == own

    def test_a_changed_parent_breaks_its_forks_link(self, store: EventStore, raw: RawLog) -> None:
        parent = store.append("run-p", [started(), assigned(), paused("1")])
        forked = self._fork(store, "run-p", 2, "run-f")
        store.append("run-f", [paused("own")], expected_version=3)
        assert store.verify().ok
        # The parent's event at the fork point edited and rehashed: the parent's own chain
        # breaks at its next event, and the fork's link no longer holds.
        edited = parent[1].model_copy(
            update={"payload": parent[1].payload.model_copy(update={"task_id": "t9"})}
        )
        state, _ = seal(edited)
        raw.set_state(parent[1].position, state)
        problems = {(f.position, f.problem) for f in store.verify().findings}
        assert (parent[2].position, Problem.CHAIN_BROKEN) in problems
        assert (forked.position, Problem.CHAIN_BROKEN) in problems

    # ------------------------------------------------------------ tamper evidence

    @pytest.fixture
    def chain(self, store: EventStore) -> list[Event]:
        """Run stream A of five events, with stream B interleaved (B's second names A3)."""
        a1, a2 = store.append("run-a", [started(), paused("two")])
        [b1] = store.append("run-b", [started("b")])
        [a3] = store.append("run-a", [paused("three")])
        [b2] = store.append("run-b", [paused("after three", **a3.caused_by(a3))])
        a4, a5 = store.append("run-a", [paused("four"), paused("five")])
        assert store.verify().ok
        return [a1, a2, b1, a3, b2, a4, a5]

    @staticmethod
    def _first(store: EventStore) -> tuple[int, Problem]:
        report = store.verify()
        assert not report.ok
        assert report.first is not None
        return report.first.position, report.first.problem

    @staticmethod
    def _problems_at(store: EventStore, position: int | None) -> set[Problem]:
        return {f.problem for f in store.verify().findings if f.position == position}

    def test_an_edited_row_is_found(
        self, store: EventStore, raw: RawLog, chain: list[Event]
    ) -> None:
        a2 = chain[1]
        state = raw.state_at(a2.position)
        raw.set_state(a2.position, state.replace(b'"reason":"two"', b'"reason":"TWO"'))
        assert self._first(store) == (a2.position, Problem.EDITED)
        assert len(store.verify().findings) == 1

    def test_an_edited_and_rehashed_row_breaks_the_chain_at_the_next(
        self, store: EventStore, raw: RawLog, chain: list[Event]
    ) -> None:
        a2, a3 = chain[1], chain[3]
        edited = a2.model_copy(update={"payload": a2.payload.model_copy(update={"reason": "2"})})
        state, _ = seal(edited)
        raw.set_state(a2.position, state)
        assert self._first(store) == (a3.position, Problem.CHAIN_BROKEN)

    def test_a_deleted_row_is_found(
        self, store: EventStore, raw: RawLog, chain: list[Event]
    ) -> None:
        a3, b2, a4 = chain[3], chain[4], chain[5]
        raw.delete(a3.position)
        assert self._first(store) == (b2.position, Problem.DANGLING_CAUSE)
        assert self._problems_at(store, a4.position) == {Problem.VERSION_GAP}

    def test_swapped_versions_are_found(
        self, store: EventStore, raw: RawLog, chain: list[Event]
    ) -> None:
        a2, a3 = chain[1], chain[3]
        raw.swap_versions(a2.position, a3.position, 2, 3)
        assert self._first(store) == (a2.position, Problem.MOVED)
        assert Problem.VERSION_GAP in self._problems_at(store, a2.position)
        assert {Problem.MOVED, Problem.REORDERED} <= self._problems_at(store, a3.position)
        # Read by version, the row at a3's position is version 2, and its body disagrees.
        with pytest.raises(CorruptEvent, match=f"position {a3.position}"):
            store.read("run-a")

    def test_reordered_rows_are_found(
        self, store: EventStore, raw: RawLog, chain: list[Event]
    ) -> None:
        a4, a5 = chain[5], chain[6]
        raw.swap_positions(a4.position, a5.position)
        assert self._first(store) == (a4.position, Problem.VERSION_GAP)
        assert self._problems_at(store, a5.position) == {Problem.REORDERED}

    def test_a_forged_row_is_found(
        self, store: EventStore, raw: RawLog, chain: list[Event]
    ) -> None:
        # A well-formed event with a correct hash of its own, but not chained to the stream.
        forged, _ = sealed_row(paused("forged"), "run-a", 6, prev_hash="f" * 64)
        raw.insert(forged)
        position = store.head_position()
        assert position > chain[-1].position
        assert self._first(store) == (position, Problem.CHAIN_BROKEN)
        assert len(store.verify().findings) == 1

    def test_corrupt_bytes_are_unreadable_and_located(
        self, store: EventStore, raw: RawLog, chain: list[Event]
    ) -> None:
        a2 = chain[1]
        raw.set_state(a2.position, b"\x00\xff not json at all")
        for read in (lambda: store.read("run-a"), lambda: list(store.read_all())):
            with pytest.raises(CorruptEvent) as caught:
                read()
            assert f"position {a2.position}" in str(caught.value)
        assert self._first(store) == (a2.position, Problem.UNREADABLE)
        # A page is decoded whole, but what comes before the bad row is still read.
        got: list[Event] = []
        with pytest.raises(CorruptEvent):
            got.extend(store.read_all())
        assert [e.position for e in got] == [e.position for e in chain if e.position < a2.position]

    def test_a_body_run_into_the_next_rows_is_located_not_read(
        self, store: EventStore, raw: RawLog, chain: list[Event]
    ) -> None:
        # Pages are decoded as one JSON array: two rows whose bytes were cut in the wrong
        # place must not read back as the two events they were.
        a4, a5 = chain[5], chain[6]  # neighbours in one stream
        first, second = raw.state_at(a4.position), raw.state_at(a5.position)
        cut = second.index(b',"version"')
        raw.set_state(a4.position, first + b"," + second[:cut])
        raw.set_state(a5.position, second[cut + 1 :])
        # Joined with a comma, the two rows are the two events again; each alone is not one.
        with pytest.raises(CorruptEvent, match=f"position {a4.position}"):
            list(store.read_all())

    # ------------------------------------------------------------ bad input

    @pytest.mark.parametrize(
        "bad",
        [
            pytest.param({"type": "run.paused", "actor": "system", "payload": {}}, id="dict"),
            pytest.param("run.paused", id="str"),
            pytest.param(None, id="None"),
            pytest.param(NotAnEvent(), id="pydantic-model"),
        ],
    )
    def test_objects_outside_the_catalogue_are_rejected(
        self, store: EventStore, bad: object
    ) -> None:
        store.append("run-1", [started()])
        before = rows(store)
        with pytest.raises(InvalidEvent, match="catalogue"):
            store.append("run-1", [paused("fine"), bad])
        assert rows(store) == before

    def test_envelope_subclasses_outside_the_catalogue_are_rejected(
        self, store: EventStore
    ) -> None:
        class Unregistered(Envelope):
            event_type: ClassVar[str] = "secret.happened"
            type: str = "secret.happened"

        class LookAlike(RunPaused):
            pass

        for bad in (Unregistered(actor="system", payload={}), LookAlike(actor="system")):
            with pytest.raises(InvalidEvent, match="catalogue"):
                store.append("run-1", [bad])
        assert rows(store) == []

    @pytest.mark.parametrize(
        "stream",
        ["", " run-1", "run 1", "-run", ".run", "run/1", "run-ü", "r" * 201, "run-1\t", 17],
    )
    def test_invalid_stream_names_are_rejected(self, store: EventStore, stream: Any) -> None:
        with pytest.raises(InvalidEvent, match="stream name"):
            store.append(stream, [started()])
        assert rows(store) == []
        assert store.append("r" * 200, [started()])[0].stream == "r" * 200

    @pytest.mark.parametrize(
        ("event", "allowed"),
        [
            (lambda: granted(actor="agent:execution/e1"), "human"),
            (lambda: granted(actor="system"), "human"),
            (
                lambda: ApprovalDenied(
                    actor="agent:coordinator/c1",
                    payload={"action_id": "a1", "action_hash": HASH_A, "reason": "no"},
                ),
                "human",
            ),
            (
                lambda: ApprovalExpired(
                    actor="human:ada", payload={"action_id": "a1", "action_hash": HASH_A}
                ),
                "system",
            ),
        ],
    )
    def test_principals_may_append_only_what_they_are_allowed_to(
        self, store: EventStore, event: Callable[[], Envelope], allowed: str
    ) -> None:
        store.append("run-1", [started()])
        before = rows(store)
        with pytest.raises(NotAuthorized) as caught:
            store.append("run-1", [paused("fine"), event()])
        assert f"only a {allowed} principal" in str(caught.value)
        assert rows(store) == before
        # The same event from an allowed principal is accepted.
        allowed_actor = "human:ada" if allowed == "human" else "system"
        allowed_event = event().model_copy(update={"actor": allowed_actor})
        assert store.append("run-1", [allowed_event])[0].actor == allowed_actor

    def test_an_event_naming_another_stream_is_rejected(self, store: EventStore) -> None:
        before = rows(store)
        with pytest.raises(InvalidEvent, match="run-b"):
            store.append("run-a", [paused("fine"), paused("wrong", stream="run-b")])
        assert rows(store) == before
        [event] = store.append("run-a", [paused("right", stream="run-a")])
        assert event.stream == "run-a"

    def test_empty_appends_and_bad_tracking_positions_are_rejected(self, store: EventStore) -> None:
        with pytest.raises(InvalidEvent, match="at least one event"):
            store.append("run-1", [])
        for position in (0, -3):
            with pytest.raises(InvalidEvent, match="tracking position"):
                store.append("run-1", [started()], tracking=ConsumerPosition("p", position))
        assert rows(store) == []
        assert store.position_of("p") == 0


# ---------------------------------------------------------------- the backends


class TestMemoryStore(StoreContract):
    multiprocess = False
    raw_sql = False

    @pytest.fixture
    def store_url(self) -> str:
        return "memory://"


class TestSQLiteStore(StoreContract):
    @pytest.fixture
    def store_url(self, sqlite_url: str) -> str:
        return sqlite_url

    def raw_log(self, store: EventStore) -> RawLog:
        return SQLiteRawLog(str(store.backend.path))

    @pytest.mark.skipif(not sys.platform.startswith("linux"), reason="inotify is Linux's")
    def test_appends_wake_other_processes_through_the_notify_file(self, store: EventStore) -> None:
        # Subscriptions sleep on the store's notify file, which each append touches after its
        # commit; without it they would poll the file's data_version every few milliseconds.
        notify = f"{store.backend.path}-notify"
        watch = _FileWatch.open(notify)
        assert watch is not None
        try:
            assert watch.wait(0) is False  # nothing happened yet
            writer = (
                "import sys; from agentledger.events import EventStore, RunStarted\n"
                "with EventStore.open(sys.argv[1]) as s:\n"
                "    s.append('run-x', [RunStarted(actor='human:ada', payload={'goal': 'g'})])\n"
            )
            subprocess.run([sys.executable, "-c", writer, store.url], check=True)
            assert watch.wait(30) is True  # the other process's append touched it
            assert watch.wait(0) is False  # drained: one wake-up per batch of touches
            assert [e.type for e in store.read("run-x")] == ["run.started"]
            # The file removed (a user tidying the folder): the next append makes it again
            # and the watch follows the new file.
            os.remove(notify)
            watch.wait(0.2)  # takes the removal
            store.append("run-y", [started()])
            assert watch.wait(30) is True
        finally:
            watch.close()

    def test_a_watch_that_cannot_be_made_closes_its_descriptor_once(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        # The fall-back paths (a missing or read-only folder, the watch limit): the inotify
        # descriptor is closed once; a second close could close another thread's file.
        closed: list[int] = []
        real_close = os.close

        def close(fd: int) -> None:
            closed.append(fd)
            real_close(fd)

        monkeypatch.setattr(_backends.os, "close", close)
        assert _FileWatch.open(str(tmp_path / "missing" / "ledger.db-notify")) is None
        gc.collect()
        assert len(closed) == 1

    @pytest.mark.parametrize(
        "name",
        [
            "file:{folder}/ledger.db?mode=rwc",
            "file://{folder}/ledger.db",
            "file:{quoted}/ledger.db?cache=private",
            "file:rel%20dir/ledger.db",  # relative to the working folder
        ],
    )
    def test_a_file_uri_store_leases_beside_its_database_file(
        self, name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        # A store named by a SQLite "file:" URI took every lease at once (each store object,
        # each process: no guard), and made its folder at the name's "parent" ("file:/…" under
        # the working folder), not the file's. Its leases are the file's, whatever names it.
        monkeypatch.chdir(tmp_path)
        folder = tmp_path / "a b" / "c"  # not there yet
        name = name.format(folder=folder, quoted=str(folder).replace(" ", "%20"))
        file = (tmp_path / "rel dir" if name.startswith("file:rel") else folder) / "ledger.db"
        with EventStore.open(f"sqlite:///{name}") as store:
            store.append("run-a", [started()])
            assert file.is_file() and not (tmp_path / "file:").exists()
            lease = store.lease("agent:execution/1")
            assert lease is not None and lease.held()
            assert (file.parent / "ledger.db-leases").is_dir()
            assert store.lease("agent:execution/1") is None
            with EventStore.open(f"sqlite:///{file}") as plain:  # the same file, named plainly
                assert [e.type for e in plain.read("run-a")] == ["run.started"]
                assert plain.lease("agent:execution/1") is None
                lease.release()
                again = plain.lease("agent:execution/1")
                assert again is not None
                assert store.lease("agent:execution/1") is None
                again.release()

    def test_an_append_made_inside_another_of_its_thread_is_refused_alone(
        self, store: EventStore
    ) -> None:
        # One connection per thread: an append from inside another (a signal handler, a
        # callback) would fail its BEGIN, and the rollback after it would end the outer
        # transaction, whose tracking row would then commit without its events.
        from agentledger.events import StoreUnavailable

        under_way = store.backend._writing()  # type: ignore[attr-defined]  # an append
        with under_way, pytest.raises(StoreUnavailable, match=r"under way.*nothing was written"):
            store.append(
                "run-b", [started()], expected_version=0, tracking=ConsumerPosition("c", 1)
            )
        assert store.read("run-b") == [] and store.position_of("c") == 0
        store.append("run-b", [started()], expected_version=0, tracking=ConsumerPosition("c", 1))
        assert len(store.read("run-b")) == 1 and store.position_of("c") == 1

    def test_a_transaction_left_open_on_the_thread_is_not_carried_on(
        self, store: EventStore
    ) -> None:
        # An interrupt between BEGIN and what guards it leaves the connection in a transaction
        # (holding nothing): the next append must begin its own, not fail or join that one.
        backend: Any = store.backend
        conn = backend._thread_conn(backend._writes, writes=True)
        conn.execute("BEGIN")
        store.append("run-c", [started()], expected_version=0)
        assert not conn.in_transaction
        with EventStore.open(store.url) as other:  # committed, as another process sees it
            assert len(other.read("run-c")) == 1

    def test_threads_of_one_process_append_in_turn(self, store: EventStore) -> None:
        def append(i: int) -> None:
            for j in range(25):
                store.append(
                    f"run-t{i}",
                    [started()] if j == 0 else [note(f"k{j}", "v")],
                    expected_version=j,
                    tracking=ConsumerPosition(f"agent:research/{i}", j + 1),
                )

        with ThreadPoolExecutor(max_workers=6) as pool:
            list(pool.map(append, range(6)))
        assert store.head_position() == 150
        assert all(store.position_of(f"agent:research/{i}") == 25 for i in range(6))
        assert all(len(store.read(f"run-t{i}")) == 25 for i in range(6))

    def test_a_store_closed_while_another_thread_appends_does_not_crash_the_process(
        self, store: EventStore
    ) -> None:
        # close() closed the connection an append was using: SQLite freed what its statement
        # held, and the process died (SIGSEGV, about one time in two). Run where a crash
        # cannot take the test run with it.
        script = """
import sys, threading, time
from agentledger.events import EventStore, RunStarted
store = EventStore.open(sys.argv[1])
ended = []
def appends():
    i = 0
    while True:
        try:
            store.append(f"run-{sys.argv[2]}-{i}",
                         [RunStarted(actor="human:ada", payload={"goal": "g"})],
                         expected_version=0)
        except Exception as exc:
            ended.append(type(exc).__name__)
            return
        i += 1
thread = threading.Thread(target=appends)
thread.start()
time.sleep(0.05)
store.close()
thread.join(30)
print(ended[0] if ended else "still appending")
"""
        store.close()
        for attempt in range(5):
            done = subprocess.run(
                [sys.executable, "-c", script, store.url, str(attempt)],
                capture_output=True,
                text=True,
                timeout=120,
            )
            assert done.returncode == 0, done.stderr[-2000:]
            assert done.stdout.strip() in ("ConnectionPoolClosedError", "StoreUnavailable"), done

    def test_a_forked_child_appends_while_a_parent_thread_held_the_write_lock(
        self, store: EventStore
    ) -> None:
        # A child forked while another thread of the parent was mid-append inherited the held
        # lock, and waited for a thread it does not have (30 s a try, retried: minutes).
        backend: Any = store.backend
        holding, release = threading.Event(), threading.Event()

        def hold() -> None:
            with backend._writing():
                holding.set()
                release.wait(30)

        thread = threading.Thread(target=hold)
        thread.start()
        assert holding.wait(10)
        pid = os.fork()
        if pid == 0:  # the child: append, and say how it went by the exit status
            code = 1
            try:
                signal.alarm(20)  # never the test's hang
                store.append("run-child", [started()], expected_version=0)
                code = 0
            finally:
                os._exit(code)
        release.set()
        thread.join(10)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert len(store.read("run-child")) == 1

    def test_a_forked_child_counts_only_its_own_operations_under_way(
        self, store: EventStore
    ) -> None:
        # The child's count was reset by its first plain read, while another thread of it was
        # inside a pool read: that read then left the count at -1, and close() no longer
        # waited for what was under way (the crash above, again).
        backend: Any = store.backend
        store.append("run-w", [started()], expected_version=0)
        broken = 0
        for _ in range(5):
            pid = os.fork()
            if pid == 0:
                code = 1
                try:
                    signal.alarm(20)
                    stop = threading.Event()

                    def reads(stop: threading.Event) -> None:
                        while not stop.is_set():
                            list(store.read_stored())

                    thread = threading.Thread(target=reads, args=(stop,))
                    thread.start()
                    time.sleep(0.01)
                    store.head_position()
                    stop.set()
                    thread.join()
                    code = 0 if backend._gate._users == 0 else 2
                finally:
                    os._exit(code)
            _, status = os.waitpid(pid, 0)
            broken += os.waitstatus_to_exitcode(status) != 0
        assert broken == 0

    def test_appends_of_ended_threads_leave_no_connection_open(self, store: EventStore) -> None:
        # Appends, too, go on a connection per thread (no pool queue, transaction and cursor
        # wrappers around each): threads that append once each must not gather them.
        errors: list[BaseException] = []

        def append(i: int) -> None:
            try:
                store.append(f"run-{i}", [started()], expected_version=0)
                store.record_position(f"agent:research/{i}", i + 1)
            except BaseException as exc:  # reported below
                errors.append(exc)

        for i in range(20):
            thread = threading.Thread(target=append, args=(i,))
            thread.start()
            thread.join()
        assert errors == []
        assert store.head_position() == 20
        assert store.position_of("agent:research/19") == 20
        open_now = store.backend._conns  # type: ignore[attr-defined]
        assert len([t for t, _, _ in open_now if not t.is_alive()]) <= 1
        store.close()
        assert store.backend._conns == []  # type: ignore[attr-defined]

    def test_reads_of_ended_threads_leave_no_connection_open(self, store: EventStore) -> None:
        # Hot reads go on a connection per thread (no pool lock, BEGIN or ROLLBACK around
        # each): a server answering each request on a new thread must not gather them.
        store.append("run-a", [started()])
        seen: list[int] = []

        def read() -> None:
            seen.append(len(store.read("run-a")) + store.head_position())

        for _ in range(20):
            thread = threading.Thread(target=read)
            thread.start()
            thread.join()
        assert seen == [2] * 20
        open_now = store.backend._conns  # type: ignore[attr-defined]
        # The last ended thread's stays until the next thread opens one; the append's thread
        # (this one) keeps its connection for writes.
        ended = [t for t, _, _ in open_now if not t.is_alive()]
        assert len(ended) <= 1 and len(open_now) <= 2
        store.close()
        assert store.backend._conns == []  # type: ignore[attr-defined]
        # Closed: a thread that never read gets no new connection (it would never be closed).
        failed: list[BaseException] = []

        def read_after_close() -> None:
            try:
                store.head_position()
            except BaseException as exc:
                failed.append(exc)

        thread = threading.Thread(target=read_after_close)
        thread.start()
        thread.join()
        assert [type(e).__name__ for e in failed] == ["ConnectionPoolClosedError"]
        assert store.backend._conns == []  # type: ignore[attr-defined]


@pytest.mark.postgres
class TestPostgresStore(StoreContract):
    @pytest.fixture
    def store_url(self, postgres_url: str) -> str:
        return postgres_url

    def raw_log(self, store: EventStore) -> RawLog:
        return PostgresRawLog(store)

    def test_a_lease_whose_session_the_server_ends_is_no_longer_held(
        self, store: EventStore, postgres_leases: Any
    ) -> None:
        # The server ends a session while its process runs on (an admin, a restart, an idle
        # timeout, keepalives after a network cut): the lock is gone and another process may
        # take it. The holder must be able to tell, or two processes follow as one agent.
        lease = store.lease("agent:execution/1")
        assert lease is not None and lease.held()
        postgres_leases.end_session("agent:execution/1")
        deadline = time.monotonic() + 30
        while postgres_leases.holder("agent:execution/1") is not None:
            assert time.monotonic() < deadline, "the ended session kept its lock"
            time.sleep(0.02)
        assert not lease.held()
        assert not lease.held()  # lost stays lost
        with EventStore.open(store.url) as other:
            taken = other.lease("agent:execution/1")
            assert taken is not None and taken.held()
            lease.release()  # the lost one's release leaves the new holder's alone
            assert taken.held() and store.lease("agent:execution/1") is None
            taken.release()

    def test_a_subscription_to_some_types_reads_only_when_they_are_appended(
        self, store: EventStore
    ) -> None:
        # Each append notifies the types it held: a subscription to others (an agent waiting
        # for work) does not read after it (a round trip, and the server's work, per append
        # per idle agent). It still reads every _REFETCH_S, and at once for its own types.
        reads = calls_of(store.backend, "read_page_to_head")
        store.append("run-1", [started()])
        with store.subscribe(types=["run.paused"]) as sub:
            got: list[Event] = []
            stop = threading.Event()

            def follow() -> None:
                while not stop.is_set():
                    got.extend(sub.poll(timeout=0.5))

            follower = threading.Thread(target=follow)
            follower.start()
            try:
                time.sleep(0.3)  # its first read done: waiting
                before = len(reads)
                for i in range(30):
                    store.append("run-1", [note(f"k{i}", "v")])
                    time.sleep(0.005)
                during = len(reads) - before
                store.append("run-1", [paused("now")])
                deadline = time.monotonic() + 30
                while not got and time.monotonic() < deadline:
                    time.sleep(0.01)
            finally:
                stop.set()
                follower.join(timeout=10)
        assert [e.type for e in got] == ["run.paused"]
        assert during <= 5, f"{during} reads for 30 appends of other types"

    def test_the_waiter_tells_which_types_woke_it(self, store: EventStore) -> None:
        channel = store.backend.recorder.channel_name  # type: ignore[attr-defined]
        waiter = store.backend.waiter()
        try:
            with store.backend._connect() as conn:  # type: ignore[attr-defined]

                def notify(payload: str) -> None:
                    waiter.arm()
                    conn.execute("SELECT pg_notify(%s, %s)", (channel, payload))
                    waiter.wait(10)

                notify("task.assigned,scratchpad.updated")
                assert not waiter.woken_for(["run.paused"])  # and forgets them
                assert not waiter.woken_for(["task.assigned"])
                notify("task.assigned,run.paused")
                assert waiter.woken_for(["run.paused"])
                assert waiter.woken_for([])  # a subscription to every type
                # No payload: eventsourcing's own recorder, or an older agentledger's append.
                notify("")
                assert waiter.woken_for(["run.paused"])
        finally:
            waiter.close()


def test_every_backend_joins_the_contract() -> None:
    # pytest silently skips an abstract class: a backend that forgot a fixture would vanish.
    backends = [
        cls
        for cls in vars(sys.modules[__name__]).values()
        if inspect.isclass(cls) and issubclass(cls, StoreContract) and cls is not StoreContract
    ]
    assert {cls.__name__ for cls in backends} == {
        "TestMemoryStore",
        "TestSQLiteStore",
        "TestPostgresStore",
    }
    assert not [cls for cls in backends if inspect.isabstract(cls)]
