"""The CLI end to end: real stores, real output, exit codes, and clear errors on bad input."""

from __future__ import annotations

import contextlib
import json
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from agentledger.cli import app, main
from agentledger.events import EventStore, RunPaused, RunStarted
from agentledger.sample import write_sample_run

runner = CliRunner()


def invoke(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, list(args), env={"COLUMNS": "200"})
    return result.exit_code, result.output


@pytest.fixture
def demo_url(sqlite_url: str) -> str:
    # A fixed, scripted sample log (agentledger.sample): the inspection commands are tested on
    # known content; the real `demo` (agents on Ray) is tested in test_cli_runs.py.
    with EventStore.open(sqlite_url) as store:
        write_sample_run(store)
    return sqlite_url


def test_the_sample_run_is_verifiable(demo_url: str) -> None:
    with EventStore.open(demo_url) as store:
        [stream] = store.streams()
        events = store.read(stream.stream)
    types = [e.type for e in events]
    assert types[0] == "run.started" and types[-1] == "approval.requested"
    assert types.count("task.planned") > 3  # more than three steps: decomposed
    code, output = invoke("verify-log", "--store", demo_url)
    assert code == 0 and f"{len(events)} events" in output


def test_log_filters_and_json(demo_url: str) -> None:
    code, output = invoke("log", "--store", demo_url, "--type", "task.planned", "--json")
    assert code == 0
    lines = [json.loads(line) for line in output.splitlines()]
    assert len(lines) == 4 and {d["type"] for d in lines} == {"task.planned"}
    assert all(d["position"] >= 1 and len(d["hash"]) == 64 for d in lines)

    code, output = invoke("log", "--store", demo_url, "--since", "16", "--json")
    assert [json.loads(line)["position"] for line in output.splitlines()] == [17, 18]

    code, output = invoke("log", "--store", demo_url, "-n", "2")
    assert code == 0 and "run.started" in output and "task.planned" in output
    assert "approval.requested" not in output


def test_log_of_one_stream_and_streams_table(demo_url: str) -> None:
    with EventStore.open(demo_url) as store:
        stream = store.streams()[0].stream
    code, output = invoke("log", stream, "--store", demo_url, "--type", "approval.requested")
    assert code == 0 and "approval.requested" in output and "risk=high" in output
    code, output = invoke("streams", "--store", demo_url)
    assert code == 0 and stream in output and "18" in output
    assert "1 stream, 18 events" in output  # not "1 streams"
    # Nothing matches: the answer names the filters, not only the position.
    code, output = invoke("log", stream, "--store", demo_url, "--type", "run.completed")
    flat = " ".join(output.split())
    assert code == 0 and f"no events of type run.completed after position 0 in {stream}" in flat


def test_schema_export(tmp_path: Path) -> None:
    code, output = invoke("schema", "--out", str(tmp_path / "schemas"))
    assert code == 0
    files = sorted(p.name for p in (tmp_path / "schemas").iterdir())
    assert "event.schema.json" in files and "approval.granted.schema.json" in files
    union = json.loads((tmp_path / "schemas" / "event.schema.json").read_text())
    assert union["discriminator"]["propertyName"] == "type"
    code, output = invoke("schema")
    assert code == 0 and json.loads(output)["title"] == "Event"


def test_schema_export_replaces_files_only_with_force(tmp_path: Path) -> None:
    out = tmp_path / "schemas"
    out.mkdir()
    (out / "event.schema.json").write_text("hand-edited\n")
    code, output = invoke("schema", "--out", str(out))
    flat = " ".join(output.split())
    assert code == 1, output
    assert f"{out / 'event.schema.json'} exists" in flat and "--force" in flat
    # Every file checked before any is written: nothing else appeared.
    assert [p.name for p in out.iterdir()] == ["event.schema.json"]
    assert (out / "event.schema.json").read_text() == "hand-edited\n"
    code, output = invoke("schema", "--out", str(out), "--force")
    assert code == 0, output
    assert json.loads((out / "event.schema.json").read_text())["title"] == "Event"


