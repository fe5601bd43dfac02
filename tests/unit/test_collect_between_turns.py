"""An agent's process collects its young garbage between turns, not inside one (see
``actors/runtime.py: _collect_between_turns``)."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from agentledger.actors.runtime import _collect_between_turns


@pytest.fixture
def collector() -> Iterator[None]:
    before, enabled = gc.get_threshold(), gc.isenabled()
    gc.disable()  # counts move only by what the test allocates
    gc.collect()
    gc.set_threshold(1_000, 10, 10)
    try:
        yield
    finally:
        gc.set_threshold(*before)
        if enabled:
            gc.enable()


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
