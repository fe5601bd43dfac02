"""Folds are pure: incremental == full == resumed from a snapshot, as_of == a prefix fold, and
the state's bytes do not depend on the process or PYTHONHASHSEED.

Hypothesis builds logs of a few runs from the whole catalogue: plausible lifecycles (start,
plan, assign, approvals, pause/resume, end) interleaved with arbitrary, often illegal events.
Every log is appended to a real store, so events carry their global positions.
"""

from __future__ import annotations

import hashlib
import os
import random
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agentledger.blackboard import BlackboardProjection
from agentledger.events import EVENT_TYPES, Envelope, Event, EventStore
from agentledger.projections import PerStream, Projection, RunStateProjection
from agentledger.projections.checkpoints import CheckpointStore, PositionOutOfRange
from agentledger.projections.memory import ScratchpadProjection
from agentledger.projections.runner import ProjectionRunner, as_of
from agentledger.sample import write_sample_run

RUNS = ("run-a", "run-b", "run-c")
USER_STREAM = "user-ann"
HASH = "cd" * 32
ACTORS = {
    "coordinator": "agent:coordinator/c1",
    "research": "agent:research/r1",
    "execution": "agent:execution/e1",
    "review": "agent:review/v1",
}


def build(kind: str, ref: int, text: str) -> Envelope:
    """A valid event of type ``kind``; ``ref`` picks ids from small pools so events collide."""
    action, task = f"a{ref % 3}", f"t{ref % 3}"
    role = ("research", "execution", "review", "coordinator")[ref % 4]
    actor = ACTORS[role]
    human, coord = "human:ann", ACTORS["coordinator"]
    approval = {"action_id": action, "action_hash": HASH}
    payloads: dict[str, tuple[str, dict[str, Any]]] = {
        "run.started": (human, {"goal": text or "g", "user": "ann"}),
        "run.paused": (human, {"reason": text}),
        "run.resumed": (human, {}),
        "run.cancelled": (human, {"reason": text}),
        "run.completed": (coord, {"summary": text}),
        "run.failed": (coord, {"reason": text}),
        "run.forked": (human, {"parent_run": "run-z", "parent_position": ref}),
        "task.planned": (coord, {"task_id": task, "goal": text or "g", "role": role}),
        "task.assigned": (coord, {"task_id": task, "role": role}),
        "task.completed": (actor, {"task_id": task, "result": text}),
        "task.failed": (actor, {"task_id": task, "reason": text}),
        "task.reviewed": (
            "agent:review/v1",
            {"task_id": task, "accepted": ref % 2 == 0, "reasons": text or "r"},
        ),
        "model.failed": (actor, {"request_id": f"m{ref}", "error": text or "e"}),
        "model.requested": (
            actor,
            {"request_id": f"m{ref}", "provider": "p", "model": "m", "prompt_hash": HASH},
        ),
        "model.responded": (actor, {"request_id": f"m{ref}", "model": "m", "content": text}),
        "action.proposed": (
            actor,
            {
                "action_id": action,
                "tool": "sql.execute",
                "arguments": {"n": ref, "text": text, "nested": [ref, {"x": 1.5}]},
                "reasoning": text,
                "idempotency_key": f"k{ref}",
            },
        ),
        "action.risk_assessed": (
            "system:policy",
            {"action_id": action, "risk": "high", "action_hash": HASH, "rule": "r"},
        ),
        "action.executed": (actor, {"action_id": action, "result": {"rows": ref}}),
        "action.failed": (actor, {"action_id": action, "error": text or "e"}),
        "action.outcome_unknown": (actor, {"action_id": action, "reason": "crash"}),
        "approval.requested": (
            actor,
            {**approval, "tool": "sql.execute", "risk": "high", "preview": text},
        ),
        "approval.granted": (human, {**approval, "comment": text}),
        "approval.denied": (human, {**approval, "reason": text or "no"}),
        "approval.expired": ("system", approval),
        "notification.sent": (human, {"message": text}),
        "blackboard.posted": (
            actor,
            {
                "entry_id": f"e{ref % 5}",
                "kind": ("fact", "hypothesis", "decision", "artifact", "question")[ref % 5],
                "topic": f"topic{ref % 2}",
                "content": text,
                "supersedes": None if ref % 3 == 0 else f"e{(ref + 1) % 5}",
            },
        ),
        "scratchpad.updated": (
            actor,
            {"key": f"k{ref % 3}", "value": None if ref % 4 == 3 else text},
        ),
        "memory.stored": (actor, {"memory_id": f"mem{ref}", "text": text or "m", "user": "ann"}),
        "context.summarized": (
            f"agent:{role}/memory",
            {
                "agent": role,
                "from_position": 0,
                "to_position": ref,
                "summary": text,
                "model": "scripted",
            },
        ),
        "preference.recorded": (human, {"user": "ann", "key": f"p{ref % 2}", "value": text}),
    }
    principal, payload = payloads[kind]
    return EVENT_TYPES[kind](actor=principal, payload=payload)


