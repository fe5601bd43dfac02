"""The event catalogue: every type round-trips through JSON, validates, exports JSON Schema."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from pydantic import ValidationError

from agentledger.events import (
    EVENT_ADAPTER,
    EVENT_TYPES,
    ActionExecuted,
    ActionFailed,
    ActionOutcomeUnknown,
    ActionProposed,
    ActionRiskAssessed,
    ApprovalDenied,
    ApprovalExpired,
    ApprovalGranted,
    ApprovalRequested,
    BlackboardPosted,
    ConfigurationError,
    ContextSummarized,
    Envelope,
    EventStore,
    MemoryStored,
    ModelFailed,
    ModelRequested,
    ModelResponded,
    NotificationSent,
    PreferenceRecorded,
    PrincipalKind,
    RunCancelled,
    RunCompleted,
    RunFailed,
    RunForked,
    RunPaused,
    RunResumed,
    RunStarted,
    ScratchpadUpdated,
    TaskAssigned,
    TaskCompleted,
    TaskFailed,
    TaskPlanned,
    TaskReviewed,
    principal_kind,
)
from agentledger.events._codec import seal, seal_as
from agentledger.events.envelope import restamped
from agentledger.events.schema import event_schema, union_schema, write_schemas
from agentledger.sample import write_sample_run

HASH = "0123456789abcdef" * 4
AT = datetime(2026, 3, 1, 9, 30, tzinfo=UTC)
CAUSE = uuid.UUID("5f0c2a4e-7b8d-4e61-a0c3-0d6d6f3b1a01")

# One realistic event per type, with the optional fields filled in where there are any.
SAMPLES: dict[str, Callable[[], Envelope]] = {
    "run.started": lambda: RunStarted(
        actor="human:ada",
        payload={
            "goal": "Summarize the Q1 incidents",
            "user": "ada",
            "models": {"research": "offline:planner"},
            "labels": {"team": "sre"},
        },
    ),
    "run.paused": lambda: RunPaused(actor="human:ada", payload={"reason": "lunch"}),
    "run.resumed": lambda: RunResumed(actor="human:ada"),
    "run.cancelled": lambda: RunCancelled(actor="system", payload={"reason": "budget"}),
    "run.completed": lambda: RunCompleted(
        actor="agent:coordinator/c1",
        payload={"summary": "3 incidents", "artifacts": ["report.md"]},
    ),
    "run.failed": lambda: RunFailed(
        actor="agent:coordinator/c1", payload={"reason": "no sources", "error": "404"}
    ),
    "run.forked": lambda: RunForked(
        actor="human:ada",
        payload={
            "parent_run": "run-1",
            "parent_position": 42,
            "note": "try a stronger model",
            "model_overrides": {"execution": "openai:gpt"},
        },
    ),
    "task.planned": lambda: TaskPlanned(
        actor="agent:coordinator/c1",
        payload={
            "task_id": "t2",
            "goal": "find the reports",
            "role": "research",
            "depends_on": ["t1"],
            "reasoning": "needs sources first",
        },
    ),
    "task.assigned": lambda: TaskAssigned(
        actor="agent:coordinator/c1",
        payload={"task_id": "t2", "role": "execution", "reasoning": "has the tools"},
    ),
    "task.completed": lambda: TaskCompleted(
        actor="agent:research/r1",
        payload={"task_id": "t2", "result": "found 3", "sources": ["https://x.test/a"]},
    ),
    "task.failed": lambda: TaskFailed(
        actor="agent:research/r1",
        payload={"task_id": "t2", "reason": "timeout", "retryable": True},
    ),
    "task.reviewed": lambda: TaskReviewed(
        actor="agent:review/v1",
        payload={
            "task_id": "t2",
            "accepted": False,
            "reasons": "the count is missing",
            "checks": ["PASS: the result is not empty", "FAIL: report.md is missing"],
        },
    ),
    "model.failed": lambda: ModelFailed(
        actor="agent:research/r1",
        payload={"request_id": "m1", "error": "HTTP 503 from 127.0.0.1:9", "retryable": True},
    ),
    "model.requested": lambda: ModelRequested(
        actor="agent:research/r1",
        payload={
            "request_id": "m1",
            "provider": "offline",
            "model": "planner",
            "prompt_hash": HASH,
            "prompt": "List the incidents",
            "context_event_ids": [CAUSE],
        },
    ),
    "model.responded": lambda: ModelResponded(
        actor="agent:research/r1",
        payload={
            "request_id": "m1",
            "model": "planner",
            "content": "INC-1, INC-2",
            "input_tokens": 12,
            "output_tokens": 5,
            "latency_ms": 3.5,
        },
    ),
    "action.proposed": lambda: ActionProposed(
        actor="agent:execution/e1",
        payload={
            "action_id": "a1",
            "task_id": "t2",
            "tool": "shell",
            "arguments": {"cmd": "ls", "flags": ["-l", "-a"], "depth": 2, "dry": None},
            "reasoning": "look before deleting",
            "idempotency_key": "run-1/a1",
        },
    ),
    "action.risk_assessed": lambda: ActionRiskAssessed(
        actor="system:policy",
        payload={"action_id": "a1", "risk": "high", "action_hash": HASH, "rule": "unknown tool"},
    ),
    "action.executed": lambda: ActionExecuted(
        actor="agent:execution/e1",
        payload={"action_id": "a1", "result": {"exit": 0, "out": ["a", "b"]}, "duration_ms": 7},
    ),
    "action.failed": lambda: ActionFailed(
        actor="agent:execution/e1", payload={"action_id": "a1", "error": "exit 1"}
    ),
    "action.outcome_unknown": lambda: ActionOutcomeUnknown(
        actor="system", payload={"action_id": "a1", "reason": "worker died"}
    ),
    "approval.requested": lambda: ApprovalRequested(
        actor="agent:coordinator/c1",
        payload={
            "action_id": "a1",
            "action_hash": HASH,
            "tool": "payments.send",
            "risk": "high",
            "preview": "send 10 EUR",
            "reasoning": "the invoice is due",
            "expires_at": AT,
        },
    ),
    "approval.granted": lambda: ApprovalGranted(
        actor="human:ada", payload={"action_id": "a1", "action_hash": HASH, "comment": "ok"}
    ),
    "approval.denied": lambda: ApprovalDenied(
        actor="human:ada", payload={"action_id": "a1", "action_hash": HASH, "reason": "no"}
    ),
    "approval.expired": lambda: ApprovalExpired(
        actor="system", payload={"action_id": "a1", "action_hash": HASH}
    ),
    "notification.sent": lambda: NotificationSent(
        actor="system", payload={"action_id": "a1", "channel": "inbox", "message": "ran a1"}
    ),
    "blackboard.posted": lambda: BlackboardPosted(
        actor="agent:review/v1",
        payload={
            "entry_id": "e2",
            "kind": "decision",
            "topic": "scope",
            "content": "Q1 only",
            "supersedes": "e1",
        },
    ),
    "scratchpad.updated": lambda: ScratchpadUpdated(
        actor="agent:coordinator/c1", payload={"key": "plan", "value": None}
    ),
    "memory.stored": lambda: MemoryStored(
        actor="agent:research/r1",
        payload={
            "memory_id": "mem1",
            "text": "ada prefers short reports",
            "tags": ["preference"],
            "user": "ada",
            "source_event_id": CAUSE,
        },
    ),
    "context.summarized": lambda: ContextSummarized(
        actor="system:memory",
        payload={
            "agent": "agent:research/r1",
            "from_position": 1,
            "to_position": 40,
            "summary": "searched three sources",
            "model": "planner",
        },
    ),
    "preference.recorded": lambda: PreferenceRecorded(
        actor="human:ada", payload={"user": "ada", "key": "length", "value": "short"}
    ),
}

ALL_TYPES = sorted(EVENT_TYPES)


def sample(event_type: str, **update: Any) -> Envelope:
    """The sample of ``event_type`` as a stored, chained event looks (stream, version, hashes)."""
    fields = {
        "stream": "run-1",
        "version": 3,
        "prev_hash": HASH,
        "hash": "f" * 64,
        "causation_id": CAUSE,
        "correlation_id": CAUSE,
        **update,
    }
    return SAMPLES[event_type]().model_copy(update=fields)


def test_every_event_type_has_a_sample() -> None:
    assert set(SAMPLES) == set(EVENT_TYPES)


@pytest.mark.parametrize("event_type", ALL_TYPES)
def test_every_event_type_round_trips_through_json(event_type: str) -> None:
    event = EVENT_TYPES[event_type].model_validate(sample(event_type).model_dump())
    text = event.model_dump_json()
    document = json.loads(text)
    assert document["type"] == event_type
    assert document["schema_version"] == EVENT_TYPES[event_type].current_schema_version
    assert "position" not in document  # the store's, known only on read

    back = EVENT_ADAPTER.validate_json(text)
    assert type(back) is EVENT_TYPES[event_type]
    assert back == event
    assert back.model_dump_json() == text
    assert EVENT_TYPES[event_type].model_validate_json(text) == event
    assert EVENT_ADAPTER.validate_python(document) == event


@pytest.mark.parametrize("event_type", ALL_TYPES)
@pytest.mark.parametrize("prev_hash", [None, HASH])
def test_sealing_in_place_writes_the_bytes_of_sealing_a_copy(
    event_type: str, prev_hash: str | None
) -> None:
    # The store splices stream, version and prev_hash into the serialised event instead of
    # copying it; the stored bytes (and so every hash) must be what sealing a copy gives.
    event = SAMPLES[event_type]()
    for stream, version in [("run-1", 1), ("user-ada@example.com", 123_456)]:
        placed = restamped(event, stream=stream, version=version, prev_hash=prev_hash)
        assert seal_as(event, stream, version, prev_hash) == seal(placed)


@pytest.mark.parametrize("event_type", ALL_TYPES)
def test_event_classes_know_their_type(event_type: str) -> None:
    cls = EVENT_TYPES[event_type]
    assert cls.event_type == event_type
    assert cls.model_fields["type"].default == event_type
    assert cls.model_fields["schema_version"].default == cls.current_schema_version


@pytest.mark.parametrize(
    ("cls", "payload", "location"),
    [
        (RunStarted, {"goal": ""}, ("payload", "goal")),
        (RunStarted, {"goal": "g", "colour": "red"}, ("payload", "colour")),
        (RunStarted, {}, ("payload", "goal")),
        (
            ModelRequested,
            {"request_id": "m", "provider": "p", "model": "m", "prompt_hash": "xyz"},
            ("payload", "prompt_hash"),
        ),
        (
            ActionRiskAssessed,
            {"action_id": "a", "risk": "extreme", "action_hash": HASH, "rule": "r"},
            ("payload", "risk"),
        ),
        (TaskAssigned, {"task_id": "t", "role": "ceo"}, ("payload", "role")),
        (RunForked, {"parent_run": "r", "parent_position": -1}, ("payload", "parent_position")),
        (
            ModelResponded,
            {"request_id": "m", "model": "m", "content": "c", "input_tokens": -5},
            ("payload", "input_tokens"),
        ),
        (
            ApprovalDenied,
            {"action_id": "a", "action_hash": HASH, "reason": ""},
            ("payload", "reason"),
        ),
    ],
)
def test_an_invalid_payload_names_the_field(
    cls: type[Envelope], payload: dict[str, Any], location: tuple[str, ...]
) -> None:
    with pytest.raises(ValidationError) as caught:
        cls(actor="human:ada", payload=payload)
    assert [tuple(error["loc"]) for error in caught.value.errors()] == [location]
    assert ".".join(location) in str(caught.value)


def test_an_unknown_type_or_extra_envelope_field_is_rejected() -> None:
    document = json.loads(sample("run.paused").model_dump_json())
    with pytest.raises(ValidationError, match="type"):
        EVENT_ADAPTER.validate_python({**document, "type": "run.exploded"})
    with pytest.raises(ValidationError, match="colour"):
        EVENT_ADAPTER.validate_python({**document, "colour": "red"})
    with pytest.raises(ValidationError, match="schema_version"):
        EVENT_ADAPTER.validate_python({**document, "schema_version": 2})


def test_events_are_immutable() -> None:
    event = sample("run.paused")
    with pytest.raises(ValidationError):
        event.actor = "human:mallory"  # type: ignore[misc]
    with pytest.raises(ValidationError):
        event.payload.reason = "edited"  # type: ignore[attr-defined]


def test_timestamps_are_aware_and_stored_in_utc() -> None:
    with pytest.raises(ValidationError, match="timezone info"):
        RunPaused(actor="system", at=datetime(2026, 3, 1, 9, 30))
    paris = datetime(2026, 3, 1, 10, 30, tzinfo=timezone(timedelta(hours=1)))
    event = RunPaused(actor="system", at=paris)
    assert event.at == AT  # the same instant
    # The store records every timestamp in UTC.
    with EventStore.open("memory://") as store:
        [recorded] = store.append("run-tz", [event], 0)
        [read] = store.read("run-tz")
    for stored in (recorded, read):
        assert stored.at == AT and stored.at.utcoffset() == timedelta(0)
        assert json.loads(stored.model_dump_json())["at"].startswith("2026-03-01T09:30:00")
    assert RunPaused(actor="system").at.utcoffset() == timedelta(0)


def test_caused_by_links_cause_and_correlation() -> None:
    root = sample("run.started", correlation_id=None)
    child = RunPaused(actor="system", **root.caused_by(root))
    grandchild = RunResumed(actor="system", **child.caused_by(child))
    assert (child.causation_id, child.correlation_id) == (root.id, root.id)
    assert (grandchild.causation_id, grandchild.correlation_id) == (child.id, root.id)


VALID_PRINCIPALS = [
    ("agent:coordinator/c1", PrincipalKind.AGENT),
    ("agent:research/r-1.a_b", PrincipalKind.AGENT),
    ("agent:execution/" + "x" * 64, PrincipalKind.AGENT),
    ("agent:review/v1", PrincipalKind.AGENT),
    ("human:ada", PrincipalKind.HUMAN),
    ("human:ada.lovelace@example.org", PrincipalKind.HUMAN),
    ("system", PrincipalKind.SYSTEM),
    ("system:policy", PrincipalKind.SYSTEM),
]

INVALID_PRINCIPALS = [
    "",
    "ada",
    "human:",
    "human:ada lovelace",
    "human:" + "x" * 65,
    "agent:ceo/x",
    "agent:research",
    "agent:research/",
    "agent:/r1",
    "robot:r2d2",
    "system:",
    "SYSTEM",
    " human:ada",
    "human:ada ",
]


@pytest.mark.parametrize(("principal", "kind"), VALID_PRINCIPALS)
def test_valid_principals(principal: str, kind: PrincipalKind) -> None:
    assert RunPaused(actor=principal).actor == principal
    assert principal_kind(principal) is kind


@pytest.mark.parametrize("principal", INVALID_PRINCIPALS)
def test_invalid_principals_are_rejected(principal: str) -> None:
    with pytest.raises(ValidationError, match="is not a principal") as caught:
        RunPaused(actor=principal)
    assert [tuple(e["loc"]) for e in caught.value.errors()] == [("actor",)]


def test_a_principal_with_a_trailing_newline_is_rejected() -> None:
    with pytest.raises(ValidationError, match="is not a principal"):
        RunPaused(actor="human:ada\n")


def test_who_may_append_approvals() -> None:
    assert ApprovalGranted.allowed_principals == {PrincipalKind.HUMAN}
    assert ApprovalDenied.allowed_principals == {PrincipalKind.HUMAN}
    assert ApprovalExpired.allowed_principals == {PrincipalKind.SYSTEM}
    assert ApprovalRequested.allowed_principals == set(PrincipalKind)
    # No other type restricts who appends it.
    restricted = {n for n, c in EVENT_TYPES.items() if c.allowed_principals != set(PrincipalKind)}
    assert restricted == {"approval.granted", "approval.denied", "approval.expired"}


# ---------------------------------------------------------------- JSON Schema export


def _validator(schema: dict[str, Any]) -> jsonschema.Draft202012Validator:
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(
        schema, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER
    )


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    out = tmp_path_factory.mktemp("schemas")
    written = write_schemas(out)
    assert sorted(written) == sorted(out.iterdir())
    return {path.name: json.loads(path.read_text()) for path in written}


def test_schema_export_writes_a_file_per_type_and_the_union(
    exported: dict[str, dict[str, Any]],
) -> None:
    assert set(exported) == {f"{name}.schema.json" for name in EVENT_TYPES} | {"event.schema.json"}
    for name in EVENT_TYPES:
        schema = exported[f"{name}.schema.json"]
        assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
        assert schema["$id"] == f"agentledger:{name}"
        assert schema == json.loads(json.dumps(event_schema(name)))
    assert exported["event.schema.json"] == json.loads(json.dumps(union_schema()))


@pytest.fixture(scope="module")
def validators(
    exported: dict[str, dict[str, Any]],
) -> dict[str, jsonschema.Draft202012Validator]:
    return {name: _validator(schema) for name, schema in exported.items()}


@pytest.mark.parametrize("event_type", ALL_TYPES)
def test_each_schema_validates_its_events_and_rejects_others(
    validators: dict[str, jsonschema.Draft202012Validator], event_type: str
) -> None:
    document = json.loads(sample(event_type).model_dump_json())
    own = validators[f"{event_type}.schema.json"]
    union = validators["event.schema.json"]
    own.validate(document)
    union.validate(document)

    # The schemas are not trivially permissive.
    assert not own.is_valid({**document, "payload": "not an object"})
    assert not own.is_valid({**document, "unknown_field": 1})
    assert not own.is_valid({k: v for k, v in document.items() if k != "actor"})
    other = "run.paused" if event_type != "run.paused" else "run.resumed"
    assert not own.is_valid(json.loads(sample(other).model_dump_json()))
    assert not union.is_valid({**document, "type": "run.exploded"})
    assert not union.is_valid({**document, "payload": {"unknown_field": 1}})


def test_write_schemas_creates_the_folder(tmp_path: Path) -> None:
    written = write_schemas(tmp_path / "a" / "b")
    assert len(written) == len(EVENT_TYPES) + 1
    assert all(path.is_file() for path in written)


def test_write_schemas_never_writes_over_the_store(tmp_path: Path) -> None:
    # A store whose file has a schema file's name: even overwrite=True leaves it alone.
    store = tmp_path / "event.schema.json"
    with EventStore.open(f"sqlite:///{store}") as s:
        write_sample_run(s)
    before = store.read_bytes()
    with pytest.raises(ConfigurationError, match="would destroy the log"):
        write_schemas(tmp_path, overwrite=True, store_url=f"sqlite:///{store}")
    assert store.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "event.schema.json",
        "event.schema.json-notify",
    ]
