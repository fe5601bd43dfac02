"""The projection commands end to end: state, blackboard, context, memory search and rebuild on a
real SQLite log holding the scripted sample run (agentledger.sample), with their caches in a
temporary folder."""

from __future__ import annotations

import json
import random
import re
from pathlib import Path
from typing import Any

import pytest
from click.testing import Result
from typer.testing import CliRunner

from agentledger.actors.providers import ScriptedProvider
from agentledger.actors.runtime import ENDED, follow_run, start_run
from agentledger.cli import _cached_memory, app
from agentledger.events import EventStore, MemoryStored, ModelRequested, Role
from agentledger.projections import PerStream, RunStateProjection, RunStatus
from agentledger.projections.checkpoints import CheckpointStore
from agentledger.projections.memory import LongTermMemory, embedder_from_env
from agentledger.projections.runner import ProjectionRunner
from agentledger.sample import write_sample_run

runner = CliRunner()


class Cli:
    def __init__(self, url: str, cache: Path) -> None:
        self.url = url
        self.cache = cache

    def __call__(self, *args: str) -> Result:
        return runner.invoke(
            app,
            [*args, "--store", self.url],
            env={"COLUMNS": "200", "AGENTLEDGER_CACHE": str(self.cache)},
        )


@pytest.fixture
def cli(sqlite_url: str, tmp_path: Path) -> Cli:
    return Cli(sqlite_url, tmp_path / "cache")


@pytest.fixture
def run(cli: Cli) -> str:
    with EventStore.open(cli.url) as store:
        stream, _ = write_sample_run(store)
    return stream


def ok(result: Result) -> str:
    assert result.exit_code == 0, result.output
    assert result.exception is None
    return result.output


def test_state_now_and_in_the_past(cli: Cli, run: str) -> None:
    now = ok(cli("state", run))
    assert f"{run} at position 18" in now and "waiting_for_approval" in now
    assert "a2" in now and "sql.execute" in now  # the pending approval, with its reasoning
    assert "1284 records are past the 2-year retention" in now
    assert "stale_count" in now and "Customer data is kept 2 years" in now

    early = ok(cli("state", run, "--at", "2"))
    assert f"{run} at position 2" in early and "planning" in early
    assert "waiting_for_approval" not in early and "stale_count" not in early

    doc = json.loads(ok(cli("state", run, "--json")))
    assert doc["run"]["status"] == "waiting_for_approval" and doc["run"]["events"] == 18
    assert list(doc["run"]["pending_approvals"]) == ["a2"]
    assert list(doc["blackboard"]["entries"]) == ["b1"]
    assert doc["scratchpad"]["values"]["stale_count"]["value"] == "1284"
    past = json.loads(ok(cli("state", run, "--json", "--at", "8")))
    assert past["run"]["status"] == "running" and past["run"]["last_position"] == 8
    assert past["blackboard"]["entries"] == {} and past["run"]["pending_approvals"] == {}


def test_a_task_whose_action_waits_for_a_human_shows_it(cli: Cli, run: str) -> None:
    # From a tester: while its action waited for approval, a task read `assigned`, as if an
    # agent were at work on it.
    def row(output: str, task: str) -> str:
        return next(line for line in output.splitlines() if line.startswith(f"│ {task} "))

    assert "waiting_for_approval (a2)" in row(ok(cli("state", run)), "t3")
    assert "waiting_for_approval" not in row(ok(cli("state", run)), "t2")
    assert "waiting_for_approval" not in row(ok(cli("state", run, "--at", "16")), "t3")
    with EventStore.open(cli.url) as store:
        state = RunStateProjection().fold(store.read(run))
    assert state.tasks["t3"].status == "planned"  # the projection's data is as it was
    ok(cli("approve", run, "a2"))
    assert "waiting_for_approval" not in row(ok(cli("state", run)), "t3")


