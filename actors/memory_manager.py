"""The Memory Manager: what an agent sees in its prompt for a sub-goal, within a token budget.

For each sub-goal it assembles, in this order of priority: the sub-goal, the run's scratchpad,
long-term memories relevant to the sub-goal, the latest summary of the agent's older history,
and the agent's recent events. Everything it uses is a projection of the log *as of* a
position, so the context an agent saw at any position is rebuilt exactly, without a model.

When the history since the last summary outgrows its share of the budget, ``plan_summary``
builds a ``context.summarized`` event (summary written by the agent's model, through a
``Summarizer``) covering the older part; once appended, later assemblies use it instead.
"""

from __future__ import annotations

import bisect
import collections
import functools
import itertools
import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from agentledger.events import ContextSummarized, Event, InvalidEvent, NotFound
from agentledger.projections.memory import (
    LongTermMemory,
    Memory,
    Scratchpad,
    ScratchpadProjection,
    ScratchValue,
    forked_from,
    is_own_history,
    short_term,
)
from agentledger.projections.tokens import TokenCounter, approx_tokens

ROLES = ("coordinator", "research", "execution", "review")


class Summarizer(Protocol):
    """Writes a summary of some history (the agent's model, or the offline summarizer)."""

    model: str

    def summarize(self, lines: Sequence[str], max_tokens: int) -> str:
        """A summary of ``lines`` in at most ``max_tokens`` tokens."""
        ...


