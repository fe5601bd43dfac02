"""Fork a run at a position of its log: a new run that starts as the parent was, then goes on.

The fork's stream is one event, ``run.forked`` (parent, position, model overrides, note, and
how many of the parent's events it inherits with the hash of the last), whatever the length of
the prefix: the store reads the inherited events through the parent (``EventStore.read``), and
the fork's own events chain on from the parent's hash, so ``verify-log`` checks the fork and
its parent as one history. The parent is never touched. The agents then see a run whose last
reactions are missing and take it up from there: they react to the inherited events that have
no reaction in the fork (with a different model, if overridden, or after a different human
decision).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from datetime import UTC, datetime

from agentledger.control import human_event
from agentledger.events import AgentLedgerError, Event, EventStore, NotFound, RunForked

_LOOK_AHEAD = 50  # events read at a time past the fork point, to find where a reaction ends


def fork_run(
    store: EventStore,
    parent: str,
    position: int,
    *,
    by: str,
    models: Mapping[str, str] | None = None,
    note: str = "",
) -> tuple[str, Event]:
    """Create the fork of ``parent`` at global ``position``; return its stream and its
    ``run.forked`` event. Reads a few of the parent's events, whatever its length."""
    return append_fork(
        store, prepare_fork(store, parent, position, by=by, models=models, note=note)
    )


def prepare_fork(
    store: EventStore,
    parent: str,
    position: int,
    *,
    by: str,
    models: Mapping[str, str] | None = None,
    note: str = "",
) -> RunForked:
    """The ``run.forked`` event of the fork of ``parent`` at ``position``, checked (the run, the
    position, a reaction's boundary) and not appended: a command can then get what else it
    needs (agents) before anything is in the log, and leave nothing behind if that fails."""
    version = store.version_at(parent, position)
    if version == 0:
        first = store.read(parent, 1, 1)
        if not first:
            raise NotFound(f"no run {parent!r} in {store.url}; `agentledger runs` lists the runs")
        raise AgentLedgerError(
            f"run {parent} starts at position {first[0].position}; --at {position} is before it"
        )
    near = store.read(parent, version, version + _LOOK_AHEAD)
    if len(near) == 1 and position > (near[0].position or 0):
        first = store.read(parent, 1, 1)[0]
        raise AgentLedgerError(
            f"run {parent} spans positions {first.position}..{near[0].position}; --at "
            f"{position} is outside it"
        )
    if len(near) > 1 and _same_reaction(near[0], near[1]):
        boundary = _boundary(store, parent, near)
        raise AgentLedgerError(
            f"position {position} is inside one agent's reaction (it continues at position "
            f"{near[1].position}); fork before it or after it, e.g. --at {boundary}"
        )
    return human_event(  # a --note too long for the event is refused by its option
        RunForked,
        {"note": "--note"},
        actor=by,
        payload={
            "parent_run": parent,
            "parent_position": position,
            "note": note,
            "model_overrides": dict(models or {}),
            "prefix_version": version,
            "parent_hash": near[0].hash,
        },
    )


def append_fork(store: EventStore, forked: RunForked) -> tuple[str, Event]:
    """Append ``forked`` (``prepare_fork``'s) as the first event of a new run; return the run's
    stream and the event as recorded."""
    stream = f"run-{datetime.now(UTC).strftime('%Y%m%d-%H%M%S')}-{os.urandom(3).hex()}"
    (recorded,) = store.append(stream, [forked], expected_version=0)
    return stream, recorded


def _same_reaction(a: Event, b: Event) -> bool:
    # Consecutive events of one agent's (or the policy's, within it) reaction to one cause.
    def reactor(e: Event) -> bool:
        return e.actor.startswith("agent:") or e.actor == "system:policy"

    return (
        reactor(a)
        and reactor(b)
        and a.causation_id is not None
        and (a.causation_id == b.causation_id)
    )


def _boundary(store: EventStore, run: str, near: list[Event]) -> int:
    """The position at which the reaction containing ``near[0]`` ends."""
    events = list(near)
    end = 1
    while True:
        while end < len(events) and _same_reaction(events[end - 1], events[end]):
            end += 1
        if end < len(events):
            return events[end - 1].position or 0
        more = store.read(run, events[-1].version + 1, events[-1].version + _LOOK_AHEAD)
        if not more:
            return events[-1].position or 0
        events.extend(more)
