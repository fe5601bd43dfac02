"""Where projection state lives between runs: a checkpoint (state + position) and snapshots.

A checkpoint row holds a projection's state *and* the log position it reflects, written in one
transaction, so a runner killed at any point resumes from a consistent pair: an event is never
skipped or folded twice. Snapshots are older checkpoints kept for ``as_of`` (time travel).

A keyed projection (one state per run, ``PerStream``) is stored a key per row instead: a commit
writes the keys that changed since the last one, not the whole state (which grows with the
number of runs in the log), and each key keeps one row per snapshot epoch, so the state of one
key at any position is its newest row at or before it plus the key's later events.

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
    # A keyed projection's states: a key's newest row of each epoch (position // snapshot
    # interval); ``position`` is the commit's, ``stream_version`` the key's last folded version.
    "CREATE TABLE IF NOT EXISTS keyed (name TEXT NOT NULL, key TEXT NOT NULL, "
    "epoch INTEGER NOT NULL, position INTEGER NOT NULL, stream_version INTEGER NOT NULL, "
    "state BLOB NOT NULL, PRIMARY KEY (name, key, epoch))",  # rows of KBs: not WITHOUT ROWID
    # When each key entered the state (its order there), for listing the keys as of a position.
    "CREATE TABLE IF NOT EXISTS keyed_keys (name TEXT NOT NULL, key TEXT NOT NULL, "
    "first_position INTEGER NOT NULL, PRIMARY KEY (name, key)) WITHOUT ROWID",
    "CREATE INDEX IF NOT EXISTS keyed_keys_by_position ON keyed_keys (name, first_position)",
)


@dataclass(frozen=True)
class Checkpoint:
    """A projection's state as of a log position."""

    position: int
    state: bytes


@dataclass(frozen=True)
class KeyedState:
    """One key's state in a keyed projection, as of ``position``."""

    key: str
    position: int
    stream_version: int
    """The version of the key's stream last folded into ``state``."""
    state: bytes
    first_position: int
    """Where the key entered the projection's state."""


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
            # A crash may lose the newest commits, never tear one: a runner then resumes from
            # an older checkpoint, state and position still together (the file is a cache).
            self._db.execute("PRAGMA synchronous=NORMAL")
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
        with self._transaction(name, version, after, position, state):
            if snapshot:
                self._db.execute(
                    "INSERT OR REPLACE INTO snapshots VALUES (?, ?, ?, ?)",
                    (name, version, position, state),
                )

    def save_keyed(
        self,
        name: str,
        version: int,
        *,
        after: int,
        position: int,
        changed: list[KeyedState],
        epoch: int,
    ) -> None:
        """Move a keyed projection's checkpoint from ``after`` to ``position`` with the keys
        that changed, atomically (each replaces its row of ``epoch``); ``CheckpointConflict``
        if another runner moved it meanwhile."""
        with self._transaction(name, version, after, position, b""):
            self._db.executemany(
                "INSERT OR REPLACE INTO keyed VALUES (?, ?, ?, ?, ?, ?)",
                [(name, k.key, epoch, k.position, k.stream_version, k.state) for k in changed],
            )
            self._db.executemany(
                "INSERT OR IGNORE INTO keyed_keys VALUES (?, ?, ?)",
                [(name, k.key, k.first_position) for k in changed],
            )

    @contextmanager
    def _transaction(
        self, name: str, version: int, after: int, position: int, state: bytes
    ) -> Iterator[None]:
        # Check that the checkpoint is still where this runner left it, move it, and let the
        # caller write the rest, all in one transaction.
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
                yield
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def load_keyed(self, name: str, version: int) -> tuple[int, list[KeyedState]] | None:
        """A keyed projection's checkpoint: its position and each key's newest state, in the
        order the keys entered the state (None if there is none, or of another version)."""
        checkpoint = self.load(name, version)
        if checkpoint is None:
            return None
        if checkpoint.state:
            # A whole-state checkpoint (written before keyed checkpoints, or by a non-keyed
            # projection of this name): not this format; the projection is rebuilt.
            self.reset(name)
            return None
        with self._guard():
            rows = self._db.execute(
                "SELECT k.key, s.position, s.stream_version, s.state, k.first_position "
                "FROM keyed_keys k JOIN keyed s ON s.name = k.name AND s.key = k.key "
                "WHERE k.name = ? ORDER BY k.first_position, k.key, s.position",
                (name,),
            ).fetchall()
        newest: dict[str, KeyedState] = {}
        for key, position, stream_version, state, first in rows:
            newest[key] = KeyedState(key, position, stream_version, bytes(state), first)
        return checkpoint.position, list(newest.values())

    def keyed_at_or_before(
        self, name: str, version: int, key: str, position: int
    ) -> KeyedState | None:
        """The newest stored state of ``key`` taken at or before ``position``."""
        with self._guard():
            if not self._is_keyed(name, version):
                return None
            row = self._db.execute(
                "SELECT s.position, s.stream_version, s.state, k.first_position FROM keyed s "
                "JOIN keyed_keys k ON k.name = s.name AND k.key = s.key "
                "WHERE s.name = ? AND s.key = ? AND s.position <= ? "
                "ORDER BY s.position DESC LIMIT 1",
                (name, key, position),
            ).fetchone()
        return KeyedState(key, row[0], row[1], bytes(row[2]), row[3]) if row else None

    def keyed_keys(self, name: str, version: int, position: int) -> tuple[int, list[str]]:
        """The checkpoint's position and the keys that entered the state at or before
        ``position`` (no later than the checkpoint), in that order."""
        with self._guard():
            if not self._is_keyed(name, version):
                return 0, []
            head = self._db.execute(
                "SELECT position FROM checkpoints WHERE name = ?", (name,)
            ).fetchone()
            rows = self._db.execute(
                "SELECT key FROM keyed_keys WHERE name = ? AND first_position <= ? "
                "ORDER BY first_position, key",
                (name, position),
            ).fetchall()
        return head[0], [r[0] for r in rows]

    def _is_keyed(self, name: str, version: int) -> bool:
        # A keyed checkpoint of this version (its row holds a position, not a state).
        row = self._db.execute(
            "SELECT version, length(state) FROM checkpoints WHERE name = ?", (name,)
        ).fetchone()
        return row is not None and row[0] == version and row[1] == 0

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
        """Positions of the snapshots kept for ``name`` (for a keyed projection, the positions
        of the key states kept)."""
        with self._guard():
            rows = self._db.execute(
                "SELECT position FROM snapshots WHERE name = ? AND version = ? ORDER BY position",
                (name, version),
            ).fetchall()
            if not rows and self._is_keyed(name, version):
                rows = self._db.execute(
                    "SELECT DISTINCT position FROM keyed WHERE name = ? ORDER BY position", (name,)
                ).fetchall()
        return [r[0] for r in rows]

    def reset(self, name: str) -> None:
        """Forget everything stored for ``name`` (the next run rebuilds it from the log)."""
        with self._guard():
            self._reset(name)

    def _reset(self, name: str) -> None:
        for table in ("checkpoints", "snapshots", "keyed", "keyed_keys"):
            self._db.execute(f"DELETE FROM {table} WHERE name = ?", (name,))

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
