"""How the CLI shows events and errors: one place for colours, tables and one-line summaries."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from rich.console import Console, Group, RenderableType
from rich.markup import escape as escape_markup
from rich.padding import Padding
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from agentledger.events import Envelope, StreamSummary

out = Console(highlight=False)
err = Console(stderr=True, highlight=False)

_TYPE_STYLES = {
    "run": "bold cyan",
    "task": "green",
    "model": "magenta",
    "action": "yellow",
    "approval": "bold red",
    "notification": "blue",
    "blackboard": "white",
    "scratchpad": "white",
    "memory": "white",
    "context": "white",
    "preference": "white",
}

# The payload field that best says what an event is about, per type family.
_HEADLINE_FIELDS = (
    "goal",
    "summary",
    "reason",
    "error",
    "result",
    "content",
    "message",
    "text",
    "tool",
    "value",
    "key",
    "topic",
    "task_id",
    "action_id",
)


_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def printable(text: str) -> str:
    """``text`` with control characters (other than tab and new line) as ``\\xNN``, which a
    terminal would otherwise act on (colours, clearing the screen, moving the cursor) when it
    shows words a model or a person wrote."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


def escape(text: str) -> str:
    """``text`` shown as it is written in rich markup: ``printable``, its markup escaped."""
    return escape_markup(printable(text))


def summarize(event: Envelope, width: int = 100) -> str:
    """A one-line, human-readable digest of an event's payload."""
    payload: dict[str, Any] = event.payload.model_dump(mode="json") if event.payload else {}
    parts: list[str] = []
    for key in _HEADLINE_FIELDS:
        value = payload.get(key)
        if value not in (None, "", [], {}):
            parts.append(f"{key}={_short(value)}")
        if len(parts) == 2:
            break
    if "risk" in payload:
        parts.append(f"risk={payload['risk']}")
    text = _sentence(event, payload) or ("  ".join(parts) if parts else _short(payload))
    # Escaped: payloads hold models' and users' words, which rich would read as markup (a
    # "[/x]" in a goal made every command that shows it end in a traceback).
    return escape(text if len(text) <= width else text[: width - 1] + "…")


def _sentence(event: Envelope, payload: dict[str, Any]) -> str | None:
    """The digest of the types whose fields read as raw JSON to the headline fields (a model
    request has none of them; a steering event's reason is often empty); None for others."""
    if event.type == "model.requested":
        sha = f"sha256 {payload['prompt_hash'][:8]}…"
        prompt = "prompt" if payload.get("prompt") is not None else "prompt not kept, its"
        context = counted(len(payload["context_event_ids"]), "context event")
        return f"asks {payload['provider']}:{payload['model']} ({prompt} {sha}, {context})"
    if event.type in ("run.paused", "run.resumed", "run.cancelled"):
        reason = payload.get("reason") or ""
        return f"by {event.actor}" + (f": {_short(reason)}" if reason else "")
    return None


def counted(n: int, noun: str) -> str:
    """``n`` with ``noun``, plural unless one: '1 stream', '1,204 events'."""
    return f"{n:,} {noun}{'' if n == 1 else 's'}"


