"""The four agents as Ray actors on one shared local Ray: whole runs, crashes, many runs at once.

Models are scripted (``ScenarioBrain`` in conftest); the store, Ray, tools and the sandbox
are real.
"""

from __future__ import annotations

import ast
import sys
import time
import uuid
from collections import defaultdict
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from agentledger.actors.providers import ScriptedProvider
from agentledger.actors.runtime import (
    ENDED,
    Runtime,
    RuntimeConfig,
    follow_run,
    start_run,
)
from agentledger.events import Event, EventStore, Role
from agentledger.projections import RunStatus

pytestmark = [pytest.mark.usefixtures("ray_session"), pytest.mark.slow]

SCRIPTED = {"coordinator": "scripted:brain", "research": "scripted:brain"} | {
    "execution": "scripted:brain",
    "review": "scripted:brain",
}


def _config(url: str, root: Path, **extra: Any) -> RuntimeConfig:
    return RuntimeConfig(
        store_url=url,
        namespace=f"test-{uuid.uuid4().hex[:8]}",
        workspace_root=str(root / "workspaces"),
        memory_dir=str(root / "memory"),
        **extra,
    )


@pytest.fixture
def store_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'ledger.db'}"


@pytest.fixture
def runtime_for(store_url: str, tmp_path: Path, scenario_brain: Any) -> Iterator[Any]:
    started: list[Runtime] = []

    def make(brain: Any = None, roles: Sequence[Role] = tuple(Role)) -> Runtime:
        runtime = Runtime(
            _config(store_url, tmp_path),
            providers={"scripted": ScriptedProvider(brain or scenario_brain())},
            roles=roles,
        )
        runtime.start()
        started.append(runtime)
        return runtime

    yield make
    for runtime in started:
        runtime.stop()


def assert_each_reaction_once(events: Sequence[Event]) -> None:
    """Every agent reacted to every event at most once: its reaction is one append (a run of
    consecutive versions), and no sub-task outcome is recorded twice."""
    groups: dict[Any, list[Event]] = defaultdict(list)
    for e in events:
        # The policy's assessments are written in the reaction of the agent that proposed.
        if e.actor.startswith("agent:") or e.actor == "system:policy":
            groups[e.causation_id].append(e)
    for cause, group in groups.items():
        agents = {e.actor for e in group if e.actor.startswith("agent:")}
        assert len(agents) == 1, f"{sorted(agents)} all reacted to {cause}"
        versions = [e.version for e in group]
        assert versions == list(range(versions[0], versions[0] + len(group))), (
            f"{agents} reacted to {cause} in more than one append: versions {versions}"
        )
    outcomes = [
        (e.type, e.payload.task_id) for e in events if e.type in ("task.completed", "task.reviewed")
    ]
    assert len(outcomes) == len(set(outcomes)), f"an outcome was recorded twice: {outcomes}"


def _role(event: Event) -> str:
    return event.actor.split(":", 1)[1].split("/", 1)[0]


def test_a_goal_runs_through_plan_workers_review_to_completion(
    runtime_for: Any, store_url: str, tmp_path: Path
) -> None:
    runtime_for()
    with EventStore.open(store_url) as store:
        started = start_run(store, "Report on retention", user="ann", models=SCRIPTED)
        state = follow_run(store, started.stream, until=ENDED, timeout=90)
        events = store.read(started.stream)

    assert state.status is RunStatus.COMPLETED, state.outcome
    assert set(state.tasks) == {"t1", "t2", "t3", "t4"}  # more than three steps: decomposed
    by_type: dict[str, list[Event]] = defaultdict(list)
    for e in events:
        by_type[e.type].append(e)
    # Every event came from the agent whose job it is.
    assert {_role(e) for e in by_type["task.planned"] + by_type["task.assigned"]} == {"coordinator"}
    completed = {e.payload.task_id: _role(e) for e in by_type["task.completed"]}
    assert completed == {
        "t1": "research",
        "t2": "research",
        "t3": "execution",
        "t4": "execution",
    }
    assert {_role(e) for e in by_type["task.reviewed"]} == {"review"}
    assert [_role(e) for e in by_type["run.completed"]] == ["coordinator"]
    assert events[-1].type == "run.completed"
    # Each model call is recorded by the agent that made it, with its answer.
    for request in by_type["model.requested"]:
        assert request.payload.provider == "scripted"
    assert len(by_type["model.responded"]) == len(by_type["model.requested"])

    # The recorded order: planned before assigned before completed before reviewed, and t3
    # only after both its dependencies were accepted.
    def pos(kind: str, task: str) -> int:
        return next(e.position for e in by_type[kind] if e.payload.task_id == task)

    for task in ("t1", "t2", "t3", "t4"):
        assert (
            pos("task.planned", task)
            < pos("task.assigned", task)
            < pos("task.completed", task)
            < pos("task.reviewed", task)
        )
    assert pos("task.assigned", "t3") > max(pos("task.reviewed", "t1"), pos("task.reviewed", "t2"))
    assert pos("task.assigned", "t4") > pos("task.reviewed", "t3")
    # The execution agent's writes happened, in the run's own workspace.
    workspace = tmp_path / "workspaces" / started.stream
    assert (workspace / "findings.md").read_text() == "done\n"
    assert (workspace / "summary.md").read_text() == "done\n"
    assert_each_reaction_once(events)


