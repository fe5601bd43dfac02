"""Human-in-the-loop latency and crash recovery time.

Run from the repository root::

    .venv/bin/python bench/approval.py              # SQLite and PostgreSQL
    .venv/bin/python bench/approval.py --quick      # SQLite, fewer samples

- **approve → executed**: the agents are served (Ray actors, offline model); each sample is a
  run waiting for approval of a high-risk action (deleting a file). The clock starts when the
  human's decision is appended (``agentledger approve`` without process start-up: the same
  ``control.decide`` call) and stops when ``action.executed`` for that action is in the log.
  Targets: p50 ≤ 200 ms, every sample ≤ 1 s.
- **recovery after kill -9**: a run whose log holds 10,000 events; the agents' process is
  killed (-9) and a new one started (``tests/agent_process.py``: the four workers in one
  process). The clock starts at the new process's start and stops when the run's next step
  (a task assigned just before the kill) is completed. Target ≤ 5 s. The baseline in the same
  run: the same restart on a log of 100 events (process start-up and imports).

The exit status is 0 whatever the numbers (a MISS is printed): this is a benchmark, not a test.
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from agent_process import kill, spawn  # the four workers in one process, as the tests use them
from hop import DEFAULT_PG_URL, PG_URL_ENV, backend_for, pct, row
from store import grow

HARNESS = Path(__file__).resolve().parents[1] / "tests" / "agent_process.py"


def approve_to_executed(url: str, root: Path, samples: int) -> list[float]:
    from agentledger.actors.runtime import Runtime, RuntimeConfig, follow_run, start_run
    from agentledger.control import Human, decide
    from agentledger.events import EventStore

    config = RuntimeConfig(
        store_url=url,
        namespace=f"bench-{secrets.token_hex(4)}",
        workspace_root=str(root / "workspaces"),
        memory_dir=str(root / "memory"),
    )
    runtime = Runtime(config)
    runtime.start()
    human = Human("bench", ("approver",))
    latencies = []
    try:
        with EventStore.open(url) as store:
            for n in range(samples):
                workspace = root / f"ws{n}"
                workspace.mkdir(parents=True)
                (workspace / "old.txt").write_text("x")
                run = start_run(store, "delete the file old.txt", workspace=workspace).stream
                state = follow_run(store, run, timeout=60)
                (pending,) = state.pending_approvals.values()
                with store.subscribe(store.head_position()) as live:
                    started = time.perf_counter()
                    decide(store, run, pending.action_id, human, grant=True, note="bench")
                    for event in live:
                        if (
                            event.type == "action.executed"
                            and event.payload.action_id == pending.action_id
                        ):
                            latencies.append((time.perf_counter() - started) * 1000)
                            break
    finally:
        runtime.stop()
    return latencies


def recovery(url: str, root: Path, filler: int) -> float:
    """Seconds from a fresh agents' process start to the next step of a run of ``filler``
    events being done, after kill -9 of the previous process."""
    from agentledger.actors.runtime import follow_run, start_run
    from agentledger.events import EventStore, TaskAssigned, TaskPlanned

    with EventStore.open(url) as store:
        (root / "ws").mkdir(parents=True)
        (root / "ws" / "old.txt").write_text("x")
        run = start_run(store, "delete the file old.txt", workspace=root / "ws").stream
        first = spawn(url, root)
        follow_run(store, run, timeout=60)  # the run now waits for an approval
        # Grow the run to ``filler`` events (research notes) while the agents follow it, as in
        # a long run; then kill -9 them once they have read it all.
        grow(store, run, filler, batch=500)
        head = store.head_position()
        consumers = [f"agent:{r}/1" for r in ("coordinator", "research", "execution", "review")]
        deadline = time.perf_counter() + 120
        while any(store.position_of(c) < head - 250 for c in consumers):
            if time.perf_counter() > deadline:
                raise RuntimeError("the agents did not catch up with the log")
            time.sleep(0.1)
        kill(first)
        store.append(
            run,
            [
                TaskPlanned(
                    actor="agent:coordinator/1",
                    payload={"task_id": "late", "goal": "write y to y.md", "role": "execution"},
                ),
                TaskAssigned(
                    actor="agent:coordinator/1", payload={"task_id": "late", "role": "execution"}
                ),
            ],
        )
        started = time.perf_counter()
        second = spawn(url, root)
        try:
            while not any(
                e.type == "task.completed" and e.payload.task_id == "late"
                for e in store.read(run, from_version=filler)
            ):
                if time.perf_counter() - started > 120:
                    raise RuntimeError("the restarted agents never took the next step")
                time.sleep(0.02)
            return time.perf_counter() - started
        finally:
            kill(second)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", choices=("sqlite", "postgres", "both"), default="both")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--pg-url", default=os.environ.get(PG_URL_ENV, DEFAULT_PG_URL))
    args = parser.parse_args(argv)
    backends = (
        ["sqlite"]
        if args.quick
        else (["sqlite", "postgres"] if args.backend == "both" else [args.backend])
    )
    samples = 5 if args.quick else 20
    from agentledger.actors.runtime import ensure_ray

    ensure_ray()
    print("| backend | measure | ours | baseline | ratio | target | |")
    print("|---|---|---|---|---|---|---|")
    for name in backends:
        backend = backend_for(name, args.pg_url)
        root = Path(tempfile.mkdtemp(prefix="agentledger-approval-"))
        try:
            lat = approve_to_executed(backend.url("approve"), root / "a", samples)
            p50, worst = pct(lat, 0.5), max(lat)
            row(
                name,
                f"approve → executed p50 ({samples} runs, ms)",
                f"{p50:.0f}",
                "",
                "",
                "≤ 200",
                p50 <= 200,
            )
            row(
                name, "approve → executed max (ms)", f"{worst:.0f}", "", "", "≤ 1000", worst <= 1000
            )
            base = recovery(backend.url("small"), root / "s", 100)
            big = recovery(backend.url("big"), root / "b", 10_000)
            row(
                name,
                "restart after kill -9 → next step, 10,000-event run (s)",
                f"{big:.2f}",
                f"{base:.2f}",
                f"{big / base:.2f}",
                "≤ 5",
                big <= 5,
            )
        finally:
            backend.cleanup()
            shutil.rmtree(root, ignore_errors=True)
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
