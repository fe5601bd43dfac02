"""How a command on this machine finds the Ray instance that `agentledger serve` runs its agents
in: the record `serve` writes, trusted only while its process lives and its Ray port answers."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from agentledger.actors.runtime import _process_start, served_address


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / ".agentledger" / "served").mkdir(parents=True)
    return tmp_path / ".agentledger" / "served"


@pytest.fixture
def listening() -> Iterator[str]:
    """The address of a real TCP port that accepts connections (as a live Ray's does)."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        yield f"127.0.0.1:{server.getsockname()[1]}"


def _write(home: Path, **record: object) -> None:
    (home / "agentledger-abc.json").write_text(json.dumps(record))


def test_a_live_record_gives_its_address(home: Path, listening: str) -> None:
    me = os.getpid()
    _write(home, address=listening, pid=me, started=_process_start(me), host=socket.gethostname())
    assert served_address("agentledger-abc") == listening
    assert served_address("agentledger-other") is None


def test_a_record_whose_process_is_gone_is_ignored(home: Path, listening: str) -> None:
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    _write(home, address=listening, pid=gone.pid)
    assert served_address("agentledger-abc") is None


def test_a_record_of_a_reused_process_id_is_ignored(home: Path, listening: str) -> None:
    # The serve that wrote it was killed; a later process got its id (another start time).
    me = os.getpid()
    _write(home, address=listening, pid=me, started=(_process_start(me) or 0) - 1)
    assert served_address("agentledger-abc") is None


def test_a_record_whose_ray_does_not_answer_is_ignored(home: Path) -> None:
    # ray.init on a dead address retries for many minutes: the port is probed first.
    with socket.create_server(("127.0.0.1", 0)) as server:
        closed = f"127.0.0.1:{server.getsockname()[1]}"
    _write(home, address=closed, pid=os.getpid())
    assert served_address("agentledger-abc") is None


def test_a_record_of_another_host_is_ignored(home: Path, listening: str) -> None:
    _write(home, address=listening, pid=os.getpid(), host=socket.gethostname() + "-other")
    assert served_address("agentledger-abc") is None


@pytest.mark.parametrize("text", ["", "not json", "[]", '{"address": "a"}', '{"pid": "x"}'])
def test_a_broken_record_is_ignored(home: Path, text: str) -> None:
    (home / "agentledger-abc.json").write_text(text)
    assert served_address("agentledger-abc") is None