def test_agents_share_nothing_but_the_log(runtime_for: Any, store_url: str) -> None:
    """Only one agent is alive at any moment, each in its own Ray worker process; the run
    still completes, so every message between them went through the log."""
    with EventStore.open(store_url) as store:
        started = start_run(store, "Report on retention", models=SCRIPTED)
        pids: set[int] = set()
        for _ in range(12):
            for role in Role:
                runtime = runtime_for(roles=[role])
                (status,) = _settle(runtime, store)
                pids.add(status["pid"])
                runtime.stop()
            state = follow_run(store, started.stream, until=ENDED | {RunStatus.RUNNING}, timeout=5)
            if state.status is RunStatus.COMPLETED:
                break
        assert state.status is RunStatus.COMPLETED, state.outcome
        assert len(pids) > 4  # every turn was a fresh process
        if sys.platform.startswith("linux"):  # workers do not preempt an appending agent
            assert status["scheduling"] == "batch"
        assert_each_reaction_once(store.read(started.stream))


def _settle(runtime: Runtime, store: EventStore) -> list[dict[str, Any]]:
    # Until the agent has read up to the head of the log and the head stopped moving.
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        head = store.head_position()
        statuses = runtime.status()
        if all(s["position"] >= head for s in statuses):
            time.sleep(0.2)
            if store.head_position() == head:
                return statuses
        time.sleep(0.05)
    raise AssertionError(f"agents did not settle: {runtime.status()}")


def test_agent_code_has_no_way_to_reach_another_agent() -> None:
    """The roles and the Agent base import nothing that could reach an actor (no ray), and
    an agent's only output is the list of events its handler emitted."""
    root = Path(__file__).resolve().parents[2] / "actors"
    for name in ("agent.py", "roles.py", "decisions.py", "tools.py", "offline.py"):
        modules: set[str] = set()
        for node in ast.walk(ast.parse((root / name).read_text())):
            if isinstance(node, ast.Import):
                modules.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                modules.add("." * node.level + (node.module or ""))
        assert not {m for m in modules if m == "ray" or m.startswith("ray.")}, name
        # Nor the runtime, which holds the store and the actors.
        assert not modules & {".runtime", "agentledger.actors.runtime"}, name


def test_an_agent_killed_mid_handler_restarts_and_each_event_is_handled_once(
    runtime_for: Any, store_url: str, scenario_brain: Any
) -> None:
    runtime = runtime_for(scenario_brain(delay=2.0))
    with EventStore.open(store_url) as store:
        started = start_run(store, "Report on retention", models=SCRIPTED)
        deadline = time.monotonic() + 30
        while not any(e.type == "task.assigned" for e in store.read(started.stream)):
            assert time.monotonic() < deadline, "the coordinator never assigned a task"
            time.sleep(0.05)
        time.sleep(0.5)  # research is now inside its 2-second model call
        import ray

        research = runtime.actors["research-1"]
        before = ray.get(research.status.remote())
        assert before["handled"] == 0  # it had not finished the task it was killed in
        ray.kill(research, no_restart=False)
        state = follow_run(store, started.stream, until=ENDED, timeout=120)
        after = ray.get(research.status.remote())
        events = store.read(started.stream)

    assert state.status is RunStatus.COMPLETED, state.outcome
    assert after["pid"] != before["pid"], "Ray did not restart the killed agent"
    assert_each_reaction_once(events)
    research_done = [e for e in events if e.type == "task.completed" and _role(e) == "research"]
    assert sorted(e.payload.task_id for e in research_done) == ["t1", "t2"]


def test_status_shows_an_agent_that_is_gone_as_down(runtime_for: Any) -> None:
    # serve asks for the agents' status twice a minute: an agent that died for good must show
    # as down, not end serve with a traceback (from a review).
    import ray

    runtime = runtime_for(roles=[Role.RESEARCH, Role.REVIEW])
    ray.kill(runtime.actors["review-1"], no_restart=True)  # takes effect soon, not at once
    deadline = time.monotonic() + 30
    while True:
        rows = {row["agent"]: row for row in runtime.status()}
        if rows["agent:review/1"]["alive"] is False or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert rows.keys() == {"agent:research/1", "agent:review/1"}
    assert rows["agent:review/1"]["alive"] is False and rows["agent:review/1"]["last_error"]
    assert rows["agent:research/1"]["alive"] is True


def test_ten_runs_at_once_complete_independently(runtime_for: Any, store_url: str) -> None:
    runtime_for()
    with EventStore.open(store_url) as store:
        runs = [
            start_run(store, f"Report {n} on retention", models=SCRIPTED).stream for n in range(10)
        ]
        states = [follow_run(store, run, until=ENDED, timeout=180) for run in runs]
        for run, state in zip(runs, states, strict=True):
            assert state.status is RunStatus.COMPLETED, (run, state.outcome)
            events = store.read(run)
            assert {e.stream for e in events} == {run}
            ids = {e.id for e in events}
            # Every reaction in a run was caused by an event of that same run.
            assert all(e.causation_id in ids for e in events if e.causation_id), run
            assert_each_reaction_once(events)
