"""Upcasters: any document an older schema allowed reads as a valid current event."""

from __future__ import annotations

import copy
import hashlib
import json
import string
import uuid
from datetime import datetime
from typing import Any

import pytest
from eventsourcing.persistence import Notification
from hypothesis import given, settings
from hypothesis import strategies as st

from agentledger.events import (
    EVENT_ADAPTER,
    EVENT_TYPES,
    ContextSummarized,
    CorruptEvent,
    ModelResponded,
    RunForked,
    RunPaused,
    RunStarted,
    UnknownEventType,
    UnsupportedSchemaVersion,
)
from agentledger.events._codec import EnvelopeMapper
from agentledger.events.upcasting import missing_upcasters, upcast, upcaster

# ---------------------------------------------------------------- strategies

NAME_CHARS = string.ascii_letters + string.digits + "_.-"
principals = st.one_of(
    st.from_regex(r"\Aagent:(coordinator|research|execution|review)/[A-Za-z0-9_.\-]{1,64}\Z"),
    st.from_regex(r"\Ahuman:[A-Za-z0-9_.@\-]{1,64}\Z"),
    st.from_regex(r"\Asystem(:[A-Za-z0-9_.\-]{1,64})?\Z"),
)
streams = st.from_regex(r"\A[A-Za-z0-9][A-Za-z0-9_.:@\-]{0,40}\Z")
hashes = st.text(alphabet="0123456789abcdef", min_size=64, max_size=64)
instants = st.datetimes(
    min_value=datetime(2000, 1, 1),
    max_value=datetime(2100, 1, 1),
    timezones=st.timezones(),
    allow_imaginary=False,
).map(lambda at: at.isoformat())
names = st.text(min_size=1, max_size=40)
texts = st.text(max_size=300)


@st.composite
def envelopes(draw: st.DrawFn, event_type: str, payload: dict[str, Any]) -> dict[str, Any]:
    """A whole v1 document as the store wrote it under schema 1 (hash member included)."""
    return {
        "id": str(draw(st.uuids())),
        "stream": draw(streams),
        "version": draw(st.integers(min_value=1, max_value=2**40)),
        "type": event_type,
        "schema_version": 1,
        "at": draw(instants),
        "actor": draw(principals),
        "causation_id": draw(st.none() | st.uuids().map(str)),
        "correlation_id": draw(st.none() | st.uuids().map(str)),
        "payload": payload,
        "prev_hash": draw(st.none() | hashes),
        "hash": draw(hashes),
    }


@st.composite
def v1_run_started(draw: st.DrawFn) -> dict[str, Any]:
    goal = draw(st.text(min_size=1, max_size=500))
    return draw(envelopes("run.started", {"goal": goal}))


@st.composite
def v1_model_responded(draw: st.DrawFn) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "request_id": draw(names),
        "model": draw(names),
        "text": draw(texts),
    }
    if draw(st.booleans()):
        payload["tokens"] = draw(st.integers(min_value=0, max_value=10**9))
    return draw(envelopes("model.responded", payload))


def stored(document: dict[str, Any], topic: str, position: int = 7) -> Notification:
    """A stored row of ``document``, hashed as the store hashes."""
    body = json.dumps(
        {k: v for k, v in document.items() if k != "hash"}, separators=(",", ":")
    ).encode()
    digest = hashlib.sha256(body).hexdigest()
    state = body[:-1] + b',"hash":"' + digest.encode() + b'"}'
    return Notification(document["stream"], document["version"], topic, state, position)


# ---------------------------------------------------------------- properties


