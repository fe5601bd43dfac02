"""How a command on this machine finds the Ray instance that `agentledger serve` runs its agents
in: the record `serve` writes, trusted only while its process lives."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from agentledger.actors.runtime import served_address


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / ".agentledger" / "served").mkdir(parents=True)
    return tmp_path / ".agentledger" / "served"


def test_a_live_record_gives_its_address(home: Path) -> None:
    (home / "agentledger-abc.json").write_text(
        json.dumps({"address": "127.0.0.1:6380", "pid": os.getpid()})
    )
    assert served_address("agentledger-abc") == "127.0.0.1:6380"
    assert served_address("agentledger-other") is None


def test_a_record_whose_process_is_gone_is_ignored(home: Path) -> None:
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    (home / "agentledger-abc.json").write_text(
        json.dumps({"address": "127.0.0.1:6380", "pid": gone.pid})
    )
    assert served_address("agentledger-abc") is None


@pytest.mark.parametrize("text", ["", "not json", "[]", '{"address": "a"}', '{"pid": "x"}'])
def test_a_broken_record_is_ignored(home: Path, text: str) -> None:
    (home / "agentledger-abc.json").write_text(text)
    assert served_address("agentledger-abc") is None