def test_verify_log_reports_the_tampered_position(demo_url: str) -> None:
    path = demo_url.removeprefix("sqlite:///")
    with sqlite3.connect(path) as db:
        state = db.execute("SELECT state FROM stored_events WHERE rowid = 4").fetchone()[0]
        assert b"Delete the stale records" in state  # the edit below really changes the row
        db.execute(
            "UPDATE stored_events SET state = ? WHERE rowid = 4",
            (state.replace(b"Delete the stale records", b"Delete ALL the records"),),
        )
        assert db.total_changes == 1
    code, output = invoke("verify-log", "--store", demo_url)
    assert code == 1
    assert "TAMPERED" in output and "position 4" in output and "edited" in output
    # An export would vouch for it (with --key, by signature): refused, nothing written.
    with EventStore.open(demo_url) as store:
        run = store.streams()[0].stream
    out = Path(path).parent / "run.jsonl"
    code, output = invoke("audit", "export", run, "--out", str(out), "--store", demo_url)
    flat = " ".join(output.split())
    assert code == 1 and "fails its own check, so nothing was exported" in flat, output
    assert not out.exists() and not list(out.parent.glob(".run.jsonl.*"))


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("foo://bar", "unknown store URL"),
        ("sqlite://", "has no path"),
        ("postgresql://alice:s3cret@127.0.0.1:1/db", "cannot reach PostgreSQL at 127.0.0.1:1"),
        ("postgresql://127.0.0.1:99999/db", "invalid port"),
        ("postgresql://postgres@[::zz]:5432/x", "[::zz]:5432/x has an invalid host"),
        ("postgresql://alice:s3cret@[::1", "has an invalid host (Invalid IPv6 URL)"),
        ("postgresql://u@127.0.0.1:1/db?pool_size=0", "pool_size=0 in the store URL: it must be"),
        ("postgresql://u@127.0.0.1:1/db?schema=", "schema= have no value"),
        ("postgresql://u@127.0.0.1:1/db?schema=a&schema=b", "gives schema more than once"),
    ],
)
def test_bad_store_urls_give_clear_errors(url: str, expected: str) -> None:
    code, output = invoke("log", "--store", url)
    assert code == 1
    assert expected in output and "Traceback" not in output
    assert "s3cret" not in output


@pytest.mark.parametrize("command", [["runs"], ["log"], ["streams"], ["verify-log"]])
def test_an_empty_store_is_refused_not_replaced_by_another(
    demo_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, command: list[str]
) -> None:
    # --store "" was taken as not given: the command read $AGENTLEDGER_STORE's store (or made
    # the default one) and said nothing.
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("AGENTLEDGER_STORE", demo_url)
    before = sorted(tmp_path.iterdir())
    code, output = invoke(*command, "--store", "")
    flat = " ".join(output.split())
    assert code == 2, output
    assert "Invalid value for '--store'" in flat
    assert "the store URL is empty; give one, or leave the option out" in flat
    # A blank variable is refused as such, naming it.
    monkeypatch.setenv("AGENTLEDGER_STORE", "  ")
    code, output = invoke(*command)
    flat = " ".join(output.split())
    assert code == 2 and "$AGENTLEDGER_STORE is blank; set it to a store URL, or unset" in flat
    assert sorted(tmp_path.iterdir()) == before  # no default store made


def test_unknown_type_and_stream(demo_url: str) -> None:
    code, output = invoke("log", "--store", demo_url, "--type", "run.exploded")
    assert code == 1 and "unknown event type(s) run.exploded" in output
    code, output = invoke("log", "no-such-stream", "--store", demo_url)
    assert code == 1 and "no-such-stream" in output and "agentledger streams" in output


def _insert_raw(path: str, topic: str, state: bytes) -> None:
    with sqlite3.connect(path) as db:
        db.execute("INSERT INTO stored_events VALUES (?, ?, ?, ?)", ("run-raw", 1, topic, state))


def test_newer_or_unknown_events_in_the_log_are_reported_not_modified(sqlite_url: str) -> None:
    path = sqlite_url.removeprefix("sqlite:///")
    with EventStore.open(sqlite_url) as store:
        store.append("run-a", [RunStarted(actor="human:ada", payload={"goal": "g"})], 0)
    _insert_raw(path, "run.teleported@1", b'{"type":"run.teleported"}')
    before = Path(path).read_bytes()
    code, output = invoke("log", "--store", sqlite_url)
    assert code == 1
    assert "position 2" in output and "run.teleported" in output and "Upgrade" in output
    code, output = invoke("log", "--store", sqlite_url, "--type", "run.started")
    assert code == 0 and "run.started" in output  # the rest of the log stays readable
    assert Path(path).read_bytes()[:4096] == before[:4096]


