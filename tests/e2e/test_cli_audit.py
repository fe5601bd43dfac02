"""`agentledger audit …` end to end: keygen, export, verify and report on a real SQLite log."""

from __future__ import annotations

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
    assert invoke("audit", "report", run, "--out", str(report), "--store", url)[0] == 0
    assert report.read_text() == text
