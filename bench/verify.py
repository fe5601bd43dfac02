"""Replay and verification rates on a long recorded run.

Run from the repository root::

    .venv/bin/python bench/verify.py              # a 1,000-step run (about 10,000 events)
    .venv/bin/python bench/verify.py --steps 200  # quicker

The run is produced by the real agents (their workers driven in this process, scripted models,
SQLite), then:

- **replay**: `agentledger replay`'s work — the run's events read and folded into its state,
  blackboard and scratchpad as of its last position; baseline: reading the same events alone.
  Also on the synthetic 100,000-event run (one run of agents cannot reach that size here: a
  plan is one model answer, at most 100,000 characters, about 1,500 steps).
- **fork**: `agentledger fork`'s work on a synthetic 100,000-event run, near its start, in its
  middle and at its end, on SQLite and PostgreSQL (target ≤ 1 s at any position); and reading
  the fork back (its inherited events come through the parent) against reading the parent.
- **verify**: `agentledger verify`'s work — every agent reaction re-executed against the log
  with the recorded answers and compared; baseline: replay.

Rates are events of the run per second. The exit status is 0 whatever the numbers.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from hop import ChainBrain, row
from store import DEFAULT_PG_URL, PG_URL_ENV, PostgresUnderTest, SQLiteUnderTest, grow


def produce(url: str, root: Path, steps: int) -> str:
    """A run of ``steps`` research steps, by the four agents' workers in this process."""
    from agentledger.actors.providers import ScriptedProvider
    from agentledger.actors.runtime import RuntimeConfig, start_run, workers_for
    from agentledger.events import EventStore, Role

    config = RuntimeConfig(
        store_url=url, workspace_root=str(root / "ws"), memory_dir=str(root / "mem")
    )
    providers = {"scripted": ScriptedProvider(ChainBrain(steps))}
    store = EventStore.open(url)
    workers = workers_for(config, providers)
    run = start_run(store, "a chain", models={r.value: "scripted:c" for r in Role}).stream
    position = 0
    while True:  # deliver every event to every worker, in log order, until nothing is new
        batch = list(store.read_all(position))
        if not batch:
            break
        for event in batch:
            for worker in workers:
                worker.deliver(event)
            position = event.position or position
    store.close()
    for worker in workers:
        worker.store.close()
    return run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--fork-events", type=int, default=100_000)
    parser.add_argument("--backend", choices=("sqlite", "postgres", "all"), default="all")
    parser.add_argument("--pg-url", default=os.environ.get(PG_URL_ENV, DEFAULT_PG_URL))
    args = parser.parse_args(argv)
    from agentledger.actors.verify import verify_run
    from agentledger.events import EventStore

    root = Path(tempfile.mkdtemp(prefix="agentledger-verify-bench-"))
    try:
        url = f"sqlite:///{root / 'ledger.db'}"
        run = produce(url, root, args.steps)
        with EventStore.open(url) as store:
            started = time.perf_counter()
            events = store.read(run)
            read_s = time.perf_counter() - started
            started = time.perf_counter()
            events = replay(store.read(run))
            replay_s = time.perf_counter() - started
            started = time.perf_counter()
            report = verify_run(store, run)
            verify_s = time.perf_counter() - started
        n = len(events)
        print(f"# bench/verify.py — a {args.steps}-step run of {n:,} events (SQLite)\n")
        print("| backend | measure | ours | baseline | ratio | target | |")
        print("|---|---|---|---|---|---|---|")
        row(
            "sqlite",
            "replay to the end (events/s)",
            f"{n / replay_s:,.0f}",
            f"{n / read_s:,.0f}",
            f"{read_s / replay_s:.2f}",
        )
        row(
            "sqlite",
            "verify by re-execution (events/s)",
            f"{n / verify_s:,.0f}",
            f"{n / replay_s:,.0f}",
            f"{replay_s / verify_s:.2f}",
            "",
            report.ok,
        )
        names = ("sqlite", "postgres") if args.backend == "all" else (args.backend,)
        for name in names:
            backend = SQLiteUnderTest() if name == "sqlite" else PostgresUnderTest(args.pg_url)
            try:
                fork_rows(name, backend.url("fork"), args.fork_events)
            finally:
                backend.cleanup()
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return 0


def replay(events: list[Any]) -> list[Any]:
    """`agentledger replay`'s work on a run's events: its state, blackboard and scratchpad."""
    from agentledger.blackboard import BlackboardProjection
    from agentledger.projections import RunStateProjection
    from agentledger.projections.memory import ScratchpadProjection

    RunStateProjection().fold(events)
    BlackboardProjection().fold(events)
    ScratchpadProjection().fold(events)
    return events


def fork_rows(backend: str, url: str, n: int) -> None:
    """Fork a run of ``n`` events near its start, in its middle and at its end; then read the
    fork made at the end back, against reading the parent."""
    from agentledger.actors.runtime import start_run
    from agentledger.events import EventStore
    from agentledger.fork import fork_run

    with EventStore.open(url) as store:
        run = start_run(store, "a long run").stream
        n = grow(store, run, n)
        first, middle, last = (store.read(run, v, v)[0] for v in (2, n // 2, n))
        times: dict[str, float] = {}
        fork = ""
        for label, event in (("start", first), ("middle", middle), ("end", last)):
            started = time.perf_counter()
            fork, _ = fork_run(store, run, event.position or 0, by="human:bench")
            times[label] = time.perf_counter() - started
        worst = max(times.values())
        detail = ", ".join(f"{k} {v * 1000:.1f} ms" for k, v in times.items())
        row(
            backend,
            f"fork of a {n:,}-event run, worst of start/middle/end (s) ({detail})",
            f"{worst:.3f}",
            "",
            "",
            "≤ 1",
            worst <= 1.0,
        )
        started = time.perf_counter()
        parent_events = store.read(run)
        parent_s = time.perf_counter() - started
        started = time.perf_counter()
        replay(store.read(run))
        row(
            backend,
            f"replay a {n:,}-event run to its end (events/s)",
            f"{n / (time.perf_counter() - started):,.0f}",
            f"{n / parent_s:,.0f}",
        )
        started = time.perf_counter()
        fork_events = store.read(fork)
        fork_s = time.perf_counter() - started
        assert len(fork_events) == len(parent_events) + 1
        row(
            backend,
            "read the fork made at the end (events/s)",
            f"{len(fork_events) / fork_s:,.0f}",
            f"{len(parent_events) / parent_s:,.0f}",
            f"{parent_s / fork_s:.2f}",
        )


if __name__ == "__main__":
    raise SystemExit(main())
