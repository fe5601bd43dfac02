"""Forks: a new run from a position of another, continued live by the agents; the parent is
never touched; forks of forks; refusals that write nothing."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from agentledger.actors.providers import ScriptedProvider
from agentledger.actors.runtime import ENDED, follow_run, start_run
from agentledger.control import Human, decide
from agentledger.events import AgentLedgerError, EventStore, NotFound
from agentledger.fork import fork_run
from agentledger.projections import RunStateProjection, RunStatus
from agentledger.projections.diff import first_divergence

PLAN = {"reasoning": "one", "steps": [{"task_id": "t1", "goal": "write it", "role": "execution"}]}


def brain(path: str) -> Any:
    def answer(request: Any) -> str:
        if request.purpose == "plan":
            return json.dumps(PLAN)
        if request.purpose == "act":
            call = {"tool": "write_file", "arguments": {"path": path, "content": path}}
            return json.dumps({"reasoning": f"write {path}", "actions": [call]})
        return json.dumps({"accepted": True, "reasons": "ok"})

    return answer


def _state(store: EventStore, run: str) -> Any:
    return RunStateProjection().fold(store.read(run))


def test_a_fork_with_another_model_goes_its_own_way_and_the_parent_is_untouched(
    tmp_path: Path, threaded_agents: Any
) -> None:
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    providers = {
        "scripted": ScriptedProvider(brain("a.txt")),
        "other": ScriptedProvider(brain("b.txt")),
    }
    models = {r: "scripted:m" for r in ("coordinator", "research", "execution", "review")}
    with threaded_agents(url, tmp_path, providers), EventStore.open(url) as store:
        parent = start_run(store, "write it", models=models).stream
        assert follow_run(store, parent, until=ENDED, timeout=60).status is RunStatus.COMPLETED
        before = [e.model_dump_json() for e in store.read(parent)]
        assigned = next(e for e in store.read(parent) if e.type == "task.assigned")
        fork, copied = fork_run(
            store,
            parent,
            assigned.position or 0,
            by="human:ada",
            models={"execution": "other:m2"},
            note="try another executor",
        )
        state = follow_run(store, fork, until=ENDED, timeout=60)
        assert state.status is RunStatus.COMPLETED, state.outcome
        assert (state.parent_run, state.parent_position) == (parent, assigned.position)
        # The parent's log is exactly as it was.
        assert [e.model_dump_json() for e in store.read(parent)] == before
        fork_events = store.read(fork)
        assert fork_events[0].type == "run.forked" and len(copied) == 1 + len(
            [e for e in store.read(parent) if (e.position or 0) <= (assigned.position or 0)]
        )
        found = first_divergence(store.read(parent), fork_events[1:])
        assert found is not None and found.right is not None
        # They agree up to the fork point, then the executor asks another model.
        assert found.index == len(copied) - 1
        assert found.right.type == "model.requested" and found.right_view is not None
        assert found.right_view["payload"]["model"] == "m2"  # the override
        # Fork of a fork: at the fork's own completion it simply ends where its parent did.
        second, _ = fork_run(store, fork, fork_events[-1].position or 0, by="human:ada")
        assert _state(store, second).status is RunStatus.COMPLETED
        assert store.verify().ok
    workspaces = tmp_path / "workspaces"
    assert (workspaces / parent / "a.txt").exists() and (workspaces / fork / "b.txt").exists()


def test_a_fork_at_an_approval_takes_a_different_decision(
    tmp_path: Path, threaded_agents: Any
) -> None:
    from agentledger.demo import DEMO_GOAL, prepare_demo

    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    docs, workspace = prepare_demo(tmp_path)
    ada = Human("ada", ("approver",))
    with threaded_agents(url, tmp_path), EventStore.open(url) as store:
        parent = start_run(store, DEMO_GOAL, docs=docs, workspace=workspace).stream
        state = follow_run(store, parent, timeout=60)
        (pending,) = state.pending_approvals.values()
        fork, _ = fork_run(store, parent, pending.position or 0, by="human:ada")
        forked = follow_run(store, fork, timeout=60)
        assert forked.status is RunStatus.WAITING_FOR_APPROVAL  # nothing was missing: it waits
        decide(store, fork, pending.action_id, ada, grant=False, note="not in this branch")
        after = follow_run(store, fork, timeout=60)
        assert after.status is RunStatus.WAITING_FOR_APPROVAL  # replanned, asks again
        # The parent still waits for its own decision, untouched.
        assert _state(store, parent).status is RunStatus.WAITING_FOR_APPROVAL
        assert pending.action_id in _state(store, parent).pending_approvals


def test_refusals_write_nothing(tmp_path: Path, threaded_agents: Any) -> None:
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    models = {r: "scripted:m" for r in ("coordinator", "research", "execution", "review")}
    with (
        threaded_agents(url, tmp_path, {"scripted": ScriptedProvider(brain("a.txt"))}),
        EventStore.open(url) as store,
    ):
        parent = start_run(store, "write it", models=models).stream
        follow_run(store, parent, until=ENDED, timeout=60)
        events = store.read(parent)
    with EventStore.open(url) as store:
        head = store.head_position()
        with pytest.raises(NotFound, match="no run 'run-nope'"):
            fork_run(store, "run-nope", 1, by="human:ada")
        with pytest.raises(AgentLedgerError, match="outside it"):
            fork_run(store, parent, head + 10, by="human:ada")
        # Inside the coordinator's planning reaction (model.requested … task.assigned).
        inside = next(e for e in events if e.type == "model.requested")
        with pytest.raises(AgentLedgerError, match="inside one agent's reaction"):
            fork_run(store, parent, inside.position or 0, by="human:ada")
        assert store.head_position() == head
