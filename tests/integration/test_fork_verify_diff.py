"""`verify` and `diff` on forks: a fork's inherited reactions are re-executed as its parent's
(whose name their tool calls carry), its own as the fork's; a fork is compared with its parent
(or a sibling, or the fork it was taken from) after the history they share."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from test_fork import writers  # scripted providers that each write one file
from typer.testing import CliRunner

from agentledger.actors.runtime import ENDED, follow_run, start_run
from agentledger.actors.verify import verify_run
from agentledger.cli import app
from agentledger.control import Human, decide
from agentledger.demo import DEMO_GOAL, prepare_demo
from agentledger.events import ActionProposed, Event, EventStore
from agentledger.fork import fork_run
from agentledger.projections import RunStatus
from agentledger.projections.diff import first_divergence

ROLES = ("coordinator", "research", "execution", "review")


def _keys(events: list[Event]) -> list[str]:
    return [e.payload.idempotency_key for e in events if isinstance(e, ActionProposed)]


def _demo_parent(url: str, root: Path, threaded_agents: Any) -> tuple[str, list[Event]]:
    """The offline demo run, left waiting for its approval."""
    docs, workspace = prepare_demo(root)
    with threaded_agents(url, root), EventStore.open(url) as store:
        parent = start_run(store, DEMO_GOAL, docs=docs, workspace=workspace).stream
        assert follow_run(store, parent, timeout=60).status is RunStatus.WAITING_FOR_APPROVAL
        return parent, store.read(parent)


def test_a_fork_that_took_actions_verifies_and_so_does_a_fork_of_it(
    tmp_path: Path, threaded_agents: Any
) -> None:
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    parent, parent_events = _demo_parent(url, tmp_path, threaded_agents)
    # As `agentledger fork` does: agents started for the fork (they never saw the parent).
    with threaded_agents(url, tmp_path), EventStore.open(url) as store:
        # After the first tool-using step is reviewed: the fork assigns, acts and asks again.
        reviewed = [e for e in parent_events if e.type == "task.reviewed"][1]
        fork, forked = fork_run(store, parent, reviewed.position or 0, by="human:ada")
        assert follow_run(store, fork, timeout=60).status is RunStatus.WAITING_FOR_APPROVAL
        fork_events = store.read(fork)
    head = forked.head_version
    inherited, own = fork_events[1:head], fork_events[head:]
    # The live agents key the fork's tool calls by the fork, never by the parent: the
    # inherited calls carry the parent's name (they ran there), the fork's own its own.
    assert _keys(inherited) and all(k.startswith(f"{parent}/") for k in _keys(inherited))
    assert _keys(own) and all(k.startswith(f"{fork}/") for k in _keys(own))
    # The fork did what its parent did after the fork point (until, maybe, a measured value
    # quoted in a result: a command's duration_ms); never parting at its run.forked or in the
    # history they share.
    found = first_divergence(parent_events, fork_events)
    assert found is None or found.index > forked.inherits
    assert found is None or found.right == fork_events[found.index + 1]

    with EventStore.open(url) as store:
        report = verify_run(store, fork)
        assert report.ok, report.divergence
        assert report.events == len(fork_events) - 2  # all but run.started and run.forked
        assert any(parent in note for note in report.notes)
        # The inherited reactions are re-executed (as the parent's), not taken on trust: the
        # wrong settings fail on the parent's first reaction, and the message names it.
        wrong = verify_run(store, fork, record_prompts="hash").divergence
        assert wrong is not None and wrong.cause_position == parent_events[0].position
        assert parent in wrong.message
        result = CliRunner().invoke(app, ["verify", fork, "--store", url])
        assert result.exit_code == 0 and "verified" in result.output

    # A fork of the fork, at a step the fork took itself.
    with threaded_agents(url, tmp_path), EventStore.open(url) as store:
        own_reviewed = next(e for e in own if e.type == "task.reviewed")
        second, by_second = fork_run(store, fork, own_reviewed.position or 0, by="human:ada")
        assert follow_run(store, second, timeout=60).status is RunStatus.WAITING_FOR_APPROVAL
        second_events = store.read(second)
    second_own = second_events[by_second.head_version :]
    assert _keys(second_own) and all(k.startswith(f"{second}/") for k in _keys(second_own))
    with EventStore.open(url) as store:
        report = verify_run(store, second)
    assert report.ok, report.divergence
    assert report.events == len(second_events) - 3  # run.started and both run.forked
    assert {parent, fork} <= {w for note in report.notes for w in note.split()}


def test_a_fork_taken_up_by_agents_that_ran_its_parent_verifies(
    tmp_path: Path, threaded_agents: Any
) -> None:
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    docs, workspace = prepare_demo(tmp_path)
    with threaded_agents(url, tmp_path), EventStore.open(url) as store:
        parent = start_run(store, DEMO_GOAL, docs=docs, workspace=workspace).stream
        assert follow_run(store, parent, timeout=60).status is RunStatus.WAITING_FOR_APPROVAL
        reviewed = [e for e in store.read(parent) if e.type == "task.reviewed"][1]
        fork, _ = fork_run(store, parent, reviewed.position or 0, by="human:ada")
        assert follow_run(store, fork, timeout=60).status is RunStatus.WAITING_FOR_APPROVAL
        report = verify_run(store, fork)
    assert report.ok, report.divergence


def test_a_fork_granted_where_its_parent_waits_verifies(
    tmp_path: Path, threaded_agents: Any
) -> None:
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    parent, parent_events = _demo_parent(url, tmp_path, threaded_agents)
    ada = Human("ada", ("approver",))
    with threaded_agents(url, tmp_path), EventStore.open(url) as store:
        (pending,) = follow_run(store, parent, timeout=60).pending_approvals.values()
        fork, forked = fork_run(store, parent, pending.position or 0, by="human:ada")
        decide(store, fork, pending.action_id, ada, grant=True, note="in this branch")
        state = follow_run(store, fork, until=ENDED, timeout=60)
        assert state.status is RunStatus.COMPLETED, state.outcome
        fork_events = store.read(fork)
        assert any(e.type == "action.executed" for e in fork_events[forked.head_version :])
        report = verify_run(store, fork)
    assert report.ok, report.divergence
    # The parent still waits: the runs part at the fork's grant, after all the parent has.
    found = first_divergence(parent_events, fork_events)
    assert found is not None and found.left is None and found.right is not None
    assert found.right.type == "approval.granted"
    assert (found.index, found.left_index, found.right_index) == (
        len(parent_events),
        len(parent_events),
        len(parent_events) + 1,
    )


def test_diff_lines_up_a_fork_with_its_parent_its_sibling_and_its_own_fork(
    tmp_path: Path, threaded_agents: Any
) -> None:
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    providers = writers()
    models = {role: "scripted:m" for role in ROLES}
    with threaded_agents(url, tmp_path, providers), EventStore.open(url) as store:
        parent = start_run(store, "write it", models=models).stream
        assert follow_run(store, parent, until=ENDED, timeout=60).status is RunStatus.COMPLETED
        p = store.read(parent)
        assigned = next(e for e in p if e.type == "task.assigned")
        completed = next(e for e in p if e.type == "task.completed")
        # Two forks of the parent: another executor, and another reviewer.
        executor, by_executor = fork_run(
            store, parent, assigned.position or 0, by="human:ada", models={"execution": "other:m2"}
        )
        reviewer, by_reviewer = fork_run(
            store, parent, completed.position or 0, by="human:ada", models={"review": "other:m3"}
        )
        for run in (executor, reviewer):
            assert follow_run(store, run, until=ENDED, timeout=60).status is RunStatus.COMPLETED
        e = store.read(executor)
        # A fork of the executor's fork, with another reviewer there.
        e_completed = next(x for x in e[by_executor.head_version :] if x.type == "task.completed")
        nested, by_nested = fork_run(
            store,
            executor,
            e_completed.position or 0,
            by="human:ada",
            models={"review": "other:m3"},
        )
        assert follow_run(store, nested, until=ENDED, timeout=60).status is RunStatus.COMPLETED
        r, n = store.read(reviewer), store.read(nested)

    def model_of(view: dict[str, Any] | None) -> str:
        assert view is not None and view["type"] == "model.requested"
        return str(view["payload"]["model"])

    # Parent and fork: they part after the fork point, where the fork's executor asks m2.
    k = by_executor.inherits
    found = first_divergence(p, e)
    assert found is not None and (found.index, found.left_index, found.right_index) == (k, k, k + 1)
    assert found.left == p[k] and found.right == e[k + 1]
    assert (model_of(found.left_view), model_of(found.right_view)) == ("m", "m2")
    # Shown as logged; the derived ids are renamed only for comparing.
    assert found.right is not None and found.right_view is not None
    request_id = found.right.payload.request_id  # type: ignore[union-attr]
    assert found.right_view["payload"]["request_id"] == request_id
    assert found.right_view["by"] == found.right.actor
    assert found.right_compared is not None
    assert found.right_compared["payload"]["request_id"] != request_id
    # The same, seen from the fork.
    back = first_divergence(e, p)
    assert back is not None and (back.left, back.right) == (found.right, found.left)

    # Two forks of one parent: the history they share is the shorter prefix.
    found = first_divergence(e, r)
    assert found is not None and found.index == k
    assert (found.left, found.right) == (e[k + 1], r[k + 1])
    assert (model_of(found.left_view), model_of(found.right_view)) == ("m2", "m")

    # A fork of a fork, with the fork it was taken from (whose run.forked it inherits) and with
    # the first parent (past both forks' run.forked).
    m = by_nested.inherits
    found = first_divergence(e, n)
    assert found is not None and found.index >= m
    assert (found.left, found.right) == (e[found.index], n[found.index + 1])
    assert (model_of(found.left_view), model_of(found.right_view)) == ("m", "m3")
    found = first_divergence(p, n)
    assert found is not None and (found.index, found.left_index, found.right_index) == (k, k, k + 2)
    # The reviewer's fork parts from its parent only at its own review's model call.
    j = by_reviewer.inherits
    found = first_divergence(p, r)
    assert found is not None and found.index >= j and found.right == r[found.index + 1]
    assert (model_of(found.left_view), model_of(found.right_view)) == ("m", "m3")

    # The command line reports the same place.
    result = CliRunner().invoke(
        app, ["diff", parent, executor, "--store", url, "--json"], env={"COLUMNS": "200"}
    )
    assert result.exit_code == 1
    doc = json.loads(result.output)
    assert doc["index"] == k
    assert doc["left"]["position"] == p[k].position
    assert doc["right"]["position"] == e[k + 1].position
    assert doc["right"]["payload"]["model"] == "m2"