def test_blackboard(cli: Cli, run: str) -> None:
    output = ok(cli("blackboard", run))
    assert "Customer data is kept 2 years" in output and "retention" in output
    assert "agent:research/r1" in output
    assert "Customer data" not in ok(cli("blackboard", run, "--at", "8"))
    assert "Customer data" not in ok(cli("blackboard", run, "--kind", "question"))
    entries = json.loads(ok(cli("blackboard", run, "--json", "--kind", "fact")))
    assert [e["entry_id"] for e in entries] == ["b1"] and entries[0]["position"] == 9


def test_an_empty_answer_says_what_was_asked(cli: Cli, run: str, tmp_path: Path) -> None:
    # From a tester: an empty table, or "no memories match" when nothing was ever stored.
    def said(cli: Cli, *args: str) -> str:
        return " ".join(ok(cli(*args)).split())

    shown = said(cli, "blackboard", run, "--kind", "question", "--history")
    assert f"no entries, superseded ones included, on the blackboard of {run} match kind" in shown
    assert "question; it holds 1 entry in all" in shown and "┏" not in shown
    shown = said(cli, "blackboard", run, "--topic", "nope", "--kind", "fact")
    assert "no current entries" in shown and "match kind fact and topic 'nope'" in shown
    shown = said(cli, "blackboard", run, "--at", "3")
    assert f"the blackboard of {run} at position 3 has no entries" in shown
    assert "Customer data is kept" in said(cli, "blackboard", run, "--kind", "fact")

    fresh = Cli(f"sqlite:///{tmp_path / 'fresh.db'}", tmp_path / "fresh-cache")
    with EventStore.open(fresh.url) as store:
        start_run(store, "tidy up")  # a run that has not completed: no memory stored
    shown = said(fresh, "memory", "search", "retention")
    assert "long-term memory is empty: no run has stored a memory yet (a run stores one" in shown


def test_context_of_an_agent_at_a_position(cli: Cli, run: str) -> None:
    output = ok(cli("context", run, "--agent", "execution", "--at", "12", "--budget", "2000"))
    flat = " ".join(output.split())  # the title wraps to the width of the table
    assert "position 12:" in flat and "/2000 tokens" in flat
    # No model request of the agent's in this sample: the context is assembled for the task
    # the agent was working on at 12 (t2, named by its action), not its latest planned one.
    assert "asked no model" in output
    assert "Count records older than 2 years" in output and "Delete the stale" not in output
    assert "[12] action.proposed by agent:execution/e1" in output
    assert "[13]" not in output and "1284" not in output  # nothing after position 12
    assert "mem1" not in output  # the research agent's long-term memory: not the executor's
    research = ok(
        cli("context", run, "--agent", "research", "--at", "12", "--goal", "customer retention")
    )
    assert "mem1" in research  # long-term memory as of position 12

    later = ok(cli("context", run, "--agent", "execution", "--budget", "2000"))
    # The budget of the settings file given (the agents' own), when --budget is not.
    settings = cli.cache.parent / "settings.toml"
    settings.write_text("[runtime]\ncontext_tokens = 1500\n")
    configured = ok(cli("context", run, "--agent", "execution", "--config", str(settings)))
    assert "/1500 tokens" in " ".join(configured.split())
    assert "[14] action.executed" in later and "stale_count: 1284" in later
    again = ok(cli("context", run, "--agent", "execution", "--at", "12", "--budget", "2000"))
    assert again == output  # reproducible: the same context at the same position