@pytest.mark.parametrize("command", [["log"], ["streams"], ["verify-log"]])
def test_a_sqlite_file_of_another_program_is_named_and_left_as_it_was(
    tmp_path: Path, command: list[str]
) -> None:
    path = tmp_path / "f.db"
    with contextlib.closing(sqlite3.connect(path)) as db:
        db.execute("CREATE TABLE stored_events (x)")
    before = path.read_bytes()
    code, output = invoke(*command, "--store", f"sqlite:///{path}")
    flat = " ".join(output.split())
    assert code == 1, output
    assert (
        f"{path} is not an agentledger store: its stored_events table has no column "
        "originator_id (its columns: x)"
    ) in flat
    # Not switched to WAL, no table of ours added: no -wal/-shm file beside it either.
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["f.db"]


def test_corrupt_row_names_its_position(sqlite_url: str) -> None:
    path = sqlite_url.removeprefix("sqlite:///")
    with EventStore.open(sqlite_url) as store:
        store.append("run-a", [RunStarted(actor="human:ada", payload={"goal": "g"})], 0)
    _insert_raw(path, "run.paused@1", b"\x00\x01 not json")
    code, output = invoke("log", "--store", sqlite_url)
    assert code == 1 and "position 2" in output and "damaged" in output
    code, output = invoke("verify-log", "--store", sqlite_url)
    assert code == 1 and "position 2" in output and "unreadable" in output


def test_follow_prints_events_appended_by_another_process(sqlite_url: str) -> None:
    follower = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "agentledger.cli",
            "log",
            "--follow",
            "--json",
            "--store",
            sqlite_url,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        time.sleep(1.5)  # let it start and subscribe (an empty log: nothing printed yet)
        with EventStore.open(sqlite_url) as store:
            store.append("run-f", [RunStarted(actor="human:ada", payload={"goal": "g"})], 0)
            store.append("run-f", [RunPaused(actor="system")], 1)
        lines = [json.loads(follower.stdout.readline()) for _ in range(2)]  # type: ignore[union-attr]
        assert [(d["type"], d["position"]) for d in lines] == [
            ("run.started", 1),
            ("run.paused", 2),
        ]
    finally:
        follower.terminate()
        follower.wait(timeout=10)


def test_help_is_clear() -> None:
    code, output = invoke("--help")
    assert code == 0
    for command in ("log", "streams", "schema", "verify-log", "demo"):
        assert command in output
    code, output = invoke("log", "--help")
    assert code == 0 and "--follow" in output and "--store" in output


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["run", "abc\udcff\udcfe", "--address", "127.0.0.1:1"], "argument 2 (abc\\xff\\xfe)"),
        (
            ["approve", "{run}", "a2", "--comment", "x\udcff"],
            "argument 5 (x\\xff, after --comment)",
        ),
        (["deny", "{run}", "a2", "--reason", "é\udcff"], "argument 5 (é\\xff, after --reason)"),
        (["fork", "{run}", "--at", "18", "--note", "x\udcff"], "argument 6 (x\\xff, after --note)"),
        (["state", "run-x\udcff"], "argument 2 (run-x\\xff)"),
    ],
    ids=lambda v: v[0] if isinstance(v, list) else None,
)
def test_an_argument_that_is_not_utf8_is_a_usage_error_before_anything_runs(
    demo_url: str, capsys: pytest.CaptureFixture[str], args: list[str], words: str
) -> None:
    # Bytes that are not UTF-8 (bash: $'x\xff') reach Python as lone surrogates.
    with EventStore.open(demo_url) as store:
        [run] = [s.stream for s in store.streams()]
        head = store.head_position()
    with pytest.raises(SystemExit) as exited:
        main([*(a.format(run=run) for a in args), "--store", demo_url])
    flat = " ".join(capsys.readouterr().err.split())
    assert exited.value.code == 2, flat
    assert f"error: {words} is not valid UTF-8" in flat and "Traceback" not in flat
    with EventStore.open(demo_url) as store:
        assert store.head_position() == head and len(store.streams()) == 1
