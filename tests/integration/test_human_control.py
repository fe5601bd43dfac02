"""Humans steering runs: approve, deny, expiry, pause/resume/cancel — the checks before anything
is written, and how the agents react. Agents run in threads (the runtime's code without Ray);
the store, tools and the offline model are real."""

from __future__ import annotations

import getpass
import hashlib
import json
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from agentledger.actors.providers import ScriptedProvider
from agentledger.actors.runtime import ENDED, ExpiryWatcher, follow_run, start_run
from agentledger.control import Approver, Human, authenticate, decide, steer
from agentledger.demo import DEMO_GOAL, prepare_demo
from agentledger.events import (
    ActionProposed,
    ActionRiskAssessed,
    AgentLedgerError,
    ApprovalGranted,
    ApprovalRequested,
    EventStore,
    NotAuthorized,
    NotFound,
    RunCancelled,
    RunFailed,
    RunStarted,
)
from agentledger.projections import RunStateProjection, RunStatus

ADA = Human("ada", ("approver",))


@pytest.fixture
def demo(tmp_path: Path, threaded_agents: Any) -> Any:
    """The offline demo run, waiting for approval of its delete; agents still running."""
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    docs, workspace = prepare_demo(tmp_path)

    class Demo:
        def __init__(self) -> None:
            self.agents = threaded_agents(url, tmp_path).__enter__()
            self.store = EventStore.open(url)
            self.run = start_run(self.store, DEMO_GOAL, docs=docs, workspace=workspace).stream
            self.workspace = workspace
            state = follow_run(self.store, self.run, timeout=60)
            assert state.status is RunStatus.WAITING_FOR_APPROVAL
            (self.pending,) = state.pending_approvals.values()

        def head(self) -> int:
            return self.store.stream_version(self.run)

    d = Demo()
    yield d
    d.agents.__exit__(None, None, None)
    d.store.close()


def test_approve_runs_the_action_and_the_run_completes(demo: Any) -> None:
    event = decide(demo.store, demo.run, demo.pending.action_id, ADA, grant=True, note="ok")
    assert event.actor == "human:ada" and isinstance(event, ApprovalGranted)
    state = follow_run(demo.store, demo.run, until=ENDED, timeout=60)
    assert state.status is RunStatus.COMPLETED
    assert not (demo.workspace / "notes.tmp").exists()


@pytest.mark.parametrize(
    ("action", "human", "words", "error"),
    [
        ("a-nope", ADA, "has no action 'a-nope'", NotFound),
        (None, Human("bob", ("viewer",)), "does not have the 'approver' role", NotAuthorized),
    ],
)
def test_a_decision_that_cannot_be_taken_writes_nothing(
    demo: Any, action: str | None, human: Human, words: str, error: type[Exception]
) -> None:
    before = demo.head()
    with pytest.raises(error, match=words):
        decide(demo.store, demo.run, action or demo.pending.action_id, human, grant=True, note="")
    assert demo.head() == before


def test_an_already_decided_action_cannot_be_decided_again(demo: Any) -> None:
    steer(demo.store, demo.run, ADA, "pause", "deciding")  # the run stays open meanwhile
    decide(demo.store, demo.run, demo.pending.action_id, ADA, grant=False, note="no")
    before = demo.head()
    with pytest.raises(AgentLedgerError, match="already decided by human:ada; it is denied"):
        decide(demo.store, demo.run, demo.pending.action_id, ADA, grant=True, note="")
    assert demo.head() == before


def test_an_ended_run_has_nothing_to_decide(demo: Any) -> None:
    decide(demo.store, demo.run, demo.pending.action_id, ADA, grant=True, note="")
    follow_run(demo.store, demo.run, until=ENDED, timeout=60)
    with pytest.raises(AgentLedgerError, match="is completed; nothing in it will run"):
        decide(demo.store, demo.run, demo.pending.action_id, ADA, grant=False, note="no")


def test_an_expired_request_cannot_be_approved(demo: Any) -> None:
    later = demo.pending.expires_at + timedelta(seconds=1)
    with pytest.raises(AgentLedgerError, match="expired"):
        decide(demo.store, demo.run, demo.pending.action_id, ADA, grant=True, note="", now=later)


def test_a_denial_needs_a_reason(demo: Any) -> None:
    with pytest.raises(AgentLedgerError, match="needs a reason"):
        decide(demo.store, demo.run, demo.pending.action_id, ADA, grant=False, note=" ")