def test_a_context_recorded_by_its_hash_is_rebuilt_as_the_agent_got_it(
    cli: Cli, tmp_path: Path, threaded_agents: Any, scenario_brain: Any
) -> None:
    rng = random.Random(3)
    words = ("retention", "period", "who", "approves", "deletions", "findings", "customer")

    def remember(store: EventStore, first: int, count: int) -> None:
        memories = [
            MemoryStored(
                actor="agent:coordinator/1",
                payload={
                    "memory_id": f"mem{i}",
                    "text": " ".join(rng.choice(words) for _ in range(6)),
                    "user": ("ann", "bob")[i % 2],
                },
            )
            for i in range(first, first + count)
        ]
        store.append("run-memories", memories)

    with EventStore.open(cli.url) as store:
        remember(store, 0, 60)
    providers = {"scripted": ScriptedProvider(scenario_brain())}
    scripted = {role.value: "scripted:brain" for role in Role}
    # A small budget: the agents summarize their history as the run goes.
    with (
        threaded_agents(cli.url, tmp_path / "agents", providers, context_tokens=300),
        EventStore.open(cli.url) as store,
    ):
        run = start_run(store, "tidy up", user="ann", models=scripted).stream
        assert follow_run(store, run, until=ENDED, timeout=60).status is RunStatus.COMPLETED
        # Memories stored later, by other runs: full-text scores count every row of a table,
        # so one that holds them ranks the memories of the past otherwise.
        remember(store, 60, 200)
        # The same log with the prompts kept by their hashes only (record_prompts = "hash").
        hashed = Cli(f"sqlite:///{tmp_path / 'hashed.db'}", tmp_path / "hashed-cache")
        with EventStore.open(hashed.url) as copy:
            for e in store.read_all():
                if isinstance(e, ModelRequested):
                    e = e.model_copy(
                        update={"payload": e.payload.model_copy(update={"prompt": None})}
                    )
                copy.append(e.stream, [e])
        asked = [e for e in store.read(run) if isinstance(e, ModelRequested)]
    assert {e.actor for e in asked} == {f"agent:{role.value}/1" for role in Role}
    summarized = 0
    for request in asked:
        role = request.actor.split(":")[1].split("/")[0]
        prompt = request.payload.prompt
        assert prompt is not None
        shown = ok(
            hashed(
                "context", run, "--agent", role, "--at", str(request.position), "--budget", "300"
            )
        )
        assert "recorded by its hash only" in shown
        # What it was assembled from: the memories, the summary and the recent events the
        # agent's prompt held.
        memories = re.findall(r"\(memory (mem\d+), position", prompt)
        rebuilt = re.search(r"memories ([^;\n]+)", shown)
        assert (rebuilt.group(1).split(", ") if rebuilt else []) == memories, (role, shown)
        summary = re.search(r"## summary of earlier history", prompt) is not None
        summarized += summary
        assert ("summary event" in shown) == summary, (role, request.position, shown)
        recent = len(request.payload.context_event_ids)
        assert (f"{recent} recent event" in shown) == bool(recent), (role, shown)
    assert summarized and any("(memory mem" in (e.payload.prompt or "") for e in asked)


def test_memory_search(cli: Cli, run: str) -> None:
    output = ok(cli("memory", "search", "customer retention"))
    assert "mem1" in output and "Retention for customer data is 2 years" in output
    hits = json.loads(ok(cli("memory", "search", "customer retention", "--json")))
    assert [h["memory_id"] for h in hits] == ["mem1"] and hits[0]["position"] == 10
    for mode in ("vector", "text"):
        assert "mem1" in ok(cli("memory", "search", "retention", "--mode", mode))
    # Before mem1 (position 10) there was nothing to match; user zed has none of the one there.
    early = " ".join(ok(cli("memory", "search", "retention", "--at", "9")).split())
    assert "long-term memory was empty at position 9: no run had stored a memory" in early
    zed = " ".join(ok(cli("memory", "search", "retention", "--user", "zed")).split())
    assert "no memories of user zed match 'retention' (1 memory stored)" in zed


