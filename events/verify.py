"""Tamper evidence: walk the log and check every event's hash and its stream's chain.

What is detected, and how (see ``_codec`` for the hash layout):

- an edited event: its recomputed hash differs from the one it carries (or, if the editor
  recomputed it, the next event of the stream no longer points at it);
- a removed event: a gap in its stream's versions, or the next event points at a hash that is
  not there; an event that others name as their cause is missing;
- an inserted event: its ``prev_hash`` or version does not fit the stream;
- reordered events: versions out of position order, or a broken chain;
- a moved event: the stream or version in its body differs from the row's.

The newest event of a stream, edited *and* rehashed, or removed, leaves no trace in the log
itself; anchor stream heads outside it (``agentledger audit export`` writes them to a manifest).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from enum import StrEnum

from eventsourcing.persistence import Notification
from pydantic_core import from_json

from ._codec import body_hash, split_state


class Problem(StrEnum):
    """Kinds of findings."""

    EDITED = "edited"
    CHAIN_BROKEN = "chain-broken"
    VERSION_GAP = "version-gap"
    REORDERED = "reordered"
    MOVED = "moved"
    DANGLING_CAUSE = "dangling-cause"
    UNREADABLE = "unreadable"


@dataclass(frozen=True)
class Finding:
    """One place where the log does not hold together."""

    position: int
    stream: str
    version: int
    problem: Problem
    detail: str

    def __str__(self) -> str:
        return (
            f"position {self.position} (stream {self.stream!r} version {self.version}): "
            f"{self.problem.value}: {self.detail}"
        )


@dataclass
class Report:
    """The result of verifying a log: how much was checked and every finding, in log order."""

    events: int = 0
    streams: int = 0
    findings: list[Finding] = field(default_factory=list)
    links: dict[str, tuple[str, int]] = field(default_factory=dict)
    """Forks by reference seen: fork -> (parent, events inherited)."""

    @property
    def ok(self) -> bool:
        """True when no finding was made."""
        return not self.findings

    @property
    def first(self) -> Finding | None:
        """The earliest finding (by position), if any."""
        return min(self.findings, key=lambda f: f.position) if self.findings else None


def verify_rows(
    rows: Iterable[Notification],
    plain_state: Callable[[Notification], bytes],
    progress: Callable[[int], None] | None = None,
    hash_at: Callable[[str, int], str | None] | None = None,
) -> Report:
    """Check the hash chain over ``rows`` (the whole log, in position order).

    A fork by reference (``run.forked`` with ``prefix_version`` N) goes on from its parent's
    chain: its next event must follow version N + 1 and point at ``parent_hash``, which must be
    the hash of the parent's event at version N — looked up with ``hash_at(stream, version)``
    (the stored hash of one row) after the walk; without ``hash_at`` that last check is not
    made.
    """
    report = Report()
    heads: dict[str, tuple[int, str | None, int]] = {}  # stream -> (version, hash, position)
    seen_ids: set[str] = set()
    causes: list[tuple[Notification, str]] = []
    links = report.links  # fork -> (parent, versions inherited)
    anchors: list[tuple[Notification, str, int, str]] = []

    def found(row: Notification, problem: Problem, detail: str) -> None:
        report.findings.append(
            Finding(row.id, str(row.originator_id), row.originator_version, problem, detail)
        )

    for row in rows:
        report.events += 1
        if progress is not None and report.events % 10_000 == 0:
            progress(report.events)
        stream = str(row.originator_id)
        version = row.originator_version
        prev_version, prev_hash, prev_position = heads.get(stream, (0, None, 0))
        try:
            state = plain_state(row)
            doc = from_json(state)  # pydantic-core's parser: ~2.5x json.loads on these bodies
            if not isinstance(doc, dict):
                raise ValueError("body is not a JSON object")
        except Exception as exc:
            found(row, Problem.UNREADABLE, f"cannot parse the stored body: {exc}")
            heads[stream] = (version, None, row.id)
            continue
        split = split_state(state)
        recorded_hash = doc.get("hash")
        if split is None or split[1] != recorded_hash:
            found(row, Problem.EDITED, "the hash is missing or not the last member of the body")
        elif body_hash(split[0]) != recorded_hash:
            found(row, Problem.EDITED, "the content does not match its hash")
        if doc.get("stream") != stream or doc.get("version") != version:
            found(
                row,
                Problem.MOVED,
                f"the body says stream {doc.get('stream')!r} version {doc.get('version')}",
            )
        if version <= prev_version:
            found(
                row,
                Problem.REORDERED,
                f"version {version} comes after version {prev_version} (position {prev_position})",
            )
        elif version != prev_version + 1:
            found(
                row, Problem.VERSION_GAP, f"versions {prev_version + 1}..{version - 1} are missing"
            )
        elif doc.get("prev_hash") != (_anchor(doc) if version == 1 else prev_hash):
            found(
                row,
                Problem.CHAIN_BROKEN,
                "prev_hash does not match the previous event of the stream "
                f"(version {prev_version}): it was edited, removed or replaced",
            )
        heads[stream] = (max(version, prev_version), recorded_hash, row.id)
        if version == 1 and (link := _link(doc)) is not None:
            parent, inherits, anchor = link
            links[stream] = (parent, inherits)
            heads[stream] = (inherits + 1, recorded_hash, row.id)
            anchors.append((row, parent, inherits, anchor))
        event_id = doc.get("id")
        if isinstance(event_id, str):
            seen_ids.add(event_id)
        cause = doc.get("causation_id")
        if isinstance(cause, str):
            causes.append((row, cause))
    for row, parent, version, anchor in anchors:
        if hash_at is None:
            break
        # The parent's version N may itself be inherited: find the row that holds it.
        where, at = parent, version
        while where in links and 2 <= at <= links[where][1] + 1:
            where, at = links[where][0], at - 1
        actual = hash_at(where, at)
        if actual != anchor:
            found(
                row,
                Problem.CHAIN_BROKEN,
                f"the fork inherits {version} events of {parent!r}, but the parent's event at "
                f"version {version} "
                + ("is not in the log" if actual is None else f"has hash {actual[:12]}…")
                + f", not parent_hash {anchor[:12]}…",
            )
    for row, cause in causes:
        if cause not in seen_ids:
            found(row, Problem.DANGLING_CAUSE, f"its cause {cause} is not in the log (removed?)")
    report.streams = len(heads)
    report.findings.sort(key=lambda f: (f.position, f.problem.value))
    return report


def _link(doc: dict[str, object]) -> tuple[str, int, str] | None:
    """(parent, events inherited, parent_hash) of a fork by reference's ``run.forked`` body."""
    payload = doc.get("payload")
    if doc.get("type") != "run.forked" or not isinstance(payload, dict):
        return None
    inherits = payload.get("prefix_version")
    if not isinstance(inherits, int) or inherits < 1:
        return None
    return str(payload.get("parent_run")), inherits, str(payload.get("parent_hash"))


def _anchor(doc: dict[str, object]) -> str | None:
    """What a stream's first event must point at: nothing, or for a fork by reference the
    parent's event it inherits last."""
    link = _link(doc)
    return link[2] if link is not None else None
