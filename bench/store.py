"""EventStore vs the raw eventsourcing recorder under it: append, read, subscribe, concurrency.

Run from the repository root::

    .venv/bin/python bench/store.py                    # both backends, full run (a few minutes)
    .venv/bin/python bench/store.py --quick            # CI smoke run (< 1 minute)
    .venv/bin/python bench/store.py --backend sqlite --out bench-results.md

Every comparison is measured in ONE run, on the same backend and server, each side on its own
fresh SQLite file or PostgreSQL schema, warmed up, repeated, median reported. Ratios are
ours / raw (higher is better for throughput). See bench/README.md for what each row measures.
The exit status is 0 whatever the numbers: this is a benchmark, not a test (a MISS is printed).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import logging
import multiprocessing as mp
import os
import platform
import secrets
import shutil
import sqlite3
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

DEFAULT_PG_URL = "postgresql://postgres@127.0.0.1:5432/test"
PG_URL_ENV = "AGENTLEDGER_BENCH_PG"
ACTOR = "agent:research/bench"
VALUE = "v" * 200  # ~200-byte scratchpad value: a stored row of ~550 bytes on both sides
TOPIC = "scratchpad.updated@1"  # what our codec stores for ScratchpadUpdated; raw rows use it too
BATCH = 100
PAGE = 1000  # EventStore.read_all's page size; the raw read pages the same way
FAKE_HASH = "0" * 64  # the raw body carries hash-sized members so its bytes match ours


# ---------------------------------------------------------------- settings


@dataclass(frozen=True)
class Settings:
    """Sizes of one run (``--quick`` or full)."""

    events: int  # events per repetition for batched append and read_all
    single: int  # events per repetition for single-event append
    repeat: int  # timed repetitions (median reported)
    hops: int  # subscription hops measured (after a few warm-up hops)
    hop_sleep: float  # writer's sleep between hops (seconds)
    procs: int  # concurrent writer processes (SQLite)
    per_proc: int  # events each process appends
    conc_repeat: int  # repetitions of the concurrency run


def settings_for(args: argparse.Namespace) -> Settings:
    if args.quick:
        events = args.events or 2_000
        return Settings(
            events=events,
            single=max(100, min(events // 10, 200)),
            repeat=args.repeat or 3,
            hops=40,
            hop_sleep=0.005,
            procs=8,
            per_proc=100,
            conc_repeat=1,
        )
    events = args.events or 20_000
    return Settings(
        events=events,
        single=max(200, min(events // 10, 2_000)),
        repeat=args.repeat or 5,
        hops=200,
        hop_sleep=0.005,
        procs=8,
        per_proc=500,
        conc_repeat=3,
    )


# ---------------------------------------------------------------- results


@dataclass
class Row:
    """One line of the results table."""

    backend: str
    name: str
    unit: str
    ours: float | None = None
    raw: float | None = None
    ours_text: str = ""
    raw_text: str = ""
    ratio: float | None = None
    spread: str = ""
    note: str = ""


@dataclass
class Target:
    """One target from the issue, checked against a measured value."""

    label: str
    value: float | None
    goal: float
    unit: str
    higher_is_better: bool = True

    @property
    def passed(self) -> bool | None:
        if self.value is None:
            return None
        return self.value >= self.goal if self.higher_is_better else self.value <= self.goal


@dataclass
class Results:
    rows: list[Row] = field(default_factory=list)
    targets: list[Target] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def add(self, row: Row, samples: tuple[list[float], list[float]] | None = None) -> Row:
        self.rows.append(row)
        print(
            f"  {row.backend:8s} {row.name:52s} ours {_cell(row, 'ours'):>16s}   "
            f"raw {_cell(row, 'raw'):>16s}   ratio {_fmt_ratio(row.ratio)}",
            flush=True,
        )
        if samples is not None:
            ours, raw = (", ".join(f"{x:,.0f}" for x in side) for side in samples)
            print(f"  {'':8s}   samples: ours [{ours}]  raw [{raw}]", flush=True)
        return row


def _fmt_num(value: float | None, unit: str) -> str:
    if value is None:
        return "—"
    if unit == "ms":
        return f"{value:.2f}"
    return f"{value:,.0f}"


def _cell(row: Row, side: str) -> str:
    text = row.ours_text if side == "ours" else row.raw_text
    if text:
        return text
    return _fmt_num(row.ours if side == "ours" else row.raw, row.unit)


def _fmt_ratio(ratio: float | None) -> str:
    return "—" if ratio is None else f"{ratio:.2f}"


def _spread(samples: list[float]) -> str:
    if len(samples) < 2:
        return ""
    med = statistics.median(samples)
    return f"±{(max(samples) - min(samples)) / 2 / med * 100:.0f}%" if med else ""


def _pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


# ---------------------------------------------------------------- payloads


def make_events(n: int) -> list[Any]:
    """Typed events for our side (built before timing: constructing them is the caller's cost)."""
    from agentledger.events import ScratchpadUpdated

    return [
        ScratchpadUpdated(actor=ACTOR, payload={"key": "notes", "value": VALUE}) for _ in range(n)
    ]


def grow(store: Any, run: str, n: int, batch: int = 1000) -> int:
    """Append research notes to ``run`` until it has at least ``n`` events (a long run);
    return its version."""
    from agentledger.events import ScratchpadUpdated

    notes = [
        ScratchpadUpdated(
            actor="agent:research/1", payload={"key": f"k{i % 50}", "value": "v" * 100}
        )
        for i in range(batch)
    ]
    while store.stream_version(run) < n:
        store.append(run, notes)
    return int(store.stream_version(run))


def make_templates(n: int) -> list[dict[str, Any]]:
    """Plain dicts with the same members as our envelope, for the raw side (built before timing)."""
    now = datetime.now(UTC)
    return [
        {
            "id": str(uuid.uuid4()),
            "stream": "",
            "version": 0,
            "type": "scratchpad.updated",
            "schema_version": 1,
            "at": now.isoformat().replace("+00:00", "Z"),
            "actor": ACTOR,
            "causation_id": None,
            "correlation_id": None,
            "payload": {"key": "notes", "value": VALUE},
            "prev_hash": FAKE_HASH,
            "hash": FAKE_HASH,
        }
        for _ in range(n)
    ]


def raw_stored(template: dict[str, Any], stream: str, version: int) -> Any:
    """The raw side's encoding step (timed): set stream and version, JSON-encode, wrap."""
    from eventsourcing.persistence import StoredEvent

    body = dict(template, stream=stream, version=version)
    state = json.dumps(body, separators=(",", ":")).encode()
    return StoredEvent(originator_id=stream, originator_version=version, topic=TOPIC, state=state)


# ---------------------------------------------------------------- backends


class BackendUnderTest:
    """Creates fresh stores (ours) and fresh recorders (raw) on one backend, and cleans up."""

    name = ""
    _opened: list[Any]  # stores and datastores to close at cleanup

    def url(self, label: str) -> str:
        """The URL of a fresh, empty store (not opened)."""
        raise NotImplementedError

    def ours(self, label: str) -> tuple[Any, str]:
        from agentledger.events import EventStore

        url = self.url(label)
        store = EventStore.open(url)
        self._opened.append(store)
        return store, url

    def raw(self, label: str) -> Any:
        raise NotImplementedError

    def describe(self) -> str:
        return ""

    def cleanup(self) -> None:
        pass


class SQLiteUnderTest(BackendUnderTest):
    name = "sqlite"

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="agentledger-bench-"))
        self._opened: list[Any] = []

    def path(self, label: str) -> Path:
        return self.dir / f"{label}-{secrets.token_hex(3)}.db"

    def url(self, label: str) -> str:
        return f"sqlite:///{self.path(label)}"

    def raw(self, label: str) -> Any:
        from eventsourcing.sqlite import SQLiteDatastore, SQLiteProcessRecorder

        # The same datastore settings as events/_backends.py SQLiteBackend.
        datastore = SQLiteDatastore(
            str(self.path(label)),
            lock_timeout=30,
            originator_id_type="text",
            pool_size=2,
            max_overflow=6,
        )
        recorder = SQLiteProcessRecorder(datastore)
        recorder.create_table()
        self._opened.append(datastore)
        return recorder

    def describe(self) -> str:
        return f"SQLite {sqlite3.sqlite_version} (WAL, files under {self.dir})"

    def cleanup(self) -> None:
        for thing in self._opened:
            with contextlib.suppress(Exception):
                thing.close()
        shutil.rmtree(self.dir, ignore_errors=True)


