"""Shared fixtures: stores on every backend, a PostgreSQL schema per test.

PostgreSQL tests never skip: if the server on 127.0.0.1:5432 is unreachable they fail with
the command that starts it (CI starts it in .ci/run before the tests).
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator

import psycopg
import pytest

from agentledger.events import EventStore

PG_HOST = os.environ.get("AGENTLEDGER_TEST_PG_HOST", "127.0.0.1")
PG_PORT = int(os.environ.get("AGENTLEDGER_TEST_PG_PORT", "5432"))
PG_DB = os.environ.get("AGENTLEDGER_TEST_PG_DB", "test")
PG_USER = os.environ.get("AGENTLEDGER_TEST_PG_USER", "postgres")


def _pg_conninfo() -> str:
    return f"host={PG_HOST} port={PG_PORT} dbname={PG_DB} user={PG_USER} connect_timeout=5"


@pytest.fixture(scope="session")
def postgres_available() -> None:
    """Fail (never skip) when the test PostgreSQL server is unreachable."""
    try:
        with psycopg.connect(_pg_conninfo()) as conn:
            conn.execute("SELECT 1")
    except psycopg.OperationalError as exc:
        pytest.fail(
            f"PostgreSQL at {PG_HOST}:{PG_PORT} (database {PG_DB!r}) is unreachable: {exc}. "
            "Start it: pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start",
            pytrace=False,
        )


@pytest.fixture
def postgres_url(postgres_available: None) -> Iterator[str]:
    """A store URL on a fresh PostgreSQL schema, dropped after the test."""
    schema = f"t_{uuid.uuid4().hex[:16]}"
    yield f"postgresql://{PG_USER}@{PG_HOST}:{PG_PORT}/{PG_DB}?schema={schema}"
    with psycopg.connect(_pg_conninfo(), autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


class PostgresLeases:
    """A PostgreSQL store's leases seen from a session of the test's own, as an admin or
    another process sees them: who holds one, ending that session, taking one."""

    def __init__(self, url: str) -> None:
        from urllib.parse import parse_qs, urlsplit

        self.schema = parse_qs(urlsplit(url).query)["schema"][0]
        self._conn = psycopg.connect(_pg_conninfo(), autocommit=True)
        self._taker: psycopg.Connection[tuple[object, ...]] | None = None

    def _key(self, name: str) -> str:
        return f"agentledger-lease:{self.schema}:{name}"  # as PostgresBackend.try_lease's

    def holder(self, name: str) -> int | None:
        """The server process of the session that holds the lease ``name`` (None: nobody)."""
        # A bigint advisory lock shows its key's high half as classid, its low half as objid.
        row = self._conn.execute(
            "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted "
            "AND objsubid = 1 AND database = "
            "(SELECT oid FROM pg_database WHERE datname = current_database()) "
            "AND ((classid::bigint << 32) | objid::bigint) = hashtextextended(%s, 0)",
            (self._key(name),),
        ).fetchone()
        return None if row is None else int(row[0])

    def end_session(self, name: str) -> int:
        """End the session that holds ``name``'s lease (an admin's pg_terminate_backend);
        its process id."""
        pid = self.holder(name)
        assert pid is not None, f"nobody holds the lease of {name}"
        assert self._conn.execute("SELECT pg_terminate_backend(%s)", (pid,)).fetchone()[0]
        return pid

    def wait_and_take(self, name: str) -> threading.Thread:
        """A thread that waits for ``name``'s lease in a session of its own and holds it from
        the moment its holder loses it (before anyone else can), until ``give_back``."""
        conn = self._taker = psycopg.connect(_pg_conninfo(), autocommit=True)
        thread = threading.Thread(
            target=conn.execute,
            args=("SELECT pg_advisory_lock(hashtextextended(%s, 0))", (self._key(name),)),
            daemon=True,
        )
        thread.start()
        return thread

    def give_back(self) -> None:
        """End the session ``wait_and_take`` holds the lease in."""
        if self._taker is not None:
            self._taker.close()

    def close(self) -> None:
        self.give_back()
        self._conn.close()


@pytest.fixture
def postgres_leases(postgres_url: str) -> Iterator[PostgresLeases]:
    """The leases of the store at ``postgres_url``, seen from outside (see PostgresLeases)."""
    leases = PostgresLeases(postgres_url)
    yield leases
    leases.close()


@pytest.fixture
def sqlite_url(tmp_path: object) -> str:
    """A store URL on a fresh SQLite file."""
    return f"sqlite:///{tmp_path}/ledger.db"


@pytest.fixture
def memory_store() -> Iterator[EventStore]:
    """An in-memory store."""
    with EventStore.open("memory://") as store:
        yield store


@pytest.fixture
def sqlite_store(sqlite_url: str) -> Iterator[EventStore]:
    """A store on a fresh SQLite file."""
    with EventStore.open(sqlite_url) as store:
        yield store


# ---------------------------------------------------------------------------- agents


@pytest.fixture(scope="session")
def ray_session() -> Iterator[None]:
    """One local Ray instance for the whole test session (started on first use)."""
    import sys

    import ray

    # The scripted models the tests hand to agent actors are defined here; ship them by value.
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    if not ray.is_initialized():
        ray.init(
            num_cpus=2,
            include_dashboard=False,
            log_to_driver=False,
            logging_level="WARNING",
            namespace="agentledger-tests",
        )
    yield
    ray.shutdown()


class ScenarioBrain:
    """A scripted model for agent tests: answers each purpose from a small scenario.

    The plan has four steps (two research, two execution, with dependencies), research cites a
    source, execution writes the file its sub-goal names, review accepts. ``delay`` slows the
    research answer (to kill an agent mid-handler); ``steps`` sets a longer chain.
    """

    def __init__(self, *, delay: float = 0.0, steps: int = 4, reject_first: bool = False) -> None:
        self.delay = delay
        self.steps = steps
        self.reject_first = reject_first

    def plan(self) -> dict[str, object]:
        if self.steps == 4:
            steps = [
                {"task_id": "t1", "goal": "find the retention period", "role": "research"},
                {"task_id": "t2", "goal": "find who approves deletions", "role": "research"},
                {
                    "task_id": "t3",
                    "goal": "write the findings to findings.md",
                    "role": "execution",
                    "depends_on": ["t1", "t2"],
                },
                {
                    "task_id": "t4",
                    "goal": "write the summary to summary.md",
                    "role": "execution",
                    "depends_on": ["t3"],
                },
            ]
        else:
            steps = [
                {
                    "task_id": f"s{i}",
                    "goal": f"look up fact {i}",
                    "role": "research",
                    "depends_on": [f"s{i - 1}"] if i > 1 else [],
                }
                for i in range(1, self.steps + 1)
            ]
        return {"reasoning": "scripted plan", "steps": steps}

    def __call__(self, request: object) -> str:
        import json
        import time

        from agentledger.actors.decisions import SUB_GOAL, sections

        purpose = request.purpose  # type: ignore[attr-defined]
        found = sections(request.prompt)  # type: ignore[attr-defined]
        if purpose == "plan":
            return json.dumps(self.plan())
        if purpose == "research":
            time.sleep(self.delay)
            goal = found.get(SUB_GOAL, "")
            return json.dumps(
                {"reasoning": "scripted", "answer": f"answer to {goal}", "sources": ["memo.md"]}
            )
        if purpose == "act":
            path = found.get(SUB_GOAL, "").split()[-1]
            return json.dumps(
                {
                    "reasoning": "scripted",
                    "actions": [
                        {"tool": "write_file", "arguments": {"path": path, "content": "done\n"}}
                    ],
                }
            )
        if purpose == "review":
            feedback = "## feedback from review" in request.prompt  # type: ignore[attr-defined]
            accepted = not self.reject_first or "findings.md" not in found.get(SUB_GOAL, "")
            accepted = accepted or feedback
            return json.dumps({"accepted": accepted, "reasons": "scripted review"})
        return json.dumps({"summary": "scripted summary"})


class ThreadedAgents:
    """The four agents' workers in threads of this process: the runtime's code without Ray,
    for tests of agent behaviour that need no process boundary."""

    def __init__(
        self, url: str, root: object, providers: dict[str, object] | None = None, **config: object
    ) -> None:
        import threading
        from pathlib import Path

        from agentledger.actors.runtime import RuntimeConfig, workers_for

        root = Path(str(root))
        self.config = RuntimeConfig(
            store_url=url,
            workspace_root=str(root / "workspaces"),
            memory_dir=str(root / "memory"),
            **config,  # type: ignore[arg-type]
        )
        self.stop = threading.Event()
        self.workers = workers_for(self.config, providers)  # type: ignore[arg-type]
        self.threads = [
            threading.Thread(target=worker.run, args=(self.stop,), daemon=True)
            for worker in self.workers
        ]

    def __enter__(self) -> ThreadedAgents:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=10)
        for worker in self.workers:
            worker.store.close()


@pytest.fixture
def scenario_brain() -> type[ScenarioBrain]:
    return ScenarioBrain


@pytest.fixture
def threaded_agents() -> type[ThreadedAgents]:
    return ThreadedAgents


class Background:
    """Runs a follower's ``run(stop)`` in a thread until a condition holds (or a timeout)."""

    def __init__(self, target: Callable[[threading.Event], None]) -> None:
        self.stop = threading.Event()
        self.thread = threading.Thread(target=target, args=(self.stop,), daemon=True)

    def __enter__(self) -> Background:
        self.thread.start()
        return self

    def until(self, condition: Callable[[], bool], timeout: float = 30.0) -> None:
        """Wait until ``condition()`` is true, at most ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while not condition() and time.monotonic() < deadline:
            time.sleep(0.05)

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(timeout=10)


@pytest.fixture
def background() -> type[Background]:
    return Background
