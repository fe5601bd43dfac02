"""ProjectionRunner on a real SQLite log: exactly once across a SIGKILL, live follow, version
bumps, conflicting runners and damaged checkpoint files."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from agentledger.events import (
    EventStore,
    PreferenceRecorded,
    RunCompleted,
    RunPaused,
    RunStarted,
    ScratchpadUpdated,
    StoreUnavailable,
    TaskAssigned,
    TaskPlanned,
)
from agentledger.events.handlers import on
from agentledger.projections import PerStream, RunState, RunStateProjection, RunStatus
from agentledger.projections.checkpoints import CheckpointConflict, CheckpointStore
from agentledger.projections.runner import ProjectionRunner, as_of
from agentledger.sample import write_sample_run

NAME = PerStream(RunStateProjection()).name
VERSION = PerStream(RunStateProjection()).version


def runs_projection() -> PerStream:
    return PerStream(RunStateProjection())


def stored_state(checkpoints: CheckpointStore, projection: Any = None) -> tuple[int, bytes]:
    """The position and state (dumped) a keyed projection's checkpoint holds."""
    p = projection or runs_projection()
    keyed = checkpoints.load_keyed(p.name, p.version)
    assert keyed is not None
    position, rows = keyed
    return position, p.dump(p.from_keys({k.key: p.load_key(k.state) for k in rows}))


def fresh_fold_bytes(store: EventStore, projection: Any = None) -> bytes:
    p = projection or runs_projection()
    return p.dump(p.fold(store.read_all()))  # type: ignore[no-any-return]


def write_big_log(store: EventStore, runs: int = 100, per_run: int = 200) -> tuple[int, int]:
    """``runs`` runs of ``per_run`` events (plus user-stream noise and, in every tenth run,
    events after the end); returns (events in run streams, of which illegal)."""
    run_events = illegal = 0
    for r in range(runs):
        run = f"run-{r:04d}"
        coord, worker = "agent:coordinator/c1", "agent:execution/e1"
        events: list[Any] = [
            RunStarted(actor="human:ann", payload={"goal": f"goal {r}"}),
            TaskPlanned(
                actor=coord, payload={"task_id": "t1", "goal": "work", "role": "execution"}
            ),
            TaskAssigned(actor=coord, payload={"task_id": "t1", "role": "execution"}),
        ]
        events += [
            ScratchpadUpdated(actor=worker, payload={"key": f"k{i % 7}", "value": f"v{i}"})
            for i in range(per_run - 4)
        ]
        events.append(RunCompleted(actor=coord, payload={"summary": f"done {r}"}))
        if r % 10 == 0:  # activity after the end: refused, recorded as anomalies
            events += [ScratchpadUpdated(actor=worker, payload={"key": "late", "value": "x"})] * 2
            illegal += 2
        store.append(run, events)
        run_events += len(events)
        store.append(
            "user-ann",
            [
                PreferenceRecorded(
                    actor="human:ann", payload={"user": "ann", "key": "k", "value": "v"}
                )
            ],
        )
    return run_events, illegal


def committed_position(path: Path) -> int:
    """The checkpoint position as another process sees it (0 before the first commit)."""
    if not path.exists():
        return 0
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5) as db:
            row = db.execute("SELECT position FROM checkpoints WHERE name = ?", (NAME,)).fetchone()
    except sqlite3.OperationalError:
        return 0  # the schema is not there yet
    return int(row[0]) if row else 0


_CATCH_UP = """
import sys, time
from agentledger.events import EventStore
from agentledger.projections import PerStream, RunStateProjection
from agentledger.projections.checkpoints import CheckpointStore
from agentledger.projections.runner import ProjectionRunner
with EventStore.open(sys.argv[1]) as store:
    runner = ProjectionRunner(store, PerStream(RunStateProjection()), CheckpointStore(sys.argv[2]),
                              commit_every=100, snapshot_every=2_000)
    # A short pause after each commit widens the window the parent kills in; the fold itself
    # is untouched.
    runner.catch_up(progress=lambda position: time.sleep(0.01))
    print("finished", runner.position, flush=True)
"""


