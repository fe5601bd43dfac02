"""Where two runs part ways: the first event whose content differs, compared as decisions.

Two runs never share event ids, positions or times, and the ids an agent derives for its
actions, model calls and memories differ with them; so each event is compared on its type, the
role that appended it, and its payload with those volatile parts taken out: timestamps and
durations, prompts (they quote positions), and derived ids, renamed in order of first
appearance in each run (the first action is ``a#1`` in both). What remains is what was decided.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from agentledger.events import Event

_VOLATILE = frozenset(
    {"latency_ms", "duration_ms", "prompt", "prompt_hash", "context_event_ids", "expires_at"}
)
_DERIVED_ID = re.compile(r"\b(a|m|mem)-[0-9a-f]{12}\b|\b[0-9a-f]{16}\b|\b[0-9a-f]{64}\b")
_RUN_ID = re.compile(r"\brun-[A-Za-z0-9_.:@\-]+")


@dataclass(frozen=True)
class Divergence:
    """The first differing event of two runs (``None`` on a side that has no more events)."""

    index: int  # 0-based index in both runs' event sequences
    left: Event | None
    right: Event | None
    left_view: dict[str, Any] | None
    right_view: dict[str, Any] | None


class _Renamer:
    """Derived ids and run names replaced by their order of first appearance."""

    def __init__(self) -> None:
        self._names: dict[str, str] = {}

    def __call__(self, text: str) -> str:
        def name(match: re.Match[str]) -> str:
            token = match.group(0)
            if token not in self._names:
                kind = token.split("-", 1)[0] if "-" in token else "id"
                self._names[token] = f"{kind}#{len(self._names) + 1}"
            return self._names[token]

        return _DERIVED_ID.sub(name, _RUN_ID.sub("run", text))


def comparable(event: Event, rename: _Renamer) -> dict[str, Any]:
    """What of ``event`` is compared: type, appending role, payload without volatile parts."""
    payload = event.payload.model_dump(mode="json")
    kept = {k: v for k, v in payload.items() if k not in _VOLATILE}
    body = json.loads(rename(json.dumps(kept, sort_keys=True, ensure_ascii=False)))
    role = event.actor.split("/", 1)[0]  # agent:research/1 -> agent:research
    return {"type": event.type, "by": role, "payload": body}


def first_divergence(left: Sequence[Event], right: Sequence[Event]) -> Divergence | None:
    """The first event at which the two runs differ, or ``None`` if they are the same."""
    rename_left, rename_right = _Renamer(), _Renamer()
    for index in range(max(len(left), len(right))):
        a = left[index] if index < len(left) else None
        b = right[index] if index < len(right) else None
        va = comparable(a, rename_left) if a is not None else None
        vb = comparable(b, rename_right) if b is not None else None
        if va != vb:
            return Divergence(index, a, b, va, vb)
    return None
