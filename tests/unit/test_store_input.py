"""Input the store must refuse before it touches the log (DESIGN rule 7), beyond the contract.

These concern checks made in ``EventStore`` itself, the same on every backend, so they run on
the in-memory store.
"""

from __future__ import annotations

import copy
import pickle
from collections.abc import Callable
from typing import Any

import pytest

from agentledger.events import (
    ActionExecuted,
    ActionProposed,
    ApprovalGranted,
    EventStore,
    InvalidEvent,
    ModelResponded,
    NotAuthorized,
    RunPaused,
    RunStarted,
    TaskPlanned,
)
from agentledger.events.catalogue import RunStartedPayload


def test_a_stream_name_with_a_trailing_newline_is_rejected(memory_store: EventStore) -> None:
    with pytest.raises(InvalidEvent, match="stream name"):
        memory_store.append("run-1\n", [RunPaused(actor="system")])
    assert memory_store.head_position() == 0


UNVALIDATED: dict[str, Callable[[], Any]] = {
    # pydantic's documented ways to build or change a model without validation.
    "construct-empty-goal": lambda: RunStarted.model_construct(
        actor="human:ada", payload=RunStartedPayload.model_construct(goal="")
    ),
    "copy-empty-goal": lambda: RunStarted(actor="human:ada", payload={"goal": "g"}).model_copy(
        update={"payload": RunStartedPayload.model_construct(goal="")}
    ),
    "construct-bad-actor": lambda: RunPaused.model_construct(actor="nobody"),
    "copy-bad-actor": lambda: RunPaused(actor="system").model_copy(update={"actor": "nobody"}),
    # A validated envelope around a payload that was not (pydantic keeps model instances).
    "validated-around-constructed-payload": lambda: RunStarted(
        actor="human:ada", payload=RunStartedPayload.model_construct(goal="")
    ),
    "validated-around-changed-payload": lambda: RunStarted(
        actor="human:ada",
        payload=RunStartedPayload(goal="g").model_copy(update={"goal": ""}),
    ),
    # Valid when made, unreadable once written (the store checks the bytes it writes).
    "list-changed-after-validation": lambda: _changed_after_validation(),
    "infinite-float": lambda: ModelResponded(
        actor="agent:research/r1",
        payload={"request_id": "q", "model": "m", "content": "c", "latency_ms": float("inf")},
    ),
    # An id that is not a UUID (the store splices its fields in after the id's 36 characters).
    "construct-bad-id": lambda: RunPaused.model_construct(actor="system", id="a" * 35 + '",'),
    # Copies and pickles of an unvalidated event stay unvalidated.
    "copy-of-constructed": lambda: copy.copy(RunPaused.model_construct(actor="nobody")),
    "pickle-of-changed": lambda: pickle.loads(
        pickle.dumps(RunPaused(actor="system").model_copy(update={"actor": "nobody"}))
    ),
}


def _changed_after_validation() -> TaskPlanned:
    planned = TaskPlanned(
        actor="agent:coordinator/c1", payload={"task_id": "t1", "goal": "g", "role": "research"}
    )
    planned.payload.depends_on.append(None)  # type: ignore[arg-type]  # frozen, not its lists
    return planned


@pytest.mark.filterwarnings("ignore:Pydantic serializer warnings")  # made unvalidated, on purpose
@pytest.mark.parametrize("make", UNVALIDATED.values(), ids=UNVALIDATED.keys())
def test_an_event_that_skipped_validation_is_rejected(
    memory_store: EventStore, make: Callable[[], Any]
) -> None:
    with pytest.raises(InvalidEvent):
        memory_store.append("run-1", [make()])
    assert memory_store.head_position() == 0


def test_an_invalid_event_inside_a_batch_is_named_by_index_and_field(
    memory_store: EventStore,
) -> None:
    batch = [RunPaused(actor="system"), RunPaused(actor="system"), UNVALIDATED["copy-empty-goal"]()]
    with pytest.raises(InvalidEvent, match=r"event #2 \(run\.started\).*field payload\.goal"):
        memory_store.append("run-1", batch)
    assert memory_store.head_position() == 0


def test_an_event_that_cannot_be_encoded_is_invalid_and_named(memory_store: EventStore) -> None:
    # A lone surrogate (Python's stand-in for a file name byte that is not UTF-8) in a JSON
    # value passes validation and fails encoding: it must be InvalidEvent (agents record the
    # reason and go on), not an error the runtime does not expect.
    batch = [
        RunPaused(actor="system"),
        ActionExecuted(
            actor="agent:execution/e1", payload={"action_id": "a1", "result": ["\ud800"]}
        ),
    ]
    with pytest.raises(InvalidEvent, match=r"event #1 \(action\.executed\).*cannot be encoded"):
        memory_store.append("run-1", batch)
    assert memory_store.head_position() == 0


@pytest.mark.filterwarnings("ignore:Pydantic serializer warnings")  # made unvalidated, on purpose
def test_check_refuses_what_append_refuses_and_writes_nothing(memory_store: EventStore) -> None:
    # Verify tells with it which of an agent's reactions the store refused live.
    memory_store.check("run-1", [RunPaused(actor="system"), RunPaused(actor="system")])
    for make in UNVALIDATED.values():
        with pytest.raises(InvalidEvent):
            memory_store.check("run-1", [make()])
    unencodable = ActionExecuted(
        actor="agent:execution/e1", payload={"action_id": "a1", "result": ["\ud800"]}
    )
    with pytest.raises(InvalidEvent, match=r"event #1 \(action\.executed\).*cannot be encoded"):
        memory_store.check("run-1", [RunPaused(actor="system"), unencodable])
    granted = ApprovalGranted(
        actor="agent:research/r1", payload={"action_id": "a1", "action_hash": "0" * 64}
    )
    with pytest.raises(NotAuthorized, match=r"may not append approval\.granted"):
        memory_store.check("run-1", [granted])
    with pytest.raises(InvalidEvent, match="stream name"):
        memory_store.check("run-1\n", [RunPaused(actor="system")])
    assert memory_store.head_position() == 0


def _nested(depth: int) -> object:
    value: object = 1
    for _ in range(depth):
        value = [value]
    return value


def test_an_event_nested_as_deep_as_one_may_be_is_appended_and_one_deeper_is_refused(
    memory_store: EventStore,
) -> None:
    # Appends validate a batch as one JSON array, one level deeper than each event: an event
    # at the parser's nesting limit must still pass, and one past it fail with its index.
    def proposed(depth: int) -> ActionProposed:
        return ActionProposed(
            actor="agent:execution/e1",
            payload={
                "action_id": "a",
                "tool": "t",
                "idempotency_key": "k",
                "arguments": {"x": _nested(depth)},
            },
        )

    limit = next(
        d
        for d in range(150, 300)
        if _parses(ActionProposed, d + 1, proposed) is False
        and _parses(ActionProposed, d, proposed)
    )
    memory_store.append("run-1", [proposed(limit)])
    with pytest.raises(InvalidEvent, match=r"event #1 \(action\.proposed\).*recursion limit"):
        memory_store.append("run-1", [RunPaused(actor="system"), proposed(limit + 1)])
    assert memory_store.head_position() == 1


def _parses(cls: Any, depth: int, make: Callable[[int], Any]) -> bool:
    from agentledger.events._codec import seal_as

    state, _ = seal_as(make(depth), "run-1", 1, None)
    try:
        cls.model_validate_json(state)
    except Exception:
        return False
    return True
