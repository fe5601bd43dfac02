"""The number of replicas of a role changes between restarts (``[runtime] replicas``): a run may
then fall to another replica than the one that followed it. Nothing its previous replica left
undone is lost, and a high-risk call that replica began is not run again without a human.

Agents run in threads of this process (the runtime's code without Ray); the store, the tools
and the offline model are real. A replica "killed" here raises a ``BaseException`` out of its
worker at the point a ``kill -9`` would stop it: nothing after that point is written (its
lease is released, as the operating system releases a dead process's).
"""

from __future__ import annotations

import hashlib
import itertools
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from agentledger.actors.models import ModelProvider, ModelReply, ModelRequest
from agentledger.actors.runtime import (
    ENDED,
    AgentWorker,
    RuntimeConfig,
    agent_for,
    follow_run,
    replicas_tracked,
    share_consumer,
)
from agentledger.actors.verify import verify_run
from agentledger.control import Human, decide
from agentledger.demo import DEMO_GOAL, prepare_demo
from agentledger.events import EventStore, Role, RunStarted
from agentledger.projections import RunStateProjection, RunStatus


class Killed(BaseException):
    """The agent's process dies here (not an error a handler turns into an event)."""


class Dying:
    """A model provider whose process dies during the call (a long model call cut short)."""

    name = "offline"

    def __init__(self) -> None:
        self.called = threading.Event()

    def complete(self, request: ModelRequest) -> ModelReply:
        self.called.set()
        raise Killed


class Agents:
    """The four roles' workers in threads, ``execution`` of them for the execution role, each
    with its partition of the runs as the runtime gives it (``replicas = {execution = N}``)."""

    def __init__(
        self,
        url: str,
        root: Path,
        execution: int,
        providers: Callable[[Role, int], Mapping[str, ModelProvider] | None] = lambda r, n: None,
    ) -> None:
        self.config = RuntimeConfig(
            store_url=url,
            workspace_root=str(root / "workspaces"),
            memory_dir=str(root / "memory"),
            replicas={"execution": execution},
        )
        self.workers: list[AgentWorker] = []
        for role in Role:
            count = self.config.replicas_of(role)
            for index in range(count):
                agent = agent_for(role, str(index + 1), self.config, providers(role, index + 1))
                store = EventStore.open(url)
                self.workers.append(AgentWorker(agent, store, partition=(index, count)))
        self.stop = threading.Event()
        self.killed: list[str] = []
        self.threads = [threading.Thread(target=self._run, args=(w,)) for w in self.workers]

    def _run(self, worker: AgentWorker) -> None:
        try:
            worker.run(self.stop, poll_timeout=0.1)
        except Killed:
            self.killed.append(worker.consumer)

    def worker(self, consumer: str) -> AgentWorker:
        (found,) = [w for w in self.workers if w.consumer == consumer]
        return found

    def __enter__(self) -> Agents:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=30)
        for worker in self.workers:
            worker.store.close()


def _replica_of(stream: str, count: int) -> int:
    """The replica (from 1) that runs ``stream`` among ``count`` (as ``AgentWorker._mine``)."""
    return int.from_bytes(hashlib.sha256(stream.encode()).digest()[:8], "big") % count + 1


def _start(
    store: EventStore,
    goal: str,
    replica: int,
    count: int,
    *,
    later: tuple[int, int] | None = None,
    **payload: Any,
) -> str:
    """Start a run that replica ``replica`` of ``count`` runs (and, ``later``, replica
    ``later[0]`` of ``later[1]``)."""
    for n in itertools.count():
        stream = f"run-replicas-{n}"
        if (
            _replica_of(stream, count) == replica
            and (later is None or _replica_of(stream, later[1]) == later[0])
            and not store.stream_version(stream)
        ):
            break
    started = RunStarted(actor="human:ada", payload={"goal": goal, "user": "ada", **payload})
    store.append(stream, [started], expected_version=0)
    return stream


