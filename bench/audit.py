"""Audit export and verification rates on a 100,000-event run.

Run from the repository root::

    .venv/bin/python bench/audit.py                 # 100,000 events, 3 repetitions (< 2 min)
    .venv/bin/python bench/audit.py --events 20000  # smaller

One SQLite file holds one synthetic run of ``scratchpad.updated`` events (about 550 stored
bytes each, as in bench/store.py), appended through ``EventStore`` in batches. Measured, each
repeated and the median reported:

- **baseline: read_stored**: every stored row read with ``EventStore.read_stored()`` and its
  state taken (``plain_state``), nothing else: the floor any export stands on;
- **baseline: verify-log**: ``EventStore.verify()``, the hash-chain walk the export check reuses;
- **export (signed)**: ``agentledger.events.audit.export_run`` to a file, with an ed25519 key;
- **verify export (signed)**: ``verify_export`` with the public key.

Target: ≥ 50,000 events/s for export and for verify. The exit status is 0 whatever the
numbers (a MISS is printed): this is a benchmark, not a test.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from store import make_events  # ScratchpadUpdated events of the same size as the store bench

from agentledger.events import EventStore
from agentledger.events.audit import export_run, generate_keypair, verify_export

TARGET = 50_000.0
BATCH = 1_000


def timed(action: Callable[[], object], repeat: int) -> list[float]:
    """Seconds per repetition (one warm-up run first)."""
    action()
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        action()
        samples.append(time.perf_counter() - start)
    return samples


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    n: int = args.events

    with tempfile.TemporaryDirectory(prefix="agentledger-audit-bench-") as tmp:
        folder = Path(tmp)
        store = EventStore.open(f"sqlite:///{folder / 'ledger.db'}")
        run = "run-audit-bench"
        started = time.perf_counter()
        for version in range(0, n, BATCH):
            store.append(run, make_events(min(BATCH, n - version)), expected_version=version)
        fill = time.perf_counter() - started
        private, public = folder / "k.pem", folder / "k.pub.pem"
        generate_keypair(private, public)
        out = folder / "run.jsonl"

        def read_only() -> None:
            count = 0
            for row in store.read_stored():
                store.plain_state(row)
                count += 1
            assert count == n

        def verify_log() -> None:
            assert store.verify().ok

        def export() -> None:
            # Each repeat replaces the last one's file.
            export_run(store, run, out, signing_key=private, exporter="human:bench", overwrite=True)

        def verify() -> None:
            report = verify_export(out, public_key=public)
            assert report.ok and report.events == n, str(report)

        measures = [
            ("baseline: read_stored + plain_state", read_only, None),
            ("baseline: verify-log (hash-chain walk)", verify_log, None),
            ("export (signed)", export, TARGET),
            ("verify export (signed)", verify, TARGET),
        ]
        rows = []
        base_rate: float | None = None
        for label, action, target in measures:
            samples = timed(action, args.repeat)
            rate = n / statistics.median(samples)
            spread = f"{n / max(samples):,.0f}-{n / min(samples):,.0f}"
            base_rate = base_rate or rate
            rows.append((label, rate, spread, rate / base_rate, target))
        size = out.stat().st_size
        store.close()

    print(
        f"date: {datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')}; host: {platform.node()}, "
        f"{os.cpu_count()} cores; Python {platform.python_version()}"
    )
    print(
        f"{n:,} events in one run (SQLite), filled in {fill:.1f} s; export file "
        f"{size / 1e6:.1f} MB; {args.repeat} repetitions after a warm-up, median\n"
    )
    print("| measure | events/s (median) | range | vs read_stored | target | |")
    print("|---|---|---|---|---|---|")
    for label, rate, spread, ratio, target in rows:
        goal = f"≥ {target:,.0f}" if target else ""
        verdict = "" if target is None else ("PASS" if rate >= target else "MISS")
        print(f"| {label} | {rate:,.0f} | {spread} | {ratio:.2f} | {goal} | {verdict} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