class PostgresUnderTest(BackendUnderTest):
    name = "postgres"

    def __init__(self, base_url: str) -> None:
        from urllib.parse import urlsplit

        import psycopg

        self.base_url = base_url.split("?", 1)[0]
        parts = urlsplit(self.base_url)
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 5432
        self.dbname = parts.path.lstrip("/") or "postgres"
        self.user = parts.username or "postgres"
        self.password = parts.password or ""
        self.run_id = f"bench_{os.getpid()}_{secrets.token_hex(3)}"
        self.schemas: list[str] = []
        self._opened: list[Any] = []
        self._psycopg = psycopg
        with self.admin() as conn:
            row = conn.execute(
                "SELECT current_setting('server_version'), current_setting('synchronous_commit')"
            ).fetchone()
            self.server = f"PostgreSQL {row[0]} (synchronous_commit={row[1]})"

    def admin(self) -> Any:
        return self._psycopg.connect(
            host=self.host,
            port=self.port,
            dbname=self.dbname,
            user=self.user,
            password=self.password or None,
            autocommit=True,
            connect_timeout=5,
        )

    def new_schema(self, label: str) -> str:
        schema = f"{self.run_id}_{label}"[:63]
        self.schemas.append(schema)
        with self.admin() as conn:
            conn.execute(f'CREATE SCHEMA "{schema}"')
        return schema

    def url(self, label: str) -> str:
        return f"{self.base_url}?schema={self.new_schema(label)}"

    def raw(self, label: str, **datastore_options: Any) -> Any:
        from eventsourcing.postgres import PostgresDatastore, PostgresProcessRecorder

        schema = self.new_schema(label)
        # The same datastore settings as events/_backends.py PostgresBackend (pool_size=4).
        options: dict[str, Any] = {
            "pool_size": 4,
            "max_overflow": 8,
            "connect_timeout": 10,
            "lock_timeout": 30,
        }
        options.update(datastore_options)
        datastore = PostgresDatastore(
            dbname=self.dbname,
            host=self.host,
            port=self.port,
            user=self.user,
            password=self.password,
            schema=schema,
            originator_id_type="text",
            **options,
        )
        recorder = PostgresProcessRecorder(datastore)
        recorder.create_table()
        self._opened.append(datastore)
        return recorder

    def describe(self) -> str:
        return f"{self.server} at {self.host}:{self.port}/{self.dbname}, schemas {self.run_id}_*"

    def cleanup(self) -> None:
        for thing in self._opened:
            with contextlib.suppress(Exception):
                thing.close()
        if not self.schemas:
            return
        try:
            with self.admin() as conn:
                for schema in self.schemas:
                    conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        except Exception as exc:  # never hide the results behind a cleanup failure
            print(f"warning: could not drop schemas {self.schemas}: {exc}", file=sys.stderr)
        self.schemas.clear()


