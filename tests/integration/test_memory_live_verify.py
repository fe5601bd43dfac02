"""Long-term memory as the live research agent searches it and as `verify` re-executes that
search: the same memories, whatever the agent's table held when it started. A fork does not
see what its parent stored after the fork point (the parent's future, which the fork redoes);
it sees what other runs stored before it, as any run started then would."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from spies import calls_of

from agentledger.actors.providers import ScriptedProvider
from agentledger.actors.runtime import (
    ENDED,
    AgentWorker,
    RuntimeConfig,
    agent_for,
    follow_run,
    start_run,
)
from agentledger.actors.verify import verify_run
from agentledger.events import (
    Event,
    EventStore,
    MemoryStored,
    Role,
    RunStarted,
    TaskAssigned,
    TaskPlanned,
)
from agentledger.fork import fork_run
from agentledger.projections import RunStatus

MODELS = {r: "scripted:m" for r in ("coordinator", "research", "execution", "review")}


def _memory_id(events: list[Event]) -> str:
    (stored,) = [e for e in events if e.type == "memory.stored"]
    return str(stored.payload.memory_id)


def _research_prompts(events: list[Event]) -> list[str]:
    return [
        str(e.payload.prompt)
        for e in events
        if e.type == "model.requested" and e.actor.startswith("agent:research/")
    ]


def _note(text: str, memory_id: str | None = None) -> MemoryStored:
    return MemoryStored(
        actor="human:ann",
        payload={"memory_id": memory_id or f"mem-{text}", "text": text, "tags": []},
    )


_COORDINATOR = "agent:coordinator/1"


def _planned(store: EventStore, run: str, tasks: list[str]) -> list[Event]:
    """A run whose plan is ``tasks`` (research look-ups), as the coordinator appends it."""
    return store.append(
        run,
        [
            RunStarted(actor="human:ann", payload={"goal": "look up facts", "models": MODELS}),
            *(
                TaskPlanned(
                    actor=_COORDINATOR,
                    payload={"task_id": t, "goal": f"look up fact {t}", "role": "research"},
                )
                for t in tasks
            ),
        ],
    )


def _assigned(store: EventStore, run: str, task: str) -> list[Event]:
    return store.append(
        run, [TaskAssigned(actor=_COORDINATOR, payload={"task_id": task, "role": "research"})]
    )


def _research_worker(tmp_path: Path, brain: Any, url: str, **kwargs: Any) -> AgentWorker:
    config = RuntimeConfig(
        store_url=url, workspace_root=str(tmp_path / "ws"), memory_dir=str(tmp_path / "mem")
    )
    agent = agent_for(Role.RESEARCH, "1", config, {"scripted": ScriptedProvider(brain)})
    return AgentWorker(agent, EventStore.open(url), **kwargs)


def _verifies(url: str, *runs: str) -> None:
    """Each run re-executes to what its log records (``verify``)."""
    with EventStore.open(url) as store:
        for run in runs:
            report = verify_run(store, run)
            assert report.ok, report.divergence


def _run(store: EventStore, goal: str = "chain") -> str:
    run = start_run(store, goal, models=MODELS).stream
    assert follow_run(store, run, until=ENDED, timeout=60).status is RunStatus.COMPLETED
    return run


def test_a_later_run_finds_an_earlier_runs_memory_live_as_verify_does(
    tmp_path: Path, threaded_agents: Any, scenario_brain: Any
) -> None:
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    providers = {"scripted": ScriptedProvider(scenario_brain(steps=3))}
    # One set of agents for both runs: the research agent's table was empty when it started.
    with threaded_agents(url, tmp_path, providers), EventStore.open(url) as store:
        first, second = _run(store), _run(store)
        remembered = _memory_id(store.read(first))
        prompts = _research_prompts(store.read(second))
    assert prompts and all(f"memory {remembered}" in p for p in prompts)
    _verifies(url, first, second)


def test_a_fork_sees_other_runs_memories_but_not_its_parents_future(
    tmp_path: Path, threaded_agents: Any, scenario_brain: Any
) -> None:
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    providers = {"scripted": ScriptedProvider(scenario_brain(steps=6))}
    with threaded_agents(url, tmp_path, providers), EventStore.open(url) as store:
        parent, other = _run(store), _run(store, "another chain")
        parent_events = store.read(parent)
        parent_memory, other_memory = _memory_id(parent_events), _memory_id(store.read(other))
    # Forked after both completed, at a step before the parent's end; taken up by fresh agents
    # (as `agentledger fork` starts them).
    at = [e for e in parent_events if e.type == "task.assigned"][3]
    with threaded_agents(url, tmp_path, providers), EventStore.open(url) as store:
        fork, forked = fork_run(store, parent, at.position or 0, by="human:ada")
        assert follow_run(store, fork, until=ENDED, timeout=60).status is RunStatus.COMPLETED
        own = store.read(fork)[forked.head_version - 1 :]  # the take-up and after
    prompts = _research_prompts(own)
    assert prompts
    # The parent's run summary (stored after the fork point, at a position before the fork's
    # events) is its future: never found. The other run's, stored before the fork, is.
    assert not any(parent_memory in p for p in prompts)
    assert all(f"memory {other_memory}" in p for p in prompts)
    _verifies(url, fork)


def test_memories_stored_after_a_search_do_not_change_it_in_verify(
    tmp_path: Path, threaded_agents: Any, scenario_brain: Any
) -> None:
    # Full-text scores count every row of the table (term and length statistics), not only
    # those as of the search: verify searches a table caught up to the event handled, as the
    # live agent's was, never one holding the memories stored later.
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    providers = {"scripted": ScriptedProvider(scenario_brain(steps=1))}  # the goal, one step
    texts = ["lookup report: look at fact", "fact fact 1 delta notes", "look notes about delta"]
    with EventStore.open(url) as store:
        store.append("notes-ann", [_note(t) for t in texts])
    with threaded_agents(url, tmp_path, providers), EventStore.open(url) as store:
        run = _run(store, "look up fact 1")
        (prompt,) = _research_prompts(store.read(run))
    assert all(f"mem-{t}" in prompt for t in texts)
    # Stored later, they would put the last two of these in the other order.
    with EventStore.open(url) as store:
        store.append("notes-ann", [_note(f"fact filler {i} 1") for i in range(30)])
        report = verify_run(store, run)
        assert report.ok, report.divergence


def _noting_brain(base: Any, url: str, steps: int) -> Any:
    """A chain of research steps (``base``: the scenario brain); in the research agent's
    second turn, a person stores a memory (in a stream of their own), so that it lands
    between that turn's event and the next."""

    class NotingBrain(base):  # type: ignore[misc, valid-type]
        research_turns = 0

        def __call__(self, request: Any) -> str:
            if request.purpose == "research":
                self.research_turns += 1
                if self.research_turns == 2:
                    with EventStore.open(url) as store:
                        store.append("notes-ann", [_note("look up fact notes", "mem-midway")])
            return str(super().__call__(request))

    return NotingBrain(steps=steps)


