"""The four roles: coordinator, research, execution and review.

Each reacts only to events in the log and answers only with events. The flow of a run:
``run.started`` → the coordinator plans (``task.planned`` …) and assigns ready sub-tasks
(``task.assigned``) → the worker with the role does the work (``task.completed`` or
``task.failed``) → the reviewer checks the result (``task.reviewed``) → the coordinator assigns
what became ready, sends rejected work back, replans a failure once, and completes the run.
"""

from __future__ import annotations

import collections
import json
import os
import re
import uuid
from collections.abc import Sequence
from typing import Literal

from agentledger.blackboard import post
from agentledger.events import (
    MAX_REASONING,
    MAX_TEXT,
    ActionFailed,
    ActionOutcomeUnknown,
    ActionProposed,
    ApprovalDenied,
    ApprovalExpired,
    ApprovalGranted,
    ApprovalRequested,
    EntryKind,
    Event,
    MemoryStored,
    RiskLevel,
    Role,
    RunCompleted,
    RunFailed,
    RunResumed,
    RunStarted,
    ScratchpadUpdated,
    TaskAssigned,
    TaskCompleted,
    TaskFailed,
    TaskPlanned,
    TaskReviewed,
)
from agentledger.events.handlers import on
from agentledger.projections import ActionStatus, TaskInfo, TaskStatus
from agentledger.projections.memory import forked_from

from .agent import (
    ActionOutcome,
    Agent,
    AgentSettings,
    DecisionFailed,
    RunView,
    Turn,
)
from .decisions import (
    CHECKS,
    FEEDBACK,
    GOAL,
    INPUTS,
    RESULT,
    SOURCES,
    SUB_GOAL,
    TOOLS,
    Actions,
    Findings,
    Plan,
    PlannedStep,
    Prompt,
    Verdict,
)

MAX_ATTEMPTS = 2
"""How often a sub-task is assigned before a rejection or failure is final."""
_REPLAN = ".replan-"
_CHECK_COMMAND = re.compile(
    r"(?:check|verify|test)\w*\s+(?:it\s+)?(?:with|using|by running)\s+`([^`]+)`", re.I
)


# ---------------------------------------------------------------------------- coordinator


