"""`agentledger demo`, `run`, `runs`, `status` and `serve` end to end, as a user types them:
real processes, real Ray, the SQLite file, the offline model."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest
from typer.testing import CliRunner

from agentledger.actors.runtime import start_run
from agentledger.cli import app
from agentledger.events import EventStore, RunStarted
from agentledger.sample import write_sample_run

runner = CliRunner()
CLI = [sys.executable, "-m", "agentledger.cli"]
# `agentledger serve` as started at a terminal, where Ctrl-C reaches it: a process inherits an
# ignored SIGINT (the tests run as a background job of a script), and Python keeps ignoring
# it, so that Ctrl-C would never reach serve here.
SERVE = [
    sys.executable,
    "-c",
    "import runpy, signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
    "sys.argv[0] = 'agentledger'; runpy.run_module('agentledger.cli', run_name='__main__')",
    "serve",
]


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
    assert done.returncode == 0, output  # the demo ends as designed: waiting for a human
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
    # Another local Ray instance runs beside the one `serve` started (a notebook's, another
    # tool's): Ray's own address="auto" picks any one of them; `run` must find the agents by
    # the address `serve` recorded for this store.
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    env = _env() | {"HOME": str(tmp_path)}
    with EventStore.open(url) as store:  # a run that waits for agents: serve takes it up
        waiting = start_run(store, "write early to early.txt").stream
    serve = subprocess.Popen(
        [*SERVE, "--store", url],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    other: subprocess.Popen[str] | None = None
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
        [record] = (tmp_path / ".agentledger" / "served").iterdir()
        # A second serve of the same store is refused (it would take the record over).
        second = subprocess.run(
            [*CLI, "serve", "--store", url], cwd=tmp_path, env=env, capture_output=True, text=True
        )
        assert second.returncode == 1 and "already served" in second.stderr, second.stderr
        # Started after serve's Ray, it shares the auth token serve's Ray saved in $HOME/.ray.
        other = subprocess.Popen(
            [sys.executable, "-c", OTHER_RAY],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        assert other.stdout is not None and other.stdout.readline().strip() == "ready"
        # From another folder: the served agents' workspace root is serve's, not this one's.
        elsewhere = tmp_path / "elsewhere"
        elsewhere.mkdir()
        # A setting the served agents do not share is said to be theirs, not taken silently.
        (elsewhere / "hash.toml").write_text('[runtime]\nrecord_prompts = "hash"\n')
        done = subprocess.run(
            [*CLI, "run", "write hello to hello.txt", "--store", url, "--config", "hash.toml"],
            cwd=elsewhere,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        output = done.stdout + done.stderr
        assert done.returncode == 0, output
        assert "using the agents served for this store" in output and "completed" in output
        flat = " ".join(output.split())
        assert "record_prompts = 'full' (here: 'hash')" in flat, output
        workspaces = (tmp_path / ".agentledger" / "workspaces").iterdir()
        [workspace] = [w for w in workspaces if w.name != waiting]
        assert (workspace / "hello.txt").exists()
        assert f"workspace: {workspace}\n" in output, output  # where its files are
        assert not (elsewhere / ".agentledger").exists()
    finally:
        if other is not None:
            other.kill()
        serve.send_signal(signal.SIGINT)
        try:
            serve.wait(timeout=60)
        except subprocess.TimeoutExpired:
            serve.kill()
    assert not record.exists(), "serve removes its record when it stops"
    # serve printed the run's start and end as they happened.
    served = serve.stdout.read()
    run = workspace.name
    for kind in ("run.started", "run.completed"):
        assert any(run in line and kind in line for line in served.splitlines()), served
    # And the end of the run that waited for it (it may end before serve prints its banner).
    assert any(waiting in line and "run.completed" in line for line in served.splitlines())


OTHER_RAY = """
import time, ray
ray.init(include_dashboard=False, num_cpus=1)
print("ready", flush=True)
time.sleep(600)
"""


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["run", ""], "the goal is empty"),
        (["run", "x" * 20_001], "the limit is 20,000"),
        (["run", "\u200b\u202e "], "the goal is empty"),
        (["run", "wipe \x1b[2J it"], "the goal holds the control character '\\x1b' at character 6"),
        (["run", "do it", "--model", "planner=offline:x"], "unknown role 'planner'"),
        (["run", "do it", "--model", "research=anthropic:claude"], "unknown provider 'anthropic'"),
        (["run", "do it", "--model", "research"], "is not ROLE=PROVIDER:MODEL"),
        (["run", "do it", "--docs", "/nonexistent/docs"], "no such directory"),
        (["run", "do it", "--docs", "/etc/hostname"], "--docs /etc/hostname: is a file, not a"),
        (["run", "do it", "--workspace", "/proc/ws"], "--workspace /proc/ws: cannot create it"),
        (["run", "do it", "--workspace", "/etc/hostname"], "/etc/hostname: not a folder"),
        (["run", "do it", "--address", "127.0.0.1:1"], "nothing answers at the Ray address"),
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


@pytest.mark.parametrize(
    "command",
    [["run", "write hi"], ["serve"], ["run", "write hi", "--workspace", "ws"], ["demo"]],
)
def test_a_dead_ray_address_leaves_no_new_store_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, command: list[str]
) -> None:
    # The store was opened (a new file made) before Ray was reached; nothing answering at
    # --address then failed the command, leaving an empty store file.
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    url = f"sqlite:///{tmp_path / 'new.db'}"
    code, output = invoke(*command, "--store", url, "--address", "127.0.0.1:1")
    assert code == 1, output
    assert "nothing answers at the Ray address '127.0.0.1:1'" in " ".join(output.split())
    assert list(tmp_path.iterdir()) == []  # no store file, no sidecar, no workspace, no docs


def test_run_refuses_a_workspace_that_holds_the_store(sqlite_url: str, tmp_path: Path) -> None:
    # Sandboxed commands write anywhere in the workspace: with the log in it, they could
    # rewrite it or append an approval no human gave. Through a symlink too.
    (tmp_path / "link").symlink_to(tmp_path)
    as_uri = f"sqlite:///file:{sqlite_url.removeprefix('sqlite:///')}?mode=rwc"
    for workspace, url in (
        (tmp_path, sqlite_url),
        (tmp_path / "link", sqlite_url),
        (tmp_path, as_uri),
    ):
        code, output = invoke("run", "do it", "--workspace", str(workspace), "--store", url)
        assert code == 1, output
        assert "holds the event store" in " ".join(output.split())
    with EventStore.open(sqlite_url) as store:
        assert store.head_position() == 0  # nothing was written


def test_run_names_the_missing_api_key(sqlite_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    code, output = invoke(
        "run", "do it", "--model", "research=openai:gpt-4o-mini", "--store", sqlite_url
    )
    assert code == 1 and "OPENAI_API_KEY" in output


def test_a_run_on_a_cluster_leaves_the_api_key_to_the_agents(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Agents on a cluster read the key where they run: this shell need not have it. (The
    # address is dead here, so the run stops there, having written nothing.)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    code, output = invoke(
        "run",
        "do it",
        "--model",
        "research=openai:gpt-4o-mini",
        "--store",
        sqlite_url,
        "--address",
        "127.0.0.1:9",
    )
    assert code == 1 and "OPENAI_API_KEY" not in output and "127.0.0.1:9" in output, output
    with EventStore.open(sqlite_url) as store:
        assert store.head_position() == 0


def test_a_broken_config_file_is_named_with_the_problem(sqlite_url: str, tmp_path: Path) -> None:
    config = tmp_path / "agentledger.toml"
    config.write_text('[runtime]\ncontext_tokens = "lots"\n')
    code, output = invoke("run", "do it", "--config", str(config), "--store", sqlite_url)
    assert code == 1 and str(config) in output and "context_tokens" in output
    config.write_text("[models\n")
    code, output = invoke("run", "do it", "--config", str(config), "--store", sqlite_url)
    assert code == 1 and "not valid TOML" in output and "line 1" in output


@pytest.mark.parametrize(
    ("toml", "words"),
    [
        (
            '[runtime]\nnamspace = "x"\n',
            "runtime.namspace: unknown setting; [runtime] takes namespace,",
        ),
        ('[openai]\nkey = "x"\n', "openai.key: unknown setting; [openai] takes base_url,"),
        ('[approvers.ada]\nos_user = ["ada"]\n', "[approvers.ada] takes roles, os_users,"),
        ('stor = "x"\n', "stor: unknown setting; the top level takes store, extensions, models,"),
        (
            "[runtime]\nreplicas = { execution = 0 }\n",
            "runtime.replicas.execution: Input should be",
        ),
    ],
)
def test_a_mistyped_setting_is_told_the_settings_there_are(
    sqlite_url: str, tmp_path: Path, toml: str, words: str
) -> None:
    config = tmp_path / "agentledger.toml"
    config.write_text(toml)
    code, output = invoke("run", "do it", "--config", str(config), "--store", sqlite_url)
    assert code == 1 and str(config) in output and words in " ".join(output.split()), output
    with EventStore.open(sqlite_url) as store:
        assert store.head_position() == 0


def test_a_store_table_with_a_mistyped_key_is_refused_not_ignored(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # [store] path = "…" was ignored (only url was read): commands went to the default store.
    config = tmp_path / "settings.toml"
    config.write_text(f'[store]\npath = "{tmp_path / "mine.db"}"\n')
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("AGENTLEDGER_CONFIG", str(config))
    monkeypatch.delenv("AGENTLEDGER_STORE", raising=False)
    code, output = invoke("runs")
    flat = " ".join(output.split())
    assert code == 1, output
    assert f"{config}: store.path: unknown setting; [store] takes url" in flat
    assert 'url = "sqlite:///path/to/ledger.db"' in flat
    assert sorted(p.name for p in tmp_path.iterdir()) == ["settings.toml"]  # nothing made
    # The key it does take still names the store.
    config.write_text(f'[store]\nurl = "sqlite:///{tmp_path / "mine.db"}"\n')
    code, output = invoke("runs")
    assert code == 0 and f"no store at {tmp_path / 'mine.db'}" in " ".join(output.split())


def test_runs_and_status_show_a_run(sqlite_url: str) -> None:
    with EventStore.open(sqlite_url) as store:
        run, _ = write_sample_run(store)
    code, output = invoke("runs", "--store", sqlite_url)
    assert code == 0 and run in output and "waiting_for_approval" in output
    code, output = invoke("status", run, "--store", sqlite_url)
    assert code == 0 and "waiting for approval" in output and "sql.execute" in output
    code, output = invoke("status", "run-nope", "--store", sqlite_url)
    assert code == 1 and "run-nope" in output


def test_status_says_a_running_run_waits_for_agents_when_none_are_served(
    sqlite_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # From a tester: approved with no `agentledger serve`, the run showed `running` though
    # nothing ran it.
    import socket

    from agentledger.actors.runtime import _process_start
    from agentledger.config import store_namespace

    monkeypatch.setenv("HOME", str(tmp_path))  # where `serve` records its agents
    with EventStore.open(sqlite_url) as store:
        run, _ = write_sample_run(store)
    code, output = invoke("status", run, "--store", sqlite_url)
    assert code == 0 and "waiting for agents" not in output  # it waits for a human
    code, output = invoke("approve", run, "a2", "--store", sqlite_url)
    assert code == 0, output
    code, output = invoke("status", run, "--store", sqlite_url)
    flat = " ".join(output.split())
    assert code == 0 and "running — waiting for agents: start agentledger serve" in flat, output
    code, output = invoke("state", run, "--at", "8", "--store", sqlite_url)  # the past: no
    assert code == 0 and "running" in output and "waiting for agents" not in output
    # Served (a live record of `serve`'s, its Ray port answering): the agents move it on.
    with socket.create_server(("127.0.0.1", 0)) as ray_port:
        record = {
            "address": f"127.0.0.1:{ray_port.getsockname()[1]}",
            "pid": os.getpid(),
            "started": _process_start(os.getpid()),
        }
        served = tmp_path / ".agentledger" / "served" / f"{store_namespace(sqlite_url)}.json"
        served.parent.mkdir(parents=True)
        served.write_text(json.dumps(record))
        code, output = invoke("status", run, "--store", sqlite_url)
    assert code == 0 and "running" in output and "waiting for agents" not in output


@pytest.mark.parametrize("columns", ["80", "160"])
def test_runs_lists_one_line_a_run_however_long_its_goal(sqlite_url: str, columns: str) -> None:
    goal = "tidy the customer records " * 20
    with EventStore.open(sqlite_url) as store:
        runs = [start_run(store, f"{i}: {goal}").stream for i in range(3)]
    result = runner.invoke(app, ["runs", "--store", sqlite_url], env={"COLUMNS": columns})
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    for i, run in enumerate(runs):
        [line] = [line for line in lines if run in line]
        assert f"{i}: tidy the customer" in line and line.rstrip().endswith("… │"), line
        assert len(line) <= int(columns)
    assert sum(1 for line in lines if line.startswith("│")) == len(runs)


def test_runs_on_an_empty_log_says_how_to_start(sqlite_url: str, tmp_path: Path) -> None:
    with EventStore.open(sqlite_url):
        pass  # a store with no run yet
    code, output = invoke("runs", "--store", sqlite_url)
    assert code == 0 and 'agentledger run "GOAL"' in output
    # No store at all (a first `runs`, or a typo): said so, and nothing is created.
    missing = tmp_path / "none" / "ledger.db"
    code, output = invoke("runs", "--store", f"sqlite:///{missing}")
    assert code == 0 and 'agentledger run "GOAL"' in output
    assert f"no store at {missing}" in " ".join(output.split())
    assert not missing.parent.exists()


def test_run_help_lists_its_options() -> None:
    code, output = invoke("run", "--help")
    assert code == 0
    for option in ("--docs", "--workspace", "--store", "--address", "--model", "--timeout"):
        assert option in output


def _serve_until(tmp_path: Path, url: str, done: Any, timeout: float = 300) -> None:
    """Run `agentledger serve` until ``done(store)`` is true, then stop it with Ctrl-C."""
    serve = subprocess.Popen(
        [*SERVE, "--store", url],
        cwd=tmp_path,
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + timeout
        with EventStore.open(url) as store:
            while not done(store):
                assert serve.poll() is None, "serve exited"
                assert time.monotonic() < deadline, "the served agents did not finish"
                time.sleep(0.5)
    finally:
        serve.send_signal(signal.SIGINT)
        try:
            serve.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(serve.pid, signal.SIGKILL)


def _status(url: str, run: str) -> str:
    from agentledger.projections import RunStateProjection

    with EventStore.open(url) as store:
        return RunStateProjection().fold(store.read(run)).status.value


@pytest.mark.slow
def test_a_waiting_run_holds_no_process_and_continues_after_approval(tmp_path: Path) -> None:
    """demo stops at the approval with every process gone; a human approves from the CLI;
    agents started later continue the run from the log to completion."""
    done = subprocess.run(
        [*CLI, "demo"], cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stdout + done.stderr
    url = f"sqlite:///{tmp_path / '.agentledger' / 'ledger.db'}"
    with EventStore.open(url) as store:
        [run] = [s.stream for s in store.streams("run-")]
    code, output = invoke("approvals", "--store", url)
    assert code == 0 and "delete_file" in output and "offline rules" in output
    # The medium-risk actions that ran, in the inbox: one line each, on 80 columns too.
    with EventStore.open(url) as store:
        notices = list(store.read_all(types=["notification.sent"]))
    assert notices
    narrow = runner.invoke(app, ["approvals", "--store", url], env={"COLUMNS": "80"}).output
    for shown in (output, narrow):
        assert "notifications (medium-risk actions that ran)" in shown
        for notice in notices:
            [line] = [line for line in shown.splitlines() if notice.payload.action_id in line]
            assert f" {notice.position} │ {notice.stream} │" in line and "ran" in line, line
    from agentledger.control import run_state

    with EventStore.open(url) as store:
        [action] = list(run_state(store, run)[0].pending_approvals)
    code, output = invoke("approve", run, action, "--comment", "fine", "--store", url)
    assert code == 0, output
    code, output = invoke("approve", run, action, "--store", url)
    assert code == 1 and "already decided" in output
    _serve_until(tmp_path, url, lambda store: _status(url, run) == "completed")
    assert not (tmp_path / ".agentledger" / "demo-workspaces" / "demo-1" / "notes.tmp").exists()


@pytest.mark.slow
def test_a_run_killed_with_its_ray_continues_under_new_agents(tmp_path: Path) -> None:
    """kill -9 of the CLI (and the local Ray it started) mid-run; `serve` later finishes it."""
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    # Ten sequential steps, killed when the first is reviewed: nine are left to do, so the kill
    # lands mid-run however fast the agents are.
    names = ("one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")
    goal = ". Then ".join(f"write {n} to {n}.txt" for n in names)
    cli = subprocess.Popen(
        [*CLI, "run", goal, "--store", url],
        cwd=tmp_path,
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 300
        while not (tmp_path / "ledger.db").exists():
            assert time.monotonic() < deadline and cli.poll() is None, "the run never started"
            time.sleep(0.05)
        with EventStore.open(url) as store:
            while True:  # until the agents are mid-run
                assert time.monotonic() < deadline, "the run never got going"
                if cli.poll() is not None:
                    break
                streams = store.streams("run-")
                if streams and any(
                    e.type == "task.reviewed" for e in store.read(streams[0].stream)
                ):
                    break
                time.sleep(0.02)
    finally:
        os.killpg(cli.pid, signal.SIGKILL)
        cli.wait(timeout=30)
    with EventStore.open(url) as store:
        [run] = [s.stream for s in store.streams("run-")]
    assert _status(url, run) != "completed", "the kill came too late to test anything"
    _serve_until(tmp_path, url, lambda store: _status(url, run) == "completed")
    with EventStore.open(url) as store:
        events = store.read(run)
    outcomes = [
        (e.type, e.payload.task_id) for e in events if e.type in ("task.completed", "task.reviewed")
    ]
    assert len(outcomes) == len(set(outcomes)) == 20  # ten tasks, each done and reviewed once
    [workspace] = (tmp_path / ".agentledger" / "workspaces").iterdir()
    assert sorted(p.name for p in workspace.glob("*.txt")) == sorted(f"{n}.txt" for n in names)


def test_a_policy_file_with_a_mistake_is_named_with_its_line(
    sqlite_url: str, tmp_path: Path
) -> None:
    (tmp_path / "policy.toml").write_text(
        '[tools]\nwrite_file = "medium"\n\n'
        '[[rules]]\ntool = "*"\nargument = "path"\nrisk = "high"\n'
    )
    config = tmp_path / "agentledger.toml"
    config.write_text('[runtime]\npolicy = "policy.toml"\n')
    code, output = invoke("run", "do it", "--config", str(config), "--store", sqlite_url)
    flat = " ".join(output.split())
    assert code == 1 and "policy.toml line 4" in flat, output
    with EventStore.open(sqlite_url) as store:
        assert store.head_position() == 0


@pytest.mark.parametrize(
    ("toml", "words"),
    [
        (
            '[runtime]\npolicy = "nope.toml"\n',
            "{config} [runtime] policy: there is no policy file {folder}/nope.toml (nope.toml "
            "from {config}'s folder); check the path, or leave the setting out",
        ),
        (
            '[runtime]\npolicy = "rules.toml"\n',  # its mistake: named with the setting
            "{config} [runtime] policy: {folder}/rules.toml line 2: no tool is called 'nope'",
        ),
        (
            '[runtime]\nnotify_webhook = "https://example.org/hook"\n',
            "{config} [runtime] notify_webhook 'https://example.org/hook' must be an http(s) URL",
        ),
        ('store = "postgresql://u@127.0.0.1:99999/db"\n', "{config} store: store URL has an"),
        ('[store]\nurl = "ledger.db"\n', "{config} [store] url: unknown store URL 'ledger.db'"),
        ('store = " "\n', "{config} store: the store URL is empty; give one"),
    ],
)
def test_a_setting_whose_value_is_refused_is_named_with_its_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, toml: str, words: str
) -> None:
    # The settings file is not ./agentledger.toml: the message must say which file said it.
    folder = tmp_path / "cfg"
    folder.mkdir()
    (folder / "rules.toml").write_text('[tools]\nnope = "high"\n')
    config = folder / "team.toml"
    config.write_text(toml)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("AGENTLEDGER_STORE", raising=False)
    code, output = invoke("run", "do it", "--config", "cfg/team.toml")
    flat = " ".join(output.split())
    assert code == 1, output
    assert words.format(config="cfg/team.toml", folder="cfg") in flat, flat
    assert "Traceback" not in output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cfg"]  # no store, no workspace


def test_as_names_the_settings_file_its_approvers_are_in(sqlite_url: str, tmp_path: Path) -> None:
    with EventStore.open(sqlite_url) as store:
        run, _ = write_sample_run(store)
        before = store.head_position()
    config = tmp_path / "team.toml"
    config.write_text('[approvers.ada]\nos_users = ["not-this-user"]\n')
    code, output = invoke(
        "approve", run, "a2", "--as", "zed", "--config", str(config), "--store", sqlite_url
    )
    flat = " ".join(output.split())
    assert code == 1, output
    assert f"--as zed: 'zed' is not an approver; approvers in {config}: ada" in flat
    code, output = invoke(
        "approve", run, "a2", "--as", "ada", "--config", str(config), "--store", sqlite_url
    )
    flat = " ".join(output.split())
    assert code == 1 and f"add it to [approvers.ada] os_users in {config}" in flat, output
    with EventStore.open(sqlite_url) as store:
        assert store.head_position() == before


def test_human_commands_refuse_clearly_and_write_nothing(sqlite_url: str) -> None:
    with EventStore.open(sqlite_url) as store:
        run, _ = write_sample_run(store)
        before = store.head_position()
    code, output = invoke("pause", "run-nope", "--store", sqlite_url)
    assert code == 1 and "no run 'run-nope'" in output
    code, output = invoke("deny", run, "a2", "--store", sqlite_url)
    assert code == 2 and "--reason" in output  # a denial needs its reason
    code, output = invoke("approve", run, "a-unknown", "--store", sqlite_url)
    assert code == 1 and "has no action 'a-unknown'" in output
    code, output = invoke("approve", run, "a2", "--as", "somebody-else", "--store", sqlite_url)
    assert code == 1 and "no [approvers] are configured" in output
    with EventStore.open(sqlite_url) as store:
        assert store.head_position() == before
    code, output = invoke("approvals", "--store", sqlite_url)
    assert code == 0 and "a2" in output and "sql.execute" in output
    code, output = invoke("pause", run, "--reason", "lunch", "--store", sqlite_url)
    assert code == 0 and "run.paused" in output
    code, output = invoke("pause", run, "--store", sqlite_url)
    assert code == 1 and "already paused" in output


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["deny", "{run}", "a2", "--reason", "r" * 20_001], "--reason is 20,001 characters"),
        (["approve", "{run}", "a2", "--comment", "c" * 100_001], "--comment is 100,001 characters"),
        (["pause", "{run}", "--reason", "p" * 100_001], "--reason is 100,001 characters"),
        (["fork", "{run}", "--at", "18", "--note", "n" * 100_001], "--note is 100,001 characters"),
    ],
    ids=lambda v: v[0] if isinstance(v, list) else None,
)
def test_text_longer_than_its_event_holds_is_refused_by_its_option(
    sqlite_url: str, args: list[str], words: str
) -> None:
    # As a goal too long for run.started is (the limits are the events' fields').
    with EventStore.open(sqlite_url) as store:
        run, _ = write_sample_run(store)
        before = store.head_position()
    code, output = invoke(*(a.format(run=run) for a in args), "--store", sqlite_url)
    flat = " ".join(output.split())
    assert code == 1, output
    limit = "20,000" if args[0] == "deny" else "100,000"
    assert f"error: {words}; the limit is {limit}. Shorten it" in flat
    assert "nothing was written" in flat
    with EventStore.open(sqlite_url) as store:
        assert store.head_position() == before and len(store.streams()) == 1


@pytest.mark.parametrize(
    ("address", "env"),
    [("not a url", False), ("not a url", True), ("http://head:8265", True), ("head:99999", False)],
)
def test_a_malformed_ray_address_is_refused_before_anything_starts(
    sqlite_url: str, address: str, env: bool
) -> None:
    # Checked before Ray (ray.init answers a bare ValueError), and before the store is made.
    given = ([], {"RAY_ADDRESS": address}) if env else (["--address", address], {})
    result = runner.invoke(
        app,
        ["run", "write hi to a.txt", "--store", sqlite_url, *given[0]],
        env={"COLUMNS": "200", **given[1]},
    )
    flat = " ".join(result.output.split())
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.output
    assert f"the Ray address {address!r} (--address or $RAY_ADDRESS) is not one Ray" in flat
    assert "give host:port" in flat and "ray://host:port" in flat
    assert not Path(sqlite_url.removeprefix("sqlite:///")).exists()  # no store, no run


@pytest.mark.slow
@pytest.mark.usefixtures("ray_session")
def test_run_exits_3_and_says_how_to_decide_when_an_action_waits(
    sqlite_url: str, tmp_path: Path
) -> None:
    workspace = tmp_path / "ws"
    workspace.mkdir()
    (workspace / "old.txt").write_text("x")
    code, output = invoke(
        "run", "delete the file old.txt", "--workspace", str(workspace), "--store", sqlite_url
    )
    flat = " ".join(output.split())
    assert code == 3, output
    assert "waiting for approval" in flat and "agentledger approve run-" in flat
    assert "agentledger deny run-" in flat and (workspace / "old.txt").exists()


@pytest.mark.slow
@pytest.mark.usefixtures("ray_session")
def test_run_records_who_started_it_as_approve_records_who_decided(
    sqlite_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # From a tester: with no $USER, `run` recorded human:anonymous, and the approval of its
    # action the OS account (human:root).
    monkeypatch.delenv("USER", raising=False)
    run = _run_waiting_to_delete(sqlite_url, tmp_path)
    with EventStore.open(sqlite_url) as store:
        started = store.read(run)[0]
        action = store.read(run)[-1].payload.action_id
    code, output = invoke("approve", run, action, "--store", sqlite_url)
    assert code == 0, output
    with EventStore.open(sqlite_url) as store:
        granted = store.read(run)[-1]
    assert granted.type == "approval.granted"
    assert started.actor == granted.actor == f"human:{started.payload.user}" != "human:anonymous"


@pytest.mark.slow
@pytest.mark.usefixtures("ray_session")
def test_a_runs_models_are_not_given_to_other_runs_waiting_in_the_log(
    sqlite_url: str, tmp_path: Path
) -> None:
    """The agents `run` starts also take up runs left waiting in the log (their command was
    stopped); those keep their own models, never this command's --model (another endpoint,
    another bill, another party reading the goal)."""
    from fake_openai_server import ChatServer, completion

    from agentledger.actors.runtime import start_run

    plan = {"reasoning": "one", "steps": [{"task_id": "t1", "goal": "x", "role": "execution"}]}
    server = ChatServer(lambda request: completion(json.dumps(plan)))
    config = tmp_path / "agentledger.toml"
    config.write_text(
        f'[openai]\nbase_url = "{server.base_url}"\nmax_retries = 0\n'
        f'[runtime]\nworkspace_root = "{tmp_path / "ws"}"\n'
    )
    with EventStore.open(sqlite_url) as store:
        waiting = start_run(store, "Write private to p.txt").stream  # no model chosen: offline
    try:
        code, output = invoke(
            "run",
            "Write x to a.txt",
            "--model",
            "coordinator=openai:chosen",
            "--config",
            str(config),
            "--store",
            sqlite_url,
            "--timeout",
            "200",
        )
    finally:
        server.stop()
    assert code == 0, output
    with EventStore.open(sqlite_url) as store:
        [started] = [s.stream for s in store.streams("run-") if s.stream != waiting]
        # Agents handle the log in order: the waiting run was planned before this one.
        planned = {
            e.stream: e.payload.provider
            for e in store.read_all(types=["model.requested"])
            if e.actor.startswith("agent:coordinator/")
        }
    assert planned == {waiting: "offline", started: "openai"}
    assert len(server.chat_requests) == 1
    assert "private" not in json.dumps(server.chat_requests[0].body)


def _run_waiting_to_delete(sqlite_url: str, tmp_path: Path) -> str:
    """A run from the CLI, in a workspace of its own, that waits for the approval to delete
    a file there; its stream."""
    workspace = tmp_path / "ws"
    workspace.mkdir()
    (workspace / "old.txt").write_text("x")
    code, output = invoke(
        "run", "delete the file old.txt", "--workspace", str(workspace), "--store", sqlite_url
    )
    assert code == 3, output
    with EventStore.open(sqlite_url) as store:
        [run] = [s.stream for s in store.streams("run-")]
    return run


@pytest.mark.slow
@pytest.mark.usefixtures("ray_session")
def test_fork_from_the_cli_and_its_lineage_in_runs(sqlite_url: str, tmp_path: Path) -> None:
    parent = _run_waiting_to_delete(sqlite_url, tmp_path)
    with EventStore.open(sqlite_url) as store:
        head = store.read(parent)[-1].position
    code, output = invoke(
        "fork", parent, "--at", str(head), "--note", "try again", "--store", sqlite_url
    )
    flat = " ".join(output.split())
    assert code == 3, output  # the parent waits for an approval there: so does its fork
    assert "fork run-" in flat and f"of {parent} at position {head}" in flat
    # The inherited events are the parent's: said once, not shown again as the fork's.
    assert "inherits the parent's first" in flat and "run.started" not in flat
    code, output = invoke("runs", "--store", sqlite_url)
    assert code == 0 and f"{parent} @ {head}" in " ".join(output.split())
    code, output = invoke("fork", parent, "--at", "99999", "--store", sqlite_url)
    assert code == 1 and "outside it" in output


def test_a_fork_whose_agents_cannot_be_reached_leaves_nothing_in_the_log(sqlite_url: str) -> None:
    with EventStore.open(sqlite_url) as store:
        store.append("run-x", [RunStarted(actor="human:ada", payload={"goal": "g"})])
    # In a process of its own: one where the tests' Ray is up would not look at --address.
    done = subprocess.run(
        [*CLI, "fork", "run-x", "--at", "1", "--address", "127.0.0.1:1", "--store", sqlite_url],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1, done.stderr
    assert "nothing answers at the Ray address" in " ".join(done.stderr.split())
    with EventStore.open(sqlite_url) as store:
        assert store.head_position() == 1  # no run.forked of a fork no agent could take up


def _ray_processes_in(folder: Path) -> list[str]:
    """Ray's processes working in ``folder`` (those a command started there)."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and (proc / "cwd").readlink() == folder:
                command = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
                if "ray" in command:
                    found.append(f"{proc.name} {command[:80]}")
        except OSError:
            continue  # gone, or not ours to read
    return found


