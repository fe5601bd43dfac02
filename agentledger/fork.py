"""Fork a run at a position of its log: a new run that starts as the parent was, then goes on.

The fork's stream begins with ``run.forked`` (parent, position, model overrides, note) followed
by the parent's events up to that position, copied in one atomic append: new ids (causation and
correlation links and context references rewritten to them), the fork's own hash chain, the
original principals and timestamps kept as history. The parent is never touched. The agents
then see a run whose last reactions are missing and take it up from there: they react to the
copied events that have no reaction in the copy (with a different model, if overridden, or
after a different human decision).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from agentledger.events import (
    EVENT_ADAPTER,
    AgentLedgerError,
    Event,
    EventStore,
    RunForked,
)
from agentledger.projections.runner import run_events


def fork_run(
    store: EventStore,
    parent: str,
    position: int,
    *,
    by: str,
    models: Mapping[str, str] | None = None,
    note: str = "",
) -> tuple[str, list[Event]]:
    """Create the fork of ``parent`` at global ``position``; return its stream and events."""
    events = run_events(store, parent)
    first, last = events[0].position or 0, events[-1].position or 0
    if not first <= position <= last:
        raise AgentLedgerError(
            f"run {parent} spans positions {first}..{last}; --at {position} is outside it"
        )
    prefix = [e for e in events if (e.position or 0) <= position]
    after = events[len(prefix)] if len(prefix) < len(events) else None
    if after is not None and _same_reaction(prefix[-1], after):
        boundary = _boundary(events, len(prefix))
        raise AgentLedgerError(
            f"position {position} is inside one agent's reaction (it continues at position "
            f"{after.position}); fork before it or after it, e.g. --at {boundary}"
        )
    ids: dict[uuid.UUID, uuid.UUID] = {}
    copies: list[Any] = []
    forked = RunForked(
        actor=by,
        payload={
            "parent_run": parent,
            "parent_position": position,
            "note": note,
            "model_overrides": dict(models or {}),
        },
    )
    for event in prefix:
        ids[event.id] = uuid.uuid4()
    for event in prefix:
        doc = event.model_dump(mode="json", exclude={"stream", "version", "prev_hash", "hash"})
        doc["id"] = str(ids[event.id])
        for link in ("causation_id", "correlation_id"):
            if doc.get(link):
                doc[link] = str(ids.get(uuid.UUID(doc[link]), uuid.UUID(doc[link])))
        refs = doc["payload"].get("context_event_ids")
        if isinstance(refs, list):
            doc["payload"]["context_event_ids"] = [
                str(ids.get(uuid.UUID(r), uuid.UUID(r))) for r in refs
            ]
        copies.append(EVENT_ADAPTER.validate_python(doc))
    stream = f"run-{datetime.now(UTC).strftime('%Y%m%d-%H%M%S')}-{os.urandom(3).hex()}"
    recorded = store.append(stream, [forked, *copies], expected_version=0)
    return stream, recorded


def _same_reaction(a: Event, b: Event) -> bool:
    # Consecutive events of one agent's (or the policy's, within it) reaction to one cause.
    def reactor(e: Event) -> bool:
        return e.actor.startswith("agent:") or e.actor == "system:policy"

    return (
        reactor(a)
        and reactor(b)
        and a.causation_id is not None
        and (a.causation_id == b.causation_id)
    )


def _boundary(events: list[Event], index: int) -> int:
    """The position at which the reaction containing ``events[index - 1]`` ends."""
    end = index
    while end < len(events) and _same_reaction(events[end - 1], events[end]):
        end += 1
    return events[end - 1].position or 0
