"""The shared blackboard: entries are posted, superseded (never edited) and queried."""

from __future__ import annotations

import uuid

import pytest

from agentledger.blackboard import BlackboardProjection, BlackboardState, Board, post
from agentledger.events import BlackboardPosted, EntryKind, Event, EventStore, NotFound, RunStarted

RESEARCH = "agent:research/r1"
REVIEW = "agent:review/v1"


class Blackboard:
    """A run stream in a real store, with its blackboard folded from the log."""

    def __init__(self, store: EventStore) -> None:
        self.store = store
        self.stream = f"run-{uuid.uuid4()}"

    def post(
        self,
        entry_id: str,
        *,
        actor: str = RESEARCH,
        kind: str = "fact",
        topic: str = "retention",
        content: str | None = None,
        reasoning: str = "",
        supersedes: str | None = None,
    ) -> Event:
        event = BlackboardPosted(
            actor=actor,
            payload={
                "entry_id": entry_id,
                "kind": kind,
                "topic": topic,
                "content": content or f"content of {entry_id}",
                "reasoning": reasoning,
                "supersedes": supersedes,
            },
        )
        [recorded] = self.store.append(self.stream, [event])
        return recorded

    def state(self) -> BlackboardState:
        return BlackboardProjection().fold(self.store.read(self.stream))


def test_posted_entries_are_folded_with_author_reasoning_and_position(
    memory_store: EventStore,
) -> None:
    board = Blackboard(memory_store)
    e1 = board.post("b1", reasoning="from the policy", kind="fact")
    e2 = board.post("b2", actor=REVIEW, kind="question", topic="scope", content="which tables?")
    state = board.state()
    assert list(state.entries) == ["b1", "b2"]
    b1, b2 = state.entries["b1"], state.entries["b2"]
    assert (b1.kind, b1.topic, b1.content) == (EntryKind.FACT, "retention", "content of b1")
    assert b1.reasoning == "from the policy" and b1.author == RESEARCH
    assert b1.position == e1.position and b1.at == e1.at
    assert b2.author == REVIEW and b2.position == e2.position and b2.kind is EntryKind.QUESTION
    assert state.anomalies == []


def test_superseding_keeps_both_and_only_the_newest_is_current(memory_store: EventStore) -> None:
    board = Blackboard(memory_store)
    board.post("h1", kind="hypothesis", content="2 years")
    board.post("h2", kind="hypothesis", content="3 years", supersedes="h1")
    board.post("h3", kind="hypothesis", content="2 years after all", supersedes="h2")
    board.post("d1", kind="decision", topic="plan", content="delete")
    state = board.state()
    assert state.anomalies == []
    assert state.entries["h1"].superseded_by == "h2"
    assert state.entries["h2"].supersedes == "h1" and state.entries["h2"].superseded_by == "h3"
    assert state.entries["h1"].content == "2 years"  # never edited in place

    b = Board(state)
    assert [e.entry_id for e in b.current()] == ["h3", "d1"]
    assert [e.entry_id for e in b.current(kind="hypothesis")] == ["h3"]
    assert [e.entry_id for e in b.current(kind=EntryKind.DECISION)] == ["d1"]
    assert [e.entry_id for e in b.current(topic="plan")] == ["d1"]
    assert b.current(kind="fact") == [] and b.current(topic="nothing") == []
    assert b.topics() == ["plan", "retention"]
    for entry_id in ("h1", "h2", "h3"):
        assert [e.entry_id for e in b.history(entry_id)] == ["h1", "h2", "h3"]
    assert [e.entry_id for e in b.history("d1")] == ["d1"]
    with pytest.raises(NotFound, match="'zz'"):
        b.history("zz")


def test_illegal_posts_are_anomalies_and_not_applied(memory_store: EventStore) -> None:
    board = Blackboard(memory_store)
    board.post("b1")
    twice = board.post("b1", content="edited!")
    unknown = board.post("b2", supersedes="nope")
    board.post("b3", supersedes="b1")
    fork = board.post("b4", supersedes="b1")
    state = board.state()
    assert [(a.position, a.event_type) for a in state.anomalies] == [
        (twice.position, "blackboard.posted"),
        (unknown.position, "blackboard.posted"),
        (fork.position, "blackboard.posted"),
    ]
    assert "posted twice" in state.anomalies[0].message
    assert "unknown entry 'nope'" in state.anomalies[1].message
    assert "already superseded by 'b3'" in state.anomalies[2].message
    assert all(a.stream == board.stream for a in state.anomalies)
    assert state.entries["b1"].content == "content of b1"
    assert state.entries["b1"].superseded_by == "b3"
    assert set(state.entries) == {"b1", "b3"}


def test_other_events_leave_the_board_unchanged(memory_store: EventStore) -> None:
    board = Blackboard(memory_store)
    memory_store.append(board.stream, [RunStarted(actor="human:a", payload={"goal": "g"})])
    assert board.state() == BlackboardState()
    assert BlackboardProjection.event_types == ("blackboard.posted",)


def test_post_with_a_cause_derives_a_reproducible_id(memory_store: EventStore) -> None:
    [cause] = memory_store.append(
        f"run-{uuid.uuid4()}", [RunStarted(actor="human:a", payload={"goal": "g"})]
    )
    kwargs = {"actor": RESEARCH, "kind": "fact", "topic": "t", "content": "c", "cause": cause}
    first, second = post(**kwargs), post(**kwargs)  # type: ignore[arg-type]
    assert first.payload.entry_id == second.payload.entry_id
    assert first.causation_id == cause.id and first.correlation_id == cause.id
    other = post(**{**kwargs, "content": "d"})  # type: ignore[arg-type]
    assert other.payload.entry_id != first.payload.entry_id

    loose = [post(actor=RESEARCH, kind="fact", topic="t", content="c") for _ in range(2)]
    assert loose[0].payload.entry_id != loose[1].payload.entry_id
    assert loose[0].causation_id is None

    board = Blackboard(memory_store)
    [recorded] = memory_store.append(board.stream, [first])
    entry = board.state().entries[first.payload.entry_id]
    assert entry.causation_id == cause.id and entry.position == recorded.position
