"""diff compares decisions: timings and what follows from the prompt are left out at any depth."""

from __future__ import annotations

from agentledger.events import ActionExecuted, EventStore, ModelResponded, RunStarted
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
