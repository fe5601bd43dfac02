"""Where projection state lives between runs: a checkpoint (state + position) and snapshots.

A checkpoint row holds a projection's state *and* the log position it reflects, written in one
transaction, so a runner killed at any point resumes from a consistent pair: an event is never
skipped or folded twice. Snapshots are older checkpoints kept for ``as_of`` (time travel).

The file is a cache: delete it and the projections are rebuilt from the log.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from agentledger.events import AgentLedgerError, StoreUnavailable

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS checkpoints (name TEXT PRIMARY KEY, version INTEGER NOT NULL, "
    "position INTEGER NOT NULL, state BLOB NOT NULL)",
    "CREATE TABLE IF NOT EXISTS snapshots (name TEXT NOT NULL, version INTEGER NOT NULL, "
    "position INTEGER NOT NULL, state BLOB NOT NULL, PRIMARY KEY (name, version, position)) "
    "WITHOUT ROWID",
)


@dataclass(frozen=True)
class Checkpoint:
    """A projection's state as of a log position."""

    position: int
    state: bytes


class CheckpointStore:
    """Checkpoints and snapshots of projections in a local SQLite file (WAL)."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(
                str(self.path), timeout=30, isolation_level=None, check_same_thread=False
            )
            self._db.execute("PRAGMA journal_mode=WAL")
            for statement in _SCHEMA:
                self._db.execute(statement)
        except sqlite3.DatabaseError as exc:
            raise StoreUnavailable(
                f"projection cache {self.path} is unreadable ({exc}); it only holds rebuildable "
                "state: run `agentledger rebuild`, which deletes and rebuilds it"
            ) from exc
        self._lock = threading.Lock()

    @contextmanager
    def _guard(self) -> Iterator[None]:
        # One lock per store (the connection is shared by threads), and damaged pages found
        # mid-query become the same clear error as a damaged file found on open.
        with self._lock:
            try:
                yield
            except sqlite3.DatabaseError as exc:
                raise StoreUnavailable(
                    f"projection cache {self.path} is damaged ({exc}); it only holds rebuildable "
                    "state: run `agentledger rebuild`, which deletes and rebuilds it"
                ) from exc

    def load(self, name: str, version: int) -> Checkpoint | None:
        """The checkpoint of ``name`` at ``version``; checkpoints of other versions are dropped."""
        with self._guard():
            row = self._db.execute(
                "SELECT version, position, state FROM checkpoints WHERE name = ?", (name,)
            ).fetchone()
            if row is None:
                return None
            if row[0] != version:
                self._reset(name)
                return None
            return Checkpoint(row[1], bytes(row[2]))

    def save(
        self, name: str, version: int, *, after: int, position: int, state: bytes, snapshot: bool
    ) -> None:
        """Replace the checkpoint taken ``after`` a position by one at ``position``, atomically.

        Fails with ``CheckpointConflict`` if another runner moved the checkpoint meanwhile.
        """
        with self._guard():
            self._db.execute("BEGIN IMMEDIATE")
            try:
                current = self._db.execute(
                    "SELECT position FROM checkpoints WHERE name = ?", (name,)
                ).fetchone()
                stored = current[0] if current else 0
                if stored != after:
                    raise CheckpointConflict(
                        f"projection {name!r} was advanced to position {stored}"
                        f" by another runner while this one folded from {after}; this runner's "
                        "batch was discarded (restart it to continue from the stored checkpoint)"
                    )
                self._db.execute(
                    "INSERT INTO checkpoints VALUES (?, ?, ?, ?) ON CONFLICT (name) DO UPDATE "
                    "SET version = excluded.version, position = excluded.position, "
                    "state = excluded.state",
                    (name, version, position, state),
                )
                if snapshot:
                    self._db.execute(
                        "INSERT OR REPLACE INTO snapshots VALUES (?, ?, ?, ?)",
                        (name, version, position, state),
                    )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def snapshot_at_or_before(self, name: str, version: int, position: int) -> Checkpoint | None:
        """The newest snapshot of ``name`` taken at or before ``position``."""
        with self._guard():
            row = self._db.execute(
                "SELECT position, state FROM snapshots WHERE name = ? AND version = ? "
                "AND position <= ? ORDER BY position DESC LIMIT 1",
                (name, version, position),
            ).fetchone()
        return Checkpoint(row[0], bytes(row[1])) if row else None

    def snapshot_positions(self, name: str, version: int) -> list[int]:
        """Positions of the snapshots kept for ``name``."""
        with self._guard():
            rows = self._db.execute(
                "SELECT position FROM snapshots WHERE name = ? AND version = ? ORDER BY position",
                (name, version),
            ).fetchall()
        return [r[0] for r in rows]

    def reset(self, name: str) -> None:
        """Forget everything stored for ``name`` (the next run rebuilds it from the log)."""
        with self._guard():
            self._reset(name)

    def _reset(self, name: str) -> None:
        self._db.execute("DELETE FROM checkpoints WHERE name = ?", (name,))
        self._db.execute("DELETE FROM snapshots WHERE name = ?", (name,))

    def close(self) -> None:
        """Close the file."""
        self._db.close()

    @staticmethod
    def delete(path: Path | str) -> None:
        """Remove a checkpoint file and its WAL companions (they are rebuilt from the log)."""
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)


class PositionOutOfRange(AgentLedgerError):
    """A position beyond the end of the log (or below 0) was asked for."""


class CheckpointConflict(AgentLedgerError):
    """Two runners folded the same projection; the later commit is refused."""