def test_memory_search_at_ranks_as_a_search_then_did(
    cli: Cli, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Full-text scores count every row of a table: memories stored later make the words they
    hold commoner. ``--at`` searches the memories up to it as an agent's table held them then,
    not today's table filtered by position (which ranks them otherwise)."""

    def stored(i: int, text: str) -> MemoryStored:
        return MemoryStored(
            actor="agent:research/1", payload={"memory_id": f"m{i}", "text": text, "user": "ann"}
        )

    with EventStore.open(cli.url) as store:
        early = store.append(
            "run-memories",
            [
                stored(1, "customer data notes"),
                stored(2, "retention data notes"),
                stored(3, "retention misc words"),  # "customer" is the rarer word, then
            ],
        )
        store.append("run-memories", [stored(10 + i, f"customer record {i}") for i in range(40)])
    at = early[-1].position
    ok(cli("memory", "search", "customer retention"))  # the CLI's table now holds all 43
    monkeypatch.setenv("AGENTLEDGER_CACHE", str(cli.cache))
    today = _cached_memory(cli.url)
    assert today.count() == 43
    then = LongTermMemory(tmp_path / "as-of", embedder_from_env())  # an agent's table then
    with EventStore.open(cli.url) as store:
        then.catch_up(store, to_position=at)
    for mode in ("text", "hybrid"):
        args = ("memory", "search", "customer retention", "--mode", mode, "-k", "2", "--json")
        shown = [h["memory_id"] for h in json.loads(ok(cli(*args, "--at", str(at))))]
        expected = [h.memory_id for h in then.search("customer retention", k=2, mode=mode)]
        assert shown == expected, mode
    # Today's table filtered to the same positions ranks "retention" first, not "customer".
    filtered = today.search("customer retention", k=2, as_of=at, mode="text")
    assert filtered[0].memory_id == "m2"
    assert then.search("customer retention", k=2, mode="text")[0].memory_id == "m1"


def test_rebuild_mentions_each_projection_and_leaves_fresh_checkpoints(cli: Cli, run: str) -> None:
    output = ok(cli("rebuild"))
    for name in ("runs", "blackboards", "scratchpads", "memory"):
        assert f"rebuilt {name}" in output, name
    assert "1 memories" in output
    checkpoints = CheckpointStore(cli.cache / "checkpoints.db")
    projection = PerStream(RunStateProjection())
    with EventStore.open(cli.url) as store:
        expected = projection.dump(projection.fold(store.read_all()))
        stored = ProjectionRunner(store, projection, checkpoints)  # loads, folds nothing
    assert stored.position == 18
    assert projection.dump(stored.state) == expected
    assert (cli.cache / "lancedb").is_dir()

    only = ok(cli("rebuild", "runs"))
    assert "rebuilt runs" in only and "rebuilt memory" not in only


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("state", "run-nope"), "no run or stream 'run-nope'"),
        (("state", "{run}", "--at", "19"), "position 19 is outside the log"),
        (("state", "{run}", "--at", "0"), "starts at position 1; position 0 is before it"),
        (("blackboard", "{run}", "--at", "99"), "position 99 is outside the log"),
        (("context", "{run}", "--agent", "boss"), "unknown agent role 'boss'"),
        (("context", "run-nope", "--agent", "execution"), "no run or stream 'run-nope'"),
        (("blackboard", "{run}", "--kind", "rumor"), "unknown kind 'rumor'"),
        (("rebuild", "everything"), "unknown projection 'everything'"),
        (("memory", "search", ""), "the memory query is empty"),
        (("memory", "search", "   "), "the memory query is empty"),
        (("memory", "search", "x" * 2001), "the limit is 2000"),
        (("memory", "search", "retention", "--mode", "fuzzy"), "unknown mode 'fuzzy'"),
        (("memory", "search", "retention", "--at", "19"), "position 19 is outside the log"),
    ],
    ids=lambda v: v if isinstance(v, str) else " ".join(v)[:40],
)
def test_bad_input_is_a_clear_error_and_leaves_the_log_alone(
    cli: Cli, run: str, args: tuple[str, ...], message: str
) -> None:
    with EventStore.open(cli.url) as store:
        head, report = store.head_position(), store.verify()
    assert report.ok and head == 18

    result = cli(*(a.format(run=run) for a in args))
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit)  # typer.Exit(1), not a crash
    assert "error:" in result.output and message in result.output
    assert "Traceback" not in result.output

    with EventStore.open(cli.url) as store:
        assert store.head_position() == head
        assert store.verify().ok and store.verify().events == report.events


