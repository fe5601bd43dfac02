"""JSON Schema export of the catalogue, so agents on other models or languages can interoperate."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

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


def write_schemas(out_dir: Path) -> list[Path]:
    """Write one file per event type plus ``event.schema.json`` (the union); return the paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name in sorted(EVENT_TYPES):
        path = out_dir / f"{name}.schema.json"
        path.write_text(json.dumps(event_schema(name), indent=2, sort_keys=True) + "\n")
        written.append(path)
    path = out_dir / "event.schema.json"
    path.write_text(json.dumps(union_schema(), indent=2, sort_keys=True) + "\n")
    written.append(path)
    return written
