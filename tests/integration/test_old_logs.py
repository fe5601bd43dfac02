"""Logs written under older event schemas stay readable forever (DESIGN rule 4)."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path
from typing import Any

from agentledger.events import EventStore, ModelResponded, RunCompleted, RunStarted

FIXTURES = Path(__file__).parent.parent / "fixtures"
FIXTURE = FIXTURES / "ledger-schema-v1.db"


def _rows(store: EventStore) -> list[tuple[int, str, bytes]]:
    return [(n.id, n.topic, n.state) for n in store.read_stored()]


def test_schema_v1_log_reads_as_current_events(tmp_path: Path) -> None:
    copy = tmp_path / "old.db"
    shutil.copy(FIXTURE, copy)
    with EventStore.open(f"sqlite:///{copy}") as store:
        before = _rows(store)
        events = list(store.read_all())
        assert [e.type for e in events] == [
            "run.started",
            "model.requested",
            "model.responded",
            "run.completed",
        ]
        started, _, responded, completed = events
        assert isinstance(started, RunStarted)
        assert started.schema_version == RunStarted.current_schema_version == 3
        assert started.payload.goal == "Summarize the Q1 incident reports"
        assert started.payload.user == "anonymous"  # added by the v1 -> v2 upcaster
        assert isinstance(responded, ModelResponded)
        assert responded.payload.content == "3 incidents: INC-1, INC-2, INC-3"
        assert responded.payload.output_tokens == 9
        assert isinstance(completed, RunCompleted)
        assert [e.position for e in events] == [1, 2, 3, 4]
        # Upcasting happens on read only: the stored rows and their hash chain are untouched.
        assert store.verify().ok
        assert _rows(store) == before


def test_current_code_appends_to_an_old_log(tmp_path: Path) -> None:
    copy = tmp_path / "old.db"
    shutil.copy(FIXTURE, copy)
    with EventStore.open(f"sqlite:///{copy}") as store:
        stream = store.streams()[0].stream
        old_head = store.read(stream)[-1]
        [new] = store.append(
            stream, [RunCompleted(actor="system", payload={"summary": "re-closed"})], 4
        )
        assert new.version == 5 and new.prev_hash == old_head.hash
        assert store.verify().ok


def test_fixture_file_is_unchanged() -> None:
    # An old log is evidence of what older versions wrote: it must never be regenerated or
    # opened in place (opening would checkpoint its WAL). Tests work on copies.
    digest = hashlib.sha256(FIXTURE.read_bytes()).hexdigest()
    assert digest == "3f759c08aadfd5d0056d90665deb1f30a6001e9e4f831030cdd228e42f620212"


def test_a_run_started_under_schema_v1_is_continued_by_the_current_agents(
    tmp_path: Path, threaded_agents: Any
) -> None:
    """State-schema migration: the v1 run.started is upcast on read and today's agents plan,
    do and review it to the end, appending current events after the old ones."""
    from agentledger.actors.runtime import ENDED, follow_run

    ledger = tmp_path / "ledger.db"
    shutil.copy(FIXTURES / "ledger-schema-v1-open-run.db", ledger)
    url = f"sqlite:///{ledger}"
    run = "run-7c1e9a52-30d4-4b8e-9a61-2f5d0c3b7e11"
    with threaded_agents(url, tmp_path), EventStore.open(url) as store:
        state = follow_run(store, run, until=ENDED, timeout=60)
        events = store.read(run)
        report = store.verify()
    assert state.status.value == "completed", state.outcome
    assert events[0].schema_version == RunStarted.current_schema_version  # upcast on read
    assert (tmp_path / "workspaces" / run / "q1.md").exists()
    assert report.ok  # the old row's hash and the new rows chain on from it
