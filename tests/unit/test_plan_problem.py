"""Which plans the coordinator refuses: duplicate ids, unknown dependencies, cycles."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from agentledger.actors.decisions import PlannedStep
from agentledger.actors.roles import plan_problem


def step(task_id: str, *depends_on: str) -> PlannedStep:
    return PlannedStep(
        task_id=task_id, goal=f"do {task_id}", role="research", depends_on=list(depends_on)
    )


def cyclic(steps: list[PlannedStep]) -> set[str]:
    # The definition: repeatedly take every step whose dependencies are all taken; what is
    # never taken is in a cycle or waits on one.
    deps = {s.task_id: set(s.depends_on) for s in steps}
    taken: set[str] = set()
    while ready := [t for t, d in deps.items() if t not in taken and d <= taken]:
        taken.update(ready)
    return set(deps) - taken


def test_good_plans_pass() -> None:
    assert plan_problem([]) is None
    assert (
        plan_problem([step("a"), step("b", "a"), step("c", "a", "b"), step("d", "c", "c")]) is None
    )
    # A chain of thousands of steps (checked in linear time).
    chain = [step("s1")] + [step(f"s{i}", f"s{i - 1}") for i in range(2, 20_001)]
    assert plan_problem(chain) is None


def test_bad_plans_say_why() -> None:
    assert plan_problem([step("a"), step("a")]) == "two steps share a task_id: a"
    assert plan_problem([step("a", "zz")]) == "step a depends on unknown steps ['zz']"
    assert plan_problem([step("a", "a")]) == "the dependencies form a cycle among a"
    # A step waiting on a cycle is named with it; the rest of the plan is not.
    assert (
        plan_problem([step("ok"), step("x", "y", "ok"), step("y", "x"), step("after", "y")])
        == "the dependencies form a cycle among after, x, y"
    )


@settings(max_examples=200, deadline=None)
@given(st.lists(st.lists(st.integers(0, 7), max_size=3), min_size=1, max_size=8))
def test_cycles_are_found_as_the_definition_finds_them(edges: list[list[int]]) -> None:
    steps = [step(f"t{i}", *(f"t{d}" for d in ds if d < len(edges))) for i, ds in enumerate(edges)]
    expected = cyclic(steps)
    problem = plan_problem(steps)
    if expected:
        assert problem == "the dependencies form a cycle among " + ", ".join(sorted(expected))
    else:
        assert problem is None
