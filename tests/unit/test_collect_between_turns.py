"""An agent's process collects its young garbage between turns, not inside one (see
``actors/runtime.py: _collect_between_turns``)."""

from __future__ import annotations

import contextlib
import gc
import weakref
from collections.abc import Iterator

import pytest

from agentledger.actors.runtime import _AGENT_GC_THRESHOLD, _collect_between_turns


@contextlib.contextmanager
def _collector_set(threshold: tuple[int, int, int], *, enabled: bool) -> Iterator[None]:
    """The collector with ``threshold``, on or off, from an empty start; as it was after."""
    before, was_enabled = gc.get_threshold(), gc.isenabled()
    gc.disable()
    gc.collect()
    gc.set_threshold(*threshold)
    if enabled:
        gc.enable()
    try:
        yield
    finally:
        gc.set_threshold(*before)
        if was_enabled:
            gc.enable()
        else:
            gc.disable()


@pytest.fixture
def collector() -> Iterator[None]:
    with _collector_set((1_000, 10, 10), enabled=False):  # counts move only by the test
        yield


def _allocate(n: int) -> list[list[int]]:
    return [[i] for i in range(n)]  # tracked objects that stay alive


def test_less_than_half_a_young_generation_is_left_for_later(collector: None) -> None:
    kept = _allocate(300)
    young = gc.get_count()[0]
    _collect_between_turns()
    assert gc.get_count()[0] >= young and len(kept) == 300  # not collected


def test_half_a_young_generation_is_collected_now(collector: None) -> None:
    kept = _allocate(600)
    middle = gc.get_count()[1]
    _collect_between_turns()
    count = gc.get_count()
    assert count[0] < 10 and count[1] == middle + 1 and len(kept) == 600


def test_the_collection_that_would_reach_the_middle_generation_collects_it_too(
    collector: None,
) -> None:
    for _ in range(9):  # nine young collections: the tenth would collect the middle one
        gc.collect(0)
    assert gc.get_count()[1] == 9
    kept = _allocate(600)
    _collect_between_turns()
    assert gc.get_count()[1] == 0 and len(kept) == 600


class _Node:
    def __init__(self) -> None:
        self.me = self  # a cycle: only the collector frees it


@pytest.fixture
def agent_collector() -> Iterator[None]:
    with _collector_set(_AGENT_GC_THRESHOLD, enabled=True):  # as in an agent's process
        yield


def test_old_cyclic_garbage_is_still_freed(agent_collector: None) -> None:
    # Turns that each leave less than half a young generation never reach the collector's own
    # threshold: the oldest generation must be collected between turns too, or a run's cache
    # with a cycle, promoted before it ended, would never be freed (found by a review: no
    # full collection in 3,000 such turns).
    kept: list[object] = []
    full = [0]

    def count(phase: str, info: dict[str, int]) -> None:
        if phase == "start" and info["generation"] == 2:
            full[0] += 1

    gc.callbacks.append(count)
    try:
        old = _Node()
        gone = weakref.ref(old)
        for turn in range(3_000):
            for _ in range(3_000):
                _Node()  # this turn's garbage
            kept.extend([turn] for _ in range(50))  # what turns keep (views, hops)
            if turn == 200:  # promoted to the oldest generation by now; its run ends
                del old
            _collect_between_turns()
    finally:
        gc.callbacks.remove(count)
    assert gone() is None, f"never freed ({full[0]} full collections)"
