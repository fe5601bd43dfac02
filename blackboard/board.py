"""The shared blackboard of a run: a projection of ``blackboard.posted`` events.

Entries are facts, hypotheses, decisions, artifacts and questions, each with its author,
reasoning and cause. An entry is never edited in place: a new entry *supersedes* it, and both
stay in the history. Agents post by appending the event ``post()`` builds; they read with
``Board`` queries over the folded state.
"""

from __future__ import annotations

import uuid
from datetime import datetime

from pydantic import BaseModel, Field

from agentledger.events import BlackboardPosted, EntryKind, Envelope, NotFound
from agentledger.events.handlers import on
from agentledger.projections import Anomaly, Projection

_ENTRY_NAMESPACE = uuid.UUID("6f6b2f8e-8f7e-4d0a-9d59-3f8c1b9e2a10")


class Entry(BaseModel):
    """One blackboard entry as posted."""

    entry_id: str
    kind: EntryKind
    topic: str
    content: str
    reasoning: str
    author: str
    position: int | None
    at: datetime
    causation_id: uuid.UUID | None
    supersedes: str | None = None
    superseded_by: str | None = None


class BlackboardState(BaseModel):
    """Every entry of one run's blackboard, in the order posted."""

    entries: dict[str, Entry] = Field(default_factory=dict)
    anomalies: list[Anomaly] = Field(default_factory=list)


class BlackboardProjection(Projection[BlackboardState]):
    """Folds a run's ``blackboard.posted`` events into its ``BlackboardState``."""

    name = "blackboard"
    version = 1
    state_type = BlackboardState

    @on(BlackboardPosted)
    def _posted(self, state: BlackboardState, event: BlackboardPosted) -> None:
        p = event.payload

        def refuse(message: str) -> None:
            state.anomalies.append(
                Anomaly(
                    position=event.position,
                    stream=event.stream,
                    event_type=event.type,
                    message=message,
                )
            )

        if p.entry_id in state.entries:
            return refuse(f"entry {p.entry_id!r} posted twice; entries are never edited")
        if p.supersedes is not None:
            old = state.entries.get(p.supersedes)
            if old is None:
                return refuse(f"entry {p.entry_id!r} supersedes unknown entry {p.supersedes!r}")
            if old.superseded_by is not None:
                return refuse(
                    f"entry {p.supersedes!r} was already superseded by {old.superseded_by!r}"
                )
            old.superseded_by = p.entry_id
        state.entries[p.entry_id] = Entry(
            entry_id=p.entry_id,
            kind=p.kind,
            topic=p.topic,
            content=p.content,
            reasoning=p.reasoning,
            author=event.actor,
            position=event.position,
            at=event.at,
            causation_id=event.causation_id,
            supersedes=p.supersedes,
        )
        return None


class Board:
    """Read-only queries over a blackboard state."""

    def __init__(self, state: BlackboardState) -> None:
        self.state = state

    def current(self, kind: EntryKind | str | None = None, topic: str | None = None) -> list[Entry]:
        """Entries not superseded, optionally of one kind and/or topic, oldest first."""
        return [
            e
            for e in self.state.entries.values()
            if e.superseded_by is None
            and (kind is None or e.kind == kind)
            and (topic is None or e.topic == topic)
        ]

    def history(self, entry_id: str) -> list[Entry]:
        """The chain of versions that ends in (or passes through) ``entry_id``, oldest first."""
        entry = self.state.entries.get(entry_id)
        if entry is None:
            raise NotFound(f"no blackboard entry {entry_id!r} in this run")
        while entry.supersedes is not None:
            entry = self.state.entries[entry.supersedes]
        chain = [entry]
        while chain[-1].superseded_by is not None:
            chain.append(self.state.entries[chain[-1].superseded_by])
        return chain

    def topics(self) -> list[str]:
        """Topics with at least one current entry, sorted."""
        return sorted({e.topic for e in self.current()})


def post(
    *,
    actor: str,
    kind: EntryKind | str,
    topic: str,
    content: str,
    reasoning: str = "",
    supersedes: str | None = None,
    cause: Envelope | None = None,
) -> BlackboardPosted:
    """Build the event that posts an entry (the agent appends it to the run's stream).

    With a cause, the entry id is derived from the cause and the entry, so re-executing the
    same handler on the same event posts the same id (verification compares them).
    """
    if cause is not None:
        entry_id = uuid.uuid5(_ENTRY_NAMESPACE, f"{cause.id}/{kind}/{topic}/{content}").hex[:16]
        link = cause.caused_by(cause)
    else:
        entry_id, link = uuid.uuid4().hex[:16], {}
    return BlackboardPosted(
        actor=actor,
        payload={
            "entry_id": entry_id,
            "kind": kind,
            "topic": topic,
            "content": content,
            "reasoning": reasoning,
            "supersedes": supersedes,
        },
        **link,
    )
