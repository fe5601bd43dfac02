"""docs/extending.md stays true: its files are written out and its examples run as documented
(the extension in one process, and on Ray through `agentledger run`, `verify` and `approve`)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from agentledger.events import EventStore

DOC = Path(__file__).parents[2] / "docs" / "extending.md"
CLI = [sys.executable, "-m", "agentledger.cli"]
_BLOCK = re.compile(r"<!-- (file: (?P<name>\S+)|shell) -->\n```\w*\n(?P<body>.*?)```", re.S)


def _blocks() -> tuple[dict[str, str], list[str]]:
    files: dict[str, str] = {}
    shell: list[str] = []
    for match in _BLOCK.finditer(DOC.read_text(encoding="utf-8")):
        if match["name"]:
            files[match["name"]] = match["body"]
        else:
            shell.extend(
                line.split("#")[0].strip()
                for line in match["body"].splitlines()
                if line.split("#")[0].strip()
            )
    return files, shell


@pytest.fixture
def docs_folder(tmp_path: Path) -> Path:
    files, _ = _blocks()
    assert {"mytools.py", "agentledger.toml", "in_process.py", "cost_tracker.py"} <= set(files)
    for name, body in files.items():
        (tmp_path / name).write_text(body, encoding="utf-8")
    return tmp_path


def _env(folder: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "AGENTLEDGER_STORE")}
    return env | {"COLUMNS": "200", "PYTHONPATH": str(folder), "HOME": str(folder)}


def _python(folder: Path, script: str) -> str:
    done = subprocess.run(
        [sys.executable, script],
        cwd=folder,
        env=_env(folder),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_the_in_process_example_sends_the_email_and_the_cost_tracker_counts_it(
    docs_folder: Path,
) -> None:
    output = _python(docs_folder, "in_process.py")
    assert output.startswith("completed"), output
    [sent] = (docs_folder / "inproc" / "workspaces").glob("run-*/outbox/*.json")
    assert '"to": "ada@example.com"' in sent.read_text()
    counted = _python(docs_folder, "cost_tracker.py")
    # The custom provider answered the execution agent once; the offline one the rest.
    assert "'mailing:rules': 1" in counted and "'offline:offline-rules': 2" in counted
    assert _python(docs_folder, "cost_tracker.py") == counted  # from its checkpoint, the same


@pytest.mark.slow
def test_the_command_line_example_runs_the_tool_on_ray_and_verifies(docs_folder: Path) -> None:
    _, shell = _blocks()
    assert shell[0] == "export PYTHONPATH=."
    run_args, verify_args, approve_args = (line.split()[1:] for line in shell[1:4])
    goal = re.search(r'"(.*)"', shell[1])
    assert goal is not None and run_args[0] == "run"

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*CLI, *args],
            cwd=docs_folder,
            env=_env(docs_folder),
            capture_output=True,
            text=True,
            timeout=600,
        )

    done = cli("run", goal[1])
    assert done.returncode == 3, done.stdout + done.stderr  # waits for a human, as documented
    with EventStore.open(f"sqlite:///{docs_folder / '.agentledger' / 'ledger.db'}") as store:
        [run] = store.streams("run-")
        events = store.read(run.stream)
    [request] = [e for e in events if e.type == "approval.requested"]
    assert request.payload.tool == "send_email"
    [asked] = [e for e in events if e.type == "model.requested" and e.actor.startswith("agent:ex")]
    assert (asked.payload.provider, asked.payload.model) == ("mailing", "rules")
    assert "send_email (risk: high" in (asked.payload.prompt or "")

    assert verify_args[0] == "verify" and approve_args[0] == "approve"
    done = cli("verify", run.stream)
    assert done.returncode == 0 and "verified" in done.stdout, done.stdout + done.stderr
    done = cli("approve", run.stream, request.payload.action_id)
    assert done.returncode == 0, done.stdout + done.stderr


def test_verify_without_the_extension_says_it_is_missing(docs_folder: Path, tmp_path: Path) -> None:
    # The run recorded with the extension's tool and provider, verified where the settings do
    # not name it: a divergence that says why (an extension missing), not a bare prompt diff.
    output = _python(docs_folder, "in_process.py")
    assert output.startswith("completed"), output
    store = f"sqlite:///{docs_folder / 'inproc' / 'ledger.db'}"
    with EventStore.open(store) as opened:
        [run] = opened.streams("run-")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = _env(elsewhere) | {"PYTHONPATH": ""}
    done = subprocess.run(
        [*CLI, "verify", run.stream, "--store", store],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 1, done.stdout + done.stderr
    text = " ".join(done.stdout.split())
    assert "Traceback" not in done.stderr
    assert (
        "The run used tool(s) send_email and model provider(s) mailing, unknown here: it ran "
        "with an extension this verification lacks"
    ) in text, text
