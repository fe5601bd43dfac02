"""Long-term memory in a real LanceDB directory, rebuilt from ``memory.stored`` events."""

from __future__ import annotations

import math
import random
import shutil
from pathlib import Path

import pytest

from agentledger.events import (
    EventStore,
    InvalidEvent,
    MemoryStored,
    ScratchpadUpdated,
)
from agentledger.projections.memory import LongTermMemory, Memory

WORDS = (
    *("customer", "retention", "policy", "churn", "invoice", "payment", "refund", "database"),
    *("migration", "schema", "backup", "quarterly", "report", "revenue", "forecast"),
    *("onboarding", "support", "ticket", "latency", "outage"),
)
USERS = ("ann", "bob", None)
QUERIES = ("customer retention", "invoice payment refund", "database backup outage", "churn")
MODES = ("hybrid", "vector", "text")


def append_memories(store: EventStore, count: int, start: int = 0, seed: int = 0) -> list[int]:
    """Append ``count`` memories (with scratchpad noise between them); return their positions."""
    rng = random.Random(seed)
    positions = []
    for i in range(start, start + count):
        user = USERS[i % 3]
        memory = MemoryStored(
            actor="agent:research/r1",
            payload={
                "memory_id": f"mem{i}",
                "text": " ".join(rng.choice(WORDS) for _ in range(8)),
                "tags": [rng.choice(WORDS)],
                "user": user,
            },
        )
        noise = ScratchpadUpdated(actor="agent:research/r1", payload={"key": "k", "value": "v"})
        recorded = store.append(f"run-{i % 4}", [noise, memory])
        positions.append(recorded[1].position or 0)
    return positions


def results(memory: LongTermMemory) -> dict[tuple[str, str], list[tuple[str, int, float]]]:
    return {
        (query, mode): [
            (m.memory_id, m.position, m.score)
            for m in memory.search(query, k=8, mode=mode)  # type: ignore[arg-type]
        ]
        for query in QUERIES
        for mode in MODES
    }


def every_memory(memory: LongTermMemory) -> list[Memory]:
    return memory.search("customer", k=1000, mode="vector")


def test_catch_up_adds_only_memories_in_batches(memory_store: EventStore, tmp_path: Path) -> None:
    positions = append_memories(memory_store, 23)
    memory = LongTermMemory(tmp_path / "lancedb")
    assert memory.rebuild_notice == "" and memory.count() == 0 and memory.position == 0
    v0 = memory._table.version
    assert memory.catch_up(memory_store, batch=5) == 23
    assert memory._table.version == v0 + math.ceil(23 / 5)  # one write per batch
    assert memory.count() == 23 and memory.position == positions[-1]
    rows = every_memory(memory)
    assert sorted(m.position for m in rows) == positions  # no scratchpad event got in
    assert {m.memory_id for m in rows} == {f"mem{i}" for i in range(23)}
    assert {m.stream for m in rows} == {f"run-{i}" for i in range(4)}

    more = append_memories(memory_store, 7, start=23, seed=1)
    progress: list[int] = []
    assert memory.catch_up(memory_store, batch=5, progress=progress.append) == 7
    assert progress == [5, 7]
    assert memory._table.version == v0 + 5 + 2
    assert memory.count() == 30 and memory.position == more[-1]
    assert memory.catch_up(memory_store) == 0  # nothing new: nothing added twice
    assert memory.count() == 30
    assert len({m.memory_id for m in every_memory(memory)}) == 30


def test_a_deleted_directory_is_rebuilt_with_identical_results(
    memory_store: EventStore, tmp_path: Path
) -> None:
    append_memories(memory_store, 40)
    memory = LongTermMemory(tmp_path / "lancedb")
    memory.catch_up(memory_store, batch=16)
    before = results(memory)
    assert all(before.values()) and len(before[("churn", "vector")]) == 8
    assert before[("customer retention", "hybrid")] != before[("churn", "hybrid")]

    memory.delete()
    assert not (tmp_path / "lancedb").exists()
    rebuilt = LongTermMemory(tmp_path / "lancedb")
    assert rebuilt.count() == 0
    rebuilt.catch_up(memory_store, batch=7)  # other batch sizes, same table
    assert results(rebuilt) == before


def test_a_corrupted_directory_is_rebuilt_from_the_log(
    memory_store: EventStore, tmp_path: Path
) -> None:
    append_memories(memory_store, 20)
    path = tmp_path / "lancedb"
    memory = LongTermMemory(path)
    memory.catch_up(memory_store, batch=6)
    before = results(memory)
    damaged = [f for f in path.rglob("*") if f.is_file()]
    assert len(damaged) > 5
    for file in damaged:
        file.write_bytes(b"\x00garbage\xff" * 40)

    reopened = LongTermMemory(path)
    assert (
        str(path) in reopened.rebuild_notice and "rebuilt from the log" in reopened.rebuild_notice
    )
    assert reopened.count() == 0
    assert reopened.catch_up(memory_store) == 20
    assert results(reopened) == before


def test_damaged_data_files_are_rebuilt_from_the_log(
    memory_store: EventStore, tmp_path: Path
) -> None:
    append_memories(memory_store, 20)
    path = tmp_path / "lancedb"
    memory = LongTermMemory(path)
    memory.catch_up(memory_store, batch=6)
    before = results(memory)
    data_files = list(path.rglob("data/*.lance"))
    assert data_files
    for file in data_files:
        file.write_bytes(b"\x00garbage\xff" * 40)
    reopened = LongTermMemory(path)
    reopened.catch_up(memory_store)
    assert reopened.rebuild_notice
    assert results(reopened) == before