class Coordinator(Agent):
    """Plans the goal, routes sub-tasks to the role that can do them, and ends the run."""

    role = Role.COORDINATOR

    @on(RunStarted)
    def plan(self, event: RunStarted, turn: Turn) -> None:
        """Decompose the goal (when it needs more than three steps) and assign what is ready."""
        if turn.run.state.tasks:
            return
        goal = event.payload.goal
        try:
            plan = turn.ask("plan", Prompt().add(GOAL, goal), context=turn.context(goal))
        except DecisionFailed as exc:
            turn.emit(RunFailed, reason=f"the coordinator could not plan the goal: {exc.reason}")
            return
        self._adopt(turn, plan, goal, prefix="")

    def _adopt(self, turn: Turn, plan: Plan, goal: str, *, prefix: str) -> bool:
        problem = plan_problem(plan.steps)
        if problem is not None:
            turn.emit(RunFailed, reason=f"the plan is not usable: {problem}")
            return False
        steps = list(plan.steps)
        reasoning = plan.reasoning
        if len(steps) <= 3:
            role: Literal["research", "execution"] = (
                "execution" if any(s.role == "execution" for s in steps) else "research"
            )
            reasoning = (
                f"{len(steps)} logical step(s), so no decomposition: one {role} worker takes the "
                f"whole goal. Planner: {plan.reasoning}"
            )[:MAX_REASONING]
            if prefix:  # a replan: what the planner now proposes, not the goal that failed
                goal = "\n".join(s.goal for s in steps)[:MAX_REASONING]
            # Not validated as a model's step (at most 5,000 characters): the run's goal, up
            # to the 20,000 a task's goal may have.
            steps = [
                PlannedStep.model_construct(task_id="t1", goal=goal, role=role, reasoning=reasoning)
            ]
        renamed = {s.task_id: f"{prefix}{s.task_id}" for s in steps}
        for step in steps:
            turn.emit(
                TaskPlanned,
                task_id=renamed[step.task_id],
                goal=step.goal,
                role=step.role,
                depends_on=[renamed[d] for d in step.depends_on],
                reasoning=(step.reasoning or reasoning)[:MAX_REASONING],
            )
        lines = [
            f"{renamed[s.task_id]} [{s.role}] {s.goal}"
            + (f" (after {', '.join(renamed[d] for d in s.depends_on)})" if s.depends_on else "")
            for s in steps
        ]
        turn.add(
            post(
                actor=self.principal,
                kind=EntryKind.DECISION,
                topic="plan" if not prefix else f"replan of {prefix.removesuffix(_REPLAN)}",
                content="\n".join(lines)[:MAX_TEXT],  # a model's plan may be longer
                reasoning=reasoning[:MAX_REASONING],
                cause=turn.cause,
            )
        )
        for step in steps:
            if not step.depends_on:
                turn.emit(
                    TaskAssigned,
                    task_id=renamed[step.task_id],
                    role=step.role,
                    reasoning=f"no unmet dependencies; the {step.role} agent has the capability",
                )
        return True

    @on(TaskReviewed)
    def reviewed(self, event: TaskReviewed, turn: Turn) -> None:
        """Move on after an accepted result; send a rejected one back, or give up."""
        if not turn.run.active:
            return
        tasks = turn.run.state.tasks
        task = tasks.get(event.payload.task_id)
        if task is None:
            return
        if not event.payload.accepted:
            if task.attempts < MAX_ATTEMPTS:
                turn.emit(
                    TaskAssigned,
                    task_id=task.task_id,
                    role=task.role,
                    reasoning=f"sent back by review: {event.payload.reasons}"[:MAX_REASONING],
                )
            else:
                turn.emit(
                    RunFailed,
                    reason=f"task {task.task_id} was rejected {task.attempts} times; last "
                    f"review: {event.payload.reasons}",
                )
            return
        self._advance(turn)

    @on(RunResumed)
    def resumed(self, event: RunResumed, turn: Turn) -> None:
        """After a pause: act on what came in meanwhile (verdicts, failures), then move on."""
        tasks = turn.run.state.tasks
        started = turn.run.started
        if not tasks and started is not None:
            self.plan(started, turn)  # paused before it was planned
            return
        for task in list(tasks.values()):
            if task.status is TaskStatus.REJECTED:
                verdict = next(
                    e
                    for e in reversed(turn.run.events)
                    if isinstance(e, TaskReviewed) and e.payload.task_id == task.task_id
                )
                self.reviewed(verdict, turn)
            elif task.status is TaskStatus.FAILED and task.task_id not in _done_tasks(tasks):
                replaced = any(t.startswith(f"{task.task_id}{_REPLAN}") for t in tasks)
                failure = next(
                    (
                        e
                        for e in reversed(turn.run.events)
                        if isinstance(e, TaskFailed) and e.payload.task_id == task.task_id
                    ),
                    None,
                )
                if not replaced and failure is not None:
                    self.failed(failure, turn)
        if turn.run.active:
            self._advance(turn)

    @on(TaskFailed)
    def failed(self, event: TaskFailed, turn: Turn) -> None:
        """Retry a transient failure, replan a lasting one once, else fail the run."""
        if not turn.run.active:
            return
        task = turn.run.state.tasks.get(event.payload.task_id)
        if task is None:
            return
        reason = event.payload.reason
        refused = [
            a
            for a in turn.run.state.actions.values()
            if a.task_id == task.task_id and a.status in (ActionStatus.DENIED, ActionStatus.EXPIRED)
        ]
        if refused:
            # A human said no (or nobody said yes in time): never ask again for the same
            # thing; replan once for another way, told why, or give up with the reason.
            action = refused[-1]
            why = (
                f"{action.decided_by} denied {action.tool} ({action.action_id}): "
                f"{action.decision_note}"
                if action.status is ActionStatus.DENIED
                else f"the approval of {action.tool} ({action.action_id}) expired"
            )
            reason = f"{why}. Find a way that does not need this action."
            if _REPLAN in task.task_id:
                turn.emit(
                    RunFailed,
                    reason=f"task {task.task_id}, the replan of a refused action, was refused "
                    f"too: {why}",
                )
                return
        elif event.payload.retryable and task.attempts < MAX_ATTEMPTS:
            turn.emit(
                TaskAssigned,
                task_id=task.task_id,
                role=task.role,
                reasoning=f"retrying after a transient failure: {reason}",
            )
            return
        if _REPLAN in task.task_id:
            turn.emit(RunFailed, reason=f"task {task.task_id} failed after a replan: {reason}")
            return
        prompt = Prompt().add(GOAL, task.goal).add(FEEDBACK, f"the last attempt failed: {reason}")
        try:
            plan = turn.ask("plan", prompt, context=turn.context(task.goal))
        except DecisionFailed as exc:
            turn.emit(
                RunFailed,
                reason=f"task {task.task_id} failed ({reason}) and replanning failed: {exc.reason}",
            )
            return
        self._adopt(turn, plan, task.goal, prefix=f"{task.task_id}{_REPLAN}")

    def _advance(self, turn: Turn) -> None:
        """Complete the run when every task of the plan is done, else assign each planned task
        whose dependencies are (``next_steps``)."""
        complete, ready = self._plan_of(turn.run).next_steps(turn.run.state.tasks)
        if complete:
            self._complete(turn)
            return
        for task in ready:
            turn.emit(
                TaskAssigned,
                task_id=task.task_id,
                role=task.role,
                reasoning="its dependencies "
                + ", ".join(task.depends_on)
                + f" are done; the {task.role.value} agent has the capability",
            )

    def _plan_of(self, run: RunView) -> PlanIndex:
        """This run's ``PlanIndex``, read on from where this agent's last turn in it stopped."""
        plans = self.__dict__.setdefault("_plans", collections.OrderedDict())
        index = plans.pop(run.run, None) or PlanIndex()
        index.read_on(run)
        plans[run.run] = index
        while len(plans) > _PLANS_KEPT:
            plans.popitem(last=False)
        return index

    def _complete(self, turn: Turn) -> None:
        self.__dict__.get("_plans", {}).pop(turn.run.run, None)  # read no further
        state = turn.run.state
        lines, artifacts = [], []
        for task in state.tasks.values():
            if task.status is TaskStatus.ACCEPTED:
                lines.append(f"{task.task_id}: {_one_line(task.result or '')}")
        for action in state.actions.values():
            if action.status is ActionStatus.EXECUTED and action.tool == "write_file":
                path = action.arguments.get("path")
                if isinstance(path, str) and path not in artifacts:
                    artifacts.append(path)
        summary = f"Done: {state.goal}\n" + "\n".join(lines)
        turn.emit(
            MemoryStored,
            memory_id=turn.new_id("mem"),
            text=_one_line(
                f"Run {turn.run.run} reached '{state.goal}': " + "; ".join(lines), 4_000
            ),
            tags=["run-summary"],
            user=state.user or None,
        )
        turn.emit(RunCompleted, summary=summary[:MAX_TEXT], artifacts=artifacts)