# ---------------------------------------------------------------- measuring


def alternate(
    repeat: int,
    ours: Callable[[int], float],
    raw: Callable[[int], float],
    *extra: Callable[[int], float],
) -> tuple[list[float], ...]:
    """Run every side ``repeat`` times, rotating which goes first (drift hits all of them)."""
    sides = (ours, raw, *extra)
    samples: tuple[list[float], ...] = tuple([] for _ in sides)
    for rep in range(repeat):
        for k in range(len(sides)):
            index = (k + rep) % len(sides)
            samples[index].append(sides[index](rep))
    return samples


def clock() -> float:
    """Start a timed section from a collected heap, on both sides alike: the previous sample's
    garbage (20,000 decoded events, say) and the inputs a sample builds before its clock starts
    would otherwise be collected on the clock (a full collection costs ~40 ms here). The
    collections the timed work itself causes stay on the clock."""
    gc.collect()
    return time.perf_counter()


def rate(n: int, seconds: float) -> float:
    return n / seconds if seconds > 0 else float("inf")


def bench_single(bt: BackendUnderTest, s: Settings, res: Results) -> None:
    store, _ = bt.ours("ours_single")
    recorder = bt.raw("raw_single")
    n = s.single

    def ours(rep: int, n: int = n, prefix: str = "single") -> float:
        stream = f"{prefix}-{rep}-{secrets.token_hex(2)}"
        events = make_events(n)
        t0 = clock()
        for version, event in enumerate(events):
            store.append(stream, [event], expected_version=version)
        return rate(n, time.perf_counter() - t0)

    def raw(rep: int, n: int = n, prefix: str = "single", recorder: Any = recorder) -> float:
        stream = f"{prefix}-{rep}-{secrets.token_hex(2)}"
        templates = make_templates(n)
        t0 = clock()
        for version, template in enumerate(templates, start=1):
            recorder.insert_events([raw_stored(template, stream, version)])
        return rate(n, time.perf_counter() - t0)

    extra = []
    if isinstance(bt, PostgresUnderTest):
        # For reference only: eventsourcing's one-round-trip database function. In 9.5.6 it
        # takes no table lock and ignores tracking, so it is not a baseline we could build on.
        dbfn = bt.raw("raw_dbfn", enable_db_functions=True)

        def raw_dbfn(rep: int, n: int = n, prefix: str = "single") -> float:
            return raw(rep, n, prefix, dbfn)

        extra.append(raw_dbfn)
    for side in (ours, raw, *extra):
        side(0, min(n, 100), "warm")
    o, r, *x = alternate(s.repeat, ours, raw, *extra)
    row = res.add(
        Row(
            bt.name,
            f"single-event append ({n} ev × {s.repeat})",
            "ev/s",
            statistics.median(o),
            statistics.median(r),
            ratio=statistics.median(o) / statistics.median(r),
            spread=f"{_spread(o)} / {_spread(r)}",
        ),
        (o, r),
    )
    if x:
        d = x[0]
        res.add(
            Row(
                bt.name,
                "  (raw with enable_db_functions=True)",
                "ev/s",
                statistics.median(o),
                statistics.median(d),
                ratio=statistics.median(o) / statistics.median(d),
                spread=f"{_spread(o)} / {_spread(d)}",
                note="reference only: eventsourcing 9.5.6's one-call insert takes no table "
                "lock and ignores tracking (commit order ≠ position order)",
            ),
            (o, d),
        )
    if bt.name == "postgres":
        res.targets.append(Target("PostgreSQL single-event append", row.ours, 1_500, "ev/s"))


