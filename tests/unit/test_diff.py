"""diff compares decisions: timings and what follows from the prompt are left out at any depth."""

from __future__ import annotations

from agentledger.events import (
    ActionExecuted,
    ContextSummarized,
    EventStore,
    ModelResponded,
    RunStarted,
    ScratchpadUpdated,
)
from agentledger.projections.diff import first_divergence


def _run(store: EventStore, stream: str, ms: float, tokens: int, exit_code: int) -> list:
    return store.append(
        stream,
        [
            RunStarted(actor="human:ada", payload={"goal": "check"}),
            ModelResponded(
                actor="agent:execution/1",
                payload={"request_id": "m1", "model": "m", "content": "ok", "input_tokens": tokens},
            ),
            ActionExecuted(
                actor="agent:execution/1",
                payload={
                    "action_id": "a1",
                    "result": {"exit_code": exit_code, "duration_ms": ms, "stdout": "3"},
                    "duration_ms": ms,
                },
            ),
        ],
    )


def test_a_tools_nested_duration_and_the_prompts_size_are_not_decisions(
    memory_store: EventStore,
) -> None:
    a = _run(memory_store, "run-a", 62.0, 798, 0)
    b = _run(memory_store, "run-b", 59.0, 793, 0)
    assert first_divergence(a, b) is None
    c = _run(memory_store, "run-c", 61.0, 800, 1)  # a different outcome is one
    found = first_divergence(a, c)
    assert found is not None and found.index == 2


def _summarized(
    store: EventStore, stream: str, covers: slice, at: int, words: str = "k = 1"
) -> list:
    """A run whose research agent's summary covers ``covers`` of its first three events,
    written as if its events stood at positions from ``at`` (two runs never share them)."""
    history = store.append(
        stream,
        [
            RunStarted(actor="human:ada", payload={"goal": "check"}),
            ScratchpadUpdated(actor="agent:research/1", payload={"key": "k", "value": "1"}),
            ScratchpadUpdated(actor="agent:research/1", payload={"key": "k", "value": "2"}),
        ],
    )
    first, last = history[covers][0], history[covers][-1]
    summary = ContextSummarized(
        actor="agent:research/memory",
        payload={
            "agent": "research",
            "from_position": at + history.index(first),
            "to_position": at + history.index(last),
            "summary": f"[{at}] scratchpad.updated by agent:research/1: {words}",
            "model": "offline:summary",
            "from_event": first.id,
            "to_event": last.id,
        },
    )
    return history + store.append(stream, [summary], expected_version=3)


def test_a_summary_is_compared_on_the_events_it_covers_not_on_their_positions(
    memory_store: EventStore,
) -> None:
    # Positions, and the text that quotes them, differ between any two runs (a fork's
    # inherited events all carry the fork's position): what is covered is the decision.
    a = _summarized(memory_store, "run-a", slice(1, 3), at=21)
    b = _summarized(memory_store, "run-b", slice(1, 3), at=203)
    assert first_divergence(a, b) is None
    c = _summarized(memory_store, "run-c", slice(0, 3), at=21)  # it covers one more event
    found = first_divergence(a, c)
    assert found is not None and found.index == 3
    assert found.left_compared is not None and found.right_compared is not None
    assert found.left_compared["payload"]["from_event"] == "event#1"
    assert found.right_compared["payload"]["from_event"] == "event#0"
    # A model's summary is its words: other words are another decision.
    d = _summarized(memory_store, "run-d", slice(1, 3), at=203, words="k was deleted")
    found = first_divergence(a, d)
    assert found is not None and found.index == 3


def test_derived_ids_are_named_by_kind_in_order() -> None:
    from agentledger.projections.diff import _Renamer

    rename = _Renamer()
    text = "a-0123456789ab m-0123456789ab mem-0123456789ab 0123456789abcdef"
    assert rename(text) == "a#1 m#2 mem#3 id#4"
