"""The coordinator's plan index gives the answers of a scan over every task (whether the plan
is done, which tasks to assign next and in which order), read on from each turn's new events.

Random plans (dependencies on earlier, later and unknown tasks; tasks planned again with other
dependencies, by the coordinator or by a person; plannings the run state refuses while the run
is paused; failed tasks replaced by replans that are accepted) and random task events, folded by
``RunStateProjection`` as the agents fold them. At each of the coordinator's turns its view is
the log so far, sometimes with its own latest events not settled yet (delivered later, after
others' events); the index, read on, answers as ``next_steps_by_scan``.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from agentledger.actors.agent import RunView
from agentledger.actors.roles import _REPLAN, PlanIndex, next_steps_by_scan
from agentledger.events import (
    Event,
    RunPaused,
    RunResumed,
    RunStarted,
    TaskAssigned,
    TaskCompleted,
    TaskFailed,
    TaskPlanned,
    TaskReviewed,
)
from agentledger.projections import RunState, RunStateProjection, TaskInfo

COORD = "agent:coordinator/c1"
WORKER = "agent:research/r1"
REVIEW = "agent:review/v1"
HUMAN = "human:ada"


def _planned(task_id: str, deps: Sequence[str] = (), actor: str = COORD) -> Event:
    payload = {"task_id": task_id, "goal": "g", "role": "research", "depends_on": list(deps)}
    return TaskPlanned(actor=actor, payload=payload)  # type: ignore[return-value]


def _done(task_id: str, accepted: bool = True) -> list[Event]:
    return [
        TaskAssigned(actor=COORD, payload={"task_id": task_id, "role": "research"}),  # type: ignore[list-item]
        TaskCompleted(actor=WORKER, payload={"task_id": task_id, "result": "r"}),  # type: ignore[list-item]
        TaskReviewed(  # type: ignore[list-item]
            actor=REVIEW, payload={"task_id": task_id, "accepted": accepted, "reasons": "x"}
        ),
    ]


def _failed(task_id: str) -> Event:
    return TaskFailed(actor=WORKER, payload={"task_id": task_id, "reason": "x"})  # type: ignore[return-value]


def _random_log(rng: random.Random, size: int, failures: bool) -> list[Event]:
    ids = [f"t{i}" for i in range(size)]

    def planned(task_id: str, actor: str = COORD) -> Event:
        deps = rng.sample([t for t in ids if t != task_id], k=rng.choice((0, 1, 1, 2)))
        if rng.random() < 0.05:
            deps.append("nowhere")  # a dependency on a task never planned
        return _planned(task_id, deps, actor)

    log: list[Event] = [RunStarted(actor=HUMAN, payload={"goal": "g"})]  # type: ignore[list-item]
    later = rng.sample(ids, k=len(ids) // 3)  # planned along the way, not at the start
    log += [planned(t) for t in ids if t not in later]
    paused = False
    for _ in range(size * 6):
        roll, task_id = rng.random(), rng.choice(ids)
        if roll < 0.03:  # paused (plannings refused meanwhile), or resumed
            log.append(RunResumed(actor=HUMAN) if paused else RunPaused(actor=HUMAN))  # type: ignore[arg-type]
            paused = not paused
        elif later and roll < 0.09:
            log.append(planned(later.pop()))
        elif roll < 0.11:
            log.append(planned(task_id, rng.choice((COORD, HUMAN))))  # planned again
        elif failures and roll < 0.14:
            # Failed, then replaced by a replan whose steps are accepted (or not all).
            log.append(_failed(task_id))
            steps = [f"{task_id}{_REPLAN}{len(log)}-{i}" for i in range(rng.choice((1, 2)))]
            log += [_planned(step) for step in steps]
            for step in steps:
                log += _done(step, accepted=rng.random() < 0.9)
        elif roll < 0.35:
            log += _done(task_id)[:1]
        elif roll < 0.55:
            log += _done(task_id)[1:2]
        elif roll < (0.97 if failures else 1.0):
            log += _done(task_id, accepted=rng.random() < 0.8)[2:]
        else:
            log.append(_failed(task_id))
    return log


def _view(log: list[Event], count: int, unsettled: int) -> RunView:
    """The coordinator's view after ``count`` events of the log, the last ``unsettled`` of its
    own among them not delivered yet: they sit at the end, after others' events that come
    later in the log."""
    own = [e for e in log[count - unsettled : count] if e.actor == COORD][:unsettled]
    settled = [e for e in log[:count] if e not in own]
    events = [*settled, *own]
    return RunView("run-1", events, RunStateProjection().fold(events), None, len(settled))


def _answer(answer: tuple[bool, list[TaskInfo]]) -> tuple[bool, list[str]]:
    complete, ready = answer
    return complete, [task.task_id for task in ready]


def test_the_index_answers_as_the_scan_at_every_turn() -> None:
    seen = dict.fromkeys(
        ("turns", "done", "ready", "orders", "replaced", "unsettled", "refused", "fresh"), 0
    )
    scratch = 0
    for seed in range(80):
        rng = random.Random(seed)
        log = _random_log(rng, size=rng.choice((3, 8, 30)), failures=seed % 3 == 0)
        index = PlanIndex()
        for count in range(1, len(log) + 1):
            if rng.random() < 0.5:
                continue  # the coordinator's turns come now and then: several events at once
            unsettled = rng.randrange(1, 4) if rng.random() < 0.2 else 0
            view = _view(log, count, unsettled)
            tasks = view.state.tasks
            index.read_on(view)
            expected = _answer(next_steps_by_scan(tasks))
            assert _answer(index.next_steps(tasks)) == expected, (seed, count)
            if rng.random() < 0.1:  # read from scratch, as a new coordinator would
                fresh = PlanIndex()
                fresh.read_on(view)
                assert _answer(fresh.next_steps(tasks)) == expected, (seed, count)
                seen["fresh"] += 1
            seen["turns"] += 1
            seen["done"] += expected[0]
            seen["ready"] += bool(expected[1])
            seen["orders"] += len(expected[1]) > 1
            seen["unsettled"] += view.settled < len(view.events)
            seen["refused"] += bool(view.state.anomalies)
            seen["replaced"] += any(
                t.status == "failed" and any(s.startswith(t.task_id + _REPLAN) for s in tasks)
                for t in tasks.values()
            )
        scratch += index.readings_from_scratch
    # The random plans reach every kind of answer and view; most turns read new events only.
    assert seen["turns"] > 3000 and all(n > 30 for n in seen.values()), seen
    assert scratch < seen["turns"] / 3, (scratch, seen["turns"])


def test_a_failed_task_replaced_by_accepted_steps_counts_as_done() -> None:
    log = [
        RunStarted(actor=HUMAN, payload={"goal": "g"}),
        _planned("a"),
        _planned("b", ["a"]),
        _failed("a"),
        _planned(f"a{_REPLAN}1"),
        _planned(f"a{_REPLAN}2", [f"a{_REPLAN}1"]),
        *_done(f"a{_REPLAN}1"),
    ]
    index = PlanIndex()
    for events, expected in (
        (log, (False, [f"a{_REPLAN}2"])),
        ([*log, *_done(f"a{_REPLAN}2")], (False, ["b"])),  # a is done: b can go
        ([*log, *_done(f"a{_REPLAN}2"), *_done("b")], (True, [])),
    ):
        state = RunStateProjection().fold(events)
        index.read_on(RunView("run-1", events, state, None, len(events)))
        assert _answer(next_steps_by_scan(state.tasks)) == expected
        assert _answer(index.next_steps(state.tasks)) == expected


def test_a_view_of_another_run_or_another_history_is_read_from_scratch() -> None:
    for seed in range(30):
        rng = random.Random(seed)
        first = _random_log(rng, 8, failures=False)
        # Same first event, another history (verify on another copy of a log, a run read
        # again from a store restored from a backup): not read on.
        other = [first[0], *_random_log(rng, 8, failures=False)[1:]]
        index = PlanIndex()
        for events in (first, other, _random_log(rng, 8, failures=False)):
            state = RunStateProjection().fold(events)
            index.read_on(RunView("run-1", events, state, None, len(events)))
            expected = _answer(next_steps_by_scan(state.tasks))
            assert _answer(index.next_steps(state.tasks)) == expected, seed


def test_a_chain_of_tasks_is_assigned_one_by_one_then_done_reading_new_events_only() -> None:
    ids = [f"s{i}" for i in range(1, 51)]
    events: list[Event] = [RunStarted(actor=HUMAN, payload={"goal": "g"})]  # type: ignore[list-item]
    events += [_planned(t, [ids[i - 1]] if i else []) for i, t in enumerate(ids)]
    index, fold = PlanIndex(), RunStateProjection()
    state = fold.fold(events, RunState(run="run-1"))
    assigned = []
    while True:
        index.read_on(RunView("run-1", events, state, None, len(events)))
        complete, ready = index.next_steps(state.tasks)
        if complete:
            break
        assert len(ready) == 1
        assigned.append(ready[0].task_id)
        for event in _done(ready[0].task_id):
            events.append(event)
            state = fold.apply(state, event)
    assert assigned == ids
    assert index.readings_from_scratch == 1  # the plan; then each turn's new events only