def bench_batched(bt: BackendUnderTest, s: Settings, res: Results) -> None:
    store, _ = bt.ours("ours_batch")
    recorder = bt.raw("raw_batch")
    n = s.events - s.events % BATCH or BATCH

    def ours(rep: int, n: int = n, prefix: str = "batch") -> float:
        stream = f"{prefix}-{rep}-{secrets.token_hex(2)}"
        events = make_events(n)
        t0 = clock()
        for start in range(0, n, BATCH):
            store.append(stream, events[start : start + BATCH], expected_version=start)
        return rate(n, time.perf_counter() - t0)

    def raw(rep: int, n: int = n, prefix: str = "batch") -> float:
        stream = f"{prefix}-{rep}-{secrets.token_hex(2)}"
        templates = make_templates(n)
        t0 = clock()
        for start in range(0, n, BATCH):
            recorder.insert_events(
                [
                    raw_stored(templates[i], stream, i + 1)
                    for i in range(start, min(start + BATCH, n))
                ]
            )
        return rate(n, time.perf_counter() - t0)

    ours(0, 5 * BATCH, "warm")
    raw(0, 5 * BATCH, "warm")
    o, r = alternate(s.repeat, ours, raw)
    row = res.add(
        Row(
            bt.name,
            f"{BATCH}-event batched append ({n} ev × {s.repeat})",
            "ev/s",
            statistics.median(o),
            statistics.median(r),
            ratio=statistics.median(o) / statistics.median(r),
            spread=f"{_spread(o)} / {_spread(r)}",
        ),
        (o, r),
    )
    res.targets.append(Target(f"{bt.name}: batched append ours/raw", row.ratio, 0.85, "×"))


def bench_read(bt: BackendUnderTest, s: Settings, res: Results) -> None:
    store, _ = bt.ours("ours_read")
    recorder = bt.raw("raw_read")
    n = s.events - s.events % BATCH or BATCH
    # Fill both logs the same way: streams of 1,000 events written in batches of 100.
    events = make_events(n)
    templates = make_templates(n)
    for start in range(0, n, BATCH):
        stream = f"read-{start // 1000}"
        version = start % 1000
        store.append(stream, events[start : start + BATCH], expected_version=version)
        recorder.insert_events(
            [
                raw_stored(templates[i], stream, version + i - start + 1)
                for i in range(start, min(start + BATCH, n))
            ]
        )

    del events, templates  # only the stores' contents should be alive while reading

    def ours(_: int) -> float:
        t0 = clock()
        got = list(store.read_all())
        elapsed = time.perf_counter() - t0
        assert len(got) == n, (len(got), n)
        return rate(n, elapsed)

    def raw_pages(decode: bool) -> float:
        t0 = clock()
        out: list[Any] = []
        start = 0
        while True:
            rows = recorder.select_notifications(start, PAGE, inclusive_of_start=False)
            if decode:
                out.extend(json.loads(row.state) for row in rows)
            else:
                out.extend(rows)
            if len(rows) < PAGE:
                break
            start = rows[-1].id
        elapsed = time.perf_counter() - t0
        assert len(out) == n, (len(out), n)
        return rate(n, elapsed)

    for _ in range(2):  # warm caches, prepared statements, page cache
        ours(0)
        raw_pages(True)
    rows_only: list[float] = []

    def raw(_: int) -> float:
        rows_only.append(raw_pages(False))
        return raw_pages(True)

    o, r = alternate(s.repeat, ours, raw)
    ours_med, raw_med, rows_med = (statistics.median(x) for x in (o, r, rows_only))
    row = res.add(
        Row(
            bt.name,
            f"read_all → typed events ({n} ev × {s.repeat})",
            "ev/s",
            ours_med,
            raw_med,
            ratio=ours_med / raw_med,
            spread=f"{_spread(o)} / {_spread(r)}",
            note="raw = select_notifications pages + json.loads (the ratio's baseline)",
        ),
        (o, r),
    )
    res.add(
        Row(
            bt.name,
            "  (raw rows only, no decoding)",
            "ev/s",
            ours_med,
            rows_med,
            ratio=ours_med / rows_med,
            spread=f"{_spread(o)} / {_spread(rows_only)}",
            note="for reference: select_notifications pages, no json.loads",
        ),
        (o, rows_only),
    )
    res.targets.append(Target(f"{bt.name}: read_all ours/raw(+json.loads)", row.ratio, 0.85, "×"))
    if bt.name == "sqlite":
        res.targets.append(Target("SQLite read_all typed events", row.ours, 100_000, "ev/s"))


# ---------------------------------------------------------------- subscriptions


def _latencies(
    sent: dict[Any, float], received: dict[Any, float], warm: int
) -> tuple[list[float], int]:
    keys = list(sent)[warm:]
    lat = [(received[k] - sent[k]) * 1000 for k in keys if k in received]
    return lat, len(keys) - len(lat)


def hop_ours_in_process(store: Any, s: Settings, warm: int) -> tuple[list[float], int]:
    """Subscriber thread on ``store.subscribe``; the writer appends on the same store."""
    total = s.hops + warm
    events = make_events(total)
    received: dict[Any, float] = {}
    sub = store.subscribe(after_position=store.head_position())

    def consume() -> None:
        for event in sub:
            received[event.id] = time.monotonic()
            if len(received) >= total:
                return

    thread = threading.Thread(target=consume, daemon=True)
    thread.start()
    time.sleep(0.1)
    sent: dict[Any, float] = {}
    stream = f"hop-{secrets.token_hex(3)}"
    for version, event in enumerate(events):
        time.sleep(s.hop_sleep)
        t0 = time.monotonic()
        store.append(stream, [event], expected_version=version)
        sent[event.id] = t0
    thread.join(timeout=10)
    sub.close()
    return _latencies(sent, received, warm)