def plan_problem(steps: Sequence[PlannedStep]) -> str | None:
    """Why a plan cannot be carried out (duplicate ids, unknown or cyclic dependencies)."""
    ids = [s.task_id for s in steps]
    if len(set(ids)) != len(ids):
        return "two steps share a task_id: " + ", ".join(
            sorted({i for i in ids if ids.count(i) > 1})
        )
    known = set(ids)
    for step in steps:
        unknown = [d for d in step.depends_on if d not in known]
        if unknown:
            return f"step {step.task_id} depends on unknown steps {unknown}"
    # Kahn's order: take the steps with no dependency left; any that remain are in a cycle
    # or wait on one (linear in the plan: a chain of thousands of steps is a common plan).
    waiting = {s.task_id: len(set(s.depends_on)) for s in steps}
    dependents: dict[str, list[str]] = {}
    for step in steps:
        for dependency in set(step.depends_on):
            dependents.setdefault(dependency, []).append(step.task_id)
    ready = [t for t, n in waiting.items() if n == 0]
    done: set[str] = set()
    while ready:
        task_id = ready.pop()
        done.add(task_id)
        for dependent in dependents.get(task_id, ()):
            waiting[dependent] -= 1
            if waiting[dependent] == 0:
                ready.append(dependent)
    if len(done) < len(waiting):
        return "the dependencies form a cycle among " + ", ".join(sorted(set(waiting) - done))
    return None


def next_steps_by_scan(tasks: dict[str, TaskInfo]) -> tuple[bool, list[TaskInfo]]:
    """Whether the plan is done (every task accepted, or failed and replaced by steps that all
    are; steps of a replan need not all be), else the planned tasks whose dependencies are
    done, in plan order: read from every task (``PlanIndex`` reads on from its last turn)."""
    # Two passes over the plan at most: what is done and what is still planned, then whether
    # any task not done is an original one.
    done, planned, failed = set(), [], False
    for task_id, info in tasks.items():
        status = info.status
        if status is TaskStatus.ACCEPTED:
            done.add(task_id)
        elif status is TaskStatus.PLANNED:
            planned.append(info)
        elif status is TaskStatus.FAILED:
            failed = True
    if failed:
        done = _done_tasks(tasks)  # failed tasks whose replacements are all accepted
    if not any(_REPLAN not in t for t in tasks if t not in done):
        return True, []
    return False, [task for task in planned if done.issuperset(task.depends_on)]


_TASK_EVENTS = (TaskPlanned, TaskAssigned, TaskCompleted, TaskReviewed, TaskFailed)
_PLANS_KEPT = 256  # runs whose plan index a coordinator keeps (as the runtime keeps views)


