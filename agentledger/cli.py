"""The `agentledger` command line: inspect, export and verify the event log."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from agentledger import __version__
from agentledger.console import err, event_json, event_line, events_table, out, streams_table
from agentledger.events import (
    EVENT_TYPES,
    STORE_ENV,
    AgentLedgerError,
    Envelope,
    EventStore,
    NotFound,
    default_store_url,
)

app = typer.Typer(
    name="agentledger",
    help=(
        "Event-sourced multi-agent orchestration. Every agent message, model call, tool result "
        "and human decision is an event in one log; these commands read, verify and export it."
    ),
    no_args_is_help=True,
    rich_markup_mode="rich",
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

StoreOption = Annotated[
    str | None,
    typer.Option(
        "--store",
        envvar=STORE_ENV,
        help="Event store URL: sqlite:///path.db, postgresql://user@host:5432/db, memory://. "
        f"Default: {default_store_url()}",
        show_default=False,
    ),
]

T = TypeVar("T")


@contextmanager
def _store(url: str | None) -> Iterator[EventStore]:
    with EventStore.open(url) as store:
        yield store


def _run(action: Callable[[], T]) -> T:
    """Run a command body; our errors become a red message and exit code 1, never a traceback."""
    try:
        return action()
    except AgentLedgerError as exc:
        err.print(f"[bold red]error:[/] {exc}")
        raise typer.Exit(1) from None
    except KeyboardInterrupt:
        raise typer.Exit(130) from None


def _version(value: bool) -> None:
    if value:
        out.print(f"agentledger {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Show the version.")
    ] = False,
) -> None:
    """agentledger: every run is an auditable, replayable log of events."""


def _check_types(types: list[str]) -> list[str]:
    unknown = [t for t in types if t not in EVENT_TYPES]
    if unknown:
        raise NotFound(
            f"unknown event type(s) {', '.join(unknown)}; see `agentledger schema --list`"
        )
    return types


@app.command("log")
def log_command(
    stream: Annotated[
        str | None, typer.Argument(help="Only this stream (e.g. run-<uuid>). Default: all.")
    ] = None,
    type_: Annotated[
        list[str] | None,
        typer.Option(
            "--type", "-t", help="Only events of this type (repeatable), e.g. run.started."
        ),
    ] = None,
    since: Annotated[
        int, typer.Option("--since", min=0, help="Only events after this global position.")
    ] = 0,
    limit: Annotated[
        int | None, typer.Option("--limit", "-n", min=1, help="At most this many events.")
    ] = None,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep printing new events as they are appended.")
    ] = False,
    as_json: Annotated[
        bool, typer.Option("--json", help="One JSON object per line (for scripts).")
    ] = False,
    store_url: StoreOption = None,
) -> None:
    """Show events from the log, in global order."""

    def body() -> None:
        types = _check_types(type_ or [])
        with _store(store_url) as store:
            if stream is not None:
                events: list[Envelope] = [
                    e
                    for e in store.read(stream)
                    if (e.position or 0) > since and (not types or e.type in types)
                ]
                if not events and store.stream_version(stream) == 0:
                    raise NotFound(
                        f"stream {stream!r} has no events in {store.url}; "
                        "see `agentledger streams` for the streams there are"
                    )
                events = events[:limit] if limit else events
            else:
                events = list(store.read_all(since, limit, types))
            if as_json:
                for e in events:
                    sys.stdout.write(event_json(e) + "\n")
            elif events:
                out.print(events_table(events, title=stream, show_stream=stream is None))
            elif not follow:
                out.print(f"[dim]no events after position {since} in {store.url}[/]")
            if follow:
                _follow(
                    store,
                    events[-1].position if events else max(since, store.head_position()),
                    stream,
                    types,
                    as_json,
                )

    _run(body)


def _follow(
    store: EventStore, after: int | None, stream: str | None, types: list[str], as_json: bool
) -> None:
    if not as_json:
        err.print("[dim]following new events; Ctrl-C to stop[/]")
    with store.subscribe(after or 0, types) as subscription:
        for e in subscription:
            if stream is not None and e.stream != stream:
                continue
            if as_json:
                sys.stdout.write(event_json(e) + "\n")
                sys.stdout.flush()
            else:
                out.print(event_line(e))


@app.command("streams")
def streams_command(
    prefix: Annotated[str, typer.Option("--prefix", help="Only streams starting with this.")] = "",
    store_url: StoreOption = None,
) -> None:
    """List the streams in the log with their versions and positions."""

    def body() -> None:
        with _store(store_url) as store:
            streams = store.streams(prefix)
            if not streams:
                out.print(f"[dim]no streams in {store.url}[/]")
                return
            out.print(streams_table(streams))
            out.print(f"[dim]{len(streams)} streams, {store.head_position()} events[/]")

    _run(body)


@app.command("schema")
def schema_command(
    out_dir: Annotated[
        Path | None,
        typer.Option("--out", help="Write one JSON Schema file per event type and the union here."),
    ] = None,
    list_types: Annotated[
        bool, typer.Option("--list", help="List event types with their schema versions.")
    ] = False,
) -> None:
    """Export the event catalogue as JSON Schema (the union is printed without --out)."""
    import json

    from agentledger.events.schema import union_schema, write_schemas

    if list_types:
        for name, cls in sorted(EVENT_TYPES.items()):
            out.print(f"{name:<24} v{cls.current_schema_version}  [dim]{cls.__doc__}[/]")
        return
    if out_dir is None:
        sys.stdout.write(json.dumps(union_schema(), indent=2, sort_keys=True) + "\n")
        return

    def body() -> None:
        try:
            written = write_schemas(out_dir)
        except OSError as exc:
            raise AgentLedgerError(f"cannot write schemas to {out_dir}: {exc}") from exc
        out.print(f"wrote {len(written)} schema files to {out_dir}")

    _run(body)


@app.command("verify-log")
def verify_log_command(store_url: StoreOption = None) -> None:
    """Check the hash chain of every stream: report any edited, removed, inserted or moved event."""

    def body() -> None:
        with _store(store_url) as store:
            total = store.head_position()
            with Progress(
                TextColumn("verifying"),
                BarColumn(),
                TextColumn("{task.completed:,}/{task.total:,}"),
                TimeElapsedColumn(),
                console=err,
                transient=True,
                disable=total < 50_000,
            ) as progress:
                task = progress.add_task("verify", total=total)
                report = store.verify(lambda n: progress.update(task, completed=n))
            if report.ok:
                out.print(
                    f"[green]ok[/]: {report.events:,} events in {report.streams:,} streams; "
                    "every hash and every stream chain holds"
                )
                return
            out.print(
                f"[bold red]TAMPERED[/]: {len(report.findings)} finding(s) "
                f"in {report.events:,} events:"
            )
            for finding in report.findings[:50]:
                out.print(f"  {finding}")
            if len(report.findings) > 50:
                out.print(f"  … and {len(report.findings) - 50} more")
            raise typer.Exit(1)

    _run(body)


@app.command("demo")
def demo_command(store_url: StoreOption = None) -> None:
    """Write a sample run to the log and show it (no server, network or model needed)."""
    from agentledger.sample import write_sample_run

    def body() -> None:
        with _store(store_url) as store:
            run, events = write_sample_run(store)
            out.print(events_table(list(events), title=f"sample run {run}", show_stream=False))
            out.print(
                f"\nwrote {len(events)} events to [bold]{store.url}[/]. This is a scripted sample "
                "log; the agents that produce such logs arrive with the runtime.\n"
                f"Next: [bold]agentledger log {run}[/], [bold]agentledger streams[/], "
                "[bold]agentledger verify-log[/]"
            )

    _run(body)


def main(argv: list[str] | None = None) -> Any:
    """Entry point of the `agentledger` console script."""
    return app(args=argv)


if __name__ == "__main__":
    main()