def hop_raw_postgres(recorder: Any, s: Settings, warm: int) -> tuple[list[float], int]:
    """eventsourcing's own ``recorder.subscribe(gt=...)`` (LISTEN/NOTIFY) with raw inserts."""
    total = s.hops + warm
    templates = make_templates(total)
    received: dict[Any, float] = {}
    start = recorder.max_notification_id() or 0
    entered = threading.Event()

    def consume() -> None:
        with recorder.subscribe(gt=start) as sub:
            entered.set()
            for notification in sub:
                json.loads(notification.state)
                received[notification.originator_version] = time.monotonic()
                if len(received) >= total:
                    return

    thread = threading.Thread(target=consume, daemon=True)
    thread.start()
    entered.wait(5)
    time.sleep(0.1)
    sent: dict[Any, float] = {}
    stream = f"hop-{secrets.token_hex(3)}"
    for version, template in enumerate(templates, start=1):
        time.sleep(s.hop_sleep)
        t0 = time.monotonic()
        recorder.insert_events([raw_stored(template, stream, version)])
        sent[version] = t0
    thread.join(timeout=10)
    return _latencies(sent, received, warm)


def hop_raw_sqlite(recorder: Any, s: Settings, warm: int) -> tuple[list[float], int]:
    """eventsourcing has no SQLite subscription: poll select_notifications every 1 ms."""
    total = s.hops + warm
    templates = make_templates(total)
    received: dict[Any, float] = {}
    stop = threading.Event()
    start = recorder.max_notification_id() or 0

    def consume() -> None:
        last = start
        while len(received) < total and not stop.is_set():
            rows = recorder.select_notifications(last, 500, inclusive_of_start=False)
            if not rows:
                time.sleep(0.001)
                continue
            for row in rows:
                json.loads(row.state)
                received[row.originator_version] = time.monotonic()
                last = row.id

    thread = threading.Thread(target=consume, daemon=True)
    thread.start()
    time.sleep(0.1)
    sent: dict[Any, float] = {}
    stream = f"hop-{secrets.token_hex(3)}"
    for version, template in enumerate(templates, start=1):
        time.sleep(s.hop_sleep)
        t0 = time.monotonic()
        recorder.insert_events([raw_stored(template, stream, version)])
        sent[version] = t0
    thread.join(timeout=10)
    stop.set()
    return _latencies(sent, received, warm)


def _hop_writer(url: str, total: int, sleep: float, ready: Any, go: Any, out: Any) -> None:
    """Child process: append ``total`` events one at a time; report (id, monotonic before)."""
    from agentledger.events import EventStore

    with EventStore.open(url) as store:
        events = make_events(total)
        stream = f"hopx-{secrets.token_hex(3)}"
        store.append(f"warm-{secrets.token_hex(3)}", make_events(1), expected_version=0)
        ready.set()
        go.wait(60)
        sent = []
        for version, event in enumerate(events):
            time.sleep(sleep)
            t0 = time.monotonic()  # CLOCK_MONOTONIC: one clock for every process on Linux
            store.append(stream, [event], expected_version=version)
            sent.append((str(event.id), t0))
        out.put(sent)


def hop_ours_cross_process(store: Any, url: str, s: Settings, warm: int) -> tuple[list[float], int]:
    """Writer in another process (so no in-process wake-up shortcut), subscriber here."""
    ctx = mp.get_context("spawn")
    total = s.hops + warm
    ready, go, out = ctx.Event(), ctx.Event(), ctx.Queue()
    proc = ctx.Process(target=_hop_writer, args=(url, total, s.hop_sleep, ready, go, out))
    proc.start()
    try:
        if not ready.wait(60):
            raise RuntimeError("hop writer process did not start")
        received: dict[str, float] = {}
        sub = store.subscribe(after_position=store.head_position())

        def consume() -> None:
            for event in sub:
                received[str(event.id)] = time.monotonic()
                if len(received) >= total:
                    return

        thread = threading.Thread(target=consume, daemon=True)
        thread.start()
        time.sleep(0.1)
        go.set()
        sent = dict(out.get(timeout=120))
        thread.join(timeout=10)
        sub.close()
    finally:
        proc.join(timeout=30)
        if proc.is_alive():
            proc.terminate()
    return _latencies(sent, received, warm)