@pytest.mark.slow
def test_a_runner_killed_mid_catch_up_resumes_exactly_once(sqlite_url: str, tmp_path: Path) -> None:
    checkpoints_path = tmp_path / "cache" / "checkpoints.db"
    with EventStore.open(sqlite_url) as store:
        relevant, illegal = write_big_log(store)
        head = store.head_position()
        assert relevant >= 20_000 and head > relevant

        child = subprocess.Popen(
            [sys.executable, "-c", _CATCH_UP, sqlite_url, str(checkpoints_path)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            deadline = time.monotonic() + 60
            # Several commits and one snapshot in, far from the end: then kill it.
            while committed_position(checkpoints_path) < 2_000:
                assert child.poll() is None, child.communicate()
                assert time.monotonic() < deadline, "the child never committed a checkpoint"
                time.sleep(0.002)
            os.kill(child.pid, signal.SIGKILL)
        finally:
            stdout, stderr = child.communicate(timeout=30)
        assert child.returncode == -signal.SIGKILL, (stdout, stderr)
        assert "finished" not in stdout
        killed_at = committed_position(checkpoints_path)
        assert 0 < killed_at < head, "the kill must land mid-catch-up"

        checkpoints = CheckpointStore(checkpoints_path)
        runner = ProjectionRunner(store, runs_projection(), checkpoints, commit_every=100)
        assert runner.position == killed_at  # resumes from the checkpoint, not from 0
        # Runs keep a stored state from before the first snapshot boundary and from the last
        # commit (a keyed projection stores each run's state, not the whole state).
        kept = checkpoints.snapshot_positions(NAME, VERSION)
        assert kept[0] < 2_000 and kept[-1] == killed_at
        state = runner.catch_up()
        checkpoints.close()

        assert runner.position == head
        assert runner.projection.dump(state) == fresh_fold_bytes(store)
        runs: dict[str, RunState] = state.streams  # type: ignore[attr-defined]
        assert len(runs) == 100
        applied = sum(r.events for r in runs.values())
        refused = sum(len(r.anomalies) for r in runs.values())
        assert (applied, refused) == (relevant - illegal, illegal)
        assert all(r.status is RunStatus.COMPLETED for r in runs.values())


def test_a_restarted_runner_folds_only_new_events(sqlite_store: EventStore, tmp_path: Path) -> None:
    run, _ = write_sample_run(sqlite_store)
    checkpoints = CheckpointStore(tmp_path / "checkpoints.db")
    first = ProjectionRunner(sqlite_store, runs_projection(), checkpoints, commit_every=4)
    first.catch_up()
    first.catch_up()  # nothing new: nothing folded twice
    assert first.state.streams[run].events == 18  # type: ignore[attr-defined]

    sqlite_store.append(run, [RunPaused(actor="human:ann")])
    second = ProjectionRunner(sqlite_store, runs_projection(), checkpoints, commit_every=4)
    assert second.position == 18
    state = second.catch_up()
    assert state.streams[run].events == 19  # type: ignore[attr-defined]
    assert state.streams[run].status is RunStatus.PAUSED  # type: ignore[attr-defined]
    assert second.projection.dump(state) == fresh_fold_bytes(sqlite_store)
    assert stored_state(checkpoints) == (19, second.projection.dump(state))


def test_follow_picks_up_events_appended_after_catch_up(
    sqlite_store: EventStore, tmp_path: Path
) -> None:
    first_run, _ = write_sample_run(sqlite_store)
    checkpoints = CheckpointStore(tmp_path / "checkpoints.db")
    runner = ProjectionRunner(sqlite_store, runs_projection(), checkpoints)
    runner.catch_up()
    changes: list[int] = []
    stop = threading.Event()
    thread = threading.Thread(
        target=runner.follow,
        args=(stop, lambda state: changes.append(len(state.streams))),  # type: ignore[attr-defined]
        daemon=True,
    )
    thread.start()
    try:
        second_run, _ = write_sample_run(sqlite_store)
        sqlite_store.append(first_run, [RunPaused(actor="human:ann", payload={"reason": "lunch"})])
        head = sqlite_store.head_position()
        deadline = time.monotonic() + 15
        while runner.position < head and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        stop.set()
        thread.join(timeout=10)
    assert not thread.is_alive()
    assert runner.position == head == 37
    assert changes and changes[-1] == 2
    runs = runner.state.streams  # type: ignore[attr-defined]
    assert runs[first_run].status is RunStatus.PAUSED
    assert runs[second_run].status is RunStatus.WAITING_FOR_APPROVAL
    assert runner.projection.dump(runner.state) == fresh_fold_bytes(sqlite_store)
    # follow commits what it folds
    assert stored_state(checkpoints) == (head, runner.projection.dump(runner.state))


class ShoutingRunState(RunStateProjection):
    """The next version of the run state fold: goals are stored upper-cased."""

    version = RunStateProjection.version + 1

    @on(RunStarted)
    def _started(self, state: RunState, event: RunStarted) -> None:
        super()._started(state, event)
        state.goal = state.goal.upper()


def test_a_version_bump_discards_the_old_checkpoint_and_rebuilds(
    sqlite_store: EventStore, tmp_path: Path
) -> None:
    run, _ = write_sample_run(sqlite_store)
    checkpoints = CheckpointStore(tmp_path / "checkpoints.db")
    ProjectionRunner(
        sqlite_store, runs_projection(), checkpoints, commit_every=5, snapshot_every=5
    ).catch_up()
    # Each run keeps its newest state of each snapshot epoch (positions 5-9, 10-14, 15-19).
    assert checkpoints.snapshot_positions(NAME, VERSION) == [5, 10, 18]

    v2 = PerStream(ShoutingRunState())
    assert (v2.name, v2.version) == (NAME, VERSION + 1)
    runner = ProjectionRunner(sqlite_store, v2, checkpoints, snapshot_every=5)
    assert runner.position == 0 and runner.state == v2.initial()
    assert checkpoints.snapshot_positions(NAME, VERSION) == []
    state = runner.catch_up()
    assert state.streams[run].goal.isupper()  # type: ignore[attr-defined]
    assert v2.dump(state) == fresh_fold_bytes(sqlite_store, v2)
    assert stored_state(checkpoints, v2) == (18, v2.dump(state))
    assert v2.dump(as_of(sqlite_store, v2, 12, checkpoints)) == v2.dump(
        v2.fold(list(sqlite_store.read_all())[:12])
    )


def test_rebuild_replaces_a_stored_state(sqlite_store: EventStore, tmp_path: Path) -> None:
    write_sample_run(sqlite_store)
    checkpoints = CheckpointStore(tmp_path / "checkpoints.db")
    projection = runs_projection()
    wrong = projection.dump(projection.initial())
    # A checkpoint at the end of the log that holds no runs.
    checkpoints.save_keyed(NAME, VERSION, after=0, position=18, changed=[], epoch=0)
    runner = ProjectionRunner(sqlite_store, projection, checkpoints)
    assert projection.dump(runner.catch_up()) == wrong  # trusts its checkpoint
    state = runner.rebuild()
    assert projection.dump(state) == fresh_fold_bytes(sqlite_store) != wrong


def test_a_stale_checkpoint_save_is_refused(sqlite_store: EventStore, tmp_path: Path) -> None:
    write_sample_run(sqlite_store)
    checkpoints = CheckpointStore(tmp_path / "checkpoints.db")
    first = ProjectionRunner(sqlite_store, runs_projection(), checkpoints)
    second = ProjectionRunner(sqlite_store, runs_projection(), checkpoints)
    first.catch_up()
    with pytest.raises(CheckpointConflict, match="advanced to position 18"):
        second.catch_up()
    assert stored_state(checkpoints) == (18, first.projection.dump(first.state))

    with pytest.raises(CheckpointConflict, match=f"projection '{NAME}'"):
        checkpoints.save(NAME, VERSION, after=5, position=20, state=b"{}", snapshot=True)
    stored = checkpoints.load(NAME, VERSION)
    assert stored is not None and stored.position == 18
    assert checkpoints.snapshot_positions(NAME, VERSION) == [18]  # the runs' states, unchanged
    checkpoints.save(NAME, VERSION, after=18, position=20, state=b"{}", snapshot=True)
    assert checkpoints.snapshot_positions(NAME, VERSION) == [20]


def _filled_checkpoints(store: EventStore, path: Path) -> None:
    for _ in range(30):
        write_sample_run(store)
    checkpoints = CheckpointStore(path)
    ProjectionRunner(
        store, runs_projection(), checkpoints, commit_every=50, snapshot_every=100
    ).catch_up()
    checkpoints._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    checkpoints.close()


def test_a_garbage_checkpoints_file_says_to_delete_it(
    memory_store: EventStore, tmp_path: Path
) -> None:
    path = tmp_path / "checkpoints.db"
    _filled_checkpoints(memory_store, path)
    path.write_bytes(b"not a database at all " * 500)
    with pytest.raises(StoreUnavailable) as caught:
        ProjectionRunner(memory_store, runs_projection(), CheckpointStore(path))
    message = str(caught.value)
    assert str(path) in message and "deletes and rebuilds it" in message
    assert "agentledger rebuild" in message

    path.unlink()
    runner = ProjectionRunner(memory_store, runs_projection(), CheckpointStore(path))
    assert runner.projection.dump(runner.catch_up()) == fresh_fold_bytes(memory_store)


def test_a_checkpoints_file_with_damaged_pages_says_to_delete_it(
    memory_store: EventStore, tmp_path: Path
) -> None:
    path = tmp_path / "checkpoints.db"
    _filled_checkpoints(memory_store, path)
    data = bytearray(path.read_bytes())
    data[4096:] = b"\x5a" * (len(data) - 4096)  # the header and schema page survive
    path.write_bytes(bytes(data))
    with pytest.raises(StoreUnavailable, match="deletes and rebuilds it"):
        ProjectionRunner(memory_store, runs_projection(), CheckpointStore(path))


def test_per_run_folds_see_a_fork_by_reference_as_the_run_it_reads_as(
    sqlite_store: EventStore, tmp_path: Path
) -> None:
    from agentledger.blackboard import BlackboardProjection
    from agentledger.fork import fork_run

    run, _ = write_sample_run(sqlite_store)
    middle = sqlite_store.read(run)[10]  # the end of a reaction
    fork, forked = fork_run(sqlite_store, run, middle.position or 0, by="human:ann")
    sqlite_store.append(fork, [RunPaused(actor="human:ann", payload={"reason": "look"})])
    checkpoints = CheckpointStore(tmp_path / "checkpoints.db")
    for projection in (RunStateProjection(), BlackboardProjection()):
        # What a runner, a live follower and as_of fold for the fork from the global order
        # equals the fold of the fork read as one stream (its inherited events included).
        expected = projection.dump(projection.fold(sqlite_store.read(fork)))
        runner = ProjectionRunner(sqlite_store, PerStream(projection), checkpoints)
        state = runner.rebuild()
        assert projection.dump(state.streams[fork]) == expected  # type: ignore[attr-defined]
        head = sqlite_store.head_position()
        past = as_of(sqlite_store, PerStream(projection), head)
        assert projection.dump(past.streams[fork]) == expected  # type: ignore[attr-defined]
    runner = ProjectionRunner(sqlite_store, runs_projection(), checkpoints)
    fork_state = runner.rebuild().streams[fork]  # type: ignore[attr-defined]
    assert fork_state.status is RunStatus.PAUSED and fork_state.parent_run == run
    assert forked.payload.prefix_version == 11
    assert fork_state.events == 11 + 2  # the inherited, run.forked, and its own pause


class FailingRunState(RunStateProjection):
    """A run-state fold that fails on the 30th event it sees (a bug, or a damaged body)."""

    def __init__(self) -> None:
        self.seen = 0

    def apply(self, state: RunState, event: Any) -> RunState:
        self.seen += 1
        if self.seen == 30:
            raise RuntimeError("fold failed")
        return super().apply(state, event)


def test_a_catch_up_that_fails_part_way_keeps_state_and_position_together(
    sqlite_store: EventStore, tmp_path: Path
) -> None:
    write_sample_run(sqlite_store)
    write_sample_run(sqlite_store)
    checkpoints = CheckpointStore(tmp_path / "checkpoints.db")
    runner = ProjectionRunner(sqlite_store, PerStream(FailingRunState()), checkpoints)
    with pytest.raises(RuntimeError, match="fold failed"):
        runner.catch_up()
    folded = sum(s.events for s in runner.state.streams.values())  # type: ignore[attr-defined]
    assert folded == 29 and runner.position == 29  # the 29 events before the failure, no more
    assert checkpoints.load(runner.projection.name, runner.projection.version) is None


def test_commit_every_below_one_commits_after_every_event(
    sqlite_store: EventStore, tmp_path: Path
) -> None:
    write_sample_run(sqlite_store)
    checkpoints = CheckpointStore(tmp_path / "checkpoints.db")
    runner = ProjectionRunner(sqlite_store, runs_projection(), checkpoints, commit_every=0)
    seen: list[int] = []
    runner.catch_up(progress=seen.append)
    assert seen[:3] == [1, 2, 3] and runner.position == 18


def test_a_fork_whose_inherited_events_cannot_be_read_is_folded_once_on_the_retry(
    sqlite_store: EventStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from agentledger.fork import fork_run

    run, events = write_sample_run(sqlite_store)
    fork, _ = fork_run(sqlite_store, run, events[-1].position or 0, by="human:ann")
    sqlite_store.append(fork, [RunPaused(actor="human:ann", payload={"reason": "look"})])
    runner = ProjectionRunner(
        sqlite_store, runs_projection(), CheckpointStore(tmp_path / "checkpoints.db")
    )
    reads = sqlite_store.inherited

    def unavailable(event: Any) -> Any:  # the store blinks while the fork's prefix is read
        raise StoreUnavailable("the store blinked")

    monkeypatch.setattr(sqlite_store, "inherited", unavailable)
    with pytest.raises(StoreUnavailable):
        runner.catch_up()
    monkeypatch.setattr(sqlite_store, "inherited", reads)
    state = runner.catch_up()
    # As if nothing had failed: the fork folded once, as it reads.
    undisturbed = ProjectionRunner(
        sqlite_store, runs_projection(), CheckpointStore(tmp_path / "other.db")
    ).rebuild()
    assert runner.projection.dump(state) == runner.projection.dump(undisturbed)
    fork_state = state.streams[fork]  # type: ignore[attr-defined]
    assert fork_state == RunStateProjection().fold(sqlite_store.read(fork))
    assert fork_state.anomalies == [] and fork_state.status is RunStatus.PAUSED


@pytest.mark.parametrize("inner", ["runs", "blackboards"])
def test_as_of_with_keyed_checkpoints_equals_the_fold_at_every_position(
    memory_store: EventStore, tmp_path: Path, inner: str
) -> None:
    from agentledger.blackboard import BlackboardProjection
    from agentledger.fork import fork_run

    projection = PerStream(RunStateProjection() if inner == "runs" else BlackboardProjection())
    runs = [write_sample_run(memory_store)[0] for _ in range(2)]
    checkpoints = CheckpointStore(tmp_path / "checkpoints.db")
    ProjectionRunner(
        memory_store, projection, checkpoints, commit_every=7, snapshot_every=10
    ).catch_up()
    # After the last commit: a fork with no events of its own (the blackboard fold has no
    # handler for run.forked: the fork enters its state through the posts it inherits).
    middle = memory_store.read(runs[1])[-1]
    fork_run(memory_store, runs[1], middle.position or 0, by="human:ann")
    write_sample_run(memory_store)
    events = list(memory_store.read_all())
    for n in range(memory_store.head_position() + 1):
        lazy = as_of(memory_store, projection, n, checkpoints)
        assert projection.dump(lazy) == projection.dump(as_of(memory_store, projection, n)), n
    assert len(events) == memory_store.head_position()


def test_runners_with_another_snapshot_interval_resume_from_the_newest_run_state(
    memory_store: EventStore, tmp_path: Path
) -> None:
    run, _ = write_sample_run(memory_store)
    checkpoints = CheckpointStore(tmp_path / "checkpoints.db")
    projection = runs_projection()
    ProjectionRunner(
        memory_store, projection, checkpoints, commit_every=1, snapshot_every=5
    ).catch_up()
    for _ in range(4):
        memory_store.append(run, [RunPaused(actor="system")])
    ProjectionRunner(
        memory_store, projection, checkpoints, commit_every=1, snapshot_every=1000
    ).catch_up()
    resumed = ProjectionRunner(memory_store, projection, checkpoints)
    assert resumed.position == memory_store.head_position() == 22
    assert projection.dump(resumed.state) == fresh_fold_bytes(memory_store)


def test_a_whole_state_checkpoint_of_an_earlier_version_is_rebuilt(
    memory_store: EventStore, tmp_path: Path
) -> None:
    write_sample_run(memory_store)
    checkpoints = CheckpointStore(tmp_path / "checkpoints.db")
    projection = runs_projection()
    head = memory_store.head_position()
    whole = projection.dump(projection.fold(memory_store.read_all()))
    # What agentledger wrote before per-run (keyed) checkpoints: the whole state in one row.
    checkpoints.save(NAME, VERSION, after=0, position=head, state=whole, snapshot=True)
    assert len(as_of(memory_store, projection, head, checkpoints).streams) == 1  # type: ignore[attr-defined]
    runner = ProjectionRunner(memory_store, projection, checkpoints)
    assert runner.position == 0  # not trusted: folded again
    assert projection.dump(runner.catch_up()) == whole
