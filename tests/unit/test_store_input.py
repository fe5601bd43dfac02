"""Input the store must refuse before it touches the log (DESIGN rule 7), beyond the contract.

These concern checks made in ``EventStore`` itself, the same on every backend, so they run on
the in-memory store.
"""

from __future__ import annotations

import copy
import pickle
from collections.abc import Callable

import pytest

from agentledger.events import (
    EventStore,
    InvalidEvent,
    RunPaused,
    RunStarted,
)
from agentledger.events.catalogue import RunStartedPayload


def test_a_stream_name_with_a_trailing_newline_is_rejected(memory_store: EventStore) -> None:
    with pytest.raises(InvalidEvent, match="stream name"):
        memory_store.append("run-1\n", [RunPaused(actor="system")])
    assert memory_store.head_position() == 0


UNVALIDATED: dict[str, Callable[[], RunPaused | RunStarted]] = {
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
    # Copies and pickles of an unvalidated event stay unvalidated.
    "copy-of-constructed": lambda: copy.copy(RunPaused.model_construct(actor="nobody")),
    "pickle-of-changed": lambda: pickle.loads(
        pickle.dumps(RunPaused(actor="system").model_copy(update={"actor": "nobody"}))
    ),
}


@pytest.mark.parametrize("make", UNVALIDATED.values(), ids=UNVALIDATED.keys())
def test_an_event_that_skipped_validation_is_rejected(
    memory_store: EventStore, make: Callable[[], RunPaused | RunStarted]
) -> None:
    with pytest.raises(InvalidEvent):
        memory_store.append("run-1", [make()])
    assert memory_store.head_position() == 0


def test_validation_is_skipped_only_for_events_made_by_validating_them(
    memory_store: EventStore,
) -> None:
    from agentledger.events.envelope import is_checked

    made = RunStarted(actor="human:ada", payload={"goal": "g"})
    assert is_checked(made) and is_checked(pickle.loads(pickle.dumps(made)))
    assert not is_checked(made.model_copy(update={"actor": "human:bob"}))
    assert not is_checked(RunStarted.model_construct(actor="human:ada", payload=made.payload))
    assert is_checked(made.model_copy())  # an unchanged copy is as valid as its original
    # The mark changes nothing else: equality, serialization, and what the store returns.
    changed = made.model_copy(update={"actor": "human:bob"})
    assert changed == RunStarted.model_validate_json(changed.model_dump_json())
    [recorded] = memory_store.append("run-1", [made])
    assert is_checked(recorded) and memory_store.read("run-1") == [recorded]