def test_a_memory_stored_between_turns_is_found_and_quiet_turns_read_no_log(
    tmp_path: Path, threaded_agents: Any, scenario_brain: Any
) -> None:
    # The research worker's subscription shows it every row, memory.stored included: a turn
    # after which none was stored searches without reading the log again (a round trip a
    # turn on PostgreSQL); the turn after one was stored catches up and finds it.
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    brain = _noting_brain(scenario_brain, url, steps=5)
    agents = threaded_agents(url, tmp_path, {"scripted": ScriptedProvider(brain)})
    (research,) = [w for w in agents.workers if w.consumer.startswith("agent:research/")]
    read_alls = calls_of(research.store, "read_all")
    with agents, EventStore.open(url) as store:
        run = _run(store, "chain")
        prompts = _research_prompts(store.read(run))
    reads = [c["to_position"] for c in read_alls if list(c["types"] or ()) == ["memory.stored"]]
    assert brain.research_turns == 5 and len(prompts) == 5
    # One read of the log in five turns: in the third, the first after the note (the start's
    # catch-up had nothing to read, at position 0).
    assert len(reads) == 1, reads
    assert ["mem-midway" in p for p in prompts] == [False, False, True, True, True]
    _verifies(url, run)


def test_memories_stored_while_the_research_agent_waits_for_work_are_found(
    tmp_path: Path, threaded_agents: Any, scenario_brain: Any
) -> None:
    # With no run in progress a worker follows only the types it handles (and run control):
    # memory.stored among them for the research agent, or it would take the rows it was not
    # shown for rows without memories, and its first turn would search without them.
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    providers = {"scripted": ScriptedProvider(scenario_brain(steps=1))}
    texts = ["lookup report: look at fact", "fact fact 1 delta notes"]
    with threaded_agents(url, tmp_path, providers) as agents, EventStore.open(url) as store:
        (research,) = [w for w in agents.workers if w.consumer.startswith("agent:research/")]
        started = store.head_position()
        # Following the log (past its start) before the notes are stored.
        deadline = time.monotonic() + 30
        while research._subscription is None and time.monotonic() < deadline:
            time.sleep(0.01)
        store.append("notes-ann", [_note(t) for t in texts])
        store.append("other", [_note("unrelated", "mem-other")])  # a later row, nothing to do
        deadline = time.monotonic() + 30  # the idle worker passes over them (narrow)
        while research.position <= started and time.monotonic() < deadline:
            time.sleep(0.01)
        assert research.position > started
        run = _run(store, "look up fact 1")
        (prompt,) = _research_prompts(store.read(run))
    assert all(f"mem-{t}" in prompt for t in texts)
    _verifies(url, run)