def test_nobody_approves_what_they_proposed(memory_store: EventStore) -> None:
    """A human may propose an action by hand; they may not also approve it."""
    digest = "a" * 64
    run = "run-by-hand"
    memory_store.append(
        run,
        [
            RunStarted(actor="human:mallory", payload={"goal": "pay the invoice"}),
            ActionProposed(
                actor="human:mallory",
                payload={
                    "action_id": "a1",
                    "tool": "pay",
                    "idempotency_key": "k1",
                    "arguments": {"amount": 900},
                },
            ),
            ActionRiskAssessed(
                actor="system:policy",
                payload={"action_id": "a1", "risk": "high", "action_hash": digest, "rule": "r"},
            ),
            ApprovalRequested(
                actor="human:mallory",
                payload={"action_id": "a1", "action_hash": digest, "tool": "pay", "risk": "high"},
            ),
        ],
        expected_version=0,
    )
    mallory = Human("mallory", ("approver",))
    with pytest.raises(NotAuthorized, match="mallory proposed action a1"):
        decide(memory_store, run, "a1", mallory, grant=True, note="")
    assert memory_store.stream_version(run) == 4
    decide(memory_store, run, "a1", ADA, grant=True, note="checked the invoice")
    assert memory_store.stream_version(run) == 5


def test_a_denied_call_is_not_asked_again_and_the_run_fails_with_the_reason(demo: Any) -> None:
    decide(demo.store, demo.run, demo.pending.action_id, ADA, grant=False, note="keep it")
    state = follow_run(demo.store, demo.run, until=ENDED, timeout=60)
    # The coordinator replans, told why; the offline planner finds no other way and the
    # worker proposes the same call again: a human said no to it, so nobody is asked twice.
    assert state.status is RunStatus.FAILED
    assert "not asked again" in state.outcome and "keep it" in state.outcome
    events = demo.store.read(demo.run)
    assert [e.type for e in events].count("approval.requested") == 1
    replanned = [a for a in state.actions.values() if a.action_id != demo.pending.action_id]
    again = next(a for a in replanned if a.tool == "delete_file")
    assert again.status.value == "failed" and again.risk is not None
    assert (demo.workspace / "notes.tmp").exists()


@pytest.mark.parametrize("recorded_before_the_rule", [False, True])
def test_a_denied_run_verifies_whether_it_asked_again_or_not(
    tmp_path: Path,
    threaded_agents: Any,
    monkeypatch: pytest.MonkeyPatch,
    recorded_before_the_rule: bool,
) -> None:
    """Runs recorded before agents stopped asking again for a denied call verify too."""
    from agentledger.actors.agent import Agent
    from agentledger.actors.verify import verify_run

    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    docs, workspace = prepare_demo(tmp_path)
    with EventStore.open(url) as store:
        with monkeypatch.context() as patched:
            patched.setattr(Agent, "ask_again_after_denial", recorded_before_the_rule)
            with threaded_agents(url, tmp_path):
                run = start_run(store, DEMO_GOAL, docs=docs, workspace=workspace).stream
                (pending,) = follow_run(store, run, timeout=60).pending_approvals.values()
                decide(store, run, pending.action_id, ADA, grant=False, note="keep it")
                state = follow_run(store, run, timeout=60)
        requests = [e.type for e in store.read(run)].count("approval.requested")
        assert requests == (2 if recorded_before_the_rule else 1)
        assert state.status is (
            RunStatus.WAITING_FOR_APPROVAL if recorded_before_the_rule else RunStatus.FAILED
        )
        report = verify_run(store, run)
    assert report.ok, report.divergence


def test_verify_of_a_run_whose_agents_have_not_taken_up_a_grant_yet(
    tmp_path: Path, threaded_agents: Any
) -> None:
    # Approved while no agent runs: the grant waits in the log. Re-executing the execution
    # agent's handler on it is no check of anything recorded (it reported a divergence).
    from agentledger.actors.verify import verify_run

    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    docs, workspace = prepare_demo(tmp_path)
    with EventStore.open(url) as store:
        with threaded_agents(url, tmp_path):
            run = start_run(store, DEMO_GOAL, docs=docs, workspace=workspace).stream
            (pending,) = follow_run(store, run, timeout=60).pending_approvals.values()
        granted = decide(store, run, pending.action_id, ADA, grant=True, note="fine")
        report = verify_run(store, run)
    assert report.ok, report.divergence
    assert any(
        f"has not handled position {granted.position} yet" in note for note in report.notes
    ), report.notes


