"""JSON Schema export of the catalogue, so agents on other models or languages can interoperate."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .audit import check_out_path
from .catalogue import EVENT_ADAPTER, EVENT_TYPES

SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"


def event_schema(event_type: str) -> dict[str, Any]:
    """The JSON Schema of one event type (current schema version)."""
    schema = EVENT_TYPES[event_type].model_json_schema(mode="serialization")
    return {"$schema": SCHEMA_DIALECT, "$id": f"agentledger:{event_type}", **schema}


def union_schema() -> dict[str, Any]:
    """The JSON Schema of any event: the discriminated union over ``type``."""
    schema = EVENT_ADAPTER.json_schema(mode="serialization")
    return {"$schema": SCHEMA_DIALECT, "$id": "agentledger:event", "title": "Event", **schema}


def write_schemas(
    out_dir: Path, *, overwrite: bool = False, store_url: str | None = None
) -> list[Path]:
    """Write one file per event type plus ``event.schema.json`` (the union); return the paths.

    Every path is checked before any is written (``audit.check_out_path``): schema files
    already in ``out_dir`` are replaced only if ``overwrite``, the store's files never.
    """
    documents = {
        out_dir / f"{name}.schema.json": event_schema(name) for name in sorted(EVENT_TYPES)
    }
    documents[out_dir / "event.schema.json"] = union_schema()
    for path in documents:
        check_out_path(path, overwrite=overwrite, store_url=store_url)
    out_dir.mkdir(parents=True, exist_ok=True)
    for path, document in documents.items():
        path.write_text(json.dumps(document, indent=2, sort_keys=True) + "\n")
    return list(documents)
