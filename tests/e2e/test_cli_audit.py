"""`agentledger audit …` end to end: keygen, export, verify and report on a real SQLite log."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from agentledger.cli import app
from agentledger.events import (
    ActionExecuted,
    ApprovalGranted,
    ApprovalRequested,
    EventStore,
    RunCancelled,
)
from agentledger.sample import write_sample_run

runner = CliRunner()


def invoke(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, list(args), env={"COLUMNS": "200"})
    return result.exit_code, result.output


@pytest.fixture
def run_url(sqlite_url: str) -> tuple[str, str]:
    """The sample run, with its high-risk action approved by a human and executed."""
    with EventStore.open(sqlite_url) as store:
        run, events = write_sample_run(store)
        request = next(e for e in events if isinstance(e, ApprovalRequested))
        granted = store.append(
            run,
            [
                ApprovalGranted(
                    actor="human:alice",
                    **request.caused_by(request),
                    payload={
                        "action_id": "a2",
                        "action_hash": request.payload.action_hash,
                        "comment": "retention confirmed with legal",
                    },
                )
            ],
        )[0]
        store.append(
            run,
            [
                ActionExecuted(
                    actor="agent:execution/e1",
                    **granted.caused_by(granted),
                    payload={"action_id": "a2", "result": {"deleted": 1284}},
                )
            ],
        )
    return run, sqlite_url


def test_keygen_export_and_verify_round_trip(run_url: tuple[str, str], tmp_path: Path) -> None:
    run, url = run_url
    private, public = tmp_path / "k.pem", tmp_path / "k.pub.pem"
    code, output = invoke("audit", "keygen", "--private", str(private), "--public", str(public))
    assert code == 0, output
    assert private.stat().st_mode & 0o077 == 0
    umask = os.umask(0)
    os.umask(umask)
    assert public.stat().st_mode & 0o777 == 0o666 & ~umask  # a public key is for others
    code, output = invoke("audit", "keygen", "--private", str(private), "--public", str(public))
    assert code == 1 and "exists" in output

    out = tmp_path / "run.jsonl"
    code, output = invoke(
        "audit", "export", run, "--out", str(out), "--key", str(private), "--store", url
    )
    assert code == 0, output
    assert "exported 20 events" in output and "signed" in output
    code, output = invoke("audit", "verify", str(out), "--pubkey", str(public))
    assert code == 0, output
    assert "ok" in output and "signature verified" in output

    # An edited event is named by its line; a wrong key is refused.
    lines = out.read_text().splitlines()
    assert json.loads(lines[2])["state"]["payload"]["task_id"] == "t2"
    lines[2] = lines[2].replace("four distinct steps", "five distinct steps")
    forged = tmp_path / "forged.jsonl"
    forged.write_text("\n".join(lines) + "\n")
    code, output = invoke("audit", "verify", str(forged))
    assert code == 1
    assert "TAMPERED" in output and "line 3" in output and "edited" in output

    other, other_pub = tmp_path / "o.pem", tmp_path / "o.pub.pem"
    assert invoke("audit", "keygen", "--private", str(other), "--public", str(other_pub))[0] == 0
    code, output = invoke("audit", "verify", str(out), "--pubkey", str(other_pub))
    assert code == 1 and "signature does not verify" in output


def test_export_records_the_os_account_as_approve_does(
    run_url: tuple[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # With no $USER it was human:anonymous (run and fork took their user the same way).
    import getpass

    monkeypatch.delenv("USER", raising=False)
    run, url = run_url
    out = tmp_path / "run.jsonl"
    code, output = invoke("audit", "export", run, "--out", str(out), "--store", url)
    assert code == 0, output
    manifest = json.loads(out.read_text().splitlines()[-1])["manifest"]
    assert manifest["exporter"] == f"human:{getpass.getuser()}" != "human:anonymous"
    code, output = invoke(
        "audit", "export", run, "--out", str(out), "--as", "ada", "--force", "--store", url
    )
    assert code == 0, output
    assert json.loads(out.read_text().splitlines()[-1])["manifest"]["exporter"] == "human:ada"


def test_bad_input_gets_a_clear_message_and_writes_nothing(
    run_url: tuple[str, str], tmp_path: Path
) -> None:
    run, url = run_url
    out = tmp_path / "x.jsonl"
    code, output = invoke("audit", "export", "run-nope", "--out", str(out), "--store", url)
    assert code == 1 and "run-nope" in output
    code, output = invoke("audit", "report", "run-nope", "--store", url)
    assert code == 1 and "run-nope" in output
    not_a_key = tmp_path / "key.pem"
    not_a_key.write_text("not a key")
    code, output = invoke(
        "audit", "export", run, "--out", str(out), "--key", str(not_a_key), "--store", url
    )
    assert code == 1 and "not a PEM" in output
    # Nothing written but the store's own files (the log, and the file its appends touch).
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "key.pem",
        "ledger.db",
        "ledger.db-notify",
    ]

    code, output = invoke("audit", "verify", str(tmp_path / "missing.jsonl"))
    assert code == 1 and "missing.jsonl" in output
    junk = tmp_path / "junk.jsonl"
    junk.write_text("this is not json\n")
    code, output = invoke("audit", "verify", str(junk))
    assert code == 1 and "line 1" in output and "not valid JSON" in output
    assert "NOT AN EXPORT" in output and "TAMPERED" not in output
    # `log --json` lines are events, but not an export's: said so, not called tampered.
    code, output = invoke("log", run, "--json", "--store", url)
    junk.write_text(output)
    code, output = invoke("audit", "verify", str(junk))
    flat = " ".join(output.split())
    assert code == 1 and "NOT AN EXPORT" in flat and "line 1: neither an event line" in flat
    assert "this is not an audit export (`agentledger audit export RUN --out FILE`" in flat

    # A truncated export: the manifest is gone.
    assert invoke("audit", "export", run, "--out", str(out), "--store", url)[0] == 0
    lines = out.read_text().splitlines(keepends=True)
    edited = lines[0].replace('"goal":"', '"goal":"edited ', 1)
    assert edited != lines[0]
    junk.write_text("".join([edited, *lines[1:]]))
    code, output = invoke("audit", "verify", str(junk))  # an export's first line, edited
    assert code == 1 and "TAMPERED" in output and "line 1" in output and "edited" in output
    out.write_text("".join(out.read_text().splitlines(keepends=True)[:7]))
    code, output = invoke("audit", "verify", str(out))
    assert code == 1 and "line 8" in output and "manifest is missing" in output


def test_report_of_a_run_cancelled_while_an_action_waited(sqlite_url: str) -> None:
    with EventStore.open(sqlite_url) as store:
        run, _ = write_sample_run(store)  # a2 waits for approval
        store.append(run, [RunCancelled(actor="human:alice", payload={"reason": "not now"})])
    code, output = invoke("audit", "report", run, "--store", sqlite_url)
    assert code == 0, output
    a2 = output[output.index("#### Action a2") :]
    assert "requested; never decided (the run ended first)" in a2
    assert "did not run (the run ended)" in a2
    assert "waiting" not in a2 and "(yet)" not in a2
    assert "**cancelled**" in output and "waiting for approval of" not in output


def test_report_names_proposer_reasoning_risk_and_approver(
    run_url: tuple[str, str], tmp_path: Path
) -> None:
    run, url = run_url
    code, output = invoke("audit", "report", run, "--store", url)
    assert code == 0, output
    assert f"## Run `{run}`" in output
    assert "Clean up stale customer records" in output and "`human:demo`" in output
    assert "four distinct steps, so the goal is decomposed" in output  # the plan's reasoning
    assert "#### Action a1: `sql.query`" in output
    assert "auto-approved (low risk)" in output
    assert "#### Action a2: `sql.execute`" in output
    assert "**Proposed by:** `agent:execution/e1`" in output
    assert "1284 records are past the 2-year retention of policy DP-7" in output
    assert "**Risk:** high — rule: deleting user data is high risk" in output
    assert "approved by `human:alice` — “retention confirmed with legal”" in output
    assert 'ran: `{"deleted": 1284}`' in output

    report = tmp_path / "audit.md"
    code, output = invoke("audit", "report", run, "--out", str(report), "--store", url)
    assert code == 0 and str(report) in output.replace("\n", "")
    text = report.read_text()
    assert "approved by `human:alice`" in text
    # Deterministic: the same events give the same text.
    assert invoke("audit", "report", run, "--out", str(report), "--store", url, "--force")[0] == 0
    assert report.read_text() == text


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _flat(output: str) -> str:
    return " ".join(output.split())  # the console wraps long messages


def test_export_and_report_never_write_over_the_store(
    run_url: tuple[str, str], tmp_path: Path
) -> None:
    run, url = run_url
    store = tmp_path / "ledger.db"
    (tmp_path / "sub").mkdir()
    before, files = _sha256(store), sorted(tmp_path.iterdir())
    # The file itself, another spelling of it, and a sidecar SQLite keeps beside it; --force
    # does not make any of them a place to write.
    for target in (store, tmp_path / "sub" / ".." / "ledger.db", tmp_path / "ledger.db-wal"):
        for force in ([], ["--force"]):
            for command in (["export", run], ["report", run]):
                args = ["audit", *command, "--out", str(target), "--store", url, *force]
                code, output = invoke(*args)
                assert code == 1, (args, output)
                assert str(target) in _flat(output) and "--force does not apply" in _flat(output)
                assert "Traceback" not in output
    assert _sha256(store) == before
    assert sorted(tmp_path.iterdir()) == files  # nothing written, no temp file left
    code, output = invoke("runs", "--store", url)
    assert code == 0 and run in output


def test_export_never_writes_over_its_signing_key(run_url: tuple[str, str], tmp_path: Path) -> None:
    run, url = run_url
    private, public = tmp_path / "k.pem", tmp_path / "k.pub.pem"
    assert invoke("audit", "keygen", "--private", str(private), "--public", str(public))[0] == 0
    key = _sha256(private)
    for force in ([], ["--force"]):
        args = ["audit", "export", run, "--out", str(private), "--key", str(private), *force]
        code, output = invoke(*args, "--store", url)
        assert code == 1, output
        assert str(private) in _flat(output) and "signing key" in _flat(output)
    assert _sha256(private) == key
    # The key still signs, and the export verifies with its public half.
    out = tmp_path / "run.jsonl"
    code, output = invoke(
        "audit", "export", run, "--out", str(out), "--key", str(private), "--store", url
    )
    assert code == 0, output
    assert invoke("audit", "verify", str(out), "--pubkey", str(public))[0] == 0


def test_an_existing_out_file_is_replaced_only_with_force(
    run_url: tuple[str, str], tmp_path: Path
) -> None:
    run, url = run_url
    for command, name in ((["export", run], "run.jsonl"), (["report", run], "report.md")):
        out = tmp_path / name
        out.write_text("someone's notes\n")
        code, output = invoke("audit", *command, "--out", str(out), "--store", url)
        assert code == 1, output
        assert f"{out} exists" in _flat(output) and "pass --force to replace it" in _flat(output)
        assert out.read_text() == "someone's notes\n"
        code, output = invoke("audit", *command, "--out", str(out), "--store", url, "--force")
        assert code == 0, output
        assert out.read_text() != "someone's notes\n"
    assert invoke("audit", "verify", str(tmp_path / "run.jsonl"))[0] == 0
    assert f"## Run `{run}`" in (tmp_path / "report.md").read_text()
    for command in ("export", "report"):
        assert "--force" in invoke("audit", command, "--help")[1]


def test_keygen_refuses_one_file_for_both_keys(tmp_path: Path) -> None:
    key = tmp_path / "k.pem"
    (tmp_path / "sub").mkdir()
    for public in (key, tmp_path / "sub" / ".." / "k.pem"):
        code, output = invoke("audit", "keygen", "--private", str(key), "--public", str(public))
        assert code == 1, output
        assert f"--private and --public both name {key}" in _flat(output)
        assert [p.name for p in tmp_path.iterdir()] == ["sub"]  # refused before any write