def test_a_reaction_below_the_rows_seen_still_finds_each_memory_up_to_it(
    tmp_path: Path, scenario_brain: Any, background: Any
) -> None:
    # A worker that saw the log past two memories (a and b, each before a task of its run)
    # and then reacts to the first task, then the second: the first turn's catch-up (to
    # the first task) must not count b as in the table. Found by a review: the worker kept
    # only whether a memory was due, and cleared it after the first catch-up.
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    worker = _research_worker(tmp_path, scenario_brain(steps=2), url, partition=(0, 2))
    # A run of the other replica's: this one follows it without reacting.
    run = next(f"run-{i}" for i in range(100) if not worker._mine(f"run-{i}"))
    with EventStore.open(url) as store:
        _planned(store, run, ["t1", "t2"])
        store.append("notes-ann", [_note("fact t1 lookup alpha", "mem-a")])
        (first,) = _assigned(store, run, "t1")
        store.append("notes-ann", [_note("fact t2 lookup beta", "mem-b")])
        (second,) = _assigned(store, run, "t2")
        head = store.head_position()
    with background(worker.run) as following:
        following.until(lambda: worker.position >= head)
    assert worker.handled == 0 and worker.position == head
    worker.partition = (0, 1)  # now the run is this one's: it reacts to both tasks
    worker.deliver(first)
    worker.deliver(second)
    assert worker.handled == 2
    assert worker._memory is not None
    found = {m.memory_id for m in worker._memory.search("fact lookup", k=10)}
    worker.store.close()
    assert found == {"mem-a", "mem-b"}


def test_an_agent_that_reacts_records_no_position_for_what_it_passed_over(
    tmp_path: Path, scenario_brain: Any
) -> None:
    # Its reactions' tracking rows are its position: the events it passed over between them
    # need no record of their own (one durable write every _TRACK_EVERY events, otherwise).
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    worker = _research_worker(tmp_path, scenario_brain(steps=5), url)
    tasks = [f"t{i}" for i in range(5)]
    with EventStore.open(url) as store:
        events = _planned(store, "run-1", tasks)
        for t in tasks:  # 60 events passed over before each of five tasks: 300 in all
            events += store.append("run-1", [_note(f"note {t} {i}") for i in range(60)])
            events += _assigned(store, "run-1", t)
    recorded = calls_of(worker.store, "record_position")
    for event in events:
        worker.deliver(event)
    worker.store.close()
    assert worker.handled == 5
    assert [c["position"] for c in recorded if c["consumer"] == worker.consumer] == []