@pytest.mark.slow
def test_ctrl_c_while_the_agents_start_leaves_no_ray_process_behind(tmp_path: Path) -> None:
    # Ray's dashboard and runtime-env agents outlived such a command by a minute.
    command = (
        "import runpy, signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
        "sys.argv[0] = 'agentledger'; runpy.run_module('agentledger.cli', run_name='__main__')"
    )
    started = subprocess.Popen(
        [sys.executable, "-c", command, "run", "write hi to a.txt", "--store", "sqlite:///l.db"],
        cwd=tmp_path,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    time.sleep(7.5)  # Ray is starting here (it takes 5-10 s)
    started.send_signal(signal.SIGINT)
    output, _ = started.communicate(timeout=120)
    assert started.returncode == 130, output
    deadline = time.monotonic() + 10
    while (left := _ray_processes_in(tmp_path)) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert left == [], output


@pytest.mark.parametrize("command", [["status", "run-1"], ["log"], ["approvals"]])
def test_reading_a_store_that_does_not_exist_says_so_and_creates_nothing(
    tmp_path: Path, command: list[str]
) -> None:
    missing = tmp_path / "typo" / "ledger.db"
    code, output = invoke(*command, "--store", f"sqlite:///{missing}")
    assert code == 1, output
    assert f"no store at {missing}" in " ".join(output.split())
    assert not (tmp_path / "typo").exists()


def test_another_programs_sqlite_database_is_refused_and_left_as_it_was(tmp_path: Path) -> None:
    foreign, empty = tmp_path / "app.db", tmp_path / "empty.db"
    with contextlib.closing(sqlite3.connect(foreign)) as conn:
        conn.execute("CREATE TABLE users (id INTEGER)")
    empty.touch()
    before = foreign.read_bytes()
    for command in (["runs"], ["log"], ["status", "run-1"], ["run", "write hi to a.txt"]):
        code, output = invoke(*command, "--store", f"sqlite:///{foreign}")
        assert code == 1, output
        assert f"no store at {foreign}: it holds users, not a log" in " ".join(output.split())
    code, output = invoke("log", "--store", f"sqlite:///{empty}")
    assert code == 1 and "the file is empty" in " ".join(output.split()), output
    assert foreign.read_bytes() == before and empty.stat().st_size == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["app.db", "empty.db"]  # no -wal


@pytest.mark.postgres
def test_a_schema_with_no_log_is_reported_not_created(postgres_url: str) -> None:
    schema = postgres_url.rsplit("schema=", 1)[1]
    for command in (["log"], ["approvals"]):
        code, output = invoke(*command, "--store", postgres_url)
        assert code == 1, output
        assert f"schema {schema} has no log" in " ".join(output.split())
    code, output = invoke("runs", "--store", postgres_url)  # no run yet: not an error
    assert code == 0 and f"schema {schema} has no log yet" in " ".join(output.split()), output
    with psycopg.connect(postgres_url.split("?")[0]) as conn:
        found = conn.execute(
            "SELECT 1 FROM information_schema.schemata WHERE schema_name = %s", (schema,)
        ).fetchone()
    assert found is None  # a typo in a schema's name made an empty store there


@pytest.mark.slow
def test_run_with_a_timeout_stops_following_and_says_where_the_run_is(tmp_path: Path) -> None:
    done = subprocess.run(
        [*CLI, "run", "Run `sleep 20`", "--timeout", "2"],
        cwd=tmp_path,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    output = " ".join((done.stdout + done.stderr).split())
    assert done.returncode == 4, output
    assert "stopped following" in output and "agentledger status run-" in output
    assert "Traceback" not in output


def test_decisions_go_to_the_store_of_the_settings_file_given(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # approve/deny/pause… --config FILE: FILE's `store =` (from a review: it was ignored, and
    # the decision went to ./.agentledger/ledger.db, or was refused there).
    store = tmp_path / "kept" / "ledger.db"
    store.parent.mkdir()
    with EventStore.open(f"sqlite:///{store}") as opened:
        run, _ = write_sample_run(opened)  # waits for approval of action a2
    config = tmp_path / "settings.toml"
    config.write_text(f'store = "sqlite:///{store}"\n')
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(
        app, ["approve", run, "a2", "--config", str(config)], env={"COLUMNS": "200"}
    )
    assert result.exit_code == 0, result.output
    assert not (tmp_path / ".agentledger").exists()
    with EventStore.open(f"sqlite:///{store}") as opened:
        assert opened.read(run)[-1].type == "approval.granted"


def test_agents_cannot_share_an_in_memory_store() -> None:
    code, output = invoke("run", "do it", "--store", "memory://")
    assert code == 1 and "memory:// is a store of one process" in " ".join(output.split())
