"""How the CLI shows events and errors: one place for colours, tables and one-line summaries."""

from __future__ import annotations

import json
from typing import Any

from rich.console import Console
from rich.table import Table

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
    text = "  ".join(parts) if parts else _short(payload)
    return text if len(text) <= width else text[: width - 1] + "…"


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

    Narrow terminals drop the date and squeeze the stream, never the summary.
    """
    wide = out.width >= 140
    show_time = out.width >= 110
    table = Table(title=title, header_style="bold", expand=False)
    table.add_column("pos", justify="right", style="dim", no_wrap=True, min_width=3)
    if show_stream:
        table.add_column("stream", no_wrap=True, overflow="ellipsis", max_width=44 if wide else 12)
    table.add_column("ver", justify="right", style="dim", no_wrap=True)
    table.add_column("type", no_wrap=show_time, overflow="fold")
    table.add_column("actor", no_wrap=True, overflow="ellipsis", max_width=24 if wide else 12)
    if show_time:
        table.add_column("at (UTC)" if wide else "time", no_wrap=True, style="dim")
    table.add_column("summary", overflow="fold", min_width=12, ratio=1)
    for e in events:
        row = [str(e.position) if e.position is not None else ""]
        if show_stream:
            row.append(e.stream)
        row += [
            str(e.version),
            f"[{type_style(e.type)}]{e.type}[/]",
            e.actor,
        ]
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