@settings(max_examples=150, deadline=None)
@given(v1_run_started())
def test_any_v1_run_started_upcasts_to_a_valid_current_event(document: dict[str, Any]) -> None:
    original = copy.deepcopy(document)
    event = EVENT_ADAPTER.validate_python(upcast(document, where="test"))

    assert document == original, "upcasting must not change the stored document"
    assert isinstance(event, RunStarted)
    assert event.schema_version == RunStarted.current_schema_version == 3
    assert event.payload.goal == original["payload"]["goal"]
    assert (event.payload.user, event.payload.models, event.payload.labels) == (
        "anonymous",
        {},
        {},
    )
    assert (event.payload.workspace, event.payload.docs) == (None, None)
    assert str(event.id) == original["id"]
    assert (event.stream, event.version, event.actor) == (
        original["stream"],
        original["version"],
        original["actor"],
    )
    assert event.hash == original["hash"] and event.prev_hash == original["prev_hash"]


@settings(max_examples=150, deadline=None)
@given(v1_model_responded())
def test_any_v1_model_responded_upcasts_to_a_valid_current_event(
    document: dict[str, Any],
) -> None:
    original = copy.deepcopy(document)
    event = EVENT_ADAPTER.validate_python(upcast(document, where="test"))

    assert document == original, "upcasting must not change the stored document"
    assert isinstance(event, ModelResponded)
    assert event.schema_version == ModelResponded.current_schema_version == 2
    payload = original["payload"]
    assert event.payload.content == payload["text"]
    assert event.payload.output_tokens == payload.get("tokens", 0)
    assert (event.payload.input_tokens, event.payload.latency_ms) == (0, 0.0)
    assert (event.payload.request_id, event.payload.model) == (
        payload["request_id"],
        payload["model"],
    )


@settings(max_examples=60, deadline=None)
@given(st.one_of(v1_run_started(), v1_model_responded()), st.integers(1, 10**9))
def test_stored_v1_rows_decode_through_the_mapper(document: dict[str, Any], position: int) -> None:
    row = stored(document, f"{document['type']}@1", position)
    event = EnvelopeMapper().decode(row)
    assert type(event) is EVENT_TYPES[document["type"]]
    assert event.position == position
    assert event.schema_version == EVENT_TYPES[document["type"]].current_schema_version
    # The upcast event serialises as a current one and reads back through the fast path.
    again = EVENT_ADAPTER.validate_json(event.model_dump_json())
    assert again == event.model_copy(update={"position": None})


def test_a_v2_run_started_gains_workspace_and_docs() -> None:
    document = {
        "id": str(uuid.uuid4()),
        "stream": "run-v2",
        "version": 1,
        "type": "run.started",
        "schema_version": 2,
        "at": "2026-03-01T09:00:00+00:00",
        "actor": "human:ann",
        "payload": {"goal": "g", "user": "ann", "models": {"research": "offline:x"}, "labels": {}},
    }
    event = EnvelopeMapper().decode(stored(document, "run.started@2", 3))
    assert isinstance(event, RunStarted) and event.schema_version == 3
    assert event.payload.models == {"research": "offline:x"} and event.payload.user == "ann"
    assert (event.payload.workspace, event.payload.docs) == (None, None)


def test_a_v1_run_forked_reads_as_a_fork_that_copied_its_prefix() -> None:
    document = {
        "id": str(uuid.uuid4()),
        "stream": "run-f",
        "version": 1,
        "type": "run.forked",
        "schema_version": 1,
        "at": "2026-11-29T09:00:00+00:00",
        "actor": "human:ann",
        "payload": {"parent_run": "run-p", "parent_position": 7, "note": "", "model_overrides": {}},
    }
    event = EnvelopeMapper().decode(stored(document, "run.forked@1", 9))
    assert isinstance(event, RunForked) and event.schema_version == 2
    assert (event.inherits, event.payload.parent_hash) == (0, None)


def test_a_v1_context_summarized_reads_as_a_summary_ending_at_a_position() -> None:
    payload = {
        "agent": "research",
        "from_position": 3,
        "to_position": 9,
        "summary": "s",
        "model": "m",
    }
    document = {
        "id": str(uuid.uuid4()),
        "stream": "run-s",
        "version": 12,
        "type": "context.summarized",
        "schema_version": 1,
        "at": "2026-11-29T09:00:00+00:00",
        "actor": "agent:research/memory",
        "payload": payload,
    }
    event = EnvelopeMapper().decode(stored(document, "context.summarized@1", 40))
    assert isinstance(event, ContextSummarized) and event.schema_version == 2
    assert (event.payload.from_event, event.payload.to_event) == (None, None)
    assert (event.payload.from_position, event.payload.to_position) == (3, 9)