def bench_subscription(bt: BackendUnderTest, s: Settings, res: Results) -> None:
    warm = 5
    store, _ = bt.ours("ours_sub")
    recorder = bt.raw("raw_sub")
    ours_lat, ours_lost = hop_ours_in_process(store, s, warm)
    if bt.name == "postgres":
        raw_lat, raw_lost = hop_raw_postgres(recorder, s, warm)
        raw_label = "raw = recorder.subscribe(gt=…) (LISTEN/NOTIFY)"
    else:
        raw_lat, raw_lost = hop_raw_sqlite(recorder, s, warm)
        raw_label = "raw = select_notifications polled every 1 ms (no SQLite subscribe)"
    name = f"subscription hop p50 / p99, same process ({s.hops} hops)"
    p50o, p99o, p50r, p99r = (
        _pct(ours_lat, 50),
        _pct(ours_lat, 99),
        _pct(raw_lat, 50),
        _pct(raw_lat, 99),
    )
    lost = f"; NOT RECEIVED: ours {ours_lost}, raw {raw_lost}" if ours_lost or raw_lost else ""
    res.add(
        Row(
            bt.name,
            name,
            "ms",
            p50o,
            p50r,
            ours_text=f"{p50o:.2f} / {p99o:.2f} ms",
            raw_text=f"{p50r:.2f} / {p99r:.2f} ms",
            ratio=p50o / p50r if p50r else None,
            note=f"{raw_label}; writer sleeps {s.hop_sleep * 1000:.0f} ms between appends"
            f"; ratio is p50 ours/raw (lower is better){lost}",
        )
    )
    if bt.name == "postgres":
        res.targets.append(
            Target("PostgreSQL subscription hop p50", p50o, 5.0, "ms", higher_is_better=False)
        )
    # Another process writes: what a subscriber sees from other agents (no local shortcut).
    cross_store, cross_url = bt.ours("ours_subx")
    x_lat, x_lost = hop_ours_cross_process(cross_store, cross_url, s, warm)
    p50x, p99x = _pct(x_lat, 50), _pct(x_lat, 99)
    res.add(
        Row(
            bt.name,
            "subscription hop p50 / p99, writer in other process",
            "ms",
            p50x,
            None,
            ours_text=f"{p50x:.2f} / {p99x:.2f} ms",
            note="ours only; the same-process row benefits from notify_local()"
            + (f"; NOT RECEIVED: {x_lost}" if x_lost else ""),
        )
    )


# ---------------------------------------------------------------- concurrency (SQLite)

_BARRIER: Any = None


def _init_conc_worker(barrier: Any) -> None:
    global _BARRIER
    _BARRIER = barrier