KINDS = sorted(EVENT_TYPES)
texts = st.text(alphabet="abcdeé xyz-\n", max_size=12)
refs = st.integers(min_value=0, max_value=11)
any_event = st.tuples(st.sampled_from([*RUNS, USER_STREAM]), st.sampled_from(KINDS), refs, texts)


@st.composite
def lifecycle(draw: st.DrawFn, run: str) -> list[tuple[str, str, int, str]]:
    """A plausible run: start, plan, assign, actions with approvals, maybe a pause, an end."""
    steps: list[tuple[str, int]] = []
    if draw(st.booleans()):
        steps.append(("run.forked", 3))
    steps += [("run.started", 0), ("task.planned", 0), ("task.planned", 1), ("task.assigned", 0)]
    for ref in draw(st.lists(refs, max_size=4)):
        steps.append(
            draw(
                st.sampled_from(
                    [
                        ("model.requested", ref),
                        ("blackboard.posted", ref),
                        ("scratchpad.updated", ref),
                        ("task.completed", ref),
                    ]
                )
            )
        )
        if draw(st.booleans()):
            steps += [("action.proposed", ref), ("action.risk_assessed", ref)]
            steps.append(("approval.requested", ref))
            if draw(st.booleans()):
                steps += [("run.paused", 0), ("run.resumed", 0)]
            decision = draw(st.sampled_from(["approval.granted", "approval.denied"]))
            steps += [(decision, ref), ("action.executed", ref)]
    steps.append((draw(st.sampled_from(["run.completed", "run.failed", "run.cancelled"])), 0))
    return [(run, kind, ref, draw(texts)) for kind, ref in steps]


@st.composite
def logs(draw: st.DrawFn) -> list[tuple[str, str, int, str]]:
    """Interleaved plausible lifecycles and arbitrary events (legal or not)."""
    queues = [draw(lifecycle(run)) for run in draw(st.sets(st.sampled_from(RUNS), max_size=3))]
    queues.append(draw(st.lists(any_event, max_size=25)))
    queues = [q for q in queues if q]
    out: list[tuple[str, str, int, str]] = []
    while queues:
        i = draw(st.integers(0, len(queues) - 1))
        out.append(queues[i].pop(0))
        if not queues[i]:
            queues.pop(i)
    return out


def append_all(store: EventStore, log: Sequence[tuple[str, str, int, str]]) -> list[Event]:
    """Append the log one event at a time (so streams interleave) and read it back in order."""
    for stream, kind, ref, text in log:
        store.append(stream, [build(kind, ref, text)])
    return list(store.read_all())


def per_run(events: Sequence[Event]) -> dict[str, list[Event]]:
    streams: dict[str, list[Event]] = {}
    for event in events:
        streams.setdefault(event.stream, []).append(event)
    return streams


def cases(events: Sequence[Event]) -> list[tuple[Projection[Any], list[Event]]]:
    """(projection, events it folds): the per-run folds over each run, PerStream over all."""
    out: list[tuple[Projection[Any], list[Event]]] = [
        (PerStream(RunStateProjection()), list(events)),
        (PerStream(BlackboardProjection()), list(events)),
    ]
    for stream_events in per_run(events).values():
        for projection in (RunStateProjection(), BlackboardProjection(), ScratchpadProjection()):
            out.append((projection, stream_events))
    return out