def test_every_schema_step_has_an_upcaster() -> None:
    assert missing_upcasters() == []
    versioned = {n for n, c in EVENT_TYPES.items() if c.current_schema_version > 1}
    assert versioned == {"run.started", "model.responded", "run.forked", "context.summarized"}


def test_a_current_document_passes_through_unchanged() -> None:
    event = RunPaused(actor="system", payload={"reason": "lunch"})
    document = json.loads(event.model_dump_json())
    assert upcast(copy.deepcopy(document), where="test") == document


@pytest.mark.parametrize(
    ("document", "error", "words"),
    [
        ({"type": "mystery.happened", "schema_version": 1}, UnknownEventType, "mystery.happened"),
        ({"schema_version": 1}, UnknownEventType, "None"),
        ({"type": "run.started", "schema_version": 4}, UnsupportedSchemaVersion, "version 4"),
        ({"type": "run.paused", "schema_version": 2}, UnsupportedSchemaVersion, "version 2"),
        ({"type": "run.started", "schema_version": "1"}, UnsupportedSchemaVersion, "'1'"),
    ],
)
def test_documents_this_version_cannot_read_raise_naming_where(
    document: dict[str, Any], error: type[Exception], words: str
) -> None:
    with pytest.raises(error) as caught:
        upcast(document, where="position 12, stream 'run-1' version 3")
    assert str(caught.value).startswith("position 12, stream 'run-1' version 3: ")
    assert words in str(caught.value)
    assert "Upgrade agentledger" in str(caught.value)


def test_upcasters_register_once_and_for_known_types_only() -> None:
    with pytest.raises(ValueError, match="two upcasters"):
        upcaster("run.started", 1)(lambda document: document)
    with pytest.raises(ValueError, match="unknown event type"):
        upcaster("mystery.happened", 1)(lambda document: document)
    assert missing_upcasters() == []


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param({"request_id": "m1", "model": "offline", "tokens": 3}, id="no-text"),
        pytest.param(7, id="payload-not-an-object"),
    ],
)
def test_a_damaged_old_row_is_a_corrupt_event_naming_its_position(payload: Any) -> None:
    document = {
        "id": "5f0c2a4e-7b8d-4e61-a0c3-0d6d6f3b1a03",
        "stream": "run-1",
        "version": 3,
        "type": "model.responded",
        "schema_version": 1,
        "at": "2026-03-01T09:00:02Z",
        "actor": "agent:research/r1",
        "causation_id": None,
        "correlation_id": None,
        "payload": payload,
        "prev_hash": None,
    }
    with pytest.raises(CorruptEvent, match="position 41"):
        EnvelopeMapper().decode(stored(document, "model.responded@1", 41))


def test_an_old_row_nested_too_deep_is_a_corrupt_event_after_the_rows_before_it() -> None:
    # A damaged body of an old schema version goes through json.loads, whose RecursionError
    # must read as damage at its position, after the events the page holds before it.
    from eventsourcing.persistence import StoredEvent

    from agentledger.events import EventStore, ScratchpadUpdated

    store = EventStore.open("memory://")
    notes = [
        ScratchpadUpdated(actor="human:ada", payload={"key": f"k{i}", "value": "v"})
        for i in range(40)
    ]
    store.append("notes-1", notes)
    deep = b"[" * 100_000 + b"]" * 100_000
    store.backend.recorder.insert_events([StoredEvent("notes-1", 41, "model.responded@1", deep)])
    got: list[Any] = []
    with pytest.raises(CorruptEvent, match="position 41"):
        got.extend(store.read_all())
    assert [e.version for e in got] == list(range(1, 41))