class _CountWarnings(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        self.count += 1


def _conc_worker(task: tuple[str, str, int, int]) -> dict[str, Any]:
    """One writer process: open the store itself, wait for all, append one event at a time."""
    kind, target, index, count = task
    stream = f"proc-{index}"
    errors: list[str] = []
    retries = _CountWarnings()
    logging.getLogger("agentledger.events.store").addHandler(retries)
    try:
        if kind == "ours":
            from agentledger.events import EventStore

            store: Any = EventStore.open(target)
            events = make_events(count)

            def write(version: int) -> None:
                store.append(stream, [events[version]], expected_version=version)

            close: Callable[[], None] = store.close
        else:
            from eventsourcing.sqlite import SQLiteDatastore, SQLiteProcessRecorder

            datastore = SQLiteDatastore(
                target, lock_timeout=30, originator_id_type="text", pool_size=2, max_overflow=6
            )
            recorder = SQLiteProcessRecorder(datastore)
            templates = make_templates(count)

            def write(version: int) -> None:
                recorder.insert_events([raw_stored(templates[version], stream, version + 1)])

            close = datastore.close
    except BaseException:
        _BARRIER.abort()
        raise
    _BARRIER.wait(timeout=120)
    t0 = time.monotonic()
    ok = 0
    for version in range(count):
        try:
            write(version)
            ok += 1
        except Exception as exc:
            errors.append(f"{type(exc).__name__}: {exc}")
            if len(errors) > 20:
                break
    t1 = time.monotonic()
    close()
    return {
        "index": index,
        "ok": ok,
        "errors": errors,
        "t0": t0,
        "t1": t1,
        "retries": retries.count,
    }


def _check_sqlite_log(path: Path, procs: int, per_proc: int) -> tuple[bool, str]:
    conn = sqlite3.connect(str(path))
    try:
        count, low, high = conn.execute(
            "SELECT COUNT(*), MIN(rowid), MAX(rowid) FROM stored_events"
        ).fetchone()
        per_stream = conn.execute(
            "SELECT originator_id, COUNT(*), MIN(originator_version), MAX(originator_version) "
            "FROM stored_events GROUP BY originator_id"
        ).fetchall()
    finally:
        conn.close()
    gapless = count == procs * per_proc and low == 1 and high == count
    streams_ok = len(per_stream) == procs and all(
        c == per_proc and lo == 1 and hi == per_proc for _, c, lo, hi in per_stream
    )
    detail = f"{count} rows, positions {low}..{high}"
    if not streams_ok:
        detail += f", streams {per_stream}"
    return gapless and streams_ok, detail


def bench_concurrency(s: Settings, res: Results) -> None:
    from agentledger.events import EventStore

    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(s.procs + 1)
    workdir = Path(tempfile.mkdtemp(prefix="agentledger-bench-conc-"))
    samples: dict[str, list[float]] = {"ours": [], "raw": []}
    errors: dict[str, list[str]] = {"ours": [], "raw": []}
    retries = {"ours": 0, "raw": 0}
    checks: dict[str, list[str]] = {"ours": [], "raw": []}
    all_ok = {"ours": True, "raw": True}
    try:
        with ctx.Pool(s.procs, initializer=_init_conc_worker, initargs=(barrier,)) as pool:
            for rep in range(s.conc_repeat):
                for kind in ("ours", "raw") if rep % 2 == 0 else ("raw", "ours"):
                    path = workdir / f"{kind}-{rep}.db"
                    # Create the file and tables first, as an operator would before agents start.
                    if kind == "ours":
                        EventStore.open(f"sqlite:///{path}").close()
                        target = f"sqlite:///{path}"
                    else:
                        from eventsourcing.sqlite import SQLiteDatastore, SQLiteProcessRecorder

                        ds = SQLiteDatastore(str(path), originator_id_type="text")
                        SQLiteProcessRecorder(ds).create_table()
                        ds.close()
                        target = str(path)
                    tasks = [(kind, target, i, s.per_proc) for i in range(s.procs)]
                    pending = pool.map_async(_conc_worker, tasks, chunksize=1)
                    barrier.wait(timeout=180)
                    outcome = pending.get(timeout=600)
                    t0 = min(o["t0"] for o in outcome)
                    t1 = max(o["t1"] for o in outcome)
                    ok = sum(o["ok"] for o in outcome)
                    samples[kind].append(rate(ok, t1 - t0))
                    for o in outcome:
                        errors[kind].extend(o["errors"])
                        retries[kind] += o["retries"]
                    good, detail = _check_sqlite_log(path, s.procs, s.per_proc)
                    all_ok[kind] &= good
                    checks[kind].append(detail)
                    if kind == "ours":
                        with EventStore.open(f"sqlite:///{path}") as store:
                            report = store.verify()
                        if not report.ok:
                            all_ok[kind] = False
                            checks[kind].append(f"verify: {report.first}")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    ours_med, raw_med = statistics.median(samples["ours"]), statistics.median(samples["raw"])

    def summary(kind: str) -> str:
        locked = sum("locked" in e for e in errors[kind])
        text = (
            f"{kind}: errors {len(errors[kind])} (database is locked: {locked}), "
            f"gapless {'yes' if all_ok[kind] else 'NO'} [{'; '.join(checks[kind])}]"
        )
        if kind == "ours":
            text += f", busy retries logged {retries[kind]}"
        if errors[kind]:
            text += f", first error: {errors[kind][0][:200]}"
        return text

    res.add(
        Row(
            "sqlite",
            f"{s.procs} processes × {s.per_proc} single appends",
            "ev/s",
            ours_med,
            raw_med,
            ratio=ours_med / raw_med,
            spread=f"{_spread(samples['ours'])} / {_spread(samples['raw'])}",
            note=f"{summary('ours')}; {summary('raw')}",
        ),
        (samples["ours"], samples["raw"]),
    )
    res.targets.append(
        Target(
            "SQLite 8-process append: errors",
            float(len(errors["ours"])),
            0,
            "errors",
            higher_is_better=False,
        )
    )
    res.targets.append(
        Target(
            "SQLite 8-process append: positions gapless", 1.0 if all_ok["ours"] else 0.0, 1.0, "yes"
        )
    )


# ---------------------------------------------------------------- report


def environment(
    backends: list[BackendUnderTest], args: argparse.Namespace, s: Settings
) -> list[str]:
    import psycopg
    import pydantic

    lines = [
        f"date: {datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')}; "
        f"host: {platform.node()}, {os.cpu_count()} cores, {platform.platform()}",
        f"Python {platform.python_version()}, eventsourcing {_dist_version('eventsourcing')}, "
        f"pydantic {pydantic.VERSION}, psycopg {psycopg.__version__}",
    ]
    lines += [b.describe() for b in backends]
    lines.append(
        f"mode: {'quick' if args.quick else 'full'}; {s.repeat} repetitions (median), "
        f"single-event {s.single} ev/rep, batched and read {s.events} ev/rep, "
        f"{s.hops} subscription hops, {s.procs}×{s.per_proc} concurrent appends × {s.conc_repeat}"
    )
    return lines


def load_average() -> float | None:
    """The 1-minute load average (None where /proc is missing)."""
    try:
        return float(Path("/proc/loadavg").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _dist_version(name: str) -> str:
    from importlib.metadata import version

    return version(name)


def render(results: Results, env: list[str], payload_note: str) -> str:
    out = ["# agentledger EventStore vs raw eventsourcing recorder", ""]
    out += [f"- {line}" for line in env]
    out += [f"- {payload_note}", ""]
    out += [
        "| Backend | Benchmark | Ours | Raw recorder | Ours/Raw | Spread (ours / raw) | Notes |",
        "|---|---|---:|---:|---:|---|---|",
    ]
    for row in results.rows:
        unit = "" if row.unit == "ms" else f" {row.unit}"
        ours = _cell(row, "ours") + (unit if not row.ours_text and row.ours is not None else "")
        raw = _cell(row, "raw") + (unit if not row.raw_text and row.raw is not None else "")
        out.append(
            f"| {row.backend} | {row.name.strip()} | {ours} | {raw} | "
            f"{_fmt_ratio(row.ratio)} | {row.spread} | {row.note} |"
        )
    out += ["", "| Target (from the issue) | Measured | Goal | Result |", "|---|---:|---:|---|"]
    for t in results.targets:
        if t.unit == "×":
            measured, goal = _fmt_ratio(t.value), f"≥ {t.goal:.2f}"
        elif t.unit == "ms":
            measured, goal = f"{t.value:.2f} ms" if t.value is not None else "—", f"≤ {t.goal:g} ms"
        elif t.unit == "yes":
            measured, goal = ("yes" if t.value else "no"), "yes"
        elif t.unit == "errors":
            measured, goal = f"{t.value:.0f}", "0"
        else:
            measured = f"{t.value:,.0f} {t.unit}" if t.value is not None else "—"
            goal = f"≥ {t.goal:,.0f} {t.unit}"
        verdict = {True: "PASS", False: "MISS", None: "n/a"}[t.passed]
        out.append(f"| {t.label} | {measured} | {goal} | {verdict} |")
    if results.notes:
        out += [""] + [f"- {n}" for n in results.notes]
    return "\n".join(out) + "\n"


def payload_sizes() -> str:
    from agentledger.events import EventStore

    with EventStore.open("memory://") as store:
        # The second event of a stream: it carries a prev_hash, as all but the first do.
        store.append("size-check-1", make_events(2), expected_version=0)
        ours = len(list(store.read_stored())[-1].state)
    raw = len(raw_stored(make_templates(1)[0], "size-check-1", 2).state)
    return (
        f"payload: ScratchpadUpdated with a {len(VALUE)}-byte value; stored row state "
        f"{ours} bytes (ours) vs {raw} bytes (raw JSON body with the same members)"
    )


# ---------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="bench/store.py",
        description="Benchmark agentledger's EventStore against the raw eventsourcing recorder "
        "it wraps (same backend, same run): single and batched append, read_all, subscription "
        "hop latency, and 8 concurrent SQLite writer processes. Prints a table; never fails "
        "on a missed target.",
    )
    parser.add_argument(
        "--backend",
        choices=("sqlite", "postgres", "all"),
        default="all",
        help="which backend(s) to measure (default: all)",
    )
    parser.add_argument(
        "--quick", action="store_true", help="short smoke run for CI (under a minute)"
    )
    parser.add_argument(
        "--out",
        metavar="PATH",
        type=Path,
        help="also write the results as a Markdown table to PATH",
    )
    parser.add_argument(
        "--events",
        metavar="N",
        type=int,
        default=0,
        help="events per repetition for batched append and read_all "
        "(default 20000, 2000 with --quick); single-event append uses N/10, "
        "capped at 2000",
    )
    parser.add_argument(
        "--repeat",
        metavar="R",
        type=int,
        default=0,
        help="timed repetitions per measurement (default 5, 3 with --quick)",
    )
    parser.add_argument(
        "--pg-url",
        metavar="URL",
        default=os.environ.get(PG_URL_ENV, DEFAULT_PG_URL),
        help=f"PostgreSQL server to use (default ${PG_URL_ENV} or "
        f"{DEFAULT_PG_URL}); a fresh schema per store, dropped at the end",
    )
    args = parser.parse_args(argv)
    if args.events < 0 or args.repeat < 0:
        parser.error("--events and --repeat must be positive")
    return args


def _backends(args: argparse.Namespace) -> Iterator[BackendUnderTest]:
    if args.backend in ("sqlite", "all"):
        yield SQLiteUnderTest()
    if args.backend in ("postgres", "all"):
        yield PostgresUnderTest(args.pg_url)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    s = settings_for(args)
    started = time.monotonic()
    results = Results()
    load_before = load_average()
    if load_before is not None and load_before > 0.5 * (os.cpu_count() or 1):
        print(
            f"warning: the machine is busy (load average {load_before:.2f} on "
            f"{os.cpu_count()} cores); numbers will be noisy",
            file=sys.stderr,
        )
    opened: list[BackendUnderTest] = []
    try:
        for bt in _backends(args):
            opened.append(bt)
            print(f"[{bt.name}] {bt.describe()}", flush=True)
            bench_single(bt, s, results)
            bench_batched(bt, s, results)
            bench_read(bt, s, results)
            bench_subscription(bt, s, results)
            bt.cleanup()
            if bt.name == "sqlite":
                print("[sqlite] concurrent writer processes", flush=True)
                bench_concurrency(s, results)
    except KeyboardInterrupt:
        print("interrupted; cleaning up", file=sys.stderr)
        return 130
    finally:
        for bt in opened:
            bt.cleanup()
    results.notes.append(f"total run time {time.monotonic() - started:.0f} s")
    load_after = load_average()
    if load_before is not None and load_after is not None:
        busy = max(load_before, load_after) > 0.5 * (os.cpu_count() or 1) + 1
        results.notes.append(
            f"1-min load average {load_before:.2f} before, {load_after:.2f} after (this run itself "
            f"adds about 1-2){'; the machine was busy: treat the numbers as noisy' if busy else ''}"
        )
    text = render(results, environment(opened, args, s), payload_sizes())
    print()
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text, encoding="utf-8")
        print(f"results written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