@pytest.mark.parametrize("args", [("rebuild",), ("memory", "search", "retention")])
@pytest.mark.parametrize("inside", [False, True])
def test_a_cache_setting_that_names_a_file_is_a_clear_error(
    cli: Cli, run: str, args: tuple[str, ...], inside: bool
) -> None:
    cli.cache.write_text("mine")
    if inside:  # $AGENTLEDGER_CACHE is a folder to be made in that file
        cli.cache = cli.cache / "sub"
    result = cli(*args)
    flat = " ".join(result.output.split())
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.output
    where = f" ({cli.cache.parent} is a file)" if inside else ""
    assert f"error: $AGENTLEDGER_CACHE={cli.cache} is not a folder{where}" in flat
    assert (cli.cache.parent if inside else cli.cache).read_text() == "mine"
    with EventStore.open(cli.url) as store:
        assert store.head_position() == 18


def test_rebuild_repairs_an_unreadable_checkpoints_file(cli: Cli, run: str) -> None:
    ok(cli("rebuild", "runs"))
    path = cli.cache / "checkpoints.db"
    for file in path.parent.glob("checkpoints.db*"):
        file.unlink()
    path.write_bytes(b"not a database " * 300)
    output = ok(cli("rebuild", "runs"))
    assert "rebuilt runs: 1 runs" in output


def test_memory_search_survives_damaged_lancedb_data_files(cli: Cli, run: str) -> None:
    ok(cli("memory", "search", "retention"))
    data = list((cli.cache / "lancedb").rglob("data/*.lance"))
    assert data
    for file in data:
        file.write_bytes(b"garbage")
    output = ok(cli("memory", "search", "retention"))
    assert "mem1" in output


def test_replay_to_a_position_or_an_event_and_step_through(cli: Cli, run: str) -> None:
    now = ok(cli("replay", run))
    assert "waiting_for_approval" in now and "last decisions" in now
    assert "approval.requested" in now and "sql.execute" in now  # the decision and its reasoning
    assert f"agentledger context {run} --agent ROLE --at 18" in " ".join(now.split())

    early = ok(cli("replay", run, "--to", "6"))
    assert f"{run} at position 6" in early and "waiting_for_approval" not in early

    with EventStore.open(cli.url) as store:
        fourth = store.read(run)[3]
    by_event = ok(cli("replay", run, "--to-event", str(fourth.id)))
    assert f"at position {fourth.position}" in by_event

    steps = ok(cli("replay", run, "--to", "5", "--step"))
    lines = [line for line in steps.splitlines() if "→" in line]
    assert len(lines) == 5 and lines[0].split("→")[1].strip() == "planning"

    doc = json.loads(ok(cli("replay", run, "--to", "12", "--json")))
    assert doc["position"] == 12 and doc["run"]["events"] == 12
    assert all(d["position"] <= 12 for d in doc["decisions"])


def test_replay_step_says_how_to_step_and_ends_cleanly_on_ctrl_d(cli: Cli, run: str) -> None:
    # From a tester: no word of which keys step, and Ctrl-D printed "Aborted!" with exit 1.
    import os
    import pty
    import subprocess
    import sys

    controller, terminal = pty.openpty()  # --step reads keys only from a terminal
    try:
        replay = subprocess.Popen(
            [sys.executable, "-m", "agentledger.cli", "replay", run, "--step", "--store", cli.url],
            stdin=terminal,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=os.environ | {"COLUMNS": "200"},
        )
        os.write(controller, b"\n")  # one step on, then Ctrl-D at the start of a line
        os.write(controller, b"\x04")
        stdout, stderr = replay.communicate(timeout=60)
    finally:
        os.close(controller)
        os.close(terminal)
    assert replay.returncode == 0, stdout + stderr
    assert "Enter: the next event; q and Enter, or Ctrl-D: stop" in stderr
    assert [line for line in stdout.splitlines() if "→" in line][-1].split()[2] == "v2"
    assert "stopped at v2 (position 2)" in stderr and "Aborted" not in stdout + stderr


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["replay", "run-nope"], "no run or stream 'run-nope'"),
        (["replay", "RUN", "--to", "999"], "outside the log"),
        (["replay", "RUN", "--to-event", "00000000-0000-0000-0000-000000000000"], "has no event"),
        (["replay", "RUN", "--to", "3", "--to-event", "x"], "not both"),
    ],
)
def test_replay_refuses_bad_input(cli: Cli, run: str, args: list[str], words: str) -> None:
    result = cli(*[run if a == "RUN" else a for a in args])
    assert result.exit_code == 1 and words in " ".join(result.output.split()), result.output