class PlanIndex:
    """What ``next_steps_by_scan`` reads from every task of a plan, kept from one turn of the
    coordinator to the next and read on from the run's new events only: the tasks they name
    are looked at again, and those depending on them. A chain of 1,000 steps read 1,000 tasks
    a turn (an eighth of the runtime's CPU a step, bench/hop.py). The same answers as the
    scan (a test compares them on random plans); with a failed task it scans (replans)."""

    def __init__(self) -> None:
        self.readings_from_scratch = 0  # readings of every task (the rest: of new events)
        self._reset()

    def _reset(self) -> None:
        self._first: uuid.UUID | None = None  # the run's first event, and the last one read
        self._last: uuid.UUID | None = None
        self._read = 0  # how many of the run's events were read (those settled, see RunView)
        self._order: dict[str, int] = {}  # each task's place in the plan
        self._dependents: dict[str, set[str]] = {}  # task id -> tasks that depend on it
        self._ready: set[str] = set()  # planned, and every dependency accepted
        self._open: set[str] = set()  # original tasks (not steps of a replan) not accepted
        self._failed: set[str] = set()

    def read_on(self, run: RunView) -> None:
        """Take in ``run``'s events since the last reading (or all of them, if this is not
        the same run read further: another lineage, a view that changed before its end)."""
        events, tasks = run.events, run.state.tasks
        settled = max(0, min(run.settled, len(events)))
        same = (
            self._first is not None
            and bool(events)
            and events[0].id == self._first
            and 0 < self._read <= settled
            and events[self._read - 1].id == self._last
            # A planning (rare: the plan, a replan) is read from scratch: the plan's order is
            # where the fold put each task, which a planning it refused, or one of this
            # agent's own not settled yet (others' may land before it), does not tell.
            and not any(isinstance(e, TaskPlanned) for e in events[self._read :])
        )
        if not same:
            self._reset()
            self.readings_from_scratch += 1
            for task_id, info in tasks.items():
                self._order[task_id] = len(self._order)
                for dependency in info.depends_on:
                    self._dependents.setdefault(dependency, set()).add(task_id)
                self._look_at(tasks, task_id)
        else:
            # The settled events since the last reading, and the others after them (read
            # again next time: they may yet move). Looking at a task again is idempotent; the
            # tasks and their dependencies are those read (no planning since).
            for event in events[self._read :]:
                if not isinstance(event, _TASK_EVENTS):
                    continue
                task_id = event.payload.task_id
                self._look_at(tasks, task_id)
                for dependent in self._dependents.get(task_id, ()):
                    self._look_at(tasks, dependent)
        if events and settled:
            self._first, self._read, self._last = events[0].id, settled, events[settled - 1].id
        else:
            self._first = None  # nothing settled to read on from: read it all next time

    def _look_at(self, tasks: dict[str, TaskInfo], task_id: str) -> None:
        info = tasks.get(task_id)
        status = info.status if info is not None else None
        _put(self._failed, task_id, status is TaskStatus.FAILED)
        _put(
            self._open,
            task_id,
            info is not None and status is not TaskStatus.ACCEPTED and _REPLAN not in task_id,
        )
        ready = (
            info is not None
            and status is TaskStatus.PLANNED
            and all(
                (dependency := tasks.get(d)) is not None
                and dependency.status is TaskStatus.ACCEPTED
                for d in info.depends_on
            )
        )
        _put(self._ready, task_id, ready)

    def next_steps(self, tasks: dict[str, TaskInfo]) -> tuple[bool, list[TaskInfo]]:
        """``next_steps_by_scan(tasks)``, for the ``tasks`` of the run last read."""
        if self._failed:
            return next_steps_by_scan(tasks)  # done may include failed tasks: see _done_tasks
        if not self._open:
            return True, []
        return False, [tasks[t] for t in sorted(self._ready, key=self._order.__getitem__)]


def _put(members: set[str], item: str, member: bool) -> None:
    if member:
        members.add(item)
    else:
        members.discard(item)


def _done_tasks(tasks: dict[str, TaskInfo]) -> set[str]:
    """Tasks that are done: accepted, or failed and replaced by steps that are all accepted."""
    done = {t for t, info in tasks.items() if info.status is TaskStatus.ACCEPTED}
    replacements: dict[str, list[str]] = {}
    for task_id in tasks:
        if _REPLAN in task_id:
            replacements.setdefault(task_id.split(_REPLAN, 1)[0], []).append(task_id)
    for original, steps in replacements.items():
        info = tasks.get(original)
        if info is not None and info.status is TaskStatus.FAILED and all(s in done for s in steps):
            done.add(original)
    return done


# ---------------------------------------------------------------------------- workers


