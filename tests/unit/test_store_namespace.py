"""One store, one Ray namespace for its agents, however its URL is spelled (so `serve` of a store
is found, and a second one refused, whichever spelling a command uses)."""

from __future__ import annotations

from pathlib import Path

import pytest

from agentledger.config import store_namespace


def test_a_sqlite_file_is_named_by_its_absolute_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    spellings = [
        "sqlite:///l.db",
        f"sqlite:///{tmp_path}/l.db",
        "SQLITE:///l.db",
        " sqlite:///l.db",
    ]
    assert len({store_namespace(url) for url in spellings}) == 1
    assert store_namespace("sqlite:///other.db") != store_namespace("sqlite:///l.db")


def test_a_postgres_database_is_named_without_its_password_or_scheme_spelling() -> None:
    same = [
        "postgresql://ada:secret@127.0.0.1:5432/test",
        "postgres://ada@127.0.0.1/test",
        "postgresql://ada:other@127.0.0.1:5432/test?pool_size=8",
    ]
    assert len({store_namespace(url) for url in same}) == 1
    for other in ("postgresql://ada@127.0.0.1/test?schema=s2", "postgresql://bob@127.0.0.1/test"):
        assert store_namespace(other) != store_namespace(same[0])
