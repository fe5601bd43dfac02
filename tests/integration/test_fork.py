"""Forks: a new run from a position of another, continued live by the agents; the parent is
never touched; forks of forks; refusals that write nothing."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from agentledger.actors.providers import ScriptedProvider
from agentledger.actors.runtime import ENDED, follow_run, start_run
from agentledger.control import Human, decide, steer
from agentledger.events import AgentLedgerError, EventStore, NotFound, Role
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


MODELS = {r: "scripted:m" for r in ("coordinator", "research", "execution", "review")}


def writers() -> dict[str, ScriptedProvider]:
    """Two scripted providers: "scripted" writes a.txt, "other" (a fork's override) b.txt."""
    return {"scripted": ScriptedProvider(brain("a.txt")), "other": ScriptedProvider(brain("b.txt"))}


def _state(store: EventStore, run: str) -> Any:
    return RunStateProjection().fold(store.read(run))


def test_a_fork_with_another_model_goes_its_own_way_and_the_parent_is_untouched(
    tmp_path: Path, threaded_agents: Any
) -> None:
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    providers, models = writers(), MODELS
    with threaded_agents(url, tmp_path, providers), EventStore.open(url) as store:
        parent = start_run(store, "write it", models=models).stream
        assert follow_run(store, parent, until=ENDED, timeout=60).status is RunStatus.COMPLETED
        before = [e.model_dump_json() for e in store.read(parent)]
        assigned = next(e for e in store.read(parent) if e.type == "task.assigned")
        fork, forked = fork_run(
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
        prefix = [e for e in store.read(parent) if (e.position or 0) <= (assigned.position or 0)]
        # The fork references the parent's prefix: it stored one event for it, and reads it
        # back as its versions 2.. with the parent's ids and hashes, at the fork's position.
        assert fork_events[0] == forked and forked.payload.prefix_version == len(prefix)
        inherited = fork_events[1 : len(prefix) + 1]
        assert [(e.id, e.hash) for e in inherited] == [(e.id, e.hash) for e in prefix]
        assert [e.version for e in inherited] == list(range(2, len(prefix) + 2))
        assert {e.stream for e in inherited} == {fork}
        assert {e.position for e in inherited} == {forked.position}
        assert [r.originator_version for r in store.backend.select_stream(fork, 0, 1)] == [1]
        own = fork_events[len(prefix) + 1 :]
        assert forked.prev_hash == prefix[-1].hash  # the chain goes on from the parent's
        assert own[0].version == len(prefix) + 2 and own[0].prev_hash == forked.hash
        found = first_divergence(store.read(parent), fork_events[1:])
        assert found is not None and found.right is not None
        # They agree up to the fork point, then the executor asks another model.
        assert found.index == len(prefix)
        assert found.right.type == "model.requested" and found.right_view is not None
        assert found.right_view["payload"]["model"] == "m2"  # the override
        # Fork of a fork: at the fork's own completion it simply ends where its parent did.
        second, _ = fork_run(store, fork, fork_events[-1].position or 0, by="human:ada")
        assert _state(store, second).status is RunStatus.COMPLETED
        assert store.verify().ok
    workspaces = tmp_path / "workspaces"
    assert (workspaces / parent / "a.txt").exists() and (workspaces / fork / "b.txt").exists()


def test_a_fork_works_in_a_copy_of_its_parents_workspace(
    tmp_path: Path, threaded_agents: Any
) -> None:
    # The parent was given a workspace of the user's; a fork of it must not change it: the
    # fork works in its own copy, made when its agents first need one.
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.md").write_text("the user's")
    providers, models = writers(), MODELS
    with threaded_agents(url, tmp_path, providers), EventStore.open(url) as store:
        parent = start_run(store, "write it", models=models, workspace=mine).stream
        assert follow_run(store, parent, until=ENDED, timeout=60).status is RunStatus.COMPLETED
        assigned = next(e for e in store.read(parent) if e.type == "task.assigned")
        fork, _ = fork_run(
            store, parent, assigned.position or 0, by="human:ada", models={"execution": "other:m"}
        )
        assert follow_run(store, fork, until=ENDED, timeout=60).status is RunStatus.COMPLETED
    assert sorted(p.name for p in mine.iterdir()) == ["a.txt", "notes.md"]
    copy = tmp_path / "workspaces" / fork
    assert sorted(p.name for p in copy.iterdir() if p.name != ".git") == [
        "a.txt",
        "b.txt",
        "notes.md",
    ]
    assert (copy / "notes.md").read_text() == "the user's"
    assert not list((tmp_path / "workspaces").glob(".*.partial"))


def test_a_fork_of_a_fork_that_never_acted_copies_the_nearest_workspace(
    tmp_path: Path, threaded_agents: Any
) -> None:
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    providers, models = writers(), MODELS
    with threaded_agents(url, tmp_path, providers), EventStore.open(url) as store:
        parent = start_run(store, "write it", models=models).stream
        assert follow_run(store, parent, until=ENDED, timeout=60).status is RunStatus.COMPLETED
    with EventStore.open(url) as store:  # no agents: the first fork never acts
        assigned = next(e for e in store.read(parent) if e.type == "task.assigned")
        first, forked = fork_run(store, parent, assigned.position or 0, by="human:ada")
        steer(store, first, Human("ada", ("approver",)), "cancel", "not this one")
        second, _ = fork_run(
            store, first, forked.position or 0, by="human:ada", models={"execution": "other:m"}
        )
    with threaded_agents(url, tmp_path, providers), EventStore.open(url) as store:
        assert follow_run(store, second, until=ENDED, timeout=60).status is RunStatus.COMPLETED
    workspaces = tmp_path / "workspaces"
    assert not (workspaces / first).exists()
    assert {p.name for p in (workspaces / second).iterdir()} >= {"a.txt", "b.txt"}


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
        after = follow_run(store, fork, until=ENDED, timeout=60)
        # Replanned; the same call is not asked again in the fork, which fails.
        assert after.status is RunStatus.FAILED and "not in this branch" in after.outcome
        # The parent still waits for its own decision, untouched.
        assert _state(store, parent).status is RunStatus.WAITING_FOR_APPROVAL
        assert pending.action_id in _state(store, parent).pending_approvals


def test_refusals_write_nothing(tmp_path: Path, threaded_agents: Any) -> None:
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    models = MODELS
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


def test_an_agent_that_dies_taking_up_a_fork_neither_repeats_nor_loses_a_reaction(
    tmp_path: Path, threaded_agents: Any
) -> None:
    from collections import Counter

    from agentledger.actors.runtime import RuntimeConfig, workers_for
    from agentledger.actors.verify import verify_run
    from agentledger.events import Role

    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    providers = {"scripted": ScriptedProvider(brain("a.txt"))}
    models = MODELS
    with threaded_agents(url, tmp_path, providers), EventStore.open(url) as store:
        parent = start_run(store, "write it", models=models).stream
        assert follow_run(store, parent, until=ENDED, timeout=60).status is RunStatus.COMPLETED
    with EventStore.open(url) as store:
        assigned = next(e for e in store.read(parent) if e.type == "task.assigned")
        fork, forked = fork_run(store, parent, assigned.position or 0, by="human:ada")
        config = RuntimeConfig(
            store_url=url,
            workspace_root=str(tmp_path / "workspaces"),
            memory_dir=str(tmp_path / "memory"),
        )

        def executor() -> Any:
            (worker,) = (
                w for w in workers_for(config, providers) if w.agent.role is Role.EXECUTION
            )
            return worker

        first = executor()
        first.deliver(forked)  # reacts to the inherited task.assigned; then "dies" untracked
        reacted = store.read(fork)[forked.payload.prefix_version + 1 :]
        assert reacted and {e.causation_id for e in reacted} == {assigned.id}
        assert store.position_of(first.consumer) < (forked.position or 0)
        again = executor()  # a new process: run.forked is delivered again
        again.deliver(forked)
        assert store.read(fork)[forked.payload.prefix_version + 1 :] == reacted
    with threaded_agents(url, tmp_path, providers), EventStore.open(url) as store:
        state = follow_run(store, fork, until=ENDED, timeout=60)
        assert state.status is RunStatus.COMPLETED, state.outcome
        executed = Counter(
            e.payload.action_id for e in store.read(fork) if e.type == "action.executed"
        )
        assert executed and set(executed.values()) == {1}
        assert verify_run(store, fork).ok
        assert store.verify().ok


def test_a_request_a_fork_inherits_expires_in_the_fork_too(
    tmp_path: Path, threaded_agents: Any, background: Any
) -> None:
    from agentledger.actors.runtime import ExpiryWatcher
    from agentledger.demo import DEMO_GOAL, prepare_demo

    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    docs, workspace = prepare_demo(tmp_path)
    with threaded_agents(url, tmp_path, approval_ttl_s=2.0), EventStore.open(url) as store:
        parent = start_run(store, DEMO_GOAL, docs=docs, workspace=workspace).stream
        (pending,) = follow_run(store, parent, timeout=60).pending_approvals.values()
    with EventStore.open(url) as store:
        fork, _ = fork_run(store, parent, pending.position or 0, by="human:ada")
        watcher = ExpiryWatcher(EventStore.open(url))
        with background(watcher.run) as running:
            running.until(lambda: watcher.expired >= 2)
        for run in (parent, fork):
            (expired,) = [e for e in store.read(run) if e.type == "approval.expired"]
            assert expired.payload.action_id == pending.action_id
            assert expired.actor == "system:expiry"
        assert _state(store, fork).pending_approvals == {}
        assert store.verify().ok


class _Died(BaseException):
    """The process died while the tool ran."""


class _Executor:
    """A minimal execution agent: on a grant it marks the action begun (an empty flush, as
    ExecutionAgent does before a high-risk tool) and then, if told to, dies."""

    role = Role.EXECUTION
    principal = "agent:execution/e1"

    class settings:
        tools: dict[str, Any] = {}

    def __init__(self, *, dies: bool) -> None:
        self.dies, self.handled, self.recovered = dies, [], []  # type: ignore[var-annotated]

    def handled_types(self) -> frozenset[str]:
        return frozenset({"approval.granted"})

    def cares(self, event: Any) -> bool:
        return True

    def handle(self, event: Any, view: Any, flush: Any) -> list[Any]:
        self.handled.append(event.id)
        flush([])
        if self.dies:
            raise _Died
        return []

    def recover(self, cause: Any, view: Any, flush: Any) -> list[Any]:
        self.recovered.append((cause.stream, cause.type))
        return []


def test_an_approved_action_begun_in_a_fork_is_recovered_after_a_crash_not_repeated(
    tmp_path: Path,
) -> None:
    from agentledger.actors.runtime import AgentWorker, take_up_consumer
    from agentledger.events import (
        ActionProposed,
        ApprovalGranted,
        ApprovalRequested,
        RunStarted,
        TaskAssigned,
    )

    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    digest = "b" * 64
    with EventStore.open(url) as store:
        started = RunStarted(actor="human:ada", payload={"goal": "g"})
        assigned = TaskAssigned(
            actor="agent:coordinator/c1", payload={"task_id": "t1", "role": "execution"}
        )
        _, assigned = store.append("run-p", [started, assigned])
        action = {"action_id": "a1", "tool": "shell"}
        proposed = ActionProposed(
            actor="agent:execution/e1",
            payload={**action, "task_id": "t1", "arguments": {}, "idempotency_key": "k1"},
            **assigned.caused_by(assigned),
        )
        request = ApprovalRequested(
            actor="agent:execution/e1",
            payload={**action, "action_hash": digest, "risk": "high"},
            **assigned.caused_by(assigned),
        )
        _, request = store.append("run-p", [proposed, request])
        [grant] = store.append(
            "run-p",
            [
                ApprovalGranted(
                    actor="human:ada",
                    payload={"action_id": "a1", "action_hash": digest},
                    **request.caused_by(request),
                )
            ],
        )
        fork, forked = fork_run(store, "run-p", grant.position or 0, by="human:ada")
        store.record_position("agent:execution/e1", (forked.position or 0) - 1)
        dying = _Executor(dies=True)
        with pytest.raises(_Died):
            AgentWorker(dying, EventStore.open(url)).deliver(forked)  # type: ignore[arg-type]
        # The mark that the action began, under the take-up's own consumer.
        assert store.position_of(take_up_consumer("agent:execution/e1", fork)) == 6
        restarted = _Executor(dies=False)
        worker = AgentWorker(restarted, EventStore.open(url))  # type: ignore[arg-type]
        worker.position = store.position_of(worker.consumer)
        assert worker.recover() == 1 and restarted.recovered == [(fork, "approval.granted")]
        worker.deliver(forked)  # delivered again: the grant is not handled a second time
        assert restarted.handled == [] and dying.handled == [grant.id]
