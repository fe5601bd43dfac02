"""Opening a store: URLs, clear errors for bad ones, and no password in any message."""

from __future__ import annotations

import re
import uuid
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest

from agentledger.events import (
    STORE_ENV,
    AgentLedgerError,
    ConfigurationError,
    EventStore,
    RunPaused,
    StoreUnavailable,
    default_store_url,
)
from agentledger.events._backends import parse_postgres_url

SECRET = "s3cr3t-Pa55"


def test_an_unreachable_postgres_is_store_unavailable_naming_host_and_port() -> None:
    url = f"postgresql://alice:{SECRET}@127.0.0.1:1/test?schema=nowhere"
    with pytest.raises(StoreUnavailable) as caught:
        EventStore.open(url)
    message = str(caught.value)
    assert "127.0.0.1:1" in message
    assert "alice" in message and "'test'" in message
    assert "pg_ctlcluster" in message  # the next step
    # The password appears nowhere: not in the message, not in a chained exception.
    assert SECRET not in message
    assert SECRET not in repr(caught.value.__cause__)
    assert caught.value.__suppress_context__


@pytest.mark.parametrize(
    ("url", "words"),
    [
        ("mysql://root@127.0.0.1/ledger", "unknown store URL"),
        ("http://example.org/ledger", "unknown store URL"),
        ("memory:/", "unknown store URL"),
        ("ledger.db", "unknown store URL"),
        ("sqlite://", "no path"),
        ("sqlite:///", "no path"),
        ("postgresql://u@127.0.0.1:notaport/db", "invalid port"),
        ("postgresql://u@127.0.0.1:99999/db", "invalid port"),
        ("postgresql://u@127.0.0.1:5432/", "needs a host and a database name"),
        ("postgresql:///db", "needs a host and a database name"),
        ("postgresql://u@127.0.0.1/db?colour=red", "unknown option(s) colour"),
        ("postgresql://u@127.0.0.1/db?schema=a;drop", "letters, digits and underscores"),
        ("postgresql://u@127.0.0.1/db?pool_size=many", "pool_size"),
        ("postgresql://u@127.0.0.1/db?sslmode=always", "sslmode 'always' in the store URL"),
        ("postgresql://u@127.0.0.1/db?sslpassword=x", "unknown option(s) sslpassword"),
    ],
)
def test_malformed_urls_are_configuration_errors(url: str, words: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        EventStore.open(url)
    assert words in str(caught.value)
    assert isinstance(caught.value, AgentLedgerError)


LONG_SCHEMA = "s" * 64  # PostgreSQL would keep its first 63 bytes, and say nothing


@pytest.mark.parametrize(
    ("option", "words"),
    [
        ("pool_size=0", "pool_size=0 in the store URL: it must be 1 or more"),
        ("pool_size=-3", "pool_size=-3 in the store URL: it must be 1 or more"),
        (f"schema={LONG_SCHEMA}", "is 64 bytes long; PostgreSQL keeps only the first 63 bytes"),
        (f"schema={'é' * 32}", "is 64 bytes long"),  # bytes, not characters
        ("schema=", "schema= have no value; give one, or leave the option out (default: schema"),
        ("schema", "schema= have no value"),
        ("sslmode=", "sslmode= have no value"),
        ("schema=a&schema=b", "gives schema more than once (a, b); give each option once"),
        ("pool_size=2&schema=a&pool_size=3", "gives pool_size more than once (2, 3)"),
    ],
)
def test_store_url_options_that_would_be_taken_otherwise_are_refused(
    option: str, words: str
) -> None:
    # Each was read as something else (pool size 1, a schema cut short, public, the first of
    # two) while every message named what was typed. Nothing answers on port 1: the error is
    # the URL's, before any connection.
    with pytest.raises(ConfigurationError) as caught:
        EventStore.open(f"postgresql://u@127.0.0.1:1/db?{option}")
    assert not isinstance(caught.value, StoreUnavailable)
    assert words in str(caught.value)


def test_store_url_options_at_their_limits_are_taken() -> None:
    settings = parse_postgres_url(f"postgresql://u@h/db?schema={'s' * 63}&pool_size=1")
    assert settings.schema == "s" * 63 and settings.pool_size == 1


@pytest.mark.parametrize(
    "url",
    [
        f"postgresql://alice:{SECRET}@127.0.0.1:notaport/db",
        f"mysql://alice:{SECRET}@127.0.0.1/db",
    ],
)
def test_configuration_errors_mask_the_password(url: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        EventStore.open(url)
    assert SECRET not in str(caught.value)
    assert "alice:***@" in str(caught.value)


def test_sqlite_urls_take_relative_and_absolute_paths(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    with EventStore.open("sqlite:///nested/relative.db") as store:
        store.append("run-1", [RunPaused(actor="system")])
        assert store.url == "sqlite:///nested/relative.db"
    assert (tmp_path / "nested" / "relative.db").is_file()
    absolute = tmp_path / "abs" / "ledger.db"
    with EventStore.open(f"sqlite:///{absolute}") as store:
        assert store.url == f"sqlite:///{absolute}"
    assert absolute.is_file()
    # The same file read through another store: nothing is kept in the instance.
    with EventStore.open(f"sqlite:///{tmp_path}/nested/relative.db") as store:
        assert len(list(store.read_all())) == 1


def test_a_path_that_is_not_a_file_is_store_unavailable(tmp_path: Path) -> None:
    with pytest.raises(StoreUnavailable, match=re.escape(str(tmp_path))):
        EventStore.open(f"sqlite:///{tmp_path}")


def test_a_new_file_is_put_in_wal_mode_and_an_in_memory_name_opens_at_once(
    tmp_path: Path,
) -> None:
    import sqlite3
    import threading

    with EventStore.open(f"sqlite:///{tmp_path}/ledger.db"):
        pass
    with sqlite3.connect(tmp_path / "ledger.db") as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    # SQLite keeps an in-memory database's mode: opening must not wait for WAL forever.
    opened = threading.Thread(target=lambda: EventStore.open("sqlite:///:memory:").close())
    opened.start()
    opened.join(timeout=20)
    assert not opened.is_alive()


def test_default_store_url(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv(STORE_ENV, raising=False)
    assert default_store_url() == "sqlite:///.agentledger/ledger.db"
    monkeypatch.setenv(STORE_ENV, "   ")
    assert default_store_url() == "sqlite:///.agentledger/ledger.db"
    monkeypatch.setenv(STORE_ENV, f" sqlite:///{tmp_path}/env.db ")
    assert default_store_url() == f"sqlite:///{tmp_path}/env.db"
    with EventStore.open() as store:
        assert store.url == f"sqlite:///{tmp_path}/env.db"
    monkeypatch.setenv(STORE_ENV, "memory://")
    with EventStore.open() as store:
        assert store.url == "memory://"


def test_memory_stores_are_independent() -> None:
    with EventStore.open("memory://") as one, EventStore.open("memory://") as two:
        one.append("run-1", [RunPaused(actor="system")])
        assert two.head_position() == 0


@pytest.mark.postgres
def test_the_store_url_masks_the_password(postgres_url: str) -> None:
    # Trust authentication accepts any password, so a real store opens with one in its URL.
    parts = urlsplit(postgres_url)
    netloc = f"{parts.username}:{SECRET}@{parts.hostname}:{parts.port}"
    with EventStore.open(urlunsplit(parts._replace(netloc=netloc))) as store:
        assert SECRET not in store.url
        assert store.url.startswith(f"postgresql://{parts.username}:***@{parts.hostname}:")
        store.append("run-1", [RunPaused(actor="system")])
        assert store.head_position() == 1


@pytest.mark.postgres
def test_libpq_options_in_the_url_reach_every_connection(postgres_url: str) -> None:
    # TLS (sslmode, certificates) and the application name are libpq's: the URL passes them
    # on, to the store's pool as to its first probe. This server runs without TLS.
    name = f"al_{uuid.uuid4().hex[:12]}"
    with EventStore.open(f"{postgres_url}&sslmode=disable&application_name={name}") as store:
        assert f"sslmode=disable&application_name={name}" in store.url
        store.append("run-1", [RunPaused(actor="system")])
        parts = urlsplit(postgres_url)
        dbname = parts.path.lstrip("/")
        with psycopg.connect(host=parts.hostname, dbname=dbname, user=parts.username) as conn:
            found = conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s", (name,)
            ).fetchone()
        assert found is not None and found[0] >= 1
    with pytest.raises(StoreUnavailable, match="SSL"):
        EventStore.open(f"{postgres_url}&sslmode=require")


@pytest.mark.postgres
def test_a_role_that_may_only_read_opens_an_existing_postgres_store(postgres_url: str) -> None:
    # An auditor's role: USAGE on the schema and SELECT on its tables, no CREATE anywhere.
    # PostgreSQL refuses such a role even CREATE … IF NOT EXISTS of objects that exist.
    with EventStore.open(postgres_url) as owner:
        owner.append("run-1", [RunPaused(actor="system")])
    parts = urlsplit(postgres_url)
    schema = postgres_url.rsplit("schema=", 1)[1]
    reader = f"t_reader_{uuid.uuid4().hex[:12]}"
    admin = psycopg.connect(
        host=parts.hostname,
        port=parts.port,
        dbname=parts.path.lstrip("/"),
        user=parts.username,
        autocommit=True,
    )
    with admin:
        admin.execute(f'CREATE ROLE "{reader}" LOGIN')
        try:
            admin.execute(f'GRANT USAGE ON SCHEMA "{schema}" TO "{reader}"')
            admin.execute(f'GRANT SELECT ON ALL TABLES IN SCHEMA "{schema}" TO "{reader}"')
            as_reader = postgres_url.replace(f"//{parts.username}@", f"//{reader}@")
            with EventStore.open(as_reader) as store:
                assert [e.type for e in store.read_all()] == ["run.paused"]
                with pytest.raises(StoreUnavailable, match="permission denied"):
                    store.append("run-2", [RunPaused(actor="system")])
            # A schema that does not exist yet: the error says what the role lacks.
            with pytest.raises(StoreUnavailable, match="may not create this store"):
                EventStore.open(as_reader.replace(f"schema={schema}", f"schema={schema}_new"))
        finally:
            admin.execute(f'DROP OWNED BY "{reader}"')
            admin.execute(f'DROP ROLE "{reader}"')
