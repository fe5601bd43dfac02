"""A small scripted sample run, written event by event (a fixture of known content for tests).

It is a fixed script, not agents at work: it shows what a run's log looks like (planning,
assignment, a recorded model call, a low-risk action that ran and a high-risk one waiting for a
human) so the log, streams and verify-log commands have something real to show.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from datetime import UTC, datetime, timedelta

from agentledger.events import (
    ActionExecuted,
    ActionProposed,
    ActionRiskAssessed,
    ApprovalRequested,
    BlackboardPosted,
    Envelope,
    Event,
    EventStore,
    MemoryStored,
    ModelRequested,
    ModelResponded,
    RunStarted,
    ScratchpadUpdated,
    TaskAssigned,
    TaskCompleted,
    TaskPlanned,
)

SAMPLE_GOAL = "Clean up stale customer records older than 2 years and report what changed"


def _hash(data: object) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


def write_sample_run(store: EventStore) -> tuple[str, list[Event]]:
    """Append the sample run to ``store``; return its stream and the recorded events."""
    run = f"run-{uuid.uuid4()}"
    coordinator, research = "agent:coordinator/c1", "agent:research/r1"
    execution = "agent:execution/e1"
    recorded: list[Event] = []

    def emit(*events: Envelope) -> Event:
        batch = store.append(run, list(events), expected_version=len(recorded))
        recorded.extend(batch)
        return batch[-1]

    started = emit(RunStarted(actor="human:demo", payload={"goal": SAMPLE_GOAL, "user": "demo"}))
    link = started.caused_by(started)
    steps = [
        ("t1", "research", "Find which tables hold customer records and their retention rules"),
        ("t2", "execution", "Count records older than 2 years per table"),
        ("t3", "execution", "Delete the stale records"),
        ("t4", "review", "Check the counts before and after match the plan"),
    ]
    plan = emit(
        *[
            TaskPlanned(
                actor=coordinator,
                **link,
                payload={
                    "task_id": tid,
                    "role": role,
                    "goal": goal,
                    "depends_on": [f"t{int(tid[1]) - 1}"] if tid != "t1" else [],
                    "reasoning": "four distinct steps, so the goal is decomposed (more than three)",
                },
            )
            for tid, role, goal in steps
        ]
    )
    assigned = emit(
        TaskAssigned(
            actor=coordinator,
            **plan.caused_by(started),
            payload={
                "task_id": "t1",
                "role": "research",
                "reasoning": "retention rules are a lookup",
            },
        )
    )
    prompt = "Which tables hold customer records, and what retention rules apply?"
    asked = emit(
        ModelRequested(
            actor=research,
            **assigned.caused_by(assigned),
            payload={
                "request_id": "m1",
                "provider": "offline",
                "model": "offline-planner",
                "prompt_hash": _hash(prompt),
                "prompt": prompt,
            },
        )
    )
    answered = emit(
        ModelResponded(
            actor=research,
            **asked.caused_by(asked),
            payload={
                "request_id": "m1",
                "model": "offline-planner",
                "content": "customers, customer_events; retention: 2 years (policy DP-7)",
                "input_tokens": 14,
                "output_tokens": 12,
                "latency_ms": 0.4,
            },
        )
    )
    emit(
        BlackboardPosted(
            actor=research,
            **answered.caused_by(answered),
            payload={
                "entry_id": "b1",
                "kind": "fact",
                "topic": "retention",
                "content": "Customer data is kept 2 years (policy DP-7)",
                "reasoning": "stated in the data-protection policy",
            },
        ),
        MemoryStored(
            actor=research,
            **answered.caused_by(answered),
            payload={
                "memory_id": "mem1",
                "text": "Retention for customer data is 2 years (DP-7)",
                "tags": ["retention", "policy"],
                "user": "demo",
            },
        ),
        TaskCompleted(
            actor=research,
            **answered.caused_by(answered),
            payload={
                "task_id": "t1",
                "result": "tables: customers, customer_events; retention 2y",
                "sources": ["policy DP-7"],
            },
        ),
    )
    count_args = {"sql": "SELECT count(*) FROM customers WHERE last_seen < now() - '2y'"}
    proposed = emit(
        ActionProposed(
            actor=execution,
            **link,
            payload={
                "action_id": "a1",
                "task_id": "t2",
                "tool": "sql.query",
                "arguments": count_args,
                "reasoning": "count before deleting, so the review can compare",
                "idempotency_key": f"{run}/a1",
            },
        )
    )
    emit(
        ActionRiskAssessed(
            actor="system:policy",
            **proposed.caused_by(proposed),
            payload={
                "action_id": "a1",
                "risk": "low",
                "action_hash": _hash(["sql.query", count_args]),
                "rule": "tool sql.query is declared read-only (low)",
            },
        )
    )
    emit(
        ActionExecuted(
            actor=execution,
            **proposed.caused_by(proposed),
            payload={"action_id": "a1", "result": {"rows": 1, "count": 1284}, "duration_ms": 12.5},
        ),
        ScratchpadUpdated(
            actor=execution,
            **proposed.caused_by(proposed),
            payload={"key": "stale_count", "value": "1284"},
        ),
    )
    delete_args = {"sql": "DELETE FROM customers WHERE last_seen < now() - '2y'"}
    delete_hash = _hash(["sql.execute", delete_args])
    delete = emit(
        ActionProposed(
            actor=execution,
            **link,
            payload={
                "action_id": "a2",
                "task_id": "t3",
                "tool": "sql.execute",
                "arguments": delete_args,
                "reasoning": "1284 records are past the 2-year retention of policy DP-7",
                "idempotency_key": f"{run}/a2",
            },
        )
    )
    emit(
        ActionRiskAssessed(
            actor="system:policy",
            **delete.caused_by(delete),
            payload={
                "action_id": "a2",
                "risk": "high",
                "action_hash": delete_hash,
                "rule": "deleting user data is high risk",
            },
        ),
        ApprovalRequested(
            actor=execution,
            **delete.caused_by(delete),
            payload={
                "action_id": "a2",
                "action_hash": delete_hash,
                "tool": "sql.execute",
                "risk": "high",
                "preview": "DELETE 1284 rows from customers",
                "reasoning": "1284 records are past the 2-year retention of policy DP-7",
                "expires_at": datetime.now(UTC) + timedelta(days=3),
            },
        ),
    )
    return run, recorded
