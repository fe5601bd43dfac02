"""The coordinator's plan index gives the answers of a scan over every task (whether the plan
is done, which tasks to assign next), read on from each turn's new events only.

Random plans (dependencies on earlier, later and unknown tasks; steps of replans; tasks planned
again with other dependencies) and random task events, folded by ``RunStateProjection`` as the
agents fold them; after each event the index, read on, answers as ``next_steps_by_scan``. Also
when the view's last events are not settled yet, and when the view is of another run.
"""

from __future__ import annotations

import random

from agentledger.actors.agent import RunView
from agentledger.actors.roles import _REPLAN, PlanIndex, next_steps_by_scan
from agentledger.events import (
    Envelope,
    Event,
    RunStarted,
    TaskAssigned,
    TaskCompleted,
    TaskFailed,
    TaskPlanned,
    TaskReviewed,
)
from agentledger.projections import RunState, RunStateProjection

COORD = "agent:coordinator/c1"
WORKER = "agent:research/r1"


def _recorded(event: Envelope) -> Event:
    return event  # type: ignore[return-value]  # folded as the agents fold their own events


def _random_events(rng: random.Random, size: int, failures: bool) -> list[Event]:
    ids = [f"t{i}" for i in range(size)] + [f"t{rng.randrange(size)}{_REPLAN}{i}" for i in range(3)]

    def planned(task_id: str) -> Event:
        known = [t for t in ids if t != task_id]
        deps = rng.sample(known, k=rng.choice((0, 1, 1, 2)))
        if rng.random() < 0.05:
            deps.append("nowhere")  # a dependency on a task never planned
        return _recorded(
            TaskPlanned(
                actor=COORD,
                payload={"task_id": task_id, "goal": "g", "role": "research", "depends_on": deps},
            )
        )

    events = [_recorded(RunStarted(actor="human:ada", payload={"goal": "g"}))]
    later = rng.sample(ids, k=len(ids) // 3)  # planned along the way, not at the start
    events += [planned(t) for t in ids if t not in later]
    for _ in range(size * 6):
        roll = rng.random()
        task_id = rng.choice(ids)
        if later and roll < 0.08:
            events.append(planned(later.pop()))
        elif roll < 0.1:
            events.append(planned(task_id))  # planned again: other dependencies
        elif roll < 0.35:
            events.append(
                _recorded(
                    TaskAssigned(actor=COORD, payload={"task_id": task_id, "role": "research"})
                )
            )
        elif roll < 0.55:
            events.append(
                _recorded(TaskCompleted(actor=WORKER, payload={"task_id": task_id, "result": "r"}))
            )
        elif roll < (0.97 if failures else 1.0):
            accepted = rng.random() < 0.8
            events.append(
                _recorded(
                    TaskReviewed(
                        actor="agent:review/v1",
                        payload={"task_id": task_id, "accepted": accepted, "reasons": "x"},
                    )
                )
            )
        else:
            events.append(
                _recorded(TaskFailed(actor=WORKER, payload={"task_id": task_id, "reason": "x"}))
            )
    return events


def _answer(answer: tuple[bool, list]) -> tuple[bool, list[str]]:
    complete, ready = answer
    return complete, [task.task_id for task in ready]


def test_the_index_answers_as_the_scan_at_every_turn() -> None:
    seen = {"compared": 0, "done": 0, "ready": 0, "failed": 0, "unsettled": 0, "fresh": 0}
    for seed in range(60):
        rng = random.Random(seed)
        events = _random_events(rng, size=rng.choice((3, 8, 30)), failures=seed % 4 == 0)
        fold = RunStateProjection()
        state = RunState(run="run-1")
        index = PlanIndex()
        for count, event in enumerate(events, start=1):
            state = fold.apply(state, event)
            if rng.random() < 0.5:
                continue  # the coordinator's turns come now and then: several events at once
            # Sometimes the last events are the agent's own, not delivered yet (not settled).
            settled = max(0, count - (rng.randrange(1, 3) if rng.random() < 0.2 else 0))
            view = RunView("run-1", events[:count], state, None, settled)
            index.read_on(view)
            expected = _answer(next_steps_by_scan(state.tasks))
            assert _answer(index.next_steps(state.tasks)) == expected, (seed, count)
            if rng.random() < 0.1:  # read from scratch, as a new coordinator would
                fresh = PlanIndex()
                fresh.read_on(view)
                assert _answer(fresh.next_steps(state.tasks)) == expected, (seed, count)
                seen["fresh"] += 1
            seen["compared"] += 1
            seen["done"] += expected[0]
            seen["ready"] += bool(expected[1])
            seen["failed"] += any(t.status == "failed" for t in state.tasks.values())
            seen["unsettled"] += settled < count
    # The random plans reach every kind of answer, through both of the index's paths.
    assert seen["compared"] > 2000 and all(n > 20 for n in seen.values()), seen


def test_a_view_of_another_run_is_read_from_scratch() -> None:
    rng = random.Random(7)
    first, second = (_random_events(rng, 8, failures=False) for _ in range(2))
    index = PlanIndex()
    for events in (first, second, first):
        state = RunStateProjection().fold(events)
        index.read_on(RunView("run-1", events, state, None, len(events)))
        assert _answer(index.next_steps(state.tasks)) == _answer(next_steps_by_scan(state.tasks))


def test_a_view_that_differs_before_its_end_is_read_from_scratch() -> None:
    # Same run, same first event, another history (verify re-executing on another copy of a
    # log, a run read again from a store restored from a backup): not read on.
    for seed in range(30):
        rng = random.Random(seed)
        first = _random_events(rng, 8, failures=False)
        other = [first[0], *_random_events(rng, 8, failures=False)[1:]]
        index = PlanIndex()
        for events in (first, other):
            state = RunStateProjection().fold(events)
            index.read_on(RunView("run-1", events, state, None, len(events)))
            expected = _answer(next_steps_by_scan(state.tasks))
            assert _answer(index.next_steps(state.tasks)) == expected, seed


def test_a_chain_of_tasks_is_assigned_one_by_one_and_then_done() -> None:
    ids = [f"s{i}" for i in range(1, 6)]
    events: list[Event] = [_recorded(RunStarted(actor="human:ada", payload={"goal": "g"}))]
    for i, task_id in enumerate(ids):
        deps = [ids[i - 1]] if i else []
        events.append(
            _recorded(
                TaskPlanned(
                    actor=COORD,
                    payload={
                        "task_id": task_id,
                        "goal": "g",
                        "role": "research",
                        "depends_on": deps,
                    },
                )
            )
        )
    index, fold, state = PlanIndex(), RunStateProjection(), RunState(run="run-1")
    state = fold.fold(events, state)
    assigned = []
    while True:
        index.read_on(RunView("run-1", events, state, None, len(events)))
        complete, ready = index.next_steps(state.tasks)
        if complete:
            break
        assert len(ready) == 1
        task_id = ready[0].task_id
        assigned.append(task_id)
        for event in (
            TaskAssigned(actor=COORD, payload={"task_id": task_id, "role": "research"}),
            TaskCompleted(actor=WORKER, payload={"task_id": task_id, "result": "r"}),
            TaskReviewed(
                actor="agent:review/v1",
                payload={"task_id": task_id, "accepted": True, "reasons": "ok"},
            ),
        ):
            events.append(_recorded(event))
            state = fold.apply(state, _recorded(event))
    assert assigned == ids