def test_user_and_as_of_filters(memory_store: EventStore, tmp_path: Path) -> None:
    positions = append_memories(memory_store, 30)
    memory = LongTermMemory(tmp_path / "lancedb")
    memory.catch_up(memory_store)
    for mode in MODES:
        for user in ("ann", "bob"):
            hits = memory.search("customer retention policy", k=50, user=user, mode=mode)  # type: ignore[arg-type]
            assert hits and {h.user for h in hits} == {user}, (mode, user)
        cut = positions[9]
        hits = memory.search("customer retention policy", k=50, as_of=cut, mode=mode)  # type: ignore[arg-type]
        assert hits and max(h.position for h in hits) <= cut, mode
        both = memory.search("customer", k=50, user="ann", as_of=cut, mode=mode)  # type: ignore[arg-type]
        assert all(h.user == "ann" and h.position <= cut for h in both), mode

    # Exhaustive vector search: the filters select exactly the matching rows.
    everything = every_memory(memory)
    ann = memory.search("customer", k=1000, user="ann", mode="vector")
    assert {h.memory_id for h in ann} == {m.memory_id for m in everything if m.user == "ann"}
    early = memory.search("customer", k=1000, as_of=positions[9], mode="vector")
    assert sorted(h.position for h in early) == positions[:10]
    assert memory.search("customer", k=1000, as_of=0, mode="vector") == []
    assert memory.search("customer", user="o'brien") == []  # quoted, not an injection


def test_a_memory_as_of_its_own_position_is_found(memory_store: EventStore, tmp_path: Path) -> None:
    [recorded] = memory_store.append(
        "run-x",
        [
            MemoryStored(
                actor="agent:research/r1",
                payload={"memory_id": "only", "text": "kiwi orchard yields", "user": "ann"},
            )
        ],
    )
    memory = LongTermMemory(tmp_path / "lancedb")
    memory.catch_up(memory_store)
    position = recorded.position or 0
    for mode in MODES:
        hits = memory.search("kiwi orchard", as_of=position, mode=mode)  # type: ignore[arg-type]
        assert [h.memory_id for h in hits] == ["only"], mode
        assert memory.search("kiwi orchard", as_of=position - 1, mode=mode) == []  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("query", "k", "message"),
    [
        ("", 5, "the memory query is empty"),
        ("   \n ", 5, "the memory query is empty"),
        ("x" * 2001, 5, "2001 characters; the limit is 2000"),
        ("customer", 0, "k must be between 1 and 1000, got 0"),
        ("customer", 1001, "k must be between 1 and 1000, got 1001"),
    ],
)
def test_bad_queries_are_refused_clearly(
    memory_store: EventStore, tmp_path: Path, query: str, k: int, message: str
) -> None:
    append_memories(memory_store, 3)
    memory = LongTermMemory(tmp_path / "lancedb")
    memory.catch_up(memory_store)
    with pytest.raises(InvalidEvent, match=message):
        memory.search(query, k=k)
    assert memory.search("x" * 2000, k=1) is not None  # the limit itself is allowed


def test_an_empty_table_answers_nothing(tmp_path: Path) -> None:
    memory = LongTermMemory(tmp_path / "lancedb")
    assert memory.search("anything") == []
    shutil.rmtree(tmp_path / "lancedb")
    assert LongTermMemory(tmp_path / "lancedb").rebuild_notice == ""


def test_ann_search_with_the_index_finds_what_exact_search_finds(
    memory_store: EventStore, tmp_path: Path
) -> None:
    rng = random.Random(3)
    vocabulary = [f"{rng.choice(WORDS)}{n}" for n in range(400)]
    for start in range(0, 3000, 500):
        memory_store.append(
            f"run-{start}",
            [
                MemoryStored(
                    actor="agent:research/r1",
                    payload={
                        "memory_id": f"mem{i}",
                        "text": " ".join(rng.choice(vocabulary) for _ in range(10)),
                        "tags": [],
                        "user": USERS[i % 3],
                    },
                )
                for i in range(start, start + 500)
            ],
        )
    memory = LongTermMemory(tmp_path / "lancedb")
    memory.catch_up(memory_store)
    memory.ensure_indexes(ann_threshold=1000)
    assert any(i.index_type == "IvfHnswSq" for i in memory._table.list_indices())
    recalls = []
    for _ in range(30):
        query = " ".join(rng.choice(vocabulary) for _ in range(4))
        exact = {m.memory_id for m in memory.search(query, k=10, mode="vector", exact=True)}
        ann = memory.search(query, k=10, mode="vector")
        assert len(ann) == 10
        recalls.append(len(exact & {m.memory_id for m in ann}) / 10)
    assert sum(recalls) / len(recalls) >= 0.9, recalls
    # Filters still apply with the index.
    hits = memory.search("customer", k=50, user="bob", mode="vector")
    assert hits and {m.user for m in hits} == {"bob"}


def test_a_full_text_index_of_every_row_is_not_built_again_by_the_next_process(
    memory_store: EventStore, tmp_path: Path
) -> None:
    append_memories(memory_store, 40)
    memory = LongTermMemory(tmp_path / "lancedb")
    memory.catch_up(memory_store)
    before = results(memory)
    version = memory._table.version
    # Another command (a new object on the same directory, caught up): searches answer the
    # same, and the index is not written again (a second per 30,000 memories, a table version).
    again = LongTermMemory(tmp_path / "lancedb")
    assert again.catch_up(memory_store) == 0
    assert results(again) == before
    assert again._table.version == version
    # One memory more: the index is built again over every row.
    append_memories(memory_store, 1, start=40, seed=2)
    assert again.catch_up(memory_store) == 1
    again.search("customer", mode="text")
    assert again._table.index_stats("text_idx").num_indexed_rows == 41
