"""One store, one Ray namespace for its agents, however its URL is spelled (so `serve` of a store
is found, and a second one refused, whichever spelling a command uses)."""

from __future__ import annotations

from pathlib import Path

import pytest

from agentledger.config import Settings, cache_dir, runtime_config, store_namespace
from agentledger.events._backends import sqlite_file


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


def test_a_sqlite_file_uri_is_the_file_it_names(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    plain = store_namespace("sqlite:///l.db")
    for uri in (
        "sqlite:///file:l.db",
        f"sqlite:///file:{tmp_path}/l.db?mode=rwc",
        f"sqlite:///file://{tmp_path}/l.db",
        f"sqlite:///file://localhost{tmp_path}/l.db",
    ):
        assert store_namespace(uri) == plain, uri
        # The agents get the absolute file, with the URI's options; the cache is beside it.
        config = runtime_config(Settings(), uri, {})
        assert sqlite_file(config.store_url) == tmp_path / "l.db"
        assert config.store_url.endswith("?mode=rwc") == uri.endswith("?mode=rwc")
        assert cache_dir(uri).resolve() == tmp_path / "l.cache"


def test_a_sqlite_file_uri_with_a_tilde_is_the_file_the_store_opens(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # SQLite does not expand "~" in a URI (nor does the store: only a plain path's), so
    # "file:~/l.db" is "./~/l.db". sqlite_file expanded it to the home folder: the agents were
    # given that other file (runtime_config), and the CLI checked and cached beside it.
    from agentledger.events import EventStore

    home, work = tmp_path / "home", tmp_path / "work"
    home.mkdir()
    work.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(work)
    url = "sqlite:///file:~/l.db?mode=rwc"
    with EventStore.open(url):
        pass
    (opened,) = [p for p in tmp_path.rglob("l.db")]
    file = sqlite_file(url)
    assert file is not None and file.resolve() == opened
    assert sqlite_file(runtime_config(Settings(), url, {}).store_url) == opened
    assert cache_dir(url).resolve() == work / "~" / "l.cache"
    for plain in ("sqlite:///~/p.db", "sqlite:///file:p.db"):  # as before
        assert sqlite_file(plain) in (home / "p.db", Path("p.db"))


def test_a_file_uri_naming_localhost_opens_the_local_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # pathlib collapses "file://localhost/x" to "file:/localhost/x": the store opened (and
    # created) /localhost/x, where SQLite itself opens /x.
    from agentledger.events import ConfigurationError, EventStore

    monkeypatch.chdir(tmp_path)
    with EventStore.open(f"sqlite:///file://localhost{tmp_path}/l.db?mode=rwc") as store:
        assert store.head_position() == 0
    assert (tmp_path / "l.db").is_file()
    assert sqlite_file(f"sqlite:///file://localhost{tmp_path}/l.db") == tmp_path / "l.db"
    for host in ("db.example", "LOCALHOST"):  # SQLite reads "localhost" case-sensitively
        with pytest.raises(ConfigurationError, match=rf"names the host '{host}' .* local files"):
            EventStore.open(f"sqlite:///file://{host}/srv/l.db")
    assert not Path("/srv/l.db").exists() and not (tmp_path / "srv").exists()