# Checkpoint commits fsync; a RAM-backed directory keeps the 60 examples quick where there is one.
FAST_TMP = "/dev/shm" if os.path.isdir("/dev/shm") else None

FOLD_SETTINGS = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@FOLD_SETTINGS
@given(log=logs(), data=st.data())
def test_incremental_full_and_resumed_folds_agree(
    log: list[tuple[str, str, int, str]], data: st.DataObject
) -> None:
    with EventStore.open("memory://") as store:
        events = append_all(store, log)
    assert [e.position for e in events] == list(range(1, len(log) + 1))

    for projection, folded in cases(events):
        full = projection.dump(projection.fold(folded))

        state = projection.initial()
        for event in folded:  # one event at a time, through the checkpoint format
            state = projection.apply(projection.load(projection.dump(state)), event)
        assert projection.dump(state) == full, projection.name

        cut = data.draw(st.integers(0, len(folded)), label=f"cut for {projection.name}")
        snapshot = projection.dump(projection.fold(folded[:cut]))
        resumed = projection.fold(folded[cut:], projection.load(snapshot))
        assert projection.dump(resumed) == full, (projection.name, cut)

    runs = PerStream(RunStateProjection()).fold(events)
    assert set(runs.streams) == {e.stream for e in events if e.stream.startswith("run-")}  # type: ignore[attr-defined]


@FOLD_SETTINGS
@given(log=logs(), data=st.data())
def test_as_of_equals_the_fold_of_the_first_n_events(
    log: list[tuple[str, str, int, str]], data: st.DataObject
) -> None:
    with EventStore.open("memory://") as store, tempfile.TemporaryDirectory(dir=FAST_TMP) as tmp:
        events = append_all(store, log)
        head = len(events)
        checkpoints = CheckpointStore(Path(tmp) / "checkpoints.db")
        try:
            # Per-run folds over the whole log are odd but still pure folds: they exercise the
            # type filter (blackboard, scratchpad) and the unfiltered read (run state).
            for projection in (
                PerStream(RunStateProjection()),
                BlackboardProjection(),
                ScratchpadProjection(),
            ):
                n = data.draw(st.integers(0, head), label=f"N for {projection.name}")
                expected = projection.dump(projection.fold(events[:n]))
                assert projection.dump(as_of(store, projection, n)) == expected

                runner = ProjectionRunner(
                    store, projection, checkpoints, commit_every=3, snapshot_every=4
                )
                runner.catch_up()
                assert runner.position == head
                assert projection.dump(runner.state) == projection.dump(projection.fold(events))
                snapshots = checkpoints.snapshot_positions(projection.name, projection.version)
                if projection.event_types == () and head >= 4 and runner.state.streams:  # type: ignore[attr-defined]
                    assert snapshots  # as_of below really starts from stored run states
                got = as_of(store, projection, n, checkpoints)
                assert projection.dump(got) == expected, (projection.name, n, snapshots)
        finally:
            checkpoints.close()


def test_as_of_starts_from_a_snapshot_and_refuses_positions_outside_the_log(
    memory_store: EventStore, tmp_path: Path
) -> None:
    for _ in range(3):
        write_sample_run(memory_store)
    events = list(memory_store.read_all())
    projection = PerStream(RunStateProjection())
    checkpoints = CheckpointStore(tmp_path / "checkpoints.db")
    ProjectionRunner(memory_store, projection, checkpoints, snapshot_every=10).catch_up()
    # Runs keep their newest state of each epoch of 10 positions (the last from position 54).
    assert checkpoints.snapshot_positions(projection.name, projection.version) == [
        10,
        20,
        30,
        40,
        54,
    ]
    for n in (0, 1, 10, 11, 29, 30, 54):
        got = as_of(memory_store, projection, n, checkpoints)
        assert projection.dump(got) == projection.dump(projection.fold(events[:n]))
    head = memory_store.head_position()
    for bad in (-1, head + 1):
        with pytest.raises(PositionOutOfRange, match=f"runs from 0 to {head}"):
            as_of(memory_store, projection, bad, checkpoints)


