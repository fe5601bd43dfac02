"""The hash chain: any log the store writes verifies; any single mutation of it is found, in place.

Mutations are made on copies of the stored rows (eventsourcing ``Notification`` objects) and
checked with ``verify_rows``, exactly what ``EventStore.verify`` runs over the whole log.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace

from eventsourcing.persistence import Notification
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from agentledger.events import EventStore, Problem, RunPaused
from agentledger.events._codec import body_hash, seal, split_state
from agentledger.events.verify import verify_rows

STREAMS = ["run-a", "run-b", "user-ada"]

appends = st.lists(
    st.tuples(st.sampled_from(STREAMS), st.integers(1, 3), st.text(max_size=12)),
    min_size=1,
    max_size=12,
)


def plain(row: Notification) -> bytes:
    return row.state  # the memory store has no cipher or compressor


def build(batches: list[tuple[str, int, str]]) -> tuple[EventStore, list[Notification]]:
    store = EventStore.open("memory://")
    for stream, count, reason in batches:
        store.append(
            stream,
            [RunPaused(actor="system", payload={"reason": f"{reason}{i}"}) for i in range(count)],
        )
    return store, list(store.read_stored())


def next_in_stream(rows: list[Notification], index: int) -> int | None:
    """The position of the next row of the same stream after ``rows[index]``, if any."""
    stream = rows[index].originator_id
    return next((r.id for r in rows[index + 1 :] if r.originator_id == stream), None)


def with_body(state: bytes, edit: Callable[[dict[str, object]], None], rehash: bool) -> bytes:
    """``state`` with its body edited; the hash recomputed (a careful forger) or kept."""
    split = split_state(state)
    assert split is not None
    document = json.loads(split[0])
    edit(document)
    body = json.dumps(document, separators=(",", ":")).encode()
    digest = body_hash(body) if rehash else split[1]
    return body[:-1] + b',"hash":"' + digest.encode() + b'"}'


def recorded_hash(row: Notification) -> str:
    split = split_state(row.state)
    assert split is not None
    return split[1]


def change_reason(document: dict[str, object]) -> None:
    payload = document["payload"]
    assert isinstance(payload, dict)
    payload["reason"] = str(payload["reason"]) + " (edited)"


@settings(max_examples=100, deadline=None)
@given(appends)
def test_every_log_the_store_writes_verifies(batches: list[tuple[str, int, str]]) -> None:
    store, rows = build(batches)
    report = store.verify()
    assert report.ok, report.findings
    assert report.events == sum(count for _, count, _ in batches) == len(rows)
    assert report.streams == len({stream for stream, _, _ in batches})
    assert verify_rows(rows, plain).ok


@settings(max_examples=250, deadline=None)
@given(
    appends,
    st.sampled_from(["edit", "flip", "rehash", "delete", "swap", "move", "forge"]),
    st.data(),
)
def test_any_single_mutation_is_found_where_it_was_made(
    batches: list[tuple[str, int, str]], kind: str, data: st.DataObject
) -> None:
    _, rows = build(batches)
    mutated = list(rows)
    index = data.draw(st.integers(0, len(rows) - 1), label="index")
    row = rows[index]

    if kind == "edit":  # content changed, hash kept
        mutated[index] = replace(row, state=with_body(row.state, change_reason, rehash=False))
        expected = {row.id}
    elif kind == "flip":  # any one byte changed to any other value
        offset = data.draw(st.integers(0, len(row.state) - 1), label="offset")
        value = data.draw(st.integers(0, 255).filter(lambda b: b != row.state[offset]))
        state = row.state[:offset] + bytes([value]) + row.state[offset + 1 :]
        mutated[index] = replace(row, state=state)
        expected = {row.id}
    elif kind == "rehash":  # content changed and its own hash recomputed
        following = next_in_stream(rows, index)
        assume(following is not None)  # a stream's newest event can only be anchored outside
        mutated[index] = replace(row, state=with_body(row.state, change_reason, rehash=True))
        expected = {following}
    elif kind == "delete":
        following = next_in_stream(rows, index)
        assume(following is not None)  # as above: removing the newest leaves no trace
        del mutated[index]
        expected = {following}
    elif kind == "swap":  # two events of one stream trade places in the global order
        later = [
            j for j in range(index + 1, len(rows)) if rows[j].originator_id == row.originator_id
        ]
        assume(later)
        other = data.draw(st.sampled_from(later), label="other")
        mutated[index] = replace(rows[other], id=row.id)
        mutated[other] = replace(row, id=rows[other].id)
        expected = {row.id}
    elif kind == "move":  # the row's stream or version no longer matches its body
        if data.draw(st.booleans(), label="to another stream"):
            target = data.draw(st.sampled_from([s for s in STREAMS if s != row.originator_id]))
            mutated[index] = replace(row, originator_id=target)
        else:
            shift = data.draw(st.integers(-3, 3).filter(bool), label="shift")
            mutated[index] = replace(row, originator_version=row.originator_version + shift)
        expected = {row.id}
    else:  # forge: a well-formed event with a correct hash of its own, put anywhere
        stream = data.draw(st.sampled_from(sorted({str(r.originator_id) for r in rows})))
        own = [r for r in rows if r.originator_id == stream]
        at = data.draw(st.integers(0, len(rows)), label="insert at")
        before = sum(1 for r in rows[:at] if r.originator_id == stream)  # its version there
        # Versions around the slot: the one that fits, a repeat, a gap, and the next at the end.
        version = data.draw(
            st.sampled_from(sorted({before + 1, max(before, 1), before + 2, len(own) + 1})),
            label="version",
        )
        hashes = [recorded_hash(r) for r in own]
        true_prev = hashes[version - 2] if 1 < version <= len(own) + 1 else None
        prev_hash = data.draw(st.sampled_from([true_prev, "e" * 64]), label="prev_hash")
        # A proper continuation after the stream's head is indistinguishable from a real append.
        assume(not (version == len(own) + 1 and prev_hash == true_prev and before == len(own)))
        forged = RunPaused(
            actor="system",
            stream=stream,
            version=version,
            prev_hash=prev_hash,
            payload={"reason": "forged"},
        )
        state, _ = seal(forged)
        mutated.insert(at, Notification(stream, version, "run.paused@1", state, 0))
        # Renumber: the forged row takes a position in the global order like any other.
        mutated = [replace(r, id=position) for position, r in enumerate(mutated, start=1)]
        expected = {at + 1}
        following = next_in_stream(mutated, at)
        if following is not None:
            expected.add(following)

    report = verify_rows(mutated, plain)
    assert not report.ok, f"{kind} at position {row.id} went unnoticed"
    assert report.first is not None
    assert report.first.position in expected, (kind, report.findings)


def test_findings_name_the_position_the_stream_and_the_kind() -> None:
    _, rows = build([("run-a", 3, "r"), ("run-b", 1, "r")])
    report = verify_rows([rows[0], rows[2], rows[3]], plain)
    [finding] = report.findings
    assert (finding.position, finding.stream, finding.version, finding.problem) == (
        rows[2].id,
        "run-a",
        3,
        Problem.VERSION_GAP,
    )
    assert str(finding).startswith(f"position {rows[2].id} (stream 'run-a' version 3): ")
    assert "versions 2..2 are missing" in str(finding)
    assert (report.events, report.streams) == (3, 2)
