"""Upcasters: turn an event stored under an older schema version into the current shape.

An upcaster takes the stored document of version N (a dict, as it was written) and returns
the document of version N+1. Documents are upcast on read only; the log itself is never
rewritten, so its hash chain stays valid forever.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .catalogue import EVENT_TYPES
from .errors import UnknownEventType, UnsupportedSchemaVersion

Document = dict[str, Any]
Upcaster = Callable[[Document], Document]

_UPCASTERS: dict[tuple[str, int], Upcaster] = {}


def upcaster(event_type: str, from_version: int) -> Callable[[Upcaster], Upcaster]:
    """Register ``fn`` as the upcaster of ``event_type`` from ``from_version`` to the next."""

    def register(fn: Upcaster) -> Upcaster:
        key = (event_type, from_version)
        if key in _UPCASTERS:
            raise ValueError(f"two upcasters for {event_type} v{from_version}")
        if event_type not in EVENT_TYPES:
            raise ValueError(f"upcaster for unknown event type {event_type!r}")
        _UPCASTERS[key] = fn
        return fn

    return register


def upcast(document: Document, *, where: str) -> Document:
    """Bring a stored document to its type's current schema version (``where`` names it)."""
    event_type = document.get("type")
    cls = EVENT_TYPES.get(event_type) if isinstance(event_type, str) else None
    if cls is None or not isinstance(event_type, str):
        raise UnknownEventType(
            f"{where}: unknown event type {event_type!r}; this log was written by a "
            "version of agentledger that knows it. Upgrade agentledger to read it; "
            "the log was not modified."
        )
    version = document.get("schema_version", 1)
    current = cls.current_schema_version
    if not isinstance(version, int) or version > current:
        raise UnsupportedSchemaVersion(
            f"{where}: {event_type} has schema version {version!r}, newer than the "
            f"{current} this version of agentledger reads. Upgrade agentledger; "
            "the log was not modified."
        )
    while version < current:
        step = _UPCASTERS.get((event_type, version))
        if step is None:
            raise UnsupportedSchemaVersion(
                f"{where}: no upcaster for {event_type} from schema version {version}"
            )
        document = step(document)
        version += 1
        document["schema_version"] = version
    return document


def missing_upcasters() -> list[str]:
    """Every (type, version) step that has no upcaster; empty when the catalogue is complete."""
    return [
        f"{name} v{v}->v{v + 1}"
        for name, cls in EVENT_TYPES.items()
        for v in range(1, cls.current_schema_version)
        if (name, v) not in _UPCASTERS
    ]


@upcaster("run.started", 1)
def _run_started_v1(document: Document) -> Document:
    # v1 had only the goal; v2 records who started the run and with which models.
    payload = dict(document["payload"])
    payload.setdefault("user", "anonymous")
    payload.setdefault("models", {})
    payload.setdefault("labels", {})
    return {**document, "payload": payload}


@upcaster("run.started", 2)
def _run_started_v2(document: Document) -> Document:
    # v3 records the run's workspace and docs folder; older runs used the defaults.
    payload = dict(document["payload"])
    payload.setdefault("workspace", None)
    payload.setdefault("docs", None)
    return {**document, "payload": payload}


@upcaster("run.forked", 1)
def _run_forked_v1(document: Document) -> Document:
    # v1 forks copied the parent's prefix into their own stream; v2 may reference it.
    payload = dict(document["payload"])
    payload.setdefault("prefix_version", 0)
    payload.setdefault("parent_hash", None)
    return {**document, "payload": payload}


@upcaster("context.summarized", 1)
def _context_summarized_v1(document: Document) -> Document:
    # v1 said where a summary ends by position only; v2 also names the events by id.
    payload = dict(document["payload"])
    payload.setdefault("from_event", None)
    payload.setdefault("to_event", None)
    return {**document, "payload": payload}


@upcaster("model.responded", 1)
def _model_responded_v1(document: Document) -> Document:
    # v1 stored the reply as ``text`` and one ``tokens`` count (the completion tokens).
    payload = dict(document["payload"])
    payload["content"] = payload.pop("text")
    payload["output_tokens"] = payload.pop("tokens", 0)
    payload.setdefault("input_tokens", 0)
    payload.setdefault("latency_ms", 0.0)
    return {**document, "payload": payload}