@pytest.mark.parametrize("inner", [BlackboardProjection, ScratchpadProjection])
def test_per_stream_of_a_filtered_fold_ignores_events_of_other_types(
    memory_store: EventStore, inner: Callable[[], Projection[Any]]
) -> None:
    write_sample_run(memory_store)  # its blackboard post and scratchpad update come late
    memory_store.append("run-quiet", [build("run.started", 0, "nothing posted")])
    events = list(memory_store.read_all())
    projection = PerStream(inner())
    for n in (1, len(events)):
        filtered = as_of(memory_store, projection, n)
        assert projection.dump(filtered) == projection.dump(projection.fold(events[:n])), n


def random_log(seed: int, size: int) -> list[tuple[str, str, int, str]]:
    """A fixed pseudo-random log (any event type, any run) for the cross-process check."""
    rng = random.Random(seed)
    return [
        (
            rng.choice([*RUNS, USER_STREAM]),
            rng.choice(KINDS),
            rng.randrange(12),
            rng.choice(["", "alpha", "béta\n", "x y z"]),
        )
        for _ in range(size)
    ]


_DIGEST_SCRIPT = """
import hashlib, sys
from agentledger.blackboard import BlackboardProjection
from agentledger.events import EventStore
from agentledger.projections import PerStream, RunStateProjection
from agentledger.projections.memory import ScratchpadProjection
with EventStore.open(sys.argv[1]) as store:
    events = list(store.read_all())
for p in (PerStream(RunStateProjection()), PerStream(BlackboardProjection()),
          PerStream(ScratchpadProjection())):
    print(p.name, hashlib.sha256(p.dump(p.fold(events))).hexdigest())
"""


def _digests(events: Sequence[Event]) -> list[str]:
    folds: list[Callable[[], Projection[Any]]] = [
        lambda: PerStream(RunStateProjection()),
        lambda: PerStream(BlackboardProjection()),
        lambda: PerStream(ScratchpadProjection()),
    ]
    out = []
    for make in folds:
        p = make()
        out.append(f"{p.name} {hashlib.sha256(p.dump(p.fold(events))).hexdigest()}")
    return out


@pytest.mark.slow
def test_state_bytes_do_not_depend_on_pythonhashseed(sqlite_url: str) -> None:
    with EventStore.open(sqlite_url) as store:
        write_sample_run(store)
        events = append_all(store, random_log(seed=11, size=400))
        write_sample_run(store)
        events = list(store.read_all())
    state = PerStream(RunStateProjection()).fold(events)
    assert len(state.streams) == 5  # type: ignore[attr-defined]
    outputs = []
    for seed in ("1", "2"):
        result = subprocess.run(
            [sys.executable, "-c", _DIGEST_SCRIPT, sqlite_url],
            env={**os.environ, "PYTHONHASHSEED": seed},
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        outputs.append(result.stdout.split("\n")[:3])
    assert outputs[0] == outputs[1] == _digests(events)


def test_as_of_a_keyed_projection_reads_only_the_runs_asked_for(
    memory_store: EventStore, tmp_path: Path
) -> None:
    first, _ = write_sample_run(memory_store)
    projection = PerStream(RunStateProjection())
    checkpoints = CheckpointStore(tmp_path / "checkpoints.db")
    ProjectionRunner(memory_store, projection, checkpoints, snapshot_every=10).catch_up()
    committed = memory_store.head_position()
    # Events after the last commit: a second run and more of the first.
    second, _ = write_sample_run(memory_store)
    memory_store.append(first, [build("run.paused", 0, "lunch")])
    events = list(memory_store.read_all())
    for n in (0, 5, committed, committed + 3, len(events)):
        got = as_of(memory_store, projection, n, checkpoints)
        runs = got.streams  # type: ignore[attr-defined]
        assert not isinstance(runs, dict)  # a view: nothing read yet
        expected = projection.fold(events[:n]).streams  # type: ignore[attr-defined]
        assert list(runs) == list(expected) and len(runs) == len(expected), n
        for run in (first, second):
            assert (run in runs) == (run in expected), (run, n)
            if run in expected:
                assert runs[run] == expected[run], (run, n)
            else:
                with pytest.raises(KeyError):
                    runs[run]
        assert projection.dump(got) == projection.dump(projection.fold(events[:n])), n
    checkpoints.close()