def _until(condition: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"not reached: {what}"
        time.sleep(0.05)


@pytest.fixture
def url(tmp_path: Path) -> Iterator[str]:
    yield f"sqlite:///{tmp_path / 'ledger.db'}"


def test_fewer_replicas_take_up_what_a_replica_stopped_behind_on(url: str, tmp_path: Path) -> None:
    # Two executors; the second dies during the model call on its run's assignment while the
    # first goes on past it. Restarted with one executor, the first must handle that
    # assignment though its own position is past it (before: the run stayed "running").
    (tmp_path / "ws").mkdir()
    dying = Dying()

    def providers(role: Role, n: int) -> Mapping[str, ModelProvider] | None:
        return {"offline": dying} if role is Role.EXECUTION and n == 2 else None

    with EventStore.open(url) as store:
        behind = _start(store, "write s2 to s2.md", 2, 2, workspace=str(tmp_path / "ws"))
        with Agents(url, tmp_path, execution=2, providers=providers) as agents:
            _until(lambda: agents.killed == ["agent:execution/2"], "execution/2 dies")
            ahead = _start(store, "write s1 to s1.md", 1, 2, workspace=str(tmp_path / "ws"))
            state = follow_run(store, ahead, until=ENDED, timeout=60)
            assert state.status is RunStatus.COMPLETED, state.outcome
            last = store.head_position()
            _until(lambda: store.position_of("agent:execution/1") >= last, "execution/1 goes on")
        (assigned,) = [e for e in store.read(behind) if e.type == "task.assigned"]
        assert (
            store.position_of("agent:execution/2")
            < (assigned.position or 0)
            < store.position_of("agent:execution/1")
        )
        assert RunStateProjection().fold(store.read(behind)).status is RunStatus.RUNNING

        with Agents(url, tmp_path, execution=1) as agents:
            state = follow_run(store, behind, until=ENDED, timeout=60)
            assert state.status is RunStatus.COMPLETED, state.outcome
            # The retired replica's position is lifted once the one left has passed it: the
            # next start does not read the log again from there.
            last = store.head_position()
            _until(lambda: store.position_of("agent:execution/2") >= last, "execution/2 lifted")
            # And lifted again as the one left goes on (here: when it stops), not left at
            # the first lift for every later start to read the log again from there.
            more = _start(store, "write s3 to s3.md", 1, 1, workspace=str(tmp_path / "ws"))
            state = follow_run(store, more, until=ENDED, timeout=60)
            assert state.status is RunStatus.COMPLETED, state.outcome
            end = store.head_position()
            first = agents.worker("agent:execution/1")
            _until(lambda: first.position >= end, "execution/1 reads to the end")
        assert store.position_of("agent:execution/2") >= end > last
        assert (tmp_path / "ws" / "s2.md").exists()
        events = store.read(behind)
        executors = {e.actor for e in events if e.actor.startswith("agent:execution/")}
        assert executors == {"agent:execution/1"}
        assert [e.type for e in events].count("task.assigned") == 1
        for run in (behind, ahead):
            report = verify_run(store, run)
            assert report.ok, report.divergence


def test_fewer_replicas_lift_a_retired_one_once_every_one_left_passed_it(
    url: str, tmp_path: Path
) -> None:
    # Three executors; the third dies during the model call on its run's assignment while the
    # others go on past it. Restarted with two, the run falls to the second one. The third's
    # position must be lifted once both have passed it (before: never, so every later start,
    # and verify, went back to it), and not before: the first one passing it, or the second's
    # own position (ahead of it from the three), says nothing of the run the second took over.
    (tmp_path / "ws").mkdir()
    dying = Dying()

    def providers(role: Role, n: int) -> Mapping[str, ModelProvider] | None:
        return {"offline": dying} if role is Role.EXECUTION and n == 3 else None

    with EventStore.open(url) as store:
        behind = _start(
            store, "write s3 to s3.md", 3, 3, later=(2, 2), workspace=str(tmp_path / "ws")
        )
        with Agents(url, tmp_path, execution=3, providers=providers) as agents:
            _until(lambda: agents.killed == ["agent:execution/3"], "execution/3 dies")
            ahead = _start(store, "write s1 to s1.md", 1, 3, workspace=str(tmp_path / "ws"))
            state = follow_run(store, ahead, until=ENDED, timeout=60)
            assert state.status is RunStatus.COMPLETED, state.outcome
            last = store.head_position()
            for n in (1, 2):
                _until(
                    lambda n=n: store.position_of(f"agent:execution/{n}") >= last,
                    f"execution/{n} goes on",
                )
        (assigned,) = [e for e in store.read(behind) if e.type == "task.assigned"]
        retired = store.position_of("agent:execution/3")
        assert retired < (assigned.position or 0) < store.position_of("agent:execution/2")

        # The second executor stands by (its lease held, as by a process still running), so
        # the run waits; the first passes the assignment: no lift.
        held = store.lease("agent:execution/2")
        assert held is not None
        with Agents(url, tmp_path, execution=2) as agents:
            first = agents.worker("agent:execution/1")
            _until(lambda: first.position > (assigned.position or 0), "execution/1 passes it")
            time.sleep(5)  # more than two looks at whether it can lift (every 2 s)
            assert store.position_of("agent:execution/3") == retired
            assert RunStateProjection().fold(store.read(behind)).status is RunStatus.RUNNING

            held.release()  # the second takes over, handles the run, passes the assignment
            state = follow_run(store, behind, until=ENDED, timeout=60)
            assert state.status is RunStatus.COMPLETED, state.outcome
            _until(
                lambda: store.position_of("agent:execution/3") > (assigned.position or 0),
                "execution/3 lifted",
            )
            assert store.position_of("agent:execution/3") <= min(
                store.position_of(share_consumer(f"agent:execution/{n}", 2)) for n in (1, 2)
            )
        # The next start (and verify) no longer go back to where the third stopped.
        assert min(replicas_tracked(store, Role.EXECUTION).values()) > (assigned.position or 0)
        assert (tmp_path / "ws" / "s3.md").exists()
        events = store.read(behind)
        executors = {e.actor for e in events if e.actor.startswith("agent:execution/")}
        assert executors == {"agent:execution/2"}
        types = [e.type for e in events]
        assert types.count("task.assigned") == types.count("task.completed") == 1
        for run in (behind, ahead):
            report = verify_run(store, run)
            assert report.ok, report.divergence
            assert not any("not handled" in note for note in report.notes), report.notes


def test_more_replicas_do_not_run_again_a_high_risk_call_another_one_began(
    url: str, tmp_path: Path
) -> None:
    # One executor runs an approved high-risk call (the demo's delete) and dies while it runs.
    # Restarted with two executors, the run falls to the second one, whose own position says
    # nothing: it must still find the call began (outcome unknown, a human asked), not run it
    # again on the grant (before: the file was deleted a second time with nobody asked).
    docs, workspace = prepare_demo(tmp_path)
    calls: list[str] = []

    def count_deletes(worker: AgentWorker, *, die: bool) -> None:
        tools = worker.agent.settings.tools
        execute = tools.execute

        def execute_or_die(name: str, arguments: Any, ctx: Any) -> Any:
            if name == "delete_file":
                calls.append(worker.consumer)
                if die:
                    raise Killed
            return execute(name, arguments, ctx)

        tools.execute = execute_or_die  # type: ignore[method-assign]

    with EventStore.open(url) as store:
        run = _start(
            store, DEMO_GOAL, 2, 2, workspace=str(workspace.resolve()), docs=str(docs.resolve())
        )
        with Agents(url, tmp_path, execution=1) as agents:
            count_deletes(agents.worker("agent:execution/1"), die=True)
            state = follow_run(store, run, timeout=60)
            assert state.status is RunStatus.WAITING_FOR_APPROVAL, state.outcome
            (pending,) = state.pending_approvals.values()
            decide(store, run, pending.action_id, Human("ada", ("approver",)), grant=True, note="")
            _until(lambda: agents.killed == ["agent:execution/1"], "execution/1 dies")
        assert calls == ["agent:execution/1"]
        assert (workspace / "notes.tmp").exists()  # killed before it deleted: unknown to all

        with Agents(url, tmp_path, execution=2) as agents:
            for worker in agents.workers:
                if worker.agent.role is Role.EXECUTION:
                    count_deletes(worker, die=False)
            state = follow_run(store, run, timeout=60)
            assert not agents.killed
        assert calls == ["agent:execution/1"], "the call ran again with no human asked"
        assert state.status is RunStatus.WAITING_FOR_APPROVAL, state.outcome
        events = store.read(run)
        (unknown,) = [e for e in events if e.type == "action.outcome_unknown"]
        assert unknown.actor == "agent:execution/2"
        assert unknown.payload.action_id == pending.action_id
        (asked,) = state.pending_approvals.values()
        assert asked.action_id == pending.action_id and "outcome is unknown" in asked.reasoning

        # Approved again: the second executor runs it, once, and the run completes.
        decide(store, run, asked.action_id, Human("ada", ("approver",)), grant=True, note="again")
        with Agents(url, tmp_path, execution=2) as agents:
            for worker in agents.workers:
                if worker.agent.role is Role.EXECUTION:
                    count_deletes(worker, die=False)
            state = follow_run(store, run, until=ENDED, timeout=60)
        assert state.status is RunStatus.COMPLETED, state.outcome
        assert calls == ["agent:execution/1", "agent:execution/2"]
        assert not (workspace / "notes.tmp").exists()
        report = verify_run(store, run)
        assert report.ok, report.divergence


def test_fewer_replicas_run_a_grant_the_stopped_replica_never_acted_on(
    url: str, tmp_path: Path
) -> None:
    # Two executors; the run's (the second) stops while its high-risk call waits for a human.
    # The grant comes; the first executor passes it over (not its run). Restarted with one
    # executor, the grant is the first one's to act on: the call never began, so it runs, and
    # no human is asked about an "unknown outcome" (its own position past the grant says
    # nothing of a grant another replica's run received).
    docs, workspace = prepare_demo(tmp_path)
    with EventStore.open(url) as store:
        run = _start(
            store, DEMO_GOAL, 2, 2, workspace=str(workspace.resolve()), docs=str(docs.resolve())
        )
        with Agents(url, tmp_path, execution=2):
            state = follow_run(store, run, timeout=60)
            assert state.status is RunStatus.WAITING_FOR_APPROVAL, state.outcome
        (pending,) = state.pending_approvals.values()
        decide(store, run, pending.action_id, Human("ada", ("approver",)), grant=True, note="")
        # The first executor follows the log past the grant (it is not its run's).
        store.record_position("agent:execution/1", store.head_position())

        with Agents(url, tmp_path, execution=1):
            state = follow_run(store, run, until=ENDED, timeout=60)
        assert not [e for e in store.read(run) if e.type == "action.outcome_unknown"]
        assert state.status is RunStatus.COMPLETED, state.outcome
        assert not (workspace / "notes.tmp").exists()
        report = verify_run(store, run)
        assert report.ok, report.divergence
