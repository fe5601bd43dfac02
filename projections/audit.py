"""The audit report: a run told for a human reviewer, from its events alone.

Per run: the goal and who started it, the plan with the coordinator's reasoning, and for every
action who proposed it and why, its risk level and the rule that set it, who approved or denied
it (with their comment or reason) or that it needed no approval, what it returned or why it
failed, and how the run ended. A pure function of the events: the same events give the same
text, byte for byte (no clock, no hash-order iteration).
"""

from __future__ import annotations

import json
from collections.abc import Iterable

from pydantic import JsonValue

from agentledger.events import ActionRiskAssessed, Event, RiskLevel, RunStarted

from .run_state import TERMINAL, ActionInfo, ActionStatus, RunState, RunStateProjection

_SUMMARY_CHARS = 300


def audit_report(events: Iterable[Event]) -> str:
    """The Markdown audit report of the runs among ``events`` (in order of first appearance)."""
    runs: dict[str, list[Event]] = {}
    for event in events:
        if event.stream.startswith("run-"):
            runs.setdefault(event.stream, []).append(event)
    if not runs:
        return "# Audit report\n\nNo run events.\n"
    parts = ["# Audit report\n"]
    for run, run_events in runs.items():
        parts.append(_run_section(run, run_events))
    return "\n".join(parts)


def _run_section(run: str, events: list[Event]) -> str:
    state = RunStateProjection().fold(events)
    started_by = next((e.actor for e in events if isinstance(e, RunStarted)), None)
    rules = {
        e.payload.action_id: e.payload.rule for e in events if isinstance(e, ActionRiskAssessed)
    }
    first, last = events[0], events[-1]
    lines = [
        f"## Run `{run}`",
        "",
        f"- **Goal:** {_text(state.goal) or '(not recorded)'}",
        f"- **Started by:** `{started_by}` for user `{state.user}`"
        if started_by
        else "- **Started by:** (no run.started event)",
        f"- **Started at:** {_when(state)}",
        f"- **Events:** {len(events)} (positions {first.position}-{last.position}, "
        f"versions {first.version}-{last.version})",
    ]
    if state.parent_run:
        lines.append(f"- **Forked from:** `{state.parent_run}` at position {state.parent_position}")
    lines += ["", "### Plan", ""]
    if state.tasks:
        for task in state.tasks.values():
            depends = f" (after {', '.join(task.depends_on)})" if task.depends_on else ""
            lines.append(
                f"1. **{task.task_id}** [{task.role.value}] {_text(task.goal)}{depends} — "
                f"status: {task.status.value}"
            )
            if task.reasoning:
                lines.append(f"   - reasoning: {_text(task.reasoning)}")
            if task.result is not None:
                by = f" by `{task.completed_by}`" if task.completed_by else ""
                lines.append(f"   - result{by}: {_text(task.result)}")
            if task.review is not None:
                lines.append(f"   - review: {_text(task.review)}")
    else:
        lines.append("No tasks were planned.")
    lines += ["", "### Actions", ""]
    if state.actions:
        ended = state.status in TERMINAL
        for action in state.actions.values():
            lines += _action_lines(action, rules.get(action.action_id), ended=ended)
    else:
        lines.append("No actions were proposed.")
    if lines[-1] == "":
        lines.pop()
    lines += ["", "### Outcome", "", _outcome(state)]
    if state.anomalies:
        lines += ["", "### Anomalies", ""]
        lines += [
            f"- position {a.position}: {a.event_type}: {_text(a.message)}" for a in state.anomalies
        ]
    return "\n".join(lines) + "\n"


def _action_lines(action: ActionInfo, rule: str | None, *, ended: bool) -> list[str]:
    task = f" for task {action.task_id}" if action.task_id else ""
    lines = [
        f"#### Action {action.action_id}: `{action.tool}`{task}",
        "",
        f"- **Proposed by:** `{action.proposed_by}`",
        f"- **Arguments:** `{_summary(dict(action.arguments))}`",
        f"- **Reasoning:** {_text(action.reasoning) or '(none recorded)'}",
    ]
    if action.risk is None:
        lines.append("- **Risk:** not assessed")
    else:
        lines.append(f"- **Risk:** {action.risk.value} — rule: {_text(rule or '(none recorded)')}")
    lines.append(f"- **Approval:** {_approval(action, ended=ended)}")
    lines.append(f"- **Result:** {_result(action, ended=ended)}")
    lines.append("")
    return lines


def _approval(action: ActionInfo, *, ended: bool) -> str:
    note = f" — “{_text(action.decision_note)}”" if action.decision_note else ""
    if action.decided_by is not None:
        verdict = {
            ActionStatus.DENIED: "denied",
            ActionStatus.EXPIRED: "expired without a decision",
        }.get(action.status, "approved")
        return f"{verdict} by `{action.decided_by}`{note}"
    if action.status is ActionStatus.WAITING_FOR_APPROVAL:
        if ended:
            return "requested; never decided (the run ended first)"
        return "requested; waiting for a human decision"
    if action.risk is RiskLevel.LOW:
        return "auto-approved (low risk)"
    if action.risk is RiskLevel.MEDIUM:
        return "not required (medium risk: run, then a human is notified)"
    return "none recorded"


def _result(action: ActionInfo, *, ended: bool) -> str:
    if action.status is ActionStatus.EXECUTED:
        return f"ran: `{_summary(action.result)}`"
    if action.status is ActionStatus.FAILED:
        return f"failed: {_text(str(action.result))}"
    if action.status is ActionStatus.OUTCOME_UNKNOWN:
        return "outcome unknown (escalated to a human)"
    if action.status in (ActionStatus.DENIED, ActionStatus.EXPIRED):
        return "did not run"
    return "did not run (the run ended)" if ended else "not run (yet)"


def _outcome(state: RunState) -> str:
    ended = f" at {state.ended_at.isoformat()}" if state.ended_at else ""
    outcome = f": {_text(state.outcome)}" if state.outcome else ""
    pending = ""
    if state.pending_approvals:
        pending = " — waiting for approval of " + ", ".join(state.pending_approvals)
    return f"**{state.status.value}**{ended}{outcome}{pending}"


def _when(state: RunState) -> str:
    return state.started_at.isoformat() if state.started_at else "(unknown)"


def _summary(value: JsonValue) -> str:
    text = json.dumps(value, sort_keys=True, ensure_ascii=False)
    text = text.replace("`", "'")
    return text if len(text) <= _SUMMARY_CHARS else text[: _SUMMARY_CHARS - 1] + "…"


def _text(value: str) -> str:
    # One line per field: recorded text may hold newlines that would break the Markdown list.
    return " ".join(value.split())