def test_a_denial_made_while_the_run_is_paused_is_acted_on_when_it_resumes(demo: Any) -> None:
    steer(demo.store, demo.run, ADA, "pause", "let me think")
    decide(demo.store, demo.run, demo.pending.action_id, ADA, grant=False, note="keep it")
    steer(demo.store, demo.run, ADA, "resume")
    # As for a denial while it runs: the sub-task fails, the coordinator replans, and the
    # same call is not asked again.
    state = follow_run(demo.store, demo.run, until=ENDED, timeout=60)
    assert state.status is RunStatus.FAILED and "not asked again" in state.outcome
    types = [e.type for e in demo.store.read(demo.run)]
    resumed = types.index("run.resumed")
    assert "task.failed" in types[resumed:] and "task.failed" not in types[:resumed]


def test_a_grant_made_while_paused_survives_a_restart_before_the_resume(
    tmp_path: Path, threaded_agents: Any
) -> None:
    # The agents pass over a paused run's grant; a restart must not take it for an action
    # begun and never finished (outcome unknown): after the resume the action runs.
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    docs, workspace = prepare_demo(tmp_path)
    with EventStore.open(url) as store:
        with threaded_agents(url, tmp_path):
            run = start_run(store, DEMO_GOAL, docs=docs, workspace=workspace).stream
            state = follow_run(store, run, timeout=60)
            (pending,) = state.pending_approvals.values()
            steer(store, run, ADA, "pause", "let me think")
            decide(store, run, pending.action_id, ADA, grant=True, note="fine")
            head = store.head_position()
            deadline = time.monotonic() + 10
            while store.position_of("agent:execution/1") < head and time.monotonic() < deadline:
                time.sleep(0.05)
            assert store.position_of("agent:execution/1") >= head  # it passed over the grant
        with threaded_agents(url, tmp_path):
            steer(store, run, ADA, "resume")
            state = follow_run(store, run, until=ENDED, timeout=60)
        types = [e.type for e in store.read(run)]
    assert "action.outcome_unknown" not in types
    assert state.status is RunStatus.COMPLETED
    assert state.actions[pending.action_id].status.value == "executed"


def test_a_denial_with_another_way_completes_the_run(tmp_path: Path, threaded_agents: Any) -> None:
    """A model that finds another way after a denial: the run completes without the action."""

    def brain(request: Any) -> str:
        if request.purpose == "plan":
            steps = [{"task_id": "t1", "goal": "tidy up", "role": "execution"}]
            return json.dumps({"reasoning": "one step", "steps": steps})
        if request.purpose == "act":
            if "keep the file" in request.prompt:  # the denial's reason reached the replan
                call = {"tool": "write_file", "arguments": {"path": "ARCHIVED", "content": "x"}}
            else:
                call = {"tool": "delete_file", "arguments": {"path": "old.txt"}}
            return json.dumps({"reasoning": "tidy", "actions": [call]})
        return json.dumps({"accepted": True, "reasons": "ok"})

    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    workspace = tmp_path / "ws"
    workspace.mkdir()
    (workspace / "old.txt").write_text("keep me")
    models = {r: "scripted:b" for r in ("coordinator", "research", "execution", "review")}
    providers = {"scripted": ScriptedProvider(brain)}
    with threaded_agents(url, tmp_path, providers), EventStore.open(url) as store:
        run = start_run(store, "tidy up", models=models, workspace=workspace).stream
        state = follow_run(store, run, timeout=60)
        (pending,) = state.pending_approvals.values()
        decide(store, run, pending.action_id, ADA, grant=False, note="keep the file")
        state = follow_run(store, run, until=ENDED, timeout=60)
    assert state.status is RunStatus.COMPLETED, state.outcome
    assert (workspace / "old.txt").read_text() == "keep me"
    assert (workspace / "ARCHIVED").exists()


def test_an_expired_request_is_recorded_and_the_coordinator_replans(
    tmp_path: Path, threaded_agents: Any
) -> None:
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    docs, workspace = prepare_demo(tmp_path)
    stop = threading.Event()
    with threaded_agents(url, tmp_path, approval_ttl_s=1.0), EventStore.open(url) as store:
        watcher = ExpiryWatcher(EventStore.open(url))
        thread = threading.Thread(target=watcher.run, args=(stop,), daemon=True)
        thread.start()
        try:
            run = start_run(store, DEMO_GOAL, docs=docs, workspace=workspace).stream
            # Nobody decides: the first request expires, the replan asks again, that expires
            # too, and the run fails with the reason.
            state = follow_run(store, run, until=ENDED, timeout=90)
            events = store.read(run)
        finally:
            stop.set()
            thread.join(timeout=10)
    expired = [e for e in events if e.type == "approval.expired"]
    assert len(expired) == 2 and {e.actor for e in expired} == {"system:expiry"}
    assert state.status is RunStatus.FAILED and "expired" in state.outcome
    assert (workspace / "notes.tmp").exists()


