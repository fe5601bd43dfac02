"""The four agents' workers in one process, until killed: the crash-recovery tests kill -9 it.

Usage: python tests/agent_process.py STORE_URL ROOT_DIR — prints "ready" once the workers run.
``spawn`` and ``kill`` are what the tests and bench/approval.py use.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from agentledger.actors.runtime import RuntimeConfig, workers_for


def spawn(url: str, root: Path) -> subprocess.Popen[str]:
    """Start this harness in its own process group; return once its workers run."""
    process = subprocess.Popen(
        [sys.executable, __file__, url, str(root)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
    )
    assert process.stdout is not None
    if process.stdout.readline().strip() != "ready":
        raise RuntimeError(f"the agents' process did not start (exit {process.wait()})")
    return process


def kill(process: subprocess.Popen[str]) -> None:
    """kill -9 the harness and everything in its process group."""
    os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=30)


def main() -> None:
    url, root = sys.argv[1], Path(sys.argv[2])
    config = RuntimeConfig(
        store_url=url, workspace_root=str(root / "workspaces"), memory_dir=str(root / "memory")
    )
    stop = threading.Event()
    workers = workers_for(config)
    threads = [threading.Thread(target=w.run, args=(stop,), daemon=True) for w in workers]
    for thread in threads:
        thread.start()
    print("ready", flush=True)
    while True:
        time.sleep(1)


if __name__ == "__main__":
    main()