def test_replay_says_where_each_agents_summary_ends_by_the_runs_versions(
    cli: Cli, run: str
) -> None:
    from agentledger.actors.memory_manager import ExtractiveSummarizer, MemoryManager
    from agentledger.fork import fork_run

    with EventStore.open(cli.url) as store:
        summary = MemoryManager().plan_summary(
            store.read(run), "research", 32, ExtractiveSummarizer()
        )
        assert summary is not None
        store.append(run, [summary])
        end = next(e for e in store.read(run) if e.id == summary.payload.to_event)
        head = store.read(run)[-1]
        fork, _ = fork_run(store, run, head.position or 0, by="human:ada")
    shown = " ".join(ok(cli("replay", run)).split())
    assert f"research's memory: its history up to event {end.version} summarized in event" in shown
    # In the fork, every inherited event has the fork's position; versions still tell them apart.
    forked = " ".join(ok(cli("replay", fork)).split())
    assert f"its history up to event {end.version + 1} summarized in event" in forked


def _run_waiting_for_approval(
    store: EventStore, run: str, *, goal: str, task_goal: str, preview: str, reasoning: str
) -> None:
    """A run of one planned task whose high-risk action waits for a human, in the words given
    (a model's and a person's, as the views show them)."""
    from datetime import UTC, datetime, timedelta

    from agentledger.events import ApprovalRequested, RunStarted, TaskPlanned

    [started] = store.append(
        run, [RunStarted(actor="human:ada", payload={"goal": goal})], expected_version=0
    )
    link = started.caused_by(started)
    store.append(
        run,
        [
            TaskPlanned(
                actor="agent:coordinator/1",
                **link,
                payload={"task_id": "t1", "role": "execution", "goal": task_goal},
            ),
            ApprovalRequested(
                actor="agent:execution/1",
                **link,
                payload={
                    "action_id": "a1",
                    "action_hash": "0" * 64,
                    "tool": "delete_file",
                    "risk": "high",
                    "preview": preview,
                    "reasoning": reasoning,
                    "expires_at": datetime.now(UTC) + timedelta(days=1),
                },
            ),
        ],
    )


def test_words_in_the_log_that_look_like_markup_are_shown_as_written(cli: Cli) -> None:
    """Models and users write goals, reasonings and previews: a "[/b]" in one ended every
    command that showed it in a rich MarkupError traceback, and "[execution]" vanished."""
    from rich.console import Console

    from agentledger.console import progress_line

    goal = "Write [/b] and [bold]x[/bold] to a.txt"
    with EventStore.open(cli.url) as store:
        run = "run-markup"
        _run_waiting_for_approval(
            store,
            run,
            goal=goal,
            task_goal=goal,
            preview="delete_file [/tmp/x]",
            reasoning="the model said [red]so[/red]",
        )
        events = store.read(run)
    for args in (["state", run], ["log", run], ["runs"], ["approvals"], ["blackboard", run]):
        shown = ok(cli(*args))
        assert "Traceback" not in shown
    state = " ".join(ok(cli("state", run)).split())
    assert goal in state and "delete_file [/tmp/x]" in state
    assert "the model said [red]so[/red]" in state
    approvals = " ".join(ok(cli("approvals")).split())
    assert "delete_file [/tmp/x]" in approvals and "[red]so[/red]" in approvals

    console = Console(width=300, record=True, highlight=False)
    for event in events:
        line = progress_line(event)
        assert line is not None
        console.print(line)
    live = console.export_text()
    assert f"t1 [execution] {goal}" in live and "delete_file [/tmp/x]" in live