def test_a_request_left_open_in_an_ended_run_never_expires(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    past = (datetime.now(UTC) - timedelta(minutes=1)).isoformat()
    request = {"action_hash": "a" * 64, "tool": "delete_file", "risk": "high", "expires_at": past}
    with EventStore.open(url) as store:
        for run, end in (("run-cancelled", "run.cancelled"), ("run-failed", "run.failed")):
            ended = {"run.cancelled": RunCancelled, "run.failed": RunFailed}[end]
            store.append(
                run,
                [
                    RunStarted(actor="human:ada", payload={"goal": "tidy up"}),
                    ApprovalRequested(
                        actor="agent:execution/1", payload={**request, "action_id": "a1"}
                    ),
                    ended(actor="human:ada", payload={"reason": "not needed"}),
                ],
                expected_version=0,
            )
        # A run still waiting, after them in the log: once its request has expired, the
        # watcher has passed over the ended runs' requests.
        store.append(
            "run-open",
            [
                RunStarted(actor="human:ada", payload={"goal": "tidy up"}),
                ApprovalRequested(
                    actor="agent:execution/1", payload={**request, "action_id": "a1"}
                ),
            ],
            expected_version=0,
        )
        stop = threading.Event()
        watcher = ExpiryWatcher(EventStore.open(url))
        thread = threading.Thread(target=watcher.run, args=(stop,), daemon=True)
        thread.start()
        try:
            state = follow_run(store, "run-open", until=frozenset({RunStatus.RUNNING}), timeout=30)
        finally:
            stop.set()
            thread.join(timeout=10)
        assert state.status is RunStatus.RUNNING  # its request expired
        for run in ("run-cancelled", "run-failed"):
            events = store.read(run)
            assert [e.type for e in events][-1] != "approval.expired", run
            assert RunStateProjection().fold(events).anomalies == []
        assert store.verify().ok


def test_a_request_whose_run_ended_on_a_later_page_of_the_log_never_expires(
    tmp_path: Path,
) -> None:
    # A watcher (re)started on a log reads it a page at a time: an overdue request on one page
    # and its run's end on the next must not be expired in between.
    from agentledger.events.store import _SUBSCRIPTION_PAGE

    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    past = (datetime.now(UTC) - timedelta(minutes=1)).isoformat()
    request = {"action_hash": "a" * 64, "tool": "delete_file", "risk": "high", "expires_at": past}

    def started() -> RunStarted:
        return RunStarted(actor="human:ada", payload={"goal": "tidy up"})

    def asked() -> ApprovalRequested:
        return ApprovalRequested(actor="agent:execution/1", payload={**request, "action_id": "a1"})

    def cancelled() -> RunCancelled:
        return RunCancelled(actor="human:ada", payload={"reason": "not needed"})

    with EventStore.open(url) as store:
        store.append("run-ended", [started(), asked()], expected_version=0)
        for i in range(_SUBSCRIPTION_PAGE - 1):  # the rest of the watcher's first page
            store.append(f"run-other-{i}", [started(), cancelled()], expected_version=0)
        store.append("run-ended", [cancelled()], expected_version=2)  # on its second page
        store.append("run-open", [started(), asked()], expected_version=0)
        stop = threading.Event()
        watcher = ExpiryWatcher(EventStore.open(url))
        thread = threading.Thread(target=watcher.run, args=(stop,), daemon=True)
        thread.start()
        try:  # once the last run's request has expired, the watcher has read every page
            state = follow_run(store, "run-open", until=frozenset({RunStatus.RUNNING}), timeout=30)
        finally:
            stop.set()
            thread.join(timeout=10)
        assert state.status is RunStatus.RUNNING
        events = store.read("run-ended")
        assert [e.type for e in events] == ["run.started", "approval.requested", "run.cancelled"]
        assert RunStateProjection().fold(events).anomalies == []
        assert watcher.expired == 1  # run-open's only


def test_pause_then_resume_continues_the_run(tmp_path: Path, threaded_agents: Any) -> None:
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    docs, workspace = prepare_demo(tmp_path)
    with EventStore.open(url) as store:
        run = start_run(store, DEMO_GOAL, docs=docs, workspace=workspace).stream
        steer(store, run, ADA, "pause", "lunch")  # before any agent has seen the run
        with threaded_agents(url, tmp_path):
            state = follow_run(store, run, until=frozenset({RunStatus.PAUSED}), timeout=10)
            assert state.status is RunStatus.PAUSED
            import time

            time.sleep(1.0)  # agents have seen run.started and the pause; they wait
            assert store.stream_version(run) == 2
            steer(store, run, ADA, "resume")
            state = follow_run(store, run, timeout=60)
    assert state.status is RunStatus.WAITING_FOR_APPROVAL
    assert len(state.tasks) == 5


def test_a_paused_run_cannot_be_paused_and_an_ended_one_cannot_be_steered(
    tmp_path: Path, threaded_agents: Any, demo: Any
) -> None:
    steer(demo.store, demo.run, ADA, "pause")
    before = demo.head()
    with pytest.raises(AgentLedgerError, match="already paused"):
        steer(demo.store, demo.run, ADA, "pause")
    steer(demo.store, demo.run, ADA, "cancel", "not needed")
    with pytest.raises(AgentLedgerError, match=r"cannot resume .* it was cancelled"):
        steer(demo.store, demo.run, ADA, "resume")
    with pytest.raises(AgentLedgerError, match=r"cannot pause .* it was cancelled"):
        steer(demo.store, demo.run, ADA, "pause")
    assert demo.head() == before + 1
    with pytest.raises(AgentLedgerError, match="is cancelled; nothing in it will run"):
        decide(demo.store, demo.run, demo.pending.action_id, ADA, grant=True, note="")


def test_authentication_by_os_user_or_token(monkeypatch: pytest.MonkeyPatch) -> None:
    me = getpass.getuser()
    assert authenticate(None, {}).name == me
    with pytest.raises(NotAuthorized, match="no \\[approvers\\] are configured"):
        authenticate("someone-else", {})
    approvers = {
        "ada": Approver(os_users=[me]),
        "bob": Approver(token_sha256=hashlib.sha256(b"s3cret").hexdigest()),
        "eve": Approver(os_users=["not-" + me]),
    }
    assert authenticate("ada", approvers).roles == ("approver",)
    with pytest.raises(NotAuthorized, match="not an approver"):
        authenticate("zed", approvers)
    with pytest.raises(NotAuthorized, match="may not act as eve"):
        authenticate("eve", approvers)
    monkeypatch.delenv("AGENTLEDGER_APPROVER_TOKEN", raising=False)
    with pytest.raises(NotAuthorized, match="token"):
        authenticate("bob", approvers)
    monkeypatch.setenv("AGENTLEDGER_APPROVER_TOKEN", "wrong")
    with pytest.raises(NotAuthorized, match="token"):
        authenticate("bob", approvers)
    monkeypatch.setenv("AGENTLEDGER_APPROVER_TOKEN", "s3cret")
    assert authenticate("bob", approvers).principal == "human:bob"


def test_an_action_that_changed_after_the_request_needs_a_new_one(memory_store: EventStore) -> None:
    run = "run-changed"
    request = {"action_id": "a1", "action_hash": "a" * 64, "tool": "delete_file", "risk": "high"}
    memory_store.append(
        run,
        [
            RunStarted(actor="human:ada", payload={"goal": "tidy"}),
            ActionProposed(
                actor="agent:execution/1",
                payload={"action_id": "a1", "tool": "delete_file", "idempotency_key": "k"},
            ),
            ActionRiskAssessed(
                actor="agent:execution/1",
                payload={"action_id": "a1", "risk": "high", "action_hash": "a" * 64, "rule": "r"},
            ),
            ApprovalRequested(actor="agent:execution/1", payload=request),
            # Re-assessed with other arguments: the approval asked for is not this action.
            ActionRiskAssessed(
                actor="agent:execution/1",
                payload={"action_id": "a1", "risk": "high", "action_hash": "b" * 64, "rule": "r"},
            ),
        ],
        expected_version=0,
    )
    with pytest.raises(AgentLedgerError, match="changed after approval was requested"):
        decide(memory_store, run, "a1", ADA, grant=True, note="")
    assert memory_store.stream_version(run) == 5
