"""`agentledger demo`, `run`, `runs`, `status` and `serve` end to end, as a user types them:
real processes, real Ray, the SQLite file, the offline model."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from agentledger.cli import app
from agentledger.events import EventStore
from agentledger.sample import write_sample_run

runner = CliRunner()
CLI = [sys.executable, "-m", "agentledger.cli"]


def invoke(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, list(args), env={"COLUMNS": "200"})
    return result.exit_code, result.output


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "AGENTLEDGER_STORE")}
    return env | {"COLUMNS": "200"}


@pytest.mark.slow
def test_demo_runs_the_four_agents_offline_up_to_the_approval(tmp_path: Path) -> None:
    done = subprocess.run(
        [*CLI, "demo"], cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=600
    )
    output = done.stdout + done.stderr
    assert done.returncode == 3, output  # 3: waiting for a human's approval
    assert "rule-based, not a language model" in output
    assert "waiting for approval" in output and "delete_file" in output
    with EventStore.open(f"sqlite:///{tmp_path / '.agentledger' / 'ledger.db'}") as store:
        [run] = store.streams("run-")
        events = store.read(run.stream)
    roles = {e.actor.split("/")[0] for e in events if e.actor.startswith("agent:")}
    assert roles == {f"agent:{r}" for r in ("coordinator", "research", "execution", "review")}
    assert sum(e.type == "task.planned" for e in events) == 5
    assert events[-1].type == "approval.requested"
    assert (tmp_path / ".agentledger" / "demo-workspaces" / "demo-1" / "report.md").exists()


@pytest.mark.slow
def test_serve_picks_up_a_run_started_from_another_shell(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    serve = subprocess.Popen(
        [*CLI, "serve", "--store", url],
        cwd=tmp_path,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert serve.stdout is not None
        lines = []
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            line = serve.stdout.readline()
            lines.append(line)
            if "serving" in line or serve.poll() is not None:
                break
        assert any("serving 4 agents" in line for line in lines), "".join(lines)
        done = subprocess.run(
            [*CLI, "run", "write hello to hello.txt", "--store", url, "--timeout", "120"],
            cwd=tmp_path,
            env=_env(),
            capture_output=True,
            text=True,
            timeout=300,
        )
        output = done.stdout + done.stderr
        assert done.returncode == 0, output
        assert "using the agents served" in output and "completed" in output
        [workspace] = (tmp_path / ".agentledger" / "workspaces").iterdir()
        assert (workspace / "hello.txt").exists()
    finally:
        serve.send_signal(signal.SIGINT)
        try:
            serve.wait(timeout=60)
        except subprocess.TimeoutExpired:
            serve.kill()


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["run", ""], "the goal is empty"),
        (["run", "x" * 20_001], "the limit is 20,000"),
        (["run", "do it", "--model", "planner=offline:x"], "unknown role 'planner'"),
        (["run", "do it", "--model", "research=anthropic:claude"], "unknown provider 'anthropic'"),
        (["run", "do it", "--model", "research"], "is not ROLE=PROVIDER:MODEL"),
        (["run", "do it", "--docs", "/nonexistent/docs"], "no such directory"),
    ],
)
def test_run_refuses_bad_input_before_anything_starts(
    sqlite_url: str, args: list[str], words: str
) -> None:
    code, output = invoke(*args, "--store", sqlite_url)
    assert code == 1, output
    assert words in " ".join(output.split())
    with EventStore.open(sqlite_url) as store:
        assert store.head_position() == 0  # nothing was written


def test_run_names_the_missing_api_key(sqlite_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    code, output = invoke(
        "run", "do it", "--model", "research=openai:gpt-4o-mini", "--store", sqlite_url
    )
    assert code == 1 and "OPENAI_API_KEY" in output


def test_a_broken_config_file_is_named_with_the_problem(sqlite_url: str, tmp_path: Path) -> None:
    config = tmp_path / "agentledger.toml"
    config.write_text('[runtime]\ncontext_tokens = "lots"\n')
    code, output = invoke("run", "do it", "--config", str(config), "--store", sqlite_url)
    assert code == 1 and str(config) in output and "context_tokens" in output
    config.write_text("[models\n")
    code, output = invoke("run", "do it", "--config", str(config), "--store", sqlite_url)
    assert code == 1 and "not valid TOML" in output and "line 1" in output


def test_runs_and_status_show_a_run(sqlite_url: str) -> None:
    with EventStore.open(sqlite_url) as store:
        run, _ = write_sample_run(store)
    code, output = invoke("runs", "--store", sqlite_url)
    assert code == 0 and run in output and "waiting_for_approval" in output
    code, output = invoke("status", run, "--store", sqlite_url)
    assert code == 0 and "waiting for approval" in output and "sql.execute" in output
    code, output = invoke("status", "run-nope", "--store", sqlite_url)
    assert code == 1 and "run-nope" in output


def test_runs_on_an_empty_log_says_how_to_start(sqlite_url: str) -> None:
    code, output = invoke("runs", "--store", sqlite_url)
    assert code == 0 and 'agentledger run "GOAL"' in output


def test_run_help_lists_its_options() -> None:
    code, output = invoke("run", "--help")
    assert code == 0
    for option in ("--docs", "--workspace", "--store", "--address", "--model", "--timeout"):
        assert option in output
