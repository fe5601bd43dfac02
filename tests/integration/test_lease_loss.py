"""A PostgreSQL lease lost while its holder runs: the server ends the lease's session (an admin's
pg_terminate_backend here; a restart, an idle-session timeout or keepalives after a network cut
alike) and drops its lock, and another process may take it. The holder notices, stops, says so,
and stands by until it can take the lease again.

The agent's worker and the notifier run in threads of this process (the runtime's code without
Ray); the store is a real PostgreSQL schema, and "another process" is a session of the test's
own that takes the lease the moment it is free.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import pytest

from agentledger.actors.notify import CONSUMER, Notifier
from agentledger.actors.runtime import AgentWorker, RuntimeConfig, agent_for, start_run
from agentledger.events import EventStore, NotificationSent, Role

pytestmark = pytest.mark.postgres

COORDINATOR = "agent:coordinator/1"


def _coordinator(url: str, tmp_path: Path) -> AgentWorker:
    config = RuntimeConfig(store_url=url, workspace_root=str(tmp_path / "workspaces"))
    return AgentWorker(agent_for(Role.COORDINATOR, "1", config), EventStore.open(url))


def _reacted(store: EventStore, run: str) -> bool:
    return any(e.actor == COORDINATOR for e in store.read(run))


def test_a_worker_whose_lease_session_ends_stands_by_then_resumes(
    postgres_url: str, postgres_leases: Any, background: Any, tmp_path: Path
) -> None:
    # Before: the worker went on handling events through its other connections while the
    # process that took the lease handled them too (both called the model for each event).
    worker = _coordinator(postgres_url, tmp_path)
    with (
        EventStore.open(postgres_url) as store,
        background(lambda stop: worker.run(stop, poll_timeout=0.1)) as agent,
    ):
        agent.until(lambda: postgres_leases.holder(COORDINATOR) is not None)
        first = start_run(store, "summarise the notes").stream
        agent.until(lambda: _reacted(store, first))
        assert _reacted(store, first)

        # The session ends and another process takes the lease at once.
        taker = postgres_leases.wait_and_take(COORDINATOR)
        lost = postgres_leases.end_session(COORDINATOR)
        taker.join(timeout=30)
        assert not taker.is_alive() and postgres_leases.holder(COORDINATOR) not in (None, lost)
        agent.until(lambda: "standing by" in (worker.last_error or ""), timeout=15)
        assert "standing by" in (worker.last_error or ""), worker.last_error
        # Standing by, it handles nothing: the other process follows the log as this agent.
        second = start_run(store, "summarise the notes again").stream
        time.sleep(1.5)
        assert not _reacted(store, second)

        # The other process stops: the worker takes the lease again and goes on.
        postgres_leases.give_back()
        agent.until(lambda: _reacted(store, second))
        assert _reacted(store, second)
        assert worker.last_error is None
    worker.store.close()


def test_a_worker_whose_lease_session_ends_takes_it_again_if_nobody_did(
    postgres_url: str, postgres_leases: Any, background: Any, tmp_path: Path
) -> None:
    worker = _coordinator(postgres_url, tmp_path)
    with (
        EventStore.open(postgres_url) as store,
        background(lambda stop: worker.run(stop, poll_timeout=0.1)) as agent,
    ):
        agent.until(lambda: postgres_leases.holder(COORDINATOR) is not None)
        lost = postgres_leases.end_session(COORDINATOR)
        agent.until(lambda: "lost the lease" in (worker.last_error or ""), timeout=15)
        assert "lost the lease of agent:coordinator/1" in (worker.last_error or "")
        agent.until(lambda: postgres_leases.holder(COORDINATOR) not in (None, lost))
        assert postgres_leases.holder(COORDINATOR) not in (None, lost)  # a new session
        run = start_run(store, "summarise the notes").stream
        agent.until(lambda: _reacted(store, run))
        assert _reacted(store, run)
        assert "took it again" in (worker.last_error or "")  # not "stopped following"
    worker.store.close()


def test_a_notifier_whose_lease_session_ends_sends_nothing_until_it_takes_it_again(
    postgres_url: str, postgres_leases: Any, background: Any, tmp_path: Path
) -> None:
    sink = tmp_path / "notices.jsonl"
    script = tmp_path / "sink.py"
    script.write_text(f"import sys\nopen({str(sink)!r}, 'a').write(sys.stdin.read() + '\\n')\n")
    notifier = Notifier(EventStore.open(postgres_url), command=f"{sys.executable} {script}")

    def note(n: int) -> NotificationSent:
        return NotificationSent(
            actor="agent:execution/1",
            payload={"action_id": f"a{n}", "channel": "inbox", "message": f"ran {n}"},
        )

    with EventStore.open(postgres_url) as store, background(notifier.run) as running:
        run = start_run(store, "anything").stream
        store.record_position(CONSUMER, store.head_position())
        running.until(lambda: postgres_leases.holder(CONSUMER) is not None)
        store.append(run, [note(0)])
        running.until(lambda: notifier.delivered == 1)
        assert notifier.delivered == 1

        taker = postgres_leases.wait_and_take(CONSUMER)
        postgres_leases.end_session(CONSUMER)
        taker.join(timeout=30)
        assert not taker.is_alive()
        store.append(run, [note(1)])
        time.sleep(2.5)  # the notifier polls each second
        assert notifier.delivered == 1  # another process's notifier sends it

        postgres_leases.give_back()
        running.until(lambda: notifier.delivered == 2)
        assert notifier.delivered == 2
    notifier.store.close()
    assert [line.count('"message"') for line in sink.read_text().splitlines()] == [1, 1]