def _short(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    text = " ".join(text.split())
    return text if len(text) <= 60 else text[:59] + "…"


def type_style(event_type: str) -> str:
    """The colour of an event type's family."""
    return _TYPE_STYLES.get(event_type.split(".", 1)[0], "white")


def events_table(
    events: list[Envelope], *, title: str | None = None, show_stream: bool = True
) -> Table:
    """A table of events: position, stream, version, type, actor, time, summary.

    Narrow terminals drop the date, and the stream when all events are of one (the title
    names it); ids and types are never cut or wrapped: readers copy them into commands.
    """
    wide = out.width >= 140
    show_time = out.width >= 110
    streams = {e.stream for e in events}
    if show_stream and len(streams) == 1 and not wide and title is None:
        show_stream, title = False, next(iter(streams))  # the title names it
    table = Table(title=title, header_style="bold", expand=False)
    table.add_column("pos", justify="right", style="dim", no_wrap=True, min_width=3)
    if show_stream:
        table.add_column("stream", no_wrap=True, min_width=_longest(streams))
    show_actor = not show_stream or out.width >= 100  # the room goes to the summary
    table.add_column("ver", justify="right", style="dim", no_wrap=True, min_width=3)
    table.add_column("type", no_wrap=True, min_width=_longest(e.type for e in events))
    if show_actor:
        table.add_column("actor", no_wrap=True, overflow="ellipsis", max_width=24 if wide else 12)
    if show_time:
        table.add_column("at (UTC)" if wide else "time", no_wrap=True, style="dim")
    table.add_column("summary", overflow="fold", min_width=12, ratio=1)
    for e in events:
        row = [str(e.position) if e.position is not None else ""]
        if show_stream:
            row.append(e.stream)
        row += [str(e.version), f"[{type_style(e.type)}]{e.type}[/]"]
        if show_actor:
            row.append(e.actor)
        if show_time:
            row.append(e.at.strftime("%Y-%m-%d %H:%M:%S" if wide else "%H:%M:%S"))
        row.append(summarize(e))
        table.add_row(*row)
    return table


def event_line(e: Envelope) -> str:
    """One event as one line, for --follow."""
    return (
        f"[dim]{e.position:>6}[/] {e.stream} [dim]v{e.version}[/] "
        f"[{type_style(e.type)}]{e.type}[/] [dim]{e.actor}[/]  {summarize(e)}"
    )


def event_json(e: Envelope) -> str:
    """One event as one JSON line (position included)."""
    data = e.model_dump(mode="json")
    data["position"] = e.position
    return json.dumps(data, ensure_ascii=False)


def streams_table(streams: list[StreamSummary]) -> Table:
    """A table of streams."""
    table = Table(header_style="bold")
    table.add_column("stream")
    table.add_column("version", justify="right")
    table.add_column("first pos", justify="right", style="dim")
    table.add_column("last pos", justify="right", style="dim")
    for s in streams:
        table.add_row(s.stream, str(s.version), str(s.first_position), str(s.last_position))
    return table


_STATUS_STYLES = {
    "planning": "cyan",
    "running": "green",
    "waiting_for_approval": "bold yellow",
    "paused": "yellow",
    "completed": "bold green",
    "failed": "bold red",
    "cancelled": "red",
}


def run_state_view(
    state: Any, board: Any, pad: Any, at: int | None, *, unserved: bool = False
) -> Group:
    """A run's state as panels: header, tasks, pending approvals (reasoning beside the action),
    blackboard, scratchpad, and anomalies found in the log. ``unserved``: the run is one agents
    move on (planning, running), and none are served for its store here."""
    when = f"at position {at}" if at is not None else f"at position {state.last_position}"
    style = _STATUS_STYLES.get(state.status.value, "white")
    header = Table.grid(padding=(0, 2))
    status = f"[{style}]{state.status.value}[/]"
    if unserved:
        # The log says where the run is, not that anything works on it: nothing does until
        # agents are started for its store (the same test as `approve`'s hint).
        status += (
            " — [bold yellow]waiting for agents[/]: start [bold]agentledger serve[/] (none "
            "are served for this store on this machine; an [bold]agentledger run[/] on it also "
            "moves it, while it lasts)"
        )
    header.add_row("status", status)
    header.add_row("goal", escape(state.goal) if state.goal else "[dim](not started)[/]")
    if state.parent_run:
        header.add_row("forked from", f"{state.parent_run} at position {state.parent_position}")
    if state.outcome:
        header.add_row("outcome", escape(state.outcome))
    header.add_row("events", str(state.events))
    parts: list[Any] = [Panel(header, title=f"{state.run} {when}", title_align="left")]
    if state.tasks:
        tasks = Table(title="tasks", header_style="bold", title_justify="left")
        for col in ("task", "role", "status", "depends on", "goal / result"):
            tasks.add_column(col, overflow="fold")
        waits = _waiting_tasks(state)
        for t in state.tasks.values():
            tasks.add_row(
                t.task_id,
                t.role.value,
                waits.get(t.task_id, t.status.value),
                ", ".join(t.depends_on),
                escape(t.result or t.goal),
            )
        parts.append(tasks)
    if state.pending_approvals:
        approvals = Table(
            title="waiting for approval", header_style="bold yellow", title_justify="left"
        )
        approvals.add_column(
            "action",
            no_wrap=True,
            min_width=_longest(a.action_id for a in state.pending_approvals.values()),
        )
        for col in ("tool", "risk", "preview", "reasoning", "expires"):
            approvals.add_column(col, overflow="fold")
        for a in state.pending_approvals.values():
            approvals.add_row(
                a.action_id,
                escape(a.tool),
                f"[red]{a.risk.value}[/]",
                escape(a.preview),
                escape(a.reasoning),
                _when(a.expires_at, "never"),
            )
        parts.append(approvals)
    current = [e for e in board.entries.values() if e.superseded_by is None]
    if current:
        parts.append(blackboard_table(current, title="blackboard"))
    if pad.values:
        scratch = Table(title="scratchpad", header_style="bold", title_justify="left")
        scratch.add_column("key")
        scratch.add_column("value", overflow="fold")
        scratch.add_column("by", style="dim")
        for key, value in pad.values.items():
            scratch.add_row(escape(key), escape(value.value), value.author)
        parts.append(scratch)
    anomalies = [*state.anomalies, *board.anomalies]
    if anomalies:
        lines = "\n".join(
            f"position {a.position}: {a.event_type}: {escape(a.message)}" for a in anomalies
        )
        parts.append(
            Panel(
                lines,
                title="[bold red]not applied: illegal in the log[/]",
                title_align="left",
                border_style="red",
            )
        )
    return Group(*parts)


def _waiting_tasks(state: Any) -> dict[str, str]:
    """Task id -> its status cell, for the tasks whose action waits for a human: in the
    projection the task keeps its status (assigned) until the action is decided, which
    reads as if an agent were at work on it."""
    waits: dict[str, list[str]] = {}
    for action_id in state.pending_approvals:
        action = state.actions.get(action_id)
        if action is not None and action.task_id is not None:
            waits.setdefault(action.task_id, []).append(action_id)
    return {
        task: f"[bold yellow]waiting_for_approval[/] ({escape(', '.join(actions))})"
        for task, actions in waits.items()
    }


def blackboard_table(entries: list[Any], *, title: str) -> Table:
    """Blackboard entries with author and reasoning."""
    table = Table(title=title, header_style="bold", title_justify="left")
    for col, kw in (
        ("pos", {"justify": "right", "style": "dim"}),
        ("kind", {}),
        ("topic", {}),
        ("content", {"overflow": "fold", "ratio": 2}),
        ("reasoning", {"overflow": "fold", "ratio": 1}),
        ("by", {"style": "dim"}),
    ):
        table.add_column(col, **kw)  # type: ignore[arg-type]
    for e in entries:
        content = escape(e.content)
        if e.superseded_by is not None:
            content = f"[strike]{content}[/]"
        table.add_row(
            str(e.position), e.kind.value, escape(e.topic), content, escape(e.reasoning), e.author
        )
    return table


def context_view(context: Any) -> Group:
    """An assembled context: budget use per section, then the text."""
    usage = Table(
        header_style="bold",
        title=f"context of {context.role} at position "
        f"{context.position}: {context.tokens}/{context.budget} tokens",
        title_justify="left",
    )
    usage.add_column("section")
    usage.add_column("tokens", justify="right")
    for section in context.sections:
        usage.add_row(section.name, str(section.tokens))
    refs = []
    if context.summary_event_id:
        refs.append(f"summary event {context.summary_event_id}")
    if context.memories:
        refs.append("memories " + ", ".join(m.memory_id for m in context.memories))
    if context.event_ids:
        n = len(context.event_ids)
        refs.append(counted(n, "recent event"))
    return Group(
        usage,
        Text("from: " + "; ".join(refs), style="dim") if refs else Text(""),
        Panel(Text(printable(context.text())), title="prompt context", title_align="left"),
    )


def recorded_prompt_view(asked: Any) -> Group:
    """A ``model.requested`` event's recorded prompt, exactly, with its SHA-256 checked."""
    p = asked.payload
    ok = hashlib.sha256(p.prompt.encode()).hexdigest() == p.prompt_hash
    check = "[green]SHA-256 matches[/]" if ok else "[bold red]SHA-256 DOES NOT MATCH[/]"
    head = Table.grid(padding=(0, 2))
    head.add_row("asked by", f"{asked.actor} at position {asked.position}")
    head.add_row("request", escape(f"{p.request_id} to {p.provider}:{p.model}"))
    head.add_row("prompt", f"{len(p.prompt):,} characters, {check}")
    n = len(p.context_event_ids)
    head.add_row("context from", f"{counted(n, 'event')} of the log")
    return Group(
        head, Panel(Text(printable(p.prompt)), title="recorded prompt", title_align="left")
    )


def memories_table(hits: list[Any]) -> Table:
    """Long-term memory search hits."""
    table = Table(header_style="bold")
    for col, kw in (
        ("score", {"justify": "right"}),
        ("memory", {}),
        ("text", {"overflow": "fold"}),
        ("user", {"style": "dim"}),
        ("pos", {"justify": "right", "style": "dim"}),
    ):
        table.add_column(col, **kw)  # type: ignore[arg-type]
    for h in hits:
        table.add_row(f"{h.score:.4f}", h.memory_id, escape(h.text), h.user or "", str(h.position))
    return table


_QUIET_TYPES = frozenset({"model.requested", "action.risk_assessed", "context.summarized"})


def progress_line(e: Envelope) -> str | None:
    """One event of a live run, readable; None for bookkeeping a person need not watch."""
    if e.type in _QUIET_TYPES:
        return None
    who = e.actor.removeprefix("agent:")
    p: Any = e.payload
    match e.type:  # every recorded word escaped: models and users write them, not markup
        case "task.planned":
            after = f" (after {', '.join(p.depends_on)})" if p.depends_on else ""
            text = escape(f"{p.task_id} [{p.role.value}] {p.goal}{after}")
        case "task.assigned":
            text = escape(f"{p.task_id} → {p.role.value}: {p.reasoning}")
        case "task.completed":
            text = escape(f"{p.task_id}: {_short(p.result)}")
        case "task.reviewed":
            verdict = "[green]accepted[/]" if p.accepted else "[red]sent back[/]"
            text = f"{escape(p.task_id)} {verdict}: {escape(_short(p.reasons))}"
        case "action.proposed":
            text = (
                f"{escape(p.tool)} {escape(_short(p.arguments))}  "
                f"[dim]{escape(_short(p.reasoning))}[/]"
            )
        case "action.executed":
            text = escape(f"{p.action_id} ran in {p.duration_ms:.0f} ms: {_short(p.result)}")
        case "approval.requested":
            text = f"[bold yellow]{escape(p.tool)} needs a human's approval[/] " + escape(
                f"({p.action_id}): {p.preview}"
            )
        case "model.responded":
            text = f"{escape(p.model)}: {p.output_tokens} tokens in {p.latency_ms:.0f} ms"
        case "model.failed":  # whole: why a model gave nothing usable is the news here
            text = f"[red]{escape(p.error)}[/]"
        case "run.forked":
            models = ", ".join(f"{r}={m}" for r, m in sorted(p.model_overrides.items()))
            text = escape(
                f"fork of {p.parent_run} at position {p.parent_position}"
                + (f", models {models}" if models else "")
                + (f": {_short(p.note)}" if p.note else "")
            )
        case _:
            text = summarize(e)
    return f"[dim]{e.position:>6}[/] [{type_style(e.type)}]{e.type:<20}[/] [dim]{who:<16}[/] {text}"


def _longest(ids: Iterable[str]) -> int:
    """The width of the longest of ``ids``: a column of ids is never cut or wrapped."""
    return max((len(i) for i in ids), default=0)


def _rest_width(widths: Iterable[int]) -> int:
    """The width a table's last column has on this terminal beside columns of ``widths`` (each
    takes its text, and 3 for its padding and rule; 4 more for the borders): its one line."""
    return max(12, out.width - sum(w + 3 for w in widths) - 4)


def notices_table(events: list[Any]) -> Table:
    """``notification.sent`` events, one line each (the inbox lists them above what waits)."""
    table = Table(title="notifications (medium-risk actions that ran)", header_style="bold")
    widths = [
        _longest(["pos", *(str(e.position) for e in events)]),
        _longest(e.stream for e in events),
        _longest(["action", *(e.payload.action_id or "" for e in events)]),
    ]
    table.add_column("pos", justify="right", style="dim", no_wrap=True)
    table.add_column("run", no_wrap=True, min_width=widths[1])
    table.add_column("action", no_wrap=True, min_width=widths[2])
    table.add_column("message", no_wrap=True, overflow="ellipsis", max_width=_rest_width(widths))
    for e in events:
        message = " ".join(e.payload.message.split())  # one line, whatever the tool printed
        table.add_row(str(e.position), e.stream, e.payload.action_id or "", escape(message))
    return table


def runs_table(rows: list[Any]) -> Table:
    """A table of runs (RunState objects), newest first."""
    # Narrow terminals keep the run, its status and the goal's start (`status RUN` shows the
    # rest).
    wide = out.width >= 120
    table = Table(header_style="bold")
    table.add_column("run", no_wrap=True, min_width=_longest(s.run for s in rows))
    table.add_column("status", no_wrap=True)
    table.add_column("tasks", no_wrap=True)
    if wide:
        table.add_column("events", justify="right")
        table.add_column("started", no_wrap=True)  # a fork: when it was forked
        table.add_column("forked from", overflow="fold")
    # One line a run, however narrow the terminal: a list is read down its first columns. The
    # goal gets what the other columns leave (each takes its text, 3 for padding and rule).
    widths = [
        _longest(s.run for s in rows),
        _longest(["status", *(s.status.value for s in rows)]),
        len("tasks"),
    ]
    if wide:
        forked = (f"{s.parent_run} @ {s.parent_position}" for s in rows if s.parent_run)
        widths += [len("events"), len("2026-01-01 00:00"), _longest(["forked from", *forked])]
    table.add_column("goal", overflow="ellipsis", no_wrap=True, max_width=_rest_width(widths))
    for state in rows:
        done = sum(1 for t in state.tasks.values() if t.status.value == "accepted")
        style = _STATUS_STYLES.get(state.status.value, "white")
        row = [state.run, f"[{style}]{state.status.value}[/]", f"{done}/{len(state.tasks)}"]
        if wide:
            row += [
                str(state.events),
                _when(state.forked_at or state.started_at),
                f"{state.parent_run} @ {state.parent_position}" if state.parent_run else "",
            ]
        table.add_row(*row, escape(_short(state.goal)))
    return table


def _when(at: datetime | None, otherwise: str = "") -> str:
    """A table's time, to the minute."""
    return at.strftime("%Y-%m-%d %H:%M") if at else otherwise


def agents_table(rows: list[dict[str, Any]]) -> Table:
    """A table of running agents (``Runtime.status()``)."""
    table = Table(header_style="bold")
    for col in ("agent", "alive", "position", "handled", "failures", "last error"):
        table.add_column(col, overflow="fold" if col == "last error" else "ellipsis")
    for r in rows:
        table.add_row(
            r["agent"],
            "[green]yes[/]" if r.get("alive") else "[red]no[/]",
            str(r["position"]),
            str(r["handled"]),
            str(r["failures"]),
            escape(r.get("last_error") or ""),
        )
    return table


def approvals_table(waiting: list[tuple[str, Any]]) -> RenderableType:
    """The approvals inbox: (run, PendingApproval) pairs, reasoning beside each action (below
    it on a narrow terminal, where eight columns do not fit)."""
    if out.width < 120:
        blocks: list[RenderableType] = [Text("waiting for approval", style="bold yellow")]
        for run, a in waiting:
            expires = _when(a.expires_at, "never")
            head = Text.assemble(
                (run, "bold"), "  ", (a.action_id, "bold"), f"  {a.tool}  ", (a.risk.value, "red")
            )
            head.no_wrap = True
            body = Table.grid(padding=(0, 1))
            body.add_column(style="dim", no_wrap=True)
            body.add_column(overflow="fold")
            body.add_row("preview", escape(a.preview))
            body.add_row("reasoning", escape(a.reasoning))
            body.add_row("asked by", f"{a.requested_by}, expires {expires}")
            blocks += [head, Padding(body, (0, 0, 1, 2))]
        return Group(*blocks)
    table = Table(header_style="bold yellow", title="waiting for approval", title_justify="left")
    table.add_column("run", no_wrap=True, min_width=_longest(run for run, _ in waiting))
    table.add_column("action", no_wrap=True, min_width=_longest(a.action_id for _, a in waiting))
    for col in ("tool", "risk", "preview", "reasoning", "by", "expires"):
        table.add_column(col, overflow="fold")
    for run, a in waiting:
        table.add_row(
            run,
            a.action_id,
            escape(a.tool),
            f"[red]{a.risk.value}[/]",
            escape(a.preview),
            escape(a.reasoning),
            a.requested_by,
            _when(a.expires_at, "never"),
        )
    return table


_DECISION_TYPES = frozenset(
    {
        "task.planned",
        "task.assigned",
        "task.completed",
        "task.failed",
        "task.reviewed",
        "action.proposed",
        "action.risk_assessed",
        "approval.requested",
        "approval.granted",
        "approval.denied",
        "approval.expired",
        "run.completed",
        "run.failed",
        "run.cancelled",
        "run.paused",
        "run.resumed",
    }
)


def decisions_table(events: list[Any], limit: int = 10) -> Table:
    """The latest decisions among ``events``, each with who made it and why."""
    table = Table(title="last decisions", header_style="bold", title_justify="left")
    for col in ("pos", "decision", "by", "what", "why"):
        table.add_column(col, overflow="fold")
    chosen = [e for e in events if e.type in _DECISION_TYPES][-limit:]
    for e in chosen:
        p = e.payload
        why = (
            getattr(p, "reasoning", "")
            or getattr(p, "reasons", "")
            or getattr(p, "reason", "")
            or getattr(p, "rule", "")
            or getattr(p, "comment", "")
        )
        table.add_row(
            str(e.position),
            f"[{type_style(e.type)}]{e.type}[/]",
            e.actor,
            summarize(e, 70),
            escape(_short(why)) if why else "",
        )
    return table