class _Worker(Agent):
    """A worker reacts to the sub-tasks assigned to its role while the run is active."""

    def cares(self, event: Event) -> bool:
        return not isinstance(event, TaskAssigned) or event.payload.role == self.role

    def wants(self, event: Event, run: RunView) -> bool:
        if isinstance(event, TaskAssigned):
            return event.payload.role == self.role and run.active
        return run.active

    def _stalled(self, turn: Turn) -> list[TaskInfo]:
        # Assigned to this role but not started: the assignment arrived while the run was
        # paused (a started task has proposals, or is completed or failed).
        return [
            task
            for task in turn.run.state.tasks.values()
            if task.role is self.role
            and task.status is TaskStatus.ASSIGNED
            and not Execution._proposals(turn.run, task.task_id)
        ]

    @staticmethod
    def _feedback(task: TaskInfo) -> str:
        if task.attempts > 1 and task.review:
            return f"review sent the last result back: {task.review}"
        return ""


class Research(_Worker):
    """Searches long-term memory and the run's document folder; answers with sources."""

    role = Role.RESEARCH
    # Set by verify while it re-executes a reaction recorded when long-term memory's sources
    # came before the run's documents (before 999d651): the prompt as it was made then.
    memories_first = False

    @on(TaskAssigned)
    def research(self, event: TaskAssigned, turn: Turn) -> None:
        """Gather sources for the sub-task and let the model answer from them."""
        self._research(event.payload.task_id, turn)

    @on(RunResumed)
    def resumed(self, event: RunResumed, turn: Turn) -> None:
        """Take up the sub-tasks assigned to research that nobody started while paused."""
        for task in self._stalled(turn):
            self._research(task.task_id, turn)

    def _research(self, task_id: str, turn: Turn) -> None:
        task = turn.run.task(task_id)
        if task is None:
            return
        # The run's own document folder first (the person starting the run pointed at it),
        # then what earlier runs left in long-term memory.
        lines: list[str] = []
        remembered: list[str] = []
        memory = self.settings.memory.long_term
        if memory is not None:
            for hit in memory.search(
                task.goal[:2000],
                k=5,
                as_of=turn.cause.position,
                forked_from=forked_from(turn.run.events),
            ):
                remembered.append(f"- memory {hit.memory_id}: {_one_line(hit.text, 400)}")
        started = turn.run.started
        if started is not None and started.payload.docs:
            search = turn.propose(
                "search_docs",
                {"query": task.goal[:2000], "k": 5},
                "look for the sub-goal's words in the run's document folder",
                task.task_id,
            )
            outcome = turn.execute(search)
        else:
            outcome = ActionOutcome("", result=[])  # no document folder given for this run
        if outcome.ok and isinstance(outcome.result, list):
            for found in outcome.result:
                if isinstance(found, dict):
                    lines.append(
                        f"- {found.get('path')}:{found.get('line')}: {found.get('snippet')}"
                    )
        lines = [*remembered, *lines] if self.memories_first else [*lines, *remembered]
        prompt = Prompt().add(SUB_GOAL, task.goal).add(SOURCES, "\n".join(lines) or "(none found)")
        prompt.add(FEEDBACK, self._feedback(task))
        try:
            findings: Findings = turn.ask("research", prompt, context=turn.context(task.goal))
        except DecisionFailed as exc:
            turn.emit(TaskFailed, task_id=task.task_id, reason=exc.reason, retryable=exc.retryable)
            return
        turn.emit(ScratchpadUpdated, key=f"findings.{task.task_id}", value=findings.answer)
        turn.emit(
            TaskCompleted,
            task_id=task.task_id,
            result=findings.answer,
            sources=findings.sources,
            reasoning=findings.reasoning,
        )


