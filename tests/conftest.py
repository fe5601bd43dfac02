"""Shared fixtures: stores on every backend, a PostgreSQL schema per test.

PostgreSQL tests never skip: if the server on 127.0.0.1:5432 is unreachable they fail with
the command that starts it (CI starts it in .ci/run before the tests).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

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