def test_control_characters_in_the_log_are_shown_not_obeyed(cli: Cli) -> None:
    """A model's words may hold terminal escapes (colours, clearing the screen): shown as
    ``\\x1b``, never sent to the terminal as they are."""
    with EventStore.open(cli.url) as store:
        _run_waiting_for_approval(
            store,
            "run-esc",
            goal="tidy up",
            task_goal="wipe\x1b[2J\x07",
            preview="delete_file \x1b[31mx",
            reasoning="said \x1b]0;title\x07 so",
        )
    for args in (["state", "run-esc"], ["log", "run-esc"], ["approvals"], ["status", "run-esc"]):
        shown = ok(cli(*args))
        assert "\x1b" not in shown and "\x07" not in shown, args
        assert "\\x1b" in shown, args
    from agentledger.console import printable  # as the prompt and context panels show text

    assert printable("a\x1b[2Jb\tc\n\x07") == "a\\x1b[2Jb\tc\n\\x07"


def test_log_and_the_live_view_summarize_model_requests_and_steering(cli: Cli, run: str) -> None:
    # From a tester: these showed as raw JSON ({"reason": ""}, {"request_id": …).
    import getpass

    from rich.console import Console

    from agentledger.console import progress_line

    ok(cli("pause", run, "--reason", "lunch"))
    ok(cli("resume", run))
    with EventStore.open(cli.url) as store:
        events = store.read(run)
        store.append(
            run,
            [
                ModelRequested(
                    actor="agent:review/v1",
                    payload={
                        "request_id": "m-9",
                        "provider": "openai",
                        "model": "gpt-4o-mini",
                        "prompt_hash": "f" * 64,  # hash only: no prompt kept
                    },
                )
            ],
        )
    [asked] = [e for e in events if e.type == "model.requested"]
    paused, resumed = events[-2:]
    me = f"human:{getpass.getuser()}"
    shown = " ".join(ok(cli("log", run)).split())
    p = asked.payload
    n = len(p.context_event_ids)
    assert f"asks {p.provider}:{p.model} (prompt sha256 {p.prompt_hash[:8]}…, {n} context" in shown
    assert "asks openai:gpt-4o-mini (prompt not kept, its sha256 ffffffff…, 0 context events)" in (
        shown
    )
    assert f"by {me}: lunch" in shown and '{"reason"' not in shown and '{"request_id"' not in shown
    console = Console(width=300, record=True, highlight=False)
    for event in (paused, resumed):
        console.print(progress_line(event))
    live = console.export_text()
    assert f"by {me}: lunch" in live and live.rstrip().endswith(f"by {me}")


def test_log_and_the_live_view_say_why_a_model_call_or_an_action_failed(cli: Cli) -> None:
    from rich.console import Console

    from agentledger.console import progress_line
    from agentledger.events import ActionFailed, ModelFailed, RunStarted

    why = "the answer does not follow the Plan schema: steps: Field required"
    with EventStore.open(cli.url) as store:
        [started] = store.append(
            "run-fails", [RunStarted(actor="human:ada", payload={"goal": "g"})], expected_version=0
        )
        link = started.caused_by(started)
        failed = store.append(
            "run-fails",
            [
                ModelFailed(
                    actor="agent:coordinator/1",
                    **link,
                    payload={"request_id": "m-1", "error": why, "retryable": True},
                ),
                ActionFailed(
                    actor="agent:execution/1",
                    **link,
                    payload={"action_id": "a-1", "error": "no such file: notes.txt"},
                ),
            ],
        )
    shown = " ".join(ok(cli("log", "run-fails")).split())
    assert "error=the answer does not follow the Plan schema" in shown
    assert "error=no such file: notes.txt" in shown
    console = Console(width=300, record=True, highlight=False)
    for event in failed:
        console.print(progress_line(event))
    live = console.export_text()
    assert why in live and "no such file: notes.txt" in live