class Execution(_Worker):
    """Carries a sub-task out with tools in the run's workspace, each call gated by its risk."""

    role = Role.EXECUTION

    @on(TaskAssigned)
    def act(self, event: TaskAssigned, turn: Turn) -> None:
        """Ask the model for tool calls, propose them all, then run them in order."""
        self._act(event.payload.task_id, turn)

    @on(RunResumed)
    def resumed(self, event: RunResumed, turn: Turn) -> None:
        """After a pause: start the sub-tasks nobody started, run actions approved while the
        run was paused, and fail the sub-tasks of actions denied or expired meanwhile."""
        for task in self._stalled(turn):
            self._act(task.task_id, turn)
        for action in list(turn.run.state.actions.values()):
            if action.status in (ActionStatus.DENIED, ActionStatus.EXPIRED):
                decision = self._unanswered_refusal(turn, action.action_id)
                if decision is not None:
                    self.denied(decision, turn)
            elif action.status is ActionStatus.APPROVED:
                grant = next(
                    (
                        e
                        for e in reversed(turn.run.events)
                        if isinstance(e, ApprovalGranted)
                        and e.payload.action_id == action.action_id
                    ),
                    None,
                )
                if grant is not None:
                    self._approved(grant, turn)

    def _act(self, task_id: str, turn: Turn) -> None:
        task = turn.run.task(task_id)
        if task is None:
            return
        inputs = []
        for dep in task.depends_on:
            done = turn.run.completion(dep)
            if done is not None:
                inputs.append(f"- {dep}: {done.payload.result}")
        prompt = Prompt().add(SUB_GOAL, task.goal).add(INPUTS, "\n".join(inputs))
        prompt.add(TOOLS, self.settings.tools.describe()).add(FEEDBACK, self._feedback(task))
        try:
            actions: Actions = turn.ask("act", prompt, context=turn.context(task.goal))
        except DecisionFailed as exc:
            turn.emit(TaskFailed, task_id=task.task_id, reason=exc.reason, retryable=exc.retryable)
            return
        if not actions.actions:
            turn.emit(TaskFailed, task_id=task.task_id, reason=actions.reasoning, retryable=False)
            return
        proposals = [
            turn.propose(c.tool, c.arguments, c.reasoning or actions.reasoning, task.task_id)
            for c in actions.actions
        ]
        self._carry_on(turn, task.task_id, proposals, [], actions.reasoning)

    @on(ApprovalGranted)
    def approved(self, event: ApprovalGranted, turn: Turn) -> None:
        """Run the approved action (if the grant matches it and has not expired), then the rest."""
        self._approved(event, turn)

    def _approved(self, event: ApprovalGranted, turn: Turn) -> None:
        found = self._my_action(turn, event.payload.action_id)
        if found is None:
            return
        proposal, task_id = found
        info = turn.run.state.actions[event.payload.action_id]
        if info.action_hash != event.payload.action_hash:
            outcome = ActionOutcome(proposal.payload.action_id, error="grant hash mismatch")
            turn.emit(
                ActionFailed,
                action_id=proposal.payload.action_id,
                error="the approval was granted for a different action hash "
                f"({event.payload.action_hash[:12]}…, expected {str(info.action_hash)[:12]}…); "
                "not run",
            )
            self._fail_rest(turn, task_id, outcome)
            return
        turn.flush()  # a high-risk action is never run twice without a human knowing
        first = turn.run_tool(proposal, RiskLevel.HIGH)
        rest = [p for p in self._proposals(turn.run, task_id) if self._still_proposed(turn, p)]
        done = [
            p for p in self._proposals(turn.run, task_id) if p not in rest and p is not proposal
        ]
        if not first.ok:
            self._fail_rest(turn, task_id, first, rest)
            return
        self._carry_on(turn, task_id, rest, [*self._results(turn, done), first], "")

    @on(ApprovalDenied, ApprovalExpired)
    def denied(self, event: ApprovalDenied | ApprovalExpired, turn: Turn) -> None:
        """A denied or expired action fails, and with it the sub-task (the coordinator decides
        what next)."""
        found = self._my_action(turn, event.payload.action_id)
        if found is None:
            return
        proposal, task_id = found
        # The decision itself is the action's outcome (its status stays "denied"/"expired").
        if isinstance(event, ApprovalDenied):
            error = f"denied by {event.actor}: {event.payload.reason}"
        else:
            error = "the approval request expired without a decision"
        rest = [p for p in self._proposals(turn.run, task_id) if self._still_proposed(turn, p)]
        self._fail_rest(turn, task_id, ActionOutcome(proposal.payload.action_id, error=error), rest)

    def _unanswered_refusal(
        self, turn: Turn, action_id: str
    ) -> ApprovalDenied | ApprovalExpired | None:
        """The denial or expiry of one of this agent's actions that its sub-task has not
        failed on yet (it came while the run was paused), else None."""
        found = self._my_action(turn, action_id)
        if found is None:
            return None
        task_id = found[1]
        for e in reversed(turn.run.events):
            if isinstance(e, TaskFailed) and e.payload.task_id == task_id:
                return None  # the sub-task failed after it: answered
            if isinstance(e, ApprovalDenied | ApprovalExpired) and e.payload.action_id == action_id:
                return e
        return None

    def _recover(self, cause: Event, turn: Turn) -> None:
        """An action began and never ended: record that its outcome is unknown; retry it if it
        is idempotent and not high risk, otherwise ask a human whether to run it again."""
        action_id = getattr(cause.payload, "action_id", "")
        found = self._my_action(turn, action_id)
        info = turn.run.state.actions.get(action_id)
        if found is None or info is None:
            return
        proposal, task_id = found
        turn.emit(
            ActionOutcomeUnknown,
            action_id=action_id,
            reason=f"{self.principal} stopped while running it; whether it took effect is unknown",
        )
        if not turn.run.active:
            return
        tool = self.settings.tools.get(info.tool) if info.tool in self.settings.tools else None
        risk = info.risk or RiskLevel.HIGH
        if tool is not None and tool.idempotent and risk is not RiskLevel.HIGH:
            rest = [p for p in self._proposals(turn.run, task_id) if self._still_proposed(turn, p)]
            done = [p for p in self._proposals(turn.run, task_id) if p not in rest]
            outcome = turn.run_tool(proposal, risk)  # idempotent: running it again is safe
            if not outcome.ok:
                self._fail_rest(turn, task_id, outcome, rest)
                return
            earlier = [o for o in self._results(turn, done) if o.action_id != action_id]
            self._carry_on(turn, task_id, rest, [*earlier, outcome], "")
            return
        turn.emit(
            ApprovalRequested,
            action_id=action_id,
            action_hash=info.action_hash or "0" * 64,
            tool=info.tool,
            risk=RiskLevel.HIGH,
            preview=_one_line(f"{info.tool} {json.dumps(info.arguments, sort_keys=True)}", 300),
            reasoning="the agent stopped while running this action and its outcome is unknown; "
            "approve to run it again, deny to give it up (the task then fails). Original "
            f"reasoning: {info.reasoning}",
            expires_at=turn.cause.at + self.settings.approval_ttl,
        )

    def _carry_on(
        self,
        turn: Turn,
        task_id: str,
        proposals: Sequence[ActionProposed],
        outcomes: list[ActionOutcome],
        reasoning: str,
    ) -> None:
        for index, proposal in enumerate(proposals):
            outcome = turn.execute(proposal, durable=True)
            if outcome.waiting:
                return  # the run waits for a human; the rest runs after the grant
            outcomes.append(outcome)
            if not outcome.ok:
                self._fail_rest(turn, task_id, outcome, proposals[index + 1 :])
                return
        summary = "\n".join(
            f"{o.action_id}: {_one_line(json.dumps(o.result, sort_keys=True), 300)}"
            for o in outcomes
        )
        turn.emit(
            TaskCompleted,
            task_id=task_id,
            result=summary or "no action was needed",
            reasoning=reasoning,
        )

    def _fail_rest(
        self,
        turn: Turn,
        task_id: str,
        failure: ActionOutcome,
        rest: Sequence[ActionProposed] = (),
    ) -> None:
        for proposal in rest:
            turn.emit(
                ActionFailed,
                action_id=proposal.payload.action_id,
                error=f"not run: action {failure.action_id} before it failed",
            )
        turn.emit(
            TaskFailed,
            task_id=task_id,
            reason=f"action {failure.action_id} failed: {failure.error}",
            retryable=False,
        )

    def _my_action(self, turn: Turn, action_id: str) -> tuple[ActionProposed, str] | None:
        for event in turn.run.events:
            if (
                isinstance(event, ActionProposed)
                and event.payload.action_id == action_id
                and event.actor.startswith(f"agent:{self.role.value}/")
                and event.payload.task_id is not None
            ):
                return event, event.payload.task_id
        return None

    @staticmethod
    def _proposals(run: RunView, task_id: str) -> list[ActionProposed]:
        # The proposals of the task's newest attempt: those after its last assignment, found
        # walking back from the end (never the whole history of a long run).
        found: list[ActionProposed] = []
        for event in reversed(run.events):
            if isinstance(event, TaskAssigned) and event.payload.task_id == task_id:
                break
            if isinstance(event, ActionProposed) and event.payload.task_id == task_id:
                found.append(event)
        found.reverse()
        return found

    @staticmethod
    def _still_proposed(turn: Turn, proposal: ActionProposed) -> bool:
        info = turn.run.state.actions.get(proposal.payload.action_id)
        return info is not None and info.status is ActionStatus.PROPOSED

    @staticmethod
    def _results(turn: Turn, proposals: Sequence[ActionProposed]) -> list[ActionOutcome]:
        outcomes = []
        for proposal in proposals:
            info = turn.run.state.actions.get(proposal.payload.action_id)
            if info is not None and info.status is ActionStatus.EXECUTED:
                outcomes.append(ActionOutcome(info.action_id, result=info.result))
        return outcomes


