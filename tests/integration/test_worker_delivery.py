"""What an agent's worker reads of the log: it passes over, undecoded, the events it would skip
anyway, and still sees every event of a run it has a part in."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from agentledger.actors.providers import ScriptedProvider
from agentledger.actors.runtime import (
    ENDED,
    AgentWorker,
    RuntimeConfig,
    agent_for,
    follow_run,
    start_run,
)
from agentledger.events import EventStore, Role, ScratchpadUpdated
from agentledger.projections import RunStatus

PLAN = {"reasoning": "one", "steps": [{"task_id": "t1", "goal": "note it", "role": "research"}]}


def answer(request: Any) -> str:
    if request.purpose == "plan":
        return json.dumps(PLAN)
    if request.purpose == "research":
        return json.dumps({"reasoning": "r", "answer": "noted", "sources": ["here"]})
    return json.dumps({"accepted": True, "reasons": "ok"})


def _follow(worker: AgentWorker, until: int) -> None:
    stop = threading.Event()
    thread = threading.Thread(target=worker.run, args=(stop, 0.05), daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while worker.position < until and time.monotonic() < deadline:
        time.sleep(0.02)
    stop.set()
    thread.join(timeout=10)
    assert worker.position == until


def test_a_worker_decodes_only_what_it_may_act_on(
    tmp_path: Path, threaded_agents: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    models = {r: "scripted:m" for r in ("coordinator", "research", "execution", "review")}
    with (
        threaded_agents(url, tmp_path, {"scripted": ScriptedProvider(answer)}),
        EventStore.open(url) as store,
    ):
        run = start_run(store, "note it", models=models).stream
        assert follow_run(store, run, until=ENDED, timeout=60).status is RunStatus.COMPLETED
        notes = [
            ScratchpadUpdated(actor="human:ada", payload={"key": f"k{i}", "value": "v"})
            for i in range(50)
        ]
        store.append("notes-1", notes)  # not a run: nobody's business
        head = store.head_position()
        log = list(store.read_all())

    decoded: list[int] = []
    decode_row = EventStore.decode_row

    def counting(self: EventStore, position: int | None, *row: Any) -> Any:
        decoded.append(position or 0)
        return decode_row(self, position, *row)

    monkeypatch.setattr(EventStore, "decode_row", counting)
    config = RuntimeConfig(store_url=url, workspace_root=str(tmp_path / "ws"))
    providers = {"scripted": ScriptedProvider(answer)}

    # The execution agent has no part in the run: of it, only the events of the types it
    # handles are decoded (to see whom a task is for); nothing of the stream that is no run's.
    execution = AgentWorker(agent_for(Role.EXECUTION, "2", config, providers), EventStore.open(url))
    _follow(execution, head)
    handled = execution.agent.handled_types()
    assert decoded == [e.position for e in log if e.type in handled]
    assert execution.handled == 0 and execution.status()["runs_cached"] == 0
    assert 0 < len(decoded) < len(log) - len(notes)

    # The reviewer has a part in it: once it first acts there, it reads the run whole (its
    # view is built from the log), and it reacts to nothing twice (the first reviewer did).
    decoded.clear()
    review = AgentWorker(agent_for(Role.REVIEW, "2", config, providers), EventStore.open(url))
    _follow(review, head)
    assert review.status()["runs_cached"] == 1
    assert review.handled == 0
    run_positions = [e.position for e in log if e.stream == run]
    first_handled = next(e.position for e in log if e.type in review.agent.handled_types())
    seen = set(decoded)
    assert all(p in seen for p in run_positions if p >= first_handled)
    assert not seen & {e.position for e in log if e.stream == "notes-1"}