class ExtractiveSummarizer:
    """Offline, deterministic summarizer: keeps the start of each line. Not a language model."""

    model = "offline-extractive"

    def __init__(self, count: TokenCounter = approx_tokens) -> None:
        self._count = count

    def summarize(self, lines: Sequence[str], max_tokens: int) -> str:
        """What kinds of entries there were, then the newest ones abridged, within budget."""
        kinds: dict[str, int] = {}
        for line in lines:
            kind = line.split(" by ", 1)[0].split("] ", 1)[-1] if line.startswith("[") else "note"
            kinds[kind] = kinds.get(kind, 0) + 1
        head = f"{len(lines)} earlier entries: " + ", ".join(f"{k} x{n}" for k, n in kinds.items())
        head = _fit(head, max_tokens // 3, self._count)
        kept: list[str] = []
        used = self._count(head) + 1
        for line in reversed(lines):
            # Each line abridged to its first ~80 characters (about 24 tokens of prose).
            flat = " ".join(line.split())
            short = flat if len(flat) <= 80 else flat[:79] + "…"
            cost = self._count(short) + 1
            if used + cost > max_tokens:
                break
            kept.append(short)
            used += cost
        kept.reverse()
        return "\n".join([head, *kept])


def render(event: Event) -> str:
    """An event as one prompt line: position, type, actor and payload (compact JSON, cut at
    600 characters)."""
    payload = event.payload.model_dump(mode="json", exclude_defaults=True)
    # Strings longer than the line are cut first (a recorded prompt is thousands of
    # characters): the JSON of a cut string begins as the whole one's does, for longer than
    # the line, so the line is the same.
    body = json.dumps(_cut(payload), ensure_ascii=False, separators=(",", ":"), sort_keys=True)
    if len(body) > _LINE_CHARS:
        body = body[: _LINE_CHARS - 1] + "…"
    return f"[{event.position}] {event.type} by {event.actor}: {body}"


_LINE_CHARS = 600


def _cut(value: object) -> object:
    if isinstance(value, str):
        return value[:_LINE_CHARS] if len(value) > _LINE_CHARS else value
    if isinstance(value, dict):
        return {k: _cut(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_cut(v) for v in value]
    return value


@dataclass(frozen=True)
class Section:
    """One part of an assembled context."""

    name: str
    text: str
    tokens: int


@dataclass
class Context:
    """What an agent's prompt is built from, with references to where each part came from."""

    role: str
    sub_goal: str
    position: int
    budget: int
    sections: list[Section] = field(default_factory=list)
    event_ids: list[uuid.UUID] = field(default_factory=list)
    memories: list[Memory] = field(default_factory=list)
    summary_event_id: str | None = None

    @property
    def tokens(self) -> int:
        """Tokens used by all sections."""
        return sum(s.tokens for s in self.sections)

    def text(self) -> str:
        """The context as prompt text."""
        return "\n\n".join(f"## {s.name}\n{s.text}" for s in self.sections if s.text)


@dataclass(frozen=True)
class Shares:
    """How the budget is split: the most each section may take, as a fraction of the budget."""

    scratchpad: float = 0.2
    long_term: float = 0.25
    summary: float = 0.15
    history: float = 0.4


@dataclass(frozen=True)
class _History:
    """A role's history in one run, as far as one list of its events was read: the role's
    latest summary there and its own events since the summary's end, with their tokens.

    Every turn of an agent asks for it (``plan_summary`` and ``assemble``) over a list that
    only grew since its last turn, so only the new events are read (``MemoryManager._history``).
    Frozen: an extension makes a new one, so a reader never sees one half built."""

    first: uuid.UUID  # id of the list's first event and of the last one read
    last: uuid.UUID
    read: int  # how many events of the list were read
    summary: ContextSummarized | None
    mine: list[Event]  # own history after the summary's end (all of it if none)
    tokens: int  # the tokens of their lines (``MemoryManager.line``), summed


@dataclass(frozen=True)
class _PadLines:
    """The scratchpad section made from one scratchpad object at one count of updates, with
    what the next reading of that object starts from: its keys in order, and the line and
    tokens of each key whose line was made (the value it was made from, by identity: a fold
    replaces a key's value, never changes it)."""

    pad: Scratchpad  # held, so its id is not reused while this is remembered
    updates: int
    size: int
    limit: int
    text: str
    tokens: int
    keys: list[str]
    lines: dict[str, tuple[ScratchValue, str, int]]
    cut: str | None  # the first key that did not fit; None if all did


class MemoryManager:
    """Assembles contexts (see the module docstring)."""

    def __init__(
        self,
        long_term: LongTermMemory | None = None,
        *,
        count: TokenCounter = approx_tokens,
        shares: Shares = Shares(),
        memories_per_context: int = 5,
    ) -> None:
        self.long_term = long_term
        # Each turn re-reads the same recent events: remember their lines and token counts
        # (events are immutable, so a line never goes stale; the caches are bounded). Lines
        # by id and position: a fork shows the events it inherits at its own position.
        self.count = functools.lru_cache(maxsize=65_536)(count)
        self._lines: dict[tuple[uuid.UUID, int], str] = {}
        # Per (run, role) and per scratchpad: what the last turn read, extended by the next.
        self._histories: collections.OrderedDict[tuple[str, str], _History] = (
            collections.OrderedDict()
        )
        self._pads: collections.OrderedDict[int, _PadLines] = collections.OrderedDict()
        self.shares = shares
        self.memories_per_context = memories_per_context
        # Set while a reaction recorded before summaries named their events (schema 1 of
        # context.summarized) is re-executed (``verify``): its summary is made without ids, and
        # a turn that adds one searches long-term memory as of position 0, as it did then.
        self.schema_1_summaries = False

    def assemble(
        self,
        run_events: Sequence[Event],
        role: str,
        sub_goal: str,
        budget: int,
        *,
        user: str | None = None,
        scratchpad: Scratchpad | None = None,
        settled: int = 0,
    ) -> Context:
        """The context of ``role`` for ``sub_goal`` after the last of ``run_events``.

        ``scratchpad`` is the run's scratchpad folded from the same events, when the caller
        keeps it up to date (the runtime does); otherwise it is folded here. ``settled``:
        how many of the first ``run_events`` only ever grow at the end from one call to the
        next for this run (``RunView.settled``); what a call read of them is not read again.
        """
        if role not in ROLES:
            raise NotFound(f"unknown agent role {role!r}; roles: {', '.join(ROLES)}")
        if budget < 32:
            raise InvalidEvent(f"a context budget of {budget} tokens is too small (minimum 32)")
        if self.schema_1_summaries:  # as contexts were assembled then (see __init__)
            position = (run_events[-1].position or 0) if run_events else 0
        else:  # a summary this turn adds has no position yet: the log as of the event before
            position = next((e.position for e in reversed(run_events) if e.position), 0)
        context = Context(role=role, sub_goal=sub_goal, position=position, budget=budget)
        remaining = budget

        def add(name: str, text: str, limit: int, cost: int | None = None) -> bool:
            # ``cost``: the caller already counted the section line by line.
            nonlocal remaining
            cost = self.count(text) if cost is None else cost
            if not text or cost > min(limit, remaining):
                return False
            context.sections.append(Section(name, text, cost))
            remaining -= cost
            return True

        goal_text = _fit(sub_goal, budget // 4, self.count)
        add("sub-goal", goal_text, remaining)

        pad = scratchpad if scratchpad is not None else ScratchpadProjection().fold(run_events)
        pad_text, pad_cost = self._pad_section(pad, int(budget * self.shares.scratchpad))
        add("scratchpad", pad_text, remaining, pad_cost)

        if self.long_term is not None and sub_goal.strip():
            hits = self.long_term.search(
                sub_goal[:2000],
                k=self.memories_per_context,
                user=user,
                as_of=position,
                forked_from=forked_from(run_events),
            )
            lines, kept = [], []
            limit, used = int(budget * self.shares.long_term), 0
            for hit in hits:
                line = f"- {hit.text} (memory {hit.memory_id}, position {hit.position})"
                cost = self.count(line) + 1
                if used + cost > limit:
                    break
                lines.append(line)
                kept.append(hit)
                used += cost
            if add("long-term memory", "\n".join(lines), remaining, max(0, used - 1)):
                context.memories = kept

        history = self._history(run_events, role, settled)
        summary = history.summary
        if summary is not None and add(
            "summary of earlier history",
            summary.payload.summary,
            int(budget * self.shares.summary),
        ):
            context.summary_event_id = str(summary.id)
            recent_pool = history.mine
        else:  # no summary, or it does not fit: the whole history is the pool
            recent_pool = history.mine if summary is None else _since(run_events, 0)
        recent = short_term(recent_pool, role, remaining, render=self.line, count=self.count)
        lines = [self.line(e) for e in recent]
        cost = sum(self.count(line) for line in lines) + max(0, len(lines) - 1)
        if add("recent history", "\n".join(lines), remaining, cost):
            context.event_ids = [e.id for e in recent]
        return context

    def line(self, event: Event) -> str:
        """``render(event)``, remembered for events already in the log."""
        if event.position is None:
            return render(event)
        key = (event.id, event.position)
        line = self._lines.get(key)
        if line is None:
            if len(self._lines) >= 65_536:
                self._lines.clear()
            line = self._lines[key] = render(event)
        return line

    def plan_summary(
        self,
        run_events: Sequence[Event],
        role: str,
        budget: int,
        summarizer: Summarizer,
        *,
        actor: str | None = None,
        settled: int = 0,
    ) -> ContextSummarized | None:
        """A ``context.summarized`` event if ``role``'s unsummarized history outgrows its share.

        The newest half of the history share stays verbatim; everything older (and the previous
        summary) is summarized. ``actor``: the agent that appends it (default: the role's memory).
        ``settled``: as for ``assemble``.
        """
        history_budget = int(budget * self.shares.history)
        history = self._history(run_events, role, settled)
        if history.tokens <= history_budget:
            return None
        previous, mine = history.summary, history.mine
        keep = short_term(mine, role, history_budget // 2, render=self.line, count=self.count)
        older = mine[: len(mine) - len(keep)]
        if not older:
            return None
        older_lines = ([previous.payload.summary] if previous else []) + [
            self.line(e) for e in older
        ]
        text = summarizer.summarize(older_lines, int(budget * self.shares.summary))
        last = run_events[-1]
        return ContextSummarized(
            actor=actor or f"agent:{role}/memory",
            payload={
                "agent": role,
                "from_position": older[0].position or 0,
                "to_position": older[-1].position or 0,
                "summary": text,
                "model": summarizer.model,
                **(
                    {}
                    if self.schema_1_summaries
                    else {"from_event": older[0].id, "to_event": older[-1].id}
                ),
            },
            **last.caused_by(last),
        )

    def _history(self, run_events: Sequence[Event], role: str, settled: int) -> _History:
        """``role``'s latest summary among ``run_events`` and its own events since.

        The first ``settled`` events are read from where the last call for this run and role
        stopped (they only grow at the end: the caller says so); the rest are read each time.
        """
        if not run_events:
            return _History(uuid.UUID(int=0), uuid.UUID(int=0), 0, None, [], 0)
        settled = min(settled, len(run_events))
        if settled == 0:
            return self._read_history(run_events, role)
        key = (run_events[0].stream, role)
        known = self._histories.get(key)
        history: _History | None = None
        if (
            known is not None
            and known.read <= settled
            and run_events[0].id == known.first
            and run_events[known.read - 1].id == known.last
        ):
            history = self._extended(known, run_events, settled, role)
        if history is None:
            history = self._read_history(run_events[:settled], role)
        _remember(self._histories, key, history)
        if settled < len(run_events):  # the tail: read now, not remembered
            return self._extended(history, run_events, len(run_events), role) or (
                self._read_history(run_events, role)
            )
        return history

    def _read_history(self, run_events: Sequence[Event], role: str) -> _History:
        summary = latest_summary(run_events, role)
        mine = [e for e in _after(run_events, summary) if is_own_history(e, role)]
        return _History(
            run_events[0].id, run_events[-1].id, len(run_events), summary, mine, self._tokens(mine)
        )

    def _tokens(self, events: Sequence[Event]) -> int:
        """The tokens of the events' lines, summed."""
        return sum(self.count(self.line(e)) for e in events)

    def _extended(
        self, known: _History, run_events: Sequence[Event], end: int, role: str
    ) -> _History | None:
        """``known`` (a reading of the first ``known.read`` of ``run_events``) read on to
        ``end``, or None where everything must be read again: a new summary of the role, or an
        event not after the summary's end (which the walk of ``_since`` from the end would
        stop at)."""
        if known.read == end:
            return known
        summary = known.summary
        covered = summary.payload.to_position if summary else 0
        by_id = summary is not None and summary.payload.to_event is not None
        mine, tokens, copied = known.mine, known.tokens, False
        for event in run_events[known.read : end]:
            if isinstance(event, ContextSummarized) and event.payload.agent == role:
                # A newer summary: the history now starts after what it covers (a later
                # part of the history read so far; not a summary reaching back further).
                to_event = event.payload.to_event
                if to_event is not None:
                    last = _index_of(mine, to_event)
                    if last is None:
                        return None
                    mine = mine[last + 1 :]
                else:
                    if event.payload.to_position < covered:
                        return None
                    mine = [e for e in mine if (e.position or 0) > event.payload.to_position]
                summary, covered, by_id = event, event.payload.to_position, to_event is not None
                tokens, copied = self._tokens(mine), True
                continue
            if event.position is None:
                continue  # not in the log (yet): never history
            if not by_id and event.position <= covered:
                return None
            if is_own_history(event, role):
                if not copied:
                    mine, copied = list(mine), True
                mine.append(event)
                tokens += self.count(self.line(event))
        return _History(known.first, run_events[end - 1].id, end, summary, mine, tokens)

    def _pad_section(self, pad: Scratchpad, limit: int) -> tuple[str, int]:
        """The scratchpad's lines (``key: value``) in key order, as many as fit in ``limit``
        tokens, and their tokens.

        Read again from the last reading of the same scratchpad object (folds count every
        update in ``Scratchpad.updates``): when every update since added a key, those keys
        are put in their places; otherwise keys added or removed are found by set
        differences. A line is made again only for a key whose value was replaced. A long
        run's scratchpad has a key per step; before, every turn sorted and formatted them.
        """
        known = self._pads.get(id(pad))
        if known is not None and known.pad is not pad:
            known = None
        if (
            known is not None
            and known.updates == pad.updates
            and known.size == len(pad.values)
            and known.limit == limit
        ):
            return known.text, known.tokens
        values = pad.values
        keys: list[str] | None = None
        if known is not None and known.limit == limit:
            added = pad.updates - known.updates
            if 0 < added == len(values) - known.size:
                # Every update since added a key (a replacement or a removal would make the
                # counts differ): the newest keys in the dict's order, put in their places.
                # A reading is replaced by the next one of the same object: its keys and
                # lines are taken over, not copied (a long run's scratchpad has a key per
                # step: the copies and set differences grew with it).
                newest = list(itertools.islice(reversed(values), added))
                # Taken out until this reading is done: if it raises (a counter's error), no
                # reading whose keys were changed stays behind for the next turn.
                del self._pads[id(pad)]
                keys, lines = known.keys, known.lines
                for key in newest:
                    bisect.insort(keys, key)
                if known.cut is not None and min(newest) > known.cut:
                    # All after the first key that did not fit: the section is what it was.
                    _remember(
                        self._pads, id(pad), replace(known, updates=pad.updates, size=len(values))
                    )
                    return known.text, known.tokens
        if keys is None:
            if known is None:
                keys, lines = sorted(values), {}
            else:  # replacements or removals since: read on by set differences
                keys, lines = known.keys, known.lines  # replaced by this reading: taken over
                del self._pads[id(pad)]  # (and not left behind changed, as above)
                present = set(keys)  # set operations in C: a scratchpad may have many keys
                gone, new = present - values.keys(), values.keys() - present
                if gone:
                    keys = [k for k in keys if k not in gone]
                    for key in gone:
                        lines.pop(key, None)
                if new:
                    keys = list(keys)
                    for key in new:
                        bisect.insort(keys, key)
        kept, used, cut = [], 0, None
        for key in keys:
            value = values[key]
            made = lines.get(key)
            if made is None or made[0] is not value:
                line = f"{key}: {value.value}"
                made = lines[key] = (value, line, self.count(line) + 1)
            if used + made[2] > limit:
                cut = key
                break
            kept.append(made[1])
            used += made[2]
        text, tokens = "\n".join(kept), max(0, used - 1)
        _remember(
            self._pads,
            id(pad),
            _PadLines(pad, pad.updates, len(values), limit, text, tokens, keys, lines, cut),
        )
        return text, tokens


_REMEMBERED = 64  # runs (per role) and scratchpads whose last reading a MemoryManager keeps


def _remember(cache: collections.OrderedDict[Any, Any], key: object, value: object) -> None:
    """Keep ``value`` as the newest of ``cache``'s at most ``_REMEMBERED`` readings."""
    cache[key] = value
    cache.move_to_end(key)
    while len(cache) > _REMEMBERED:
        cache.popitem(last=False)


def latest_summary(run_events: Sequence[Event], role: str) -> ContextSummarized | None:
    """The newest ``context.summarized`` event of ``role`` among ``run_events``."""
    for event in reversed(run_events):
        if isinstance(event, ContextSummarized) and event.payload.agent == role:
            return event
    return None


def _after(run_events: Sequence[Event], summary: ContextSummarized | None) -> list[Event]:
    """The events (in the log) after what ``summary`` covers; all of them if it is None.

    A summary of schema 2 ends at an event named by id: in a fork, whose inherited events
    all carry the position of ``run.forked``, a summary may end between two of them. One of
    schema 1 ends at a position (as it did when it was written)."""
    to_event = summary.payload.to_event if summary is not None else None
    if to_event is not None:
        last = _index_of(run_events, to_event)
        if last is not None:
            return [e for e in run_events[last + 1 :] if e.position is not None]
    return _since(run_events, summary.payload.to_position if summary is not None else 0)


def _index_of(events: Sequence[Event], event_id: uuid.UUID) -> int | None:
    """The index of the event with ``event_id`` among ``events``, looked for from the end."""
    for index in range(len(events) - 1, -1, -1):
        if events[index].id == event_id:
            return index
    return None


def _since(run_events: Sequence[Event], covered: int) -> list[Event]:
    """The events after position ``covered`` (found from the end: a long run's history before
    its last summary is never walked)."""
    start = len(run_events)
    while start > 0:
        position = run_events[start - 1].position
        if position is not None and position <= covered:
            break
        start -= 1
    return [e for e in run_events[start:] if (e.position or 0) > covered]


def _fit(text: str, limit: int, count: TokenCounter) -> str:
    """``text`` cut (at a character boundary, marked with …) to at most ``limit`` tokens."""
    if count(text) <= limit:
        return text
    low, high = 0, len(text)
    while low < high:  # the longest prefix that fits, by bisection
        mid = (low + high + 1) // 2
        if count(text[:mid] + "…") <= limit:
            low = mid
        else:
            high = mid - 1
    return text[:low] + "…" if low else ""