class Review(Agent):
    """Checks each finished sub-task against its sub-goal and accepts it or sends it back."""

    role = Role.REVIEW

    def __init__(self, agent_id: str, settings: AgentSettings) -> None:
        super().__init__(agent_id, settings)
        self._listing: dict[uuid.UUID, set[str]] = {}  # one listing per review turn

    def cares(self, event: Event) -> bool:
        return not event.actor.startswith("agent:review/")

    def wants(self, event: Event, run: RunView) -> bool:
        return run.active and not event.actor.startswith("agent:review/")

    @on(TaskCompleted)
    def review(self, event: TaskCompleted, turn: Turn) -> None:
        """Run the checks the sub-task allows, then let the model judge the result."""
        self._review(event, turn)

    @on(RunResumed)
    def resumed(self, event: RunResumed, turn: Turn) -> None:
        """Review the results that came in while the run was paused."""
        for task in list(turn.run.state.tasks.values()):
            if task.status is TaskStatus.COMPLETED:
                done = turn.run.completion(task.task_id)
                if done is not None:
                    self._review(done, turn)

    def _review(self, event: TaskCompleted, turn: Turn) -> None:
        task = turn.run.task(event.payload.task_id)
        if task is None:
            return
        checks = self._checks(turn, task, event)
        prompt = Prompt().add(SUB_GOAL, task.goal).add(RESULT, event.payload.result)
        prompt.add(CHECKS, "\n".join(f"- {c}" for c in checks))
        try:
            verdict: Verdict = turn.ask("review", prompt, context=turn.context(task.goal))
        except DecisionFailed as exc:
            turn.emit(
                TaskFailed,
                task_id=task.task_id,
                reason=f"review failed: {exc.reason}",
                retryable=exc.retryable,
            )
            return
        turn.emit(
            TaskReviewed,
            task_id=task.task_id,
            accepted=verdict.accepted,
            reasons=verdict.reasons,
            checks=[c[:2000] for c in checks],
        )

    def _checks(self, turn: Turn, task: TaskInfo, done: TaskCompleted) -> list[str]:
        self._listing.clear()  # a listing serves one review turn only
        checks = [
            "PASS: the result is not empty" if done.payload.result.strip() else "FAIL: empty result"
        ]
        if task.role is Role.RESEARCH:
            n = len(done.payload.sources)
            checks.append(
                f"PASS: cites {n} source(s)" if n else "NOTE: cites no source (none was found)"
            )
        actions = turn.run.state.actions
        done_by_task = [
            info
            for proposal in Execution._proposals(turn.run, task.task_id)
            if proposal.actor.startswith("agent:execution/")
            and (info := actions.get(proposal.payload.action_id)) is not None
        ]
        # Where the task deleted a file after writing it (as it was asked to), the file's
        # absence is no failure: the last executed deletion of each path.
        deleted = {
            info.arguments.get("path"): index
            for index, info in enumerate(done_by_task)
            if info.tool == "delete_file" and info.status is ActionStatus.EXECUTED
        }
        for index, info in enumerate(done_by_task):
            what = f"{info.tool} ({info.action_id})"
            if info.status is not ActionStatus.EXECUTED:
                checks.append(f"FAIL: {what} did not run: {info.status.value}")
                continue
            result = info.result if isinstance(info.result, dict) else {}
            code = result.get("exit_code")
            if isinstance(code, int) and code != 0:
                err = _one_line(str(result.get("stderr") or result.get("stdout") or ""), 300)
                checks.append(f"FAIL: {what} exited with {code}: {err}")
            elif info.tool == "write_file" and deleted.get(info.arguments.get("path"), -1) > index:
                checks.append(f"PASS: {what} ran; the task deleted the file afterwards")
            elif info.tool == "write_file":
                checks.append(
                    self._file_check(turn, task.task_id, info.arguments.get("path"), what)
                )
            else:
                checks.append(f"PASS: {what} ran")
        match = _CHECK_COMMAND.search(task.goal)
        if match:
            proposal = turn.propose(
                "run_shell",
                {"command": match.group(1)},
                "the sub-goal names this check",
                task.task_id,
            )
            outcome = turn.execute(proposal)
            result = outcome.result if isinstance(outcome.result, dict) else {}
            if outcome.ok and result.get("exit_code") == 0:
                checks.append(f"PASS: `{match.group(1)}` exited 0")
            else:
                detail = outcome.error or _one_line(str(result.get("stderr", "")), 300)
                checks.append(f"FAIL: `{match.group(1)}`: {detail or 'did not pass'}")
        return checks

    def _file_check(self, turn: Turn, task_id: str, path: object, what: str) -> str:
        # The workspace is looked at through a recorded tool call (list_files), like every
        # read of the world: a re-execution meets the same listing.
        if not isinstance(path, str):
            return f"FAIL: {what} names no path"
        listing = self._listing.get(turn.cause.id)
        if listing is None:
            proposal = turn.propose(
                "list_files", {}, "check that the files the task wrote are there", task_id
            )
            outcome = turn.execute(proposal)
            found = outcome.result if outcome.ok and isinstance(outcome.result, list) else []
            listing = self._listing[turn.cause.id] = {str(p) for p in found}
        normal = os.path.normpath(path)
        if normal in listing:
            return f"PASS: {path} exists in the workspace"
        return f"FAIL: {path} is missing from the workspace"


ROLE_CLASSES: dict[Role, type[Agent]] = {
    Role.COORDINATOR: Coordinator,
    Role.RESEARCH: Research,
    Role.EXECUTION: Execution,
    Role.REVIEW: Review,
}
"""The agent class of each role."""


def _one_line(text: str, limit: int = 200) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"
