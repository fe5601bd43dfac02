"""Where two runs part ways: the first event whose content differs, compared as decisions.

Two runs never share event ids, positions or times, and the ids an agent derives for its
actions, model calls and memories differ with them; so each event is compared on its type, the
role that appended it, and its payload with those volatile parts taken out: timestamps and
durations, prompts (they quote positions), and derived ids, renamed in order of first
appearance in each run (the first action is ``a#1`` in both). An event named by its id (what a
summary covers) is named by its place in the run. A summary of an agent's history is compared
on what it covers, not on its positions; its text too when a model wrote it (the positions its
lines begin with taken out), not when the offline summarizer cut it from the lines themselves.
What remains is what was decided.

A fork is the exception: it inherits its parent's first events, ids included (after its own
``run.forked``). Runs that share such a history (a parent and its fork, two forks of one run, a
fork and the fork it was taken from) are lined up on it: each run's own ``run.forked`` events
are set aside, the events both hold are their common history, and the comparison starts after
it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from agentledger.events import Event

# Left out at any depth (a tool's result nests its duration): timings, and what follows from
# the prompt (its text, hash, sources and size in tokens), which is not a decision.
_VOLATILE = frozenset(
    {"latency_ms", "duration_ms", "prompt", "prompt_hash", "context_event_ids", "expires_at"}
    | {"input_tokens"}
)
# Left out of a summary that names the events it covers (schema 2): their positions (never
# the same in two runs) and its text, which quotes them.
_SUMMARY_VOLATILE = frozenset({"from_position", "to_position"})
_KINDED = re.compile(r"(a|m|mem)-")  # derived ids named by kind: a#1, m#2, mem#3
# The offline summarizer's text is the covered events' lines cut at a width (their positions
# included, so cut elsewhere): what it covers says it all. A model's summary is its words:
# compared, with the positions that begin its lines taken out.
_OFFLINE_SUMMARIZER = "offline-extractive"
_LINE_POSITION = re.compile(r"^\[\d+\] ", re.M)
_UUID = r"\b[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\b"
_DERIVED_ID = re.compile(
    rf"{_UUID}|\b(a|m|mem)-[0-9a-f]{{12}}\b|\b[0-9a-f]{{16}}\b|\b[0-9a-f]{{64}}\b"
)
_RUN_ID = re.compile(r"\brun-[A-Za-z0-9_.:@\-]+")


@dataclass(frozen=True)
class Divergence:
    """The first differing event of two runs (``None`` on a side that has no more events)."""

    index: int  # how many events the runs have in common before it (forks' own run.forked aside)
    left_index: int  # 0-based index of ``left`` in the left run's events as given
    right_index: int
    left: Event | None
    right: Event | None
    left_view: dict[str, Any] | None  # what was compared, as logged (``view``)
    right_view: dict[str, Any] | None
    left_compared: dict[str, Any] | None  # what was compared, volatile ids renamed
    right_compared: dict[str, Any] | None


class _Renamer:
    """Derived ids and run names replaced by their order of first appearance; the ids of the
    run's events (``places``) by their places in it."""

    def __init__(
        self, names: dict[str, str] | None = None, places: dict[str, str] | None = None
    ) -> None:
        self._names: dict[str, str] = dict(names or {})
        self._places = places or {}

    def __call__(self, text: str) -> str:
        def name(match: re.Match[str]) -> str:
            token = match.group(0)
            place = self._places.get(token)
            if place is not None:
                return place
            if token not in self._names:
                kind = token.split("-", 1)[0] if _KINDED.match(token) else "id"
                self._names[token] = f"{kind}#{len(self._names) + 1}"
            return self._names[token]

        return _DERIVED_ID.sub(name, _RUN_ID.sub("run", text))

    def copy(self, places: dict[str, str]) -> _Renamer:
        """A renamer that goes on from the names given so far, in a run with ``places``."""
        return _Renamer(self._names, places)


def _places(events: Sequence[Event]) -> dict[str, str]:
    """Each event's id, by its place in ``events``."""
    return {str(e.id): f"event#{k}" for k, e in enumerate(events)}


def view(event: Event) -> dict[str, Any]:
    """What of ``event`` is compared, as it was logged: type, actor, payload without volatile
    parts (shown to people; ``comparable`` is what is compared)."""
    payload = _steady(event.payload.model_dump(mode="json"))
    if event.type == "context.summarized" and payload.get("from_event") is not None:
        payload = {k: v for k, v in payload.items() if k not in _SUMMARY_VOLATILE}
        if payload.get("model") == _OFFLINE_SUMMARIZER:
            del payload["summary"]
        else:
            payload["summary"] = _LINE_POSITION.sub("[…] ", payload["summary"])
    return {"type": event.type, "by": event.actor, "payload": payload}


def _steady(value: Any) -> Any:
    """``value`` without the volatile keys of any mapping in it."""
    if isinstance(value, dict):
        return {k: _steady(v) for k, v in value.items() if k not in _VOLATILE}
    if isinstance(value, list):
        return [_steady(v) for v in value]
    return value


def comparable(event: Event, rename: _Renamer) -> dict[str, Any]:
    """What of ``event`` is compared: type, appending role, payload without volatile parts."""
    logged = view(event)
    body = json.loads(rename(json.dumps(logged["payload"], sort_keys=True, ensure_ascii=False)))
    role = event.actor.split("/", 1)[0]  # agent:research/1 -> agent:research
    return {"type": event.type, "by": role, "payload": body}


def first_divergence(left: Sequence[Event], right: Sequence[Event]) -> Divergence | None:
    """The first event at which the two runs differ, or ``None`` if they are the same.

    Each run is given as read (``EventStore.read``); a history they share as forks is lined up
    (see the module docstring), so a fork parts from its parent after the fork point, not at
    its ``run.forked``."""
    start_left, start_right = _own_forks(left, right), _own_forks(right, left)
    shared = 0
    while (
        start_left + shared < len(left)
        and start_right + shared < len(right)
        and left[start_left + shared].id == right[start_right + shared].id
    ):
        shared += 1
    # The same events on both sides: their ids get the same names, so a later event that
    # refers to one of them (an approval, a summary) is compared by what it refers to.
    rename_left = _Renamer(places=_places(left[start_left:]))
    for event in left[start_left : start_left + shared]:
        comparable(event, rename_left)
    rename_right = rename_left.copy(_places(right[start_right:]))
    for index in range(shared, max(len(left) - start_left, len(right) - start_right)):
        i, j = start_left + index, start_right + index
        a = left[i] if i < len(left) else None
        b = right[j] if j < len(right) else None
        ca = comparable(a, rename_left) if a is not None else None
        cb = comparable(b, rename_right) if b is not None else None
        if ca != cb:
            return Divergence(
                index=index,
                left_index=i,
                right_index=j,
                left=a,
                right=b,
                left_view=view(a) if a is not None else None,
                right_view=view(b) if b is not None else None,
                left_compared=ca,
                right_compared=cb,
            )
    return None


def _own_forks(events: Sequence[Event], other: Sequence[Event]) -> int:
    """How many ``run.forked`` events ``events`` begins with that ``other`` does not hold: the
    forks of its own lineage, which the other run is not part of. A run's ``run.forked``
    events all come first (a fork of a fork inherits its parent's as its version 2), so only
    the other's first events need looking at."""
    theirs = set()
    for event in other:
        if event.type != "run.forked":
            break
        theirs.add(event.id)
    count = 0
    while (
        count < len(events)
        and events[count].type == "run.forked"
        and events[count].id not in theirs
    ):
        count += 1
    return count
