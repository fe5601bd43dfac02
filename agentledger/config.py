"""Where agentledger keeps its local, rebuildable caches (projection checkpoints, LanceDB)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

CACHE_ENV = "AGENTLEDGER_CACHE"


def cache_dir(store_url: str) -> Path:
    """The cache folder for a store: ``$AGENTLEDGER_CACHE``, else beside a SQLite file, else
    ``./.agentledger/cache/<hash of the URL>``. Everything in it is rebuilt from the log."""
    override = os.environ.get(CACHE_ENV, "").strip()
    if override:
        return Path(override)
    if store_url.startswith("sqlite:///"):
        path = Path(store_url.removeprefix("sqlite:///"))
        return path.parent / f"{path.stem}.cache"
    digest = hashlib.sha256(store_url.encode()).hexdigest()[:12]
    return Path(".agentledger") / "cache" / digest
