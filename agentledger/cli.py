"""The `agentledger` command line: inspect, export and verify the event log."""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from agentledger import __version__
from agentledger.console import (
    blackboard_table,
    context_view,
    counted,
    err,
    escape,
    event_json,
    event_line,
    events_table,
    memories_table,
    out,
    printable,
    run_state_view,
    streams_table,
)
from agentledger.events import (
    EVENT_TYPES,
    STORE_ENV,
    AgentLedgerError,
    ConfigurationError,
    Envelope,
    EventStore,
    NotFound,
    Role,
    default_store_url,
)

app = typer.Typer(
    name="agentledger",
    help=(
        "Event-sourced multi-agent orchestration. Every agent message, model call, tool result "
        "and human decision is an event in one log: these commands run the agents, let humans "
        "steer runs, and read, replay, verify and export the log."
    ),
    no_args_is_help=True,
    rich_markup_mode="markdown",  # a docstring's paragraphs reflow to the terminal's width
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _given_store(ctx: typer.Context, param: typer.CallbackParam, value: str | None) -> str | None:
    """An empty --store (or a blank $AGENTLEDGER_STORE) is refused as a usage error: taken as
    not given, the command went on with another store (the variable's, the default)."""
    if value is None or value.strip():
        return value
    source = ctx.get_parameter_source(param.name or "")  # typer's own click: by name
    if source is not None and source.name == "ENVIRONMENT":
        where, fix = f"${STORE_ENV} is blank", "set it to a store URL, or unset it"
    else:
        where, fix = "the store URL is empty", "give one, or leave the option out"
    raise typer.BadParameter(
        f"{where}; {fix} (e.g. sqlite:///path/to/ledger.db, postgresql://user@host:5432/db)"
    )


StoreOption = Annotated[
    str | None,
    typer.Option(
        "--store",
        envvar=STORE_ENV,
        callback=_given_store,
        help="Event store URL: sqlite:///path.db, postgresql://user@host:5432/db, memory://. "
        f"Default: {default_store_url()}",
        show_default=False,
    ),
]

T = TypeVar("T")
RUN_EXAMPLE = "e.g. run-20261130-115347-93776a; `agentledger runs` lists them"


@contextmanager
def _store(
    url: str | None, *, create: bool = False, config: Path | None = None
) -> Iterator[EventStore]:
    """The store at ``url`` (else the store of ``config``, the settings file). Only the
    commands that start runs or agents (``create``) make a new SQLite file; the others say
    there is none, rather than make one from a typo."""
    url = _store_url(url, config)
    from agentledger.events._backends import no_store_at

    missing = no_store_at(url, servers=not create)  # a server's store is made where named
    if missing is not None:
        reason, creatable = missing
        if not creatable:  # another program's database: never given our tables
            raise ConfigurationError(
                f"{reason}: the log needs a file of its own; --store or ${STORE_ENV} names one"
            )
        if not create:
            raise NotFound(
                f"{reason}: `agentledger demo` or `agentledger run GOAL` creates one there; "
                f"--store or ${STORE_ENV} names another"
            )
    with EventStore.open(url) as store:
        yield store


def _store_url(url: str | None, config: Path | None = None) -> str:
    """``url``, else the settings file's store (``config``, else ./agentledger.toml or
    $AGENTLEDGER_CONFIG: as `run` and `serve` take it), else the default."""
    if url is not None:
        return url
    from agentledger.config import load_settings

    return load_settings(config).store or default_store_url()


def _run(action: Callable[[], T]) -> T:
    """Run a command body; our errors become a red message and exit code 1, never a traceback."""
    try:
        return action()
    except AgentLedgerError as exc:
        err.print(f"[bold red]error:[/] {escape(str(exc))}")  # messages may contain [brackets]
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
        str | None,
        typer.Argument(help=f"Only this stream ({RUN_EXAMPLE}). Default: all."),
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
        with _store(store_url, create=follow) as store:  # following waits for the first run
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
                what = f"no events of type {', '.join(types)}" if types else "no events"
                where = f"{stream} in {store.url}" if stream is not None else store.url
                out.print(f"[dim]{what} after position {since} in {where}[/]")
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
            out.print(
                f"[dim]{counted(len(streams), 'stream')}, "
                f"{counted(store.head_position(), 'event')}[/]"
            )

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
    force: Annotated[
        bool,
        typer.Option(
            "--force",
            help="Replace schema files already in the --out folder (never the event store's).",
        ),
    ] = False,
) -> None:
    """Export the event catalogue as JSON Schema (the union is printed without --out)."""
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
            # Never over the store of $AGENTLEDGER_STORE / agentledger.toml, as the other
            # commands take it; a settings file that cannot be read names none.
            try:
                store = _store_url(None)
            except ConfigurationError:
                store = None
            written = write_schemas(out_dir, overwrite=force, store_url=store)
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
                    f"[green]ok[/]: {counted(report.events, 'event')} in "
                    f"{counted(report.streams, 'stream')}; "
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


AtOption = Annotated[
    int | None,
    typer.Option("--at", min=0, help="Show it as it was at this global position (time travel)."),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")]


@app.command("state")
def state_command(
    run: Annotated[
        str,
        typer.Argument(help=f"The run's stream ({RUN_EXAMPLE})."),
    ],
    at: AtOption = None,
    as_json: JsonOption = False,
    store_url: StoreOption = None,
) -> None:
    """Show a run as of a position: status, tasks, pending approvals, blackboard, scratchpad."""
    from agentledger.blackboard import BlackboardProjection
    from agentledger.projections import RunStateProjection, RunStatus
    from agentledger.projections.memory import ScratchpadProjection
    from agentledger.projections.runner import stream_as_of

    def body() -> None:
        with _store(store_url) as store:
            events = stream_as_of(store, run, at)
            state = RunStateProjection().fold(events)
            board = BlackboardProjection().fold(events)
            pad = ScratchpadProjection().fold(events)
        if as_json:
            doc = {
                "run": state.model_dump(mode="json"),
                "blackboard": board.model_dump(mode="json"),
                "scratchpad": pad.model_dump(mode="json"),
            }
            sys.stdout.write(json.dumps(doc, indent=2) + "\n")
            return
        # Now (not --at): whether anything moves the run on, as `approve` tells.
        moving = state.status in (RunStatus.PLANNING, RunStatus.RUNNING) and at is None
        unserved = moving and not _served_here(store_url, None)
        out.print(run_state_view(state, board, pad, at, unserved=unserved))

    _run(body)


@app.command("blackboard")
def blackboard_command(
    run: Annotated[
        str,
        typer.Argument(help=f"The run's stream ({RUN_EXAMPLE})."),
    ],
    at: AtOption = None,
    kind: Annotated[
        str | None, typer.Option("--kind", help="fact, hypothesis, decision, artifact, question")
    ] = None,
    topic: Annotated[str | None, typer.Option("--topic", help="Only this topic.")] = None,
    history: Annotated[bool, typer.Option("--history", help="Include superseded entries.")] = False,
    as_json: JsonOption = False,
    store_url: StoreOption = None,
) -> None:
    """Show a run's shared blackboard (entries are superseded, never edited)."""
    from agentledger.blackboard import BlackboardProjection, Board
    from agentledger.events import EntryKind, InvalidEvent
    from agentledger.projections.runner import stream_as_of

    def body() -> None:
        if kind is not None and kind not in set(EntryKind):
            raise InvalidEvent(
                f"unknown kind {kind!r}; kinds: {', '.join(k.value for k in EntryKind)}"
            )
        with _store(store_url) as store:
            state = BlackboardProjection().fold(stream_as_of(store, run, at))
        board = Board(state)
        entries = (
            [
                e
                for e in state.entries.values()
                if (kind is None or e.kind == kind) and (topic is None or e.topic == topic)
            ]
            if history
            else board.current(kind, topic)
        )
        if as_json:
            sys.stdout.write(
                json.dumps([e.model_dump(mode="json") for e in entries], indent=2) + "\n"
            )
            return
        where = f"{run}" + (f" at position {at}" if at is not None else "")
        if not entries:  # an empty table said nothing of what was asked
            asked = [f"kind {kind}"] if kind is not None else []
            asked += [f"topic {topic!r}"] if topic is not None else []
            held = len(state.entries)
            if not held:
                what = f"the blackboard of {where} has no entries"
            elif not asked:  # every entry superseded, and --history not given
                what = (
                    f"no current entries on the blackboard of {where}: all {held} are "
                    "superseded (--history shows them)"
                )
            else:
                scope = "entries, superseded ones included," if history else "current entries"
                what = (
                    f"no {scope} on the blackboard of {where} match {' and '.join(asked)}; it "
                    f"holds {held} {'entry' if held == 1 else 'entries'} in all"
                )
            out.print(f"[dim]{escape(what)}[/]")
            return
        out.print(blackboard_table(entries, title=f"blackboard of {where}"))

    _run(body)


@app.command("context")
def context_command(
    run: Annotated[
        str,
        typer.Argument(help=f"The run's stream ({RUN_EXAMPLE})."),
    ],
    agent: Annotated[
        str, typer.Option("--agent", help="Role: coordinator, research, execution, review.")
    ],
    at: AtOption = None,
    goal: Annotated[
        str | None,
        typer.Option(
            "--goal",
            help="Assemble the context for this sub-goal instead (what the Memory Manager would "
            "give the agent for it at that position).",
        ),
    ] = None,
    budget: Annotated[
        int | None,
        typer.Option(
            "--budget",
            min=32,
            help="Token budget of an assembled context. Default: the agents' "
            "(agentledger.toml [runtime] context_tokens).",
            show_default=False,
        ),
    ] = None,
    store_url: StoreOption = None,
    config: ConfigOption = None,
) -> None:
    """Show the prompt an agent sent at a position: its last model request at or before --at.

    The prompt is shown as recorded (its SHA-256 checked). Where only its hash was recorded
    (record_prompts = "hash"), or with --goal, the context is assembled again from the log, as
    the Memory Manager gave it (no model call).
    """
    from agentledger.actors.memory_manager import MemoryManager
    from agentledger.config import load_settings
    from agentledger.console import recorded_prompt_view
    from agentledger.projections.runner import stream_as_of

    def body() -> None:
        if agent not in {r.value for r in Role}:
            roles = ", ".join(r.value for r in Role)
            raise NotFound(f"unknown agent role {agent!r}; roles: {roles}")
        settings = load_settings(config)
        with _store(store_url, config=config) as store:
            events = stream_as_of(store, run, at)
            asked = next(
                (
                    e
                    for e in reversed(events)
                    if e.type == "model.requested" and e.actor.startswith(f"agent:{agent}/")
                ),
                None,
            )
            if goal is None and asked is not None and asked.payload.prompt is not None:
                out.print(recorded_prompt_view(asked))
                return
            if goal is None and asked is None:
                where = f"at position {at}" if at is not None else "yet"
                err.print(f"[dim]the {agent} agent asked no model in {run} {where}[/]")
            sub_goal = goal or _working_on(events, agent, asked)
            view = events
            if asked is not None and goal is None:  # as it was when the agent asked
                view = _view_when_asked(events, asked)
                err.print(
                    f"[dim]the prompt of position {asked.position} was recorded by its hash "
                    "only: its context, assembled again from the log[/]"
                )
            started = next((e for e in events if e.type == "run.started"), None)
            with _long_term_as_of(store, agent, view) as memory:
                context = MemoryManager(memory).assemble(
                    view,
                    agent,
                    sub_goal,
                    budget or settings.runtime.context_tokens,
                    user=started.payload.user if started is not None else None,
                )
        out.print(context_view(context))

    _run(body)


def _view_when_asked(events: list[Any], asked: Any) -> list[Any]:
    """The run as the agent saw it when it sent ``asked`` (``AgentWorker``'s view): the events
    up to the one it handled, its own reactions to earlier events that follow it, and the
    summary its turn wrote just before asking; not the others' events that came meanwhile, nor
    what its turn emitted before (an earlier attempt's request and answer, a tool call). By
    index: a fork's inherited events share one position."""
    end = events.index(asked)
    cause = next((i for i in range(end) if events[i].id == asked.causation_id), None)
    if cause is None:
        return events[:end]
    turn = [e for e in events[cause + 1 : end] if e.actor == asked.actor]
    view = events[: cause + 1]
    cause_id = asked.causation_id
    view += [e for e in turn if e.causation_id != cause_id]
    if turn and turn[-1].type == "context.summarized" and turn[-1].causation_id == cause_id:
        view.append(turn[-1])
    return view


def _cached_memory(store_url: str) -> Any:
    """The long-term memory table the CLI keeps for ``store_url`` (in its cache folder, as
    projections' checkpoints are), as it is: callers catch it up."""
    from agentledger.config import cache_dir
    from agentledger.projections.memory import LongTermMemory, embedder_from_env

    return LongTermMemory(cache_dir(store_url) / "lancedb", embedder_from_env())


@contextmanager
def _long_term_as_of(store: EventStore, role: str, view: list[Any]) -> Iterator[Any]:
    """The long-term memory ``role``'s agent searched when it saw ``view``: none but the
    research agent's (the only role with long-term memory, ``runtime.agent_for``), holding
    the memories up to the event it handled."""
    if role != "research":
        yield None
        return
    handled = next((e.position for e in reversed(view) if e.position is not None), 0)
    with _memory_as_of(store, handled) as memory:
        yield memory


@contextmanager
def _memory_as_of(store: EventStore, position: int | None) -> Iterator[Any]:
    """The long-term memory table holding the memories stored up to ``position`` (all of them
    if None), as an agent's is when it handles the event there: the CLI's cached table if it
    holds nothing later, else a scratch one built for the question. Not the cached table
    filtered by position: full-text scores count every row of a table, so one holding later
    memories ranks those of the past otherwise than the agent's search did."""
    import tempfile

    from agentledger.projections.memory import LongTermMemory, embedder_from_env

    memory = _cached_memory(store.url)
    if memory.rebuild_notice:
        err.print(f"[yellow]{escape(memory.rebuild_notice)}[/]")
    memory.catch_up(store, to_position=position)
    if position is None or memory.position <= position:
        yield memory
        return
    with tempfile.TemporaryDirectory(prefix="agentledger-memory-") as scratch:
        memory = LongTermMemory(scratch, embedder_from_env())
        with err.status(f"reading the memories stored up to position {position}…"):
            memory.catch_up(store, to_position=position)
        yield memory


def _working_on(events: list[Any], role: str, asked: Any) -> str:
    """The sub-goal ``role`` worked on: the task that led to the request ``asked``, else the
    task of the role's newest assignment or own event naming one, else the run's goal."""
    from agentledger.projections import RunStateProjection

    state = RunStateProjection().fold(events)
    by_id = {e.id: e for e in events}
    cause = by_id.get(asked.causation_id) if asked is not None else None
    task_id = getattr(getattr(cause, "payload", None), "task_id", None)
    if task_id is None:
        for e in reversed(events):
            named = getattr(e.payload, "task_id", None)
            if named is not None and (
                e.actor.startswith(f"agent:{role}/")
                or (e.type == "task.assigned" and getattr(e.payload, "role", None) == role)
            ):
                task_id = named
                break
    task = state.tasks.get(task_id) if task_id is not None else None
    return task.goal if task is not None else state.goal


memory_app = typer.Typer(
    help="Long-term memory (LanceDB, rebuilt from memory.stored events).", no_args_is_help=True
)
app.add_typer(memory_app, name="memory")


@memory_app.command("search")
def memory_search_command(
    query: Annotated[str, typer.Argument(help="What to look for.")],
    user: Annotated[str | None, typer.Option("--user", help="Only this user's memories.")] = None,
    k: Annotated[int, typer.Option("--k", "-k", min=1, max=1000, help="How many.")] = 5,
    mode: Annotated[
        str, typer.Option("--mode", help="hybrid (default), vector or text.")
    ] = "hybrid",
    at: AtOption = None,
    as_json: JsonOption = False,
    store_url: StoreOption = None,
) -> None:
    """Search long-term memory (hybrid vector + full-text by default)."""
    from agentledger.events import InvalidEvent
    from agentledger.projections.runner import check_position

    def body() -> None:

        if mode not in ("hybrid", "vector", "text"):
            raise InvalidEvent(f"unknown mode {mode!r}; use hybrid, vector or text")
        with _store(store_url) as store:
            if at is not None:  # as state --at does: not an empty answer
                check_position(store, at)
            with _memory_as_of(store, at) as memory:
                hits = memory.search(query, k=k, user=user, as_of=at, mode=mode)  # type: ignore[arg-type]
                stored = memory.count()  # up to --at: the table holds no later memory
        if as_json:
            sys.stdout.write(json.dumps([h.__dict__ for h in hits], indent=2) + "\n")
        elif not stored:  # not "no match": there is nothing to match yet
            when = (
                f"was empty at position {at}: no run had stored a memory by then"
                if at is not None
                else "is empty: no run has stored a memory yet"
            )
            out.print(
                f"[dim]long-term memory {when} (a run stores one of what it did when it "
                "completes)[/]"
            )
        elif not hits:
            whose = f" of user {user}" if user is not None else ""
            out.print(
                f"[dim]no memories{escape(whose)} match {escape(repr(query))} "
                f"({stored:,} {'memory' if stored == 1 else 'memories'} stored"
                + (f" up to position {at}" if at is not None else "")
                + ")[/]"
            )
        else:
            out.print(memories_table(hits))

    _run(body)


@app.command("rebuild")
def rebuild_command(
    projection: Annotated[
        str, typer.Argument(help="runs, blackboards, scratchpads, memory, or all.")
    ] = "all",
    store_url: StoreOption = None,
) -> None:
    """Delete projection caches and rebuild them from the log, with progress."""
    from agentledger.blackboard import BlackboardProjection
    from agentledger.events import InvalidEvent, StoreUnavailable
    from agentledger.projections import PerStream, RunStateProjection
    from agentledger.projections.checkpoints import CheckpointStore
    from agentledger.projections.memory import (
        ScratchpadProjection,
    )
    from agentledger.projections.runner import ProjectionRunner

    folds = {
        "runs": lambda: PerStream(RunStateProjection()),
        "blackboards": lambda: PerStream(BlackboardProjection()),
        "scratchpads": lambda: PerStream(ScratchpadProjection()),
    }
    choices = [*folds, "memory"]

    def body() -> None:
        from agentledger.config import cache_dir

        if projection != "all" and projection not in choices:
            raise InvalidEvent(
                f"unknown projection {projection!r}; choose from {', '.join(choices)} or all"
            )
        chosen = choices if projection == "all" else [projection]
        with _store(store_url) as store:
            cache = cache_dir(store.url)
            head = store.head_position()
            with Progress(
                TextColumn("{task.description:<12}"),
                BarColumn(),
                TextColumn("{task.completed:,}/{task.total:,}"),
                TimeElapsedColumn(),
                console=err,
            ) as progress:
                for name in chosen:
                    if name == "memory":
                        memory = _cached_memory(store.url)
                        memory.delete()
                        memory = _cached_memory(store.url)
                        total = sum(1 for _ in store.read_stored(types=["memory.stored"]))
                        task = progress.add_task(name, total=total)
                        added = memory.catch_up(
                            store, progress=lambda n, t=task: progress.update(t, completed=n)
                        )
                        memory.ensure_indexes()
                        summary = f"{added:,} memories"
                    else:
                        task = progress.add_task(name, total=head)
                        path = cache / "checkpoints.db"
                        for attempt in (1, 2):
                            try:
                                checkpoints = CheckpointStore(path)
                                runner = ProjectionRunner(store, folds[name](), checkpoints)
                                state = runner.rebuild(
                                    lambda n, t=task: progress.update(t, completed=n)
                                )
                                checkpoints.close()
                                break
                            except StoreUnavailable:
                                # The cache is damaged: rebuilding replaces it anyway.
                                if attempt == 2:
                                    raise
                                progress.console.print(f"[yellow]{path} is damaged; deleting it[/]")
                                CheckpointStore.delete(path)
                        summary = f"{len(state.streams):,} runs"  # type: ignore[attr-defined]
                    progress.console.print(f"rebuilt {name}: {summary}")

    _run(body)


# ---------------------------------------------------------------------------- runs

ConfigOption = Annotated[
    Path | None,
    typer.Option(
        "--config",
        envvar="AGENTLEDGER_CONFIG",
        help="Settings file (models, OpenAI endpoint, runtime). Default: ./agentledger.toml if "
        "present.",
        show_default=False,
    ),
]
AddressOption = Annotated[
    str | None,
    typer.Option(
        "--address",
        envvar="RAY_ADDRESS",
        help="Ray cluster to join (e.g. ray://head:10001 or auto). Default: agents served on "
        "this machine (agentledger serve), else a local Ray.",
        show_default=False,
    ),
]
ModelOption = Annotated[
    list[str] | None,
    typer.Option(
        "--model",
        "-m",
        help="ROLE=PROVIDER:MODEL (repeatable), e.g. research=openai:gpt-4o-mini. Providers: "
        "offline (default; rule-based, not a language model; ROLE=offline is enough), openai "
        "(any OpenAI-compatible endpoint, see agentledger.toml [openai]).",
    ),
]
EXIT_WAITING = 3
EXIT_TIMEOUT = 4  # --timeout passed before the run ended


def _models(
    specs: list[str], settings: Any, *, keys_here: bool = True
) -> tuple[dict[str, str], dict[str, str]]:
    """Role -> provider:model: configured and given by --model options merged, and those given
    alone (a fork's overrides); checked now (not when an agent needs it). ``keys_here``: the
    agents will run with this process's environment, so their endpoint's key must be in it."""
    from agentledger.actors.extensions import provider_names
    from agentledger.actors.models import ModelSpec, parse_model_spec
    from agentledger.actors.providers import provider_for
    from agentledger.config import extensions_of

    known = provider_names(extensions_of(settings))
    given = {}
    for text in specs:
        spec = parse_model_spec(text, providers=known)
        given[spec.role.value] = f"{spec.provider}:{spec.model}"
    chosen = {**settings.models, **given}
    for role, text in chosen.items():
        provider, _, model = text.partition(":")
        if provider == "openai" and keys_here:  # fails now, with the fix, if the key is missing
            provider_for(ModelSpec(role=role, provider=provider, model=model), settings.openai)
    return chosen, given


def _agents(config: Any, address: str | None) -> tuple[Any, bool, Any]:
    """Agents for this command: those served for this store, else new ones it owns started
    with ``config``; and the RuntimeConfig they run with (served ones keep their own).

    Their default models are the settings file's, not this command's --model: the run records
    those itself, and the agents also take up other runs waiting in the log (a run whose
    command was stopped), which must not go to a model their starter never chose."""
    from agentledger.actors.runtime import attach_or_start

    starting = err.status("starting the agents (coordinator, research, execution, review)…")
    with starting, _interrupts_deferred() as interrupted:
        runtime, owned = attach_or_start(config, address)
    if interrupted:
        if owned:
            runtime.stop()
        raise KeyboardInterrupt
    if owned:
        return runtime, owned, config
    err.print(f"[dim]using the agents served for this store (namespace {config.namespace})[/]")
    running = runtime.running_config()
    differ = _served_differences(config, running)
    if differ:
        err.print(
            "[yellow]the served agents keep the settings `agentledger serve` started them "
            f"with[/], not this command's: {escape('; '.join(differ))}. To change them, "
            "restart `agentledger serve` with that configuration"
        )
    return runtime, owned, running


@contextmanager
def _interrupts_deferred() -> Iterator[list[int]]:
    """A first Ctrl-C inside the block is taken when it ends (the list it yields is then not
    empty); a second one at once. Ray's processes started half-way (its agents lingered for a
    minute after a Ctrl-C while a local Ray started) are then stopped as a whole."""
    got: list[int] = []
    if (
        threading.current_thread() is not threading.main_thread()
        or signal.getsignal(signal.SIGINT) is not signal.default_int_handler  # e.g. ignored
    ):
        yield got
        return

    def later(signum: int, frame: Any) -> None:
        if got:
            raise KeyboardInterrupt
        got.append(signum)
        err.print(
            "\n[yellow]stopping[/] once the agents have started (a few seconds), so that "
            "none of Ray's processes is left behind; Ctrl-C again stops at once"
        )

    previous = signal.signal(signal.SIGINT, later)
    try:
        yield got
    finally:
        signal.signal(signal.SIGINT, previous)


def _agents_start_here(config: Any, address: str | None) -> bool:
    """Whether this command will start its own agents on this machine (no cluster address, no
    agents served for the store here)."""
    from agentledger.actors.runtime import served_address

    if address or os.environ.get("RAY_ADDRESS"):
        return False
    return served_address(config.namespace) is None


# Settings the agents apply to every run (a run's own models are in its run.started event).
_AGENT_SETTINGS = ("record_prompts", "context_tokens", "tool_timeout_s", "approval_ttl_s")
_AGENT_SETTINGS += ("policy_file", "notify_command", "notify_webhook", "openai", "extensions")


def _served_differences(mine: Any, served: Any) -> list[str]:
    """'name = served (here: mine)' for each agent setting the served agents run otherwise."""
    differ = []
    for name in _AGENT_SETTINGS:
        theirs, ours = getattr(served, name), getattr(mine, name)
        if theirs != ours:
            if name == "openai":  # a model endpoint's settings, key included: no values
                differ.append("[openai] differs")
            else:
                differ.append(f"{name} = {theirs!r} (here: {ours!r})")
    return differ


def _execute_run(
    goal: str,
    *,
    docs: Path | None,
    workspace: Path | None,
    store_url: str | None,
    address: str | None,
    models: list[str],
    user: str,
    config: Path | None,
    timeout: float | None,
    waiting_ok: bool = False,
    fork: tuple[str, int, str] | None = None,
) -> None:
    """Start a run (or, with ``fork`` = (parent, position, note), a fork of one), make sure
    agents serve it, follow it live, and say how it ended and what to do next."""
    from agentledger.actors.runtime import (
        check_docs,
        follow_run,
        reachable_ray_address,
        start_run,
        validate_goal,
    )
    from agentledger.config import load_settings, runtime_config
    from agentledger.console import progress_line
    from agentledger.fork import append_fork, prepare_fork
    from agentledger.projections import RunStatus

    settings = load_settings(config)
    if fork is None:
        validate_goal(goal)  # before anything slow starts
    # Before the store (a new file), or a fork's event, is made: its form, and a host:port
    # that nothing answers at (Ray would be reached only once the store is open).
    reachable_ray_address(address)
    if docs is not None:
        check_docs(docs)
    url = store_url or settings.store or default_store_url()
    agents_config = runtime_config(settings, url, {})  # their defaults: the settings file's
    # Served agents, or agents on a cluster, read their endpoint's key where they run.
    chosen, given = _models(
        models or [], settings, keys_here=_agents_start_here(agents_config, address)
    )
    if workspace is not None:  # after the models: a refused --model leaves no folder behind
        _check_workspace(workspace, url)
    _refuse_memory_store(url)
    with _store(url, create=fork is None) as store:
        forked = None
        if fork is not None:  # checked (run, position, reaction boundary) before agents start
            parent, position, note = fork
            forked = prepare_fork(
                store, parent, position, by=f"human:{user}", models=given, note=note
            )
        # Appended once agents are there: a fork whose agents could not be reached (a wrong
        # --address) is not left in the log.
        runtime, owned, running = _agents(agents_config, address)
        try:
            fork_at = None
            if forked is not None:
                stream, recorded = append_fork(store, forked)
                fork_at = recorded.position
                err.print(
                    f"fork [bold]{stream}[/] of {parent} at position {position} created; it "
                    f"inherits the parent's first {forked.payload.prefix_version} events "
                    f"(`agentledger log {parent}` shows them), and what follows is its own"
                )
            else:
                stream = start_run(
                    store, goal, user=user, models=chosen, workspace=workspace, docs=docs
                ).stream
                err.print(f"run [bold]{stream}[/] started")
            # A fork works in its own copy of its parent's (made when first needed). Served
            # agents may have been started elsewhere, with another workspace root: theirs.
            root = Path(running.workspace_root) / stream
            err.print(f"[dim]workspace: {workspace.resolve() if workspace else root}[/]")
            if owned:
                err.print(
                    "following it (Ctrl-C stops following and the agents this command "
                    "started; the run waits in the log for agents: `agentledger serve`)\n"
                )
            else:
                err.print("following it (Ctrl-C stops following, not the run)\n")

            def show(event: Any, state: Any) -> None:
                if fork_at is not None and event.version > 1 and event.position == fork_at:
                    return  # inherited: the parent's, said once above
                line = progress_line(event)
                if line is not None:
                    out.print(line)

            try:
                state = follow_run(store, stream, on_event=show, timeout=timeout)
            except TimeoutError:
                goes_on = (
                    "it waits in the log for agents: `agentledger serve`"
                    if owned
                    else "the served agents go on with it"
                )
                err.print(
                    f"\n[yellow]stopped following[/] {stream} after {timeout:g} s, before it "
                    f"ended ({goes_on}); `agentledger status {stream}` shows where it is"
                )
                raise typer.Exit(EXIT_TIMEOUT) from None
        finally:
            if owned:
                runtime.stop()
    out.print()
    out.print(run_state_view_brief(state))
    if state.status is RunStatus.WAITING_FOR_APPROVAL:
        for a in state.pending_approvals.values():
            out.print(
                f"[bold yellow]waiting for approval[/] of {a.action_id}: {escape(a.preview)}\n"
                f"  reasoning: {escape(a.reasoning)}"
            )
        first = next(iter(state.pending_approvals))
        out.print(
            "\nThe run waits in the log until a human decides; nothing runs before, and no "
            "process needs to stay up. To decide:\n"
            f"  [bold]agentledger approve {state.run} {first}[/] [--comment …]\n"
            f"  [bold]agentledger deny {state.run} {first} --reason …[/]\n"
            "The agents continue the run from the log once a decision is in: keep "
            "[bold]agentledger serve[/] running, or start it later."
        )
        if not waiting_ok:
            raise typer.Exit(EXIT_WAITING)
        return
    if state.status is not RunStatus.COMPLETED:
        raise typer.Exit(1)


def _refuse_memory_store(url: str) -> None:
    """Agents run in processes of their own: an in-memory store would be one per process."""
    if url.startswith("memory://"):
        raise ConfigurationError(
            "memory:// is a store of one process; the agents run in processes of their own. "
            "Use a SQLite file (sqlite:///path.db) or PostgreSQL"
        )


def _check_workspace(workspace: Path, store_url: str) -> None:
    """``--workspace`` made (if new) and writable, or a clear error before the run starts."""
    if workspace.exists() and not workspace.is_dir():
        raise ConfigurationError(f"--workspace {workspace}: not a folder")
    from agentledger.events._backends import sqlite_file

    store = sqlite_file(store_url)
    if store is not None and workspace.resolve() in store.resolve().parents:
        # Sandboxed commands may write anything in the workspace: with the log there, they
        # could rewrite it or append an approval no human gave.
        raise ConfigurationError(
            f"--workspace {workspace}: holds the event store {store}, which the agents' "
            "commands could then rewrite; choose a folder that does not contain it (e.g. a "
            "subfolder), or keep the store elsewhere with --store"
        )
    try:
        workspace.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigurationError(
            f"--workspace {workspace}: cannot create it ({exc.strerror or exc}); choose a "
            "folder you can write to"
        ) from None
    if not os.access(workspace, os.W_OK | os.X_OK):
        raise ConfigurationError(f"--workspace {workspace}: not writable by this user")


def run_state_view_brief(state: Any) -> str:
    """The end of a run in a few lines."""
    styles = {
        "completed": "bold green",
        "failed": "bold red",
        "waiting_for_approval": "bold yellow",
    }
    style = styles.get(state.status.value, "white")
    lines = [f"[{style}]{state.status.value}[/] {state.run}: {escape(state.goal)}"]
    if state.outcome:
        lines.append(escape(state.outcome))
    return "\n".join(lines)


@app.command("run")
def run_command(
    goal: Annotated[str, typer.Argument(help="What the run should achieve, in plain words.")],
    docs: Annotated[
        Path | None,
        typer.Option(
            "--docs", help="Document folder the research agent searches.", show_default=False
        ),
    ] = None,
    workspace: Annotated[
        Path | None,
        typer.Option(
            "--workspace",
            help="Folder the execution agent works in. Default: a new folder per run under "
            ".agentledger/workspaces.",
            show_default=False,
        ),
    ] = None,
    model: ModelOption = None,
    user: Annotated[
        str | None,
        typer.Option(
            "--user",
            help="Who starts the run. Default: your OS account (as approve records it).",
            show_default=False,
        ),
    ] = None,
    timeout: Annotated[
        float | None,
        typer.Option(
            "--timeout",
            min=1,
            help="Stop following after this many seconds (exit 4 if the run has not ended).",
            show_default=False,
        ),
    ] = None,
    store_url: StoreOption = None,
    address: AddressOption = None,
    config: ConfigOption = None,
) -> None:
    """Start a run of the agents on GOAL and show its events live.

    Ends when the run completes (exit 0), fails (exit 1) or waits for a human's approval
    (exit 3), and says what to do next; with --timeout, exit 4 if it has not ended by then.
    """
    _run(
        lambda: _execute_run(
            goal,
            docs=docs,
            workspace=workspace,
            store_url=store_url,
            address=address,
            models=model or [],
            user=_principal_name(user),
            config=config,
            timeout=timeout,
        )
    )


def _principal_name(user: str | None) -> str:
    """``user`` as a principal's name; by default the OS account, as ``approve`` takes it
    (a run started with no $USER was human:anonymous, its approval human:root)."""
    from agentledger.control import os_user

    user = user or os_user() or ""
    cleaned = "".join(c if c.isalnum() or c in "_.@-" else "-" for c in user)[:64]
    return cleaned or "anonymous"


@app.command("demo")
def demo_command(
    store_url: StoreOption = None,
    address: AddressOption = None,
    config: ConfigOption = None,
) -> None:
    """Run the built-in scenario offline: five steps, all four agents, one high-risk action.

    It ends (exit 0) with that action waiting for a human's approval, and says how to give it;
    no server, network or model is needed.
    """
    from agentledger.actors.runtime import reachable_ray_address
    from agentledger.demo import DEMO_GOAL, prepare_demo

    def body() -> None:
        reachable_ray_address(address)  # a dead --address: refused before the demo's folders
        docs, workspace = prepare_demo(Path(".agentledger"))
        err.print(
            "[bold]agentledger demo[/]: the offline model is rule-based, not a language model.\n"
            f"goal: {DEMO_GOAL}\ndocs: {docs}\nworkspace: {workspace}\n"
        )
        _execute_run(
            DEMO_GOAL,
            docs=docs,
            workspace=workspace,
            store_url=store_url,
            address=address,
            models=[],
            user="demo",
            config=config,
            timeout=300,
            waiting_ok=True,  # the demo's high-risk action is meant to wait for a human
        )

    _run(body)


@app.command("fork")
def fork_command(
    run: Annotated[str, typer.Argument(help="The run to fork (it is never changed).")],
    at: Annotated[
        int, typer.Option("--at", min=0, help="The parent's global position to fork at.")
    ],
    model: ModelOption = None,
    note: Annotated[str, typer.Option("--note", help="Why this fork, for the audit trail.")] = "",
    user: Annotated[
        str | None,
        typer.Option(
            "--user",
            help="Who forks. Default: your OS account (as approve records it).",
            show_default=False,
        ),
    ] = None,
    timeout: Annotated[
        float | None,
        typer.Option(
            "--timeout",
            min=1,
            help="Stop following after this many seconds (exit 4 if it has not ended).",
        ),
    ] = None,
    store_url: StoreOption = None,
    address: AddressOption = None,
    config: ConfigOption = None,
) -> None:
    """Fork a run at a position and let the agents go on from there, e.g. with another model.

    The fork is one run.forked event that references the parent's events up to --at (read
    through the parent, never copied: instant at any length); the agents react to what has no
    reaction in it yet, in a copy of the parent's workspace as it is now. Exit codes as for
    run (0 completed, 1 failed, 3 waiting, 4 still running at --timeout).
    """
    _run(
        lambda: _execute_run(
            "",
            docs=None,
            workspace=None,
            store_url=store_url,
            address=address,
            models=model or [],
            user=_principal_name(user),
            config=config,
            timeout=timeout,
            fork=(run, at, note),
        )
    )


@app.command("runs")
def runs_command(
    limit: Annotated[int, typer.Option("--limit", "-n", min=1, help="Newest runs to show.")] = 20,
    as_json: Annotated[bool, typer.Option("--json", help="JSON (for scripts).")] = False,
    store_url: StoreOption = None,
) -> None:
    """List runs, newest first, with their status."""
    from agentledger.console import runs_table
    from agentledger.projections import RunStateProjection

    def body() -> None:
        from agentledger.events._backends import no_store_at

        missing = no_store_at(_store_url(store_url))
        if missing is not None and missing[1]:  # no log yet where one may be made: no runs
            if as_json:
                sys.stdout.write("[]\n")
                return
            out.print(
                f"[dim]{escape(missing[0])} yet (nothing was created); start a run with "
                'agentledger run "GOAL" or agentledger demo, or name another with --store[/]'
            )
            return
        with _store(store_url) as store:
            streams = sorted(store.streams("run-"), key=lambda s: s.first_position, reverse=True)
            states = [RunStateProjection().fold(store.read(s.stream)) for s in streams[:limit]]
        if as_json:
            doc = [
                s.model_dump(
                    mode="json",
                    include={
                        "run",
                        "status",
                        "goal",
                        "started_at",
                        "forked_at",
                        "ended_at",
                        "outcome",
                        "events",
                    },
                )
                for s in states
            ]
            sys.stdout.write(json.dumps(doc, indent=2) + "\n")
        elif states:
            out.print(runs_table(states))
        else:
            out.print(f'[dim]no runs in {store.url}; start one with agentledger run "GOAL"[/]')

    _run(body)


@app.command("status")
def status_command(
    run: Annotated[str, typer.Argument(help="The run, e.g. run-20261129-101500-ab12cd.")],
    as_json: JsonOption = False,
    store_url: StoreOption = None,
) -> None:
    """Show a run now: status, tasks, approvals waiting, blackboard, scratchpad.

    ``agentledger state RUN --at N`` shows it as of an earlier position.
    """
    state_command(run, None, as_json, store_url)


# ---------------------------------------------------------------------------- humans

AsOption = Annotated[
    str | None,
    typer.Option(
        "--as",
        help="Who decides (an approver in agentledger.toml; default: your OS user).",
        show_default=False,
    ),
]


def _human(name: str | None, config: Path | None) -> Any:
    from agentledger.config import load_settings
    from agentledger.control import authenticate

    settings = load_settings(config)
    return authenticate(name, settings.approvers, source=settings.source)


@app.command("approvals")
def approvals_command(
    run: Annotated[
        str | None, typer.Argument(help="Only this run. Default: every run.", show_default=False)
    ] = None,
    notes: Annotated[
        int, typer.Option("--notifications", "-n", min=0, help="Latest notifications to show.")
    ] = 10,
    as_json: JsonOption = False,
    store_url: StoreOption = None,
) -> None:
    """The approvals inbox: what waits for a human, with the agent's reasoning beside it.

    Also the latest notifications of medium-risk actions that ran.
    """
    from agentledger.console import approvals_table, notices_table
    from agentledger.control import run_state

    def body() -> None:
        with _store(store_url) as store:
            if run is not None:
                states = [run_state(store, run)[0]]
            else:
                from agentledger.projections import RunStateProjection

                states = [
                    RunStateProjection().fold(store.read(s.stream)) for s in store.streams("run-")
                ]
            sent = [
                e
                for e in store.read_all(types=["notification.sent"])
                if run is None or e.stream == run
            ]
            notices = sent[-notes:] if notes else []
        waiting = [(s.run, a) for s in states for a in s.pending_approvals.values()]
        if as_json:
            doc = [{"run": r, **a.model_dump(mode="json")} for r, a in waiting]
            sys.stdout.write(json.dumps(doc, indent=2) + "\n")
            return
        if notices:
            out.print(notices_table(notices))
        if waiting:
            out.print(approvals_table(waiting))
            out.print(
                "\ndecide with [bold]agentledger approve RUN ACTION[/] or "
                '[bold]agentledger deny RUN ACTION --reason "…"[/]'
            )
        else:
            out.print("[dim]nothing is waiting for approval[/]")

    _run(body)


@app.command("approve")
def approve_command(
    run: Annotated[str, typer.Argument(help="The run.")],
    action: Annotated[str, typer.Argument(help="The action id (see agentledger approvals).")],
    as_: AsOption = None,
    comment: Annotated[str, typer.Option("--comment", help="Why, for the audit trail.")] = "",
    store_url: StoreOption = None,
    config: ConfigOption = None,
) -> None:
    """Approve one high-risk action: it runs (with the agents served) exactly as proposed."""
    _decide(run, action, as_, comment, grant=True, store_url=store_url, config=config)


@app.command("deny")
def deny_command(
    run: Annotated[str, typer.Argument(help="The run.")],
    action: Annotated[str, typer.Argument(help="The action id (see agentledger approvals).")],
    reason: Annotated[
        str, typer.Option("--reason", help="Why not: the coordinator replans the task with it.")
    ],
    as_: AsOption = None,
    store_url: StoreOption = None,
    config: ConfigOption = None,
) -> None:
    """Deny one high-risk action, with the reason: it never runs. The coordinator replans the
    task once, told why, and the same call is never asked again; a plan that finds no other way
    ends the run failed with your reason (the offline planner never finds one)."""
    _decide(run, action, as_, reason, grant=False, store_url=store_url, config=config)


def _decide(
    run: str,
    action: str,
    as_: str | None,
    note: str,
    *,
    grant: bool,
    store_url: str | None,
    config: Path | None,
) -> None:
    from agentledger.control import decide

    def body() -> None:
        human = _human(as_, config)
        with _store(store_url, config=config) as store:
            event = decide(store, run, action, human, grant=grant, note=note)
        verdict = "[green]approved[/]" if grant else "[red]denied[/]"
        out.print(f"{verdict} {action} in {run} as {human.principal} (position {event.position})")
        if not _served_here(store_url, config):
            err.print(
                "[dim]no agents are served for this store on this machine: the run goes on "
                "once `agentledger serve` runs (or any `agentledger run` on this store, "
                "while it lasts)[/]"
            )

    _run(body)


def _served_here(store_url: str | None, config: Path | None) -> bool:
    """Whether ``agentledger serve`` runs this store's agents on this machine."""
    from agentledger.actors.runtime import served_address
    from agentledger.config import load_settings, runtime_config

    url = _store_url(store_url, config)
    return served_address(runtime_config(load_settings(config), url, {}).namespace) is not None


def _steer_command(what: str, help_text: str) -> None:
    def command(
        run: Annotated[str, typer.Argument(help="The run.")],
        reason: Annotated[str, typer.Option("--reason", help="Why, for the audit trail.")] = "",
        as_: AsOption = None,
        store_url: StoreOption = None,
        config: ConfigOption = None,
    ) -> None:
        from agentledger.control import steer

        def body() -> None:
            human = _human(as_, config)
            with _store(store_url, config=config) as store:
                event = steer(store, run, human, what, reason)
            out.print(
                f"{event.type} for {run} (position {event.position}); agents honour it at "
                "their next step"
            )

        _run(body)

    command.__doc__ = help_text
    app.command(what)(command)


_steer_command("pause", "Pause a run: agents finish the step they are in and start no other.")
_steer_command("resume", "Resume a paused run where it stopped.")
_steer_command("cancel", "Cancel a run: nothing more happens in it.")


@app.command("replay")
def replay_command(
    run: Annotated[str, typer.Argument(help="The run.")],
    to: Annotated[
        int | None,
        typer.Option("--to", min=0, help="Replay up to this global position (default: the end)."),
    ] = None,
    to_event: Annotated[
        str | None, typer.Option("--to-event", help="Replay up to this event id (a UUID).")
    ] = None,
    step: Annotated[
        bool,
        typer.Option(
            "--step",
            help="Walk forward event by event (Enter: next; q and Enter, or Ctrl-D: stop).",
        ),
    ] = False,
    as_json: JsonOption = False,
    store_url: StoreOption = None,
) -> None:
    """Rebuild a run as of a position from its log alone, with its last decisions and why.

    No model or tool is called: status, tasks, approvals waiting, blackboard, scratchpad and the
    last decisions with their reasoning, as of --to/--to-event; --step walks event by event.
    """
    from agentledger.blackboard import BlackboardProjection
    from agentledger.console import decisions_table
    from agentledger.projections import RunStateProjection
    from agentledger.projections.memory import ScratchpadProjection
    from agentledger.projections.runner import check_position, stream_as_of

    def body() -> None:
        if to is not None and to_event is not None:
            raise AgentLedgerError("give --to or --to-event, not both")
        with _store(store_url) as store:
            everything = stream_as_of(store, run)
            position = to
            if to_event is not None:
                # By place in the run, not position: a fork's inherited events share one.
                index = next(
                    (i for i, e in enumerate(everything) if str(e.id) == to_event.strip().lower()),
                    None,
                )
                if index is None:
                    raise NotFound(
                        f"run {run} has no event {to_event!r}; `agentledger log {run}` "
                        "shows the ids (--json)"
                    )
                events = everything[: index + 1]
            elif position is None:
                events = everything
            else:  # the stream read once, not again for the position
                check_position(store, position)
                events = [e for e in everything if (e.position or 0) <= position]
        if not events:
            first = everything[0].position
            raise AgentLedgerError(
                f"run {run} begins at position {first}; --to {position} is before it"
            )
        fold = RunStateProjection()
        if step:
            state = fold.initial()
            interactive = sys.stdin.isatty()
            if interactive:
                err.print("[dim]Enter: the next event; q and Enter, or Ctrl-D: stop[/]")
            for e in events:
                state = fold.apply(state, e)
                out.print(f"{event_line(e)}  [dim]→ {state.status.value}[/]")
                if not interactive:
                    continue
                try:
                    answer = input()
                except EOFError:  # Ctrl-D: a way to stop, not an error (click's "Aborted!")
                    err.print(f"[dim]stopped at v{e.version} (position {e.position})[/]")
                    break
                if answer.strip().lower() == "q":
                    break
            return
        state = fold.fold(events)
        board = BlackboardProjection().fold(events)
        pad = ScratchpadProjection().fold(events)
        at = events[-1].position
        if as_json:
            doc = {
                "position": at,
                "run": state.model_dump(mode="json"),
                "blackboard": board.model_dump(mode="json"),
                "scratchpad": pad.model_dump(mode="json"),
                "decisions": [
                    json.loads(event_json(e))
                    for e in events
                    if e.type.startswith(("task.", "action.proposed", "approval.", "run."))
                ][-20:],
            }
            sys.stdout.write(json.dumps(doc, indent=2) + "\n")
            return
        out.print(run_state_view(state, board, pad, at))
        out.print(decisions_table(events))
        summaries = {e.payload.agent: e for e in events if e.type == "context.summarized"}
        by_id = {e.id: e for e in events}
        for agent, summary in sorted(summaries.items()):
            # By the run's versions: a fork's inherited events all share one position.
            p: Any = summary.payload
            end = by_id.get(p.to_event) if p.to_event is not None else None
            upto = f"event {end.version}" if end is not None else f"position {p.to_position}"
            out.print(
                f"[bold]{agent}[/]'s memory: its history up to {upto} summarized in event "
                f"{summary.version} (position {summary.position})"
            )
        out.print(
            f"[dim]each agent's full context as of here: agentledger context {run} --agent ROLE "
            f"--at {at}[/]"
        )

    _run(body)


@app.command("verify")
def verify_command(
    run: Annotated[str, typer.Argument(help="The run to re-execute.")],
    as_json: JsonOption = False,
    store_url: StoreOption = None,
    config: ConfigOption = None,
) -> None:
    """Re-execute a run's agents against its log and report the first event that differs.

    The recorded model answers and tool results are fed back (nothing is called or run) and
    every emitted event is compared with the recorded one. Exit 0: every reaction matches;
    1: the first divergence, with both versions. The settings that shape prompts (e.g. the
    context budget) come from agentledger.toml.
    """
    from datetime import timedelta

    from agentledger.actors.policy import RiskPolicy
    from agentledger.actors.verify import verify_run
    from agentledger.config import extensions_of, load_settings

    def body() -> None:
        settings = load_settings(config)
        rt = settings.runtime
        policy = RiskPolicy.load(Path(rt.policy)) if rt.policy else RiskPolicy()
        with _store(store_url or settings.store) as store:
            report = verify_run(
                store,
                run,
                context_tokens=rt.context_tokens,
                approval_ttl=timedelta(seconds=rt.approval_ttl_s),
                record_prompts=rt.record_prompts,
                policy=policy,
                extensions=extensions_of(settings),
            )
        d = report.divergence
        if as_json:
            doc = {
                "run": run,
                "ok": report.ok,
                "reactions": report.reactions,
                "events": report.events,
                "notes": report.notes,
                "divergence": None if d is None else d.__dict__,
            }
            sys.stdout.write(json.dumps(doc, indent=2, default=str) + "\n")
        elif d is None:
            out.print(
                f"[green]verified[/] {run}: {report.reactions} reactions, {report.events} events "
                "re-executed and identical"
            )
            for note in report.notes:
                out.print(f"[dim]{note}[/]")
        else:
            out.print(
                f"[bold red]diverges[/] at position {d.position} ({d.agent}, reacting to the "
                f"event at position {d.cause_position}): {escape(d.message)}"
            )
            out.print(f"recorded:     {escape(json.dumps(d.expected, ensure_ascii=False))}")
            out.print(f"re-executed:  {escape(json.dumps(d.actual, ensure_ascii=False))}")
        if d is not None:
            raise typer.Exit(1)

    _run(body)


@app.command("diff")
def diff_command(
    left: Annotated[str, typer.Argument(help="A run, e.g. the parent.")],
    right: Annotated[str, typer.Argument(help="The run to compare it with, e.g. a fork.")],
    after: Annotated[
        int, typer.Option("--after", "-n", min=0, help="Events to show on each side after it.")
    ] = 5,
    as_json: JsonOption = False,
    store_url: StoreOption = None,
) -> None:
    """The first event at which two runs decided differently, with both versions.

    Compared as decisions: derived ids, times and prompts aside. A fork and its parent (or two
    forks of one run) are compared after the history they share. Exit 0: the same; 1: they
    differ.
    """
    from agentledger.projections.diff import first_divergence
    from agentledger.projections.runner import run_events

    def body() -> None:
        with _store(store_url) as store:
            a, b = run_events(store, left), run_events(store, right)
        found = first_divergence(a, b)

        def where(event: Any) -> str:
            # A fork's inherited events all carry its run.forked's position: the version says
            # which one.
            return f"position {event.position}, version {event.version}" if event else "end"

        if as_json:
            doc: dict[str, Any] = {"same": found is None}
            if found is not None:
                doc |= {
                    "index": found.index,
                    "left": {
                        "index": found.left_index,
                        "position": found.left and found.left.position,
                        "version": found.left and found.left.version,
                        **(found.left_view or {}),
                    },
                    "right": {
                        "index": found.right_index,
                        "position": found.right and found.right.position,
                        "version": found.right and found.right.version,
                        **(found.right_view or {}),
                    },
                }
            sys.stdout.write(json.dumps(doc, indent=2) + "\n")
        elif found is None:
            out.print(f"[green]same[/]: {left} and {right} made the same {len(a)} decisions")
        else:
            out.print(
                f"the runs part after {found.index} events in common "
                f"({left} {where(found.left)}; {right} {where(found.right)}):"
            )
            for run, events, start, view in (
                (left, a, found.left_index, found.left_view),
                (right, b, found.right_index, found.right_view),
            ):
                shown = events[start : start + 1 + after]
                out.print(
                    f"\n[bold]{run}[/]: "
                    + (escape(json.dumps(view, ensure_ascii=False)) if view else "(no more events)")
                )
                if shown:
                    out.print(events_table(shown, title=None, show_stream=False))
        if found is not None:
            raise typer.Exit(1)

    _run(body)


@app.command("serve")
def serve_command(
    store_url: StoreOption = None,
    address: AddressOption = None,
    config: ConfigOption = None,
    model: ModelOption = None,
) -> None:
    """Keep the agents running as a service: runs started from any shell are picked up.

    The agents are named Ray actors in the configured namespace; Ctrl-C stops them (their
    positions are kept, so nothing is handled twice or missed on the next start).
    """
    from agentledger.actors.runtime import (
        Runtime,
        ensure_ray,
        reachable_ray_address,
        served_address,
        serving_record,
    )
    from agentledger.config import load_settings, runtime_config
    from agentledger.console import agents_table

    def body() -> None:
        settings = load_settings(config)
        chosen, _ = _models(model or [], settings)
        url = store_url or settings.store or default_store_url()
        _refuse_memory_store(url)
        reachable_ray_address(address)  # a dead --address: refused before a store is made
        # Opened first: fails now, clearly, if the store cannot be opened.
        with _store(url, create=True) as store:
            cfg = runtime_config(settings, url, chosen)
            running = served_address(cfg.namespace)
            if running is not None:
                raise ConfigurationError(
                    f"this store's agents are already served on this machine (Ray at "
                    f"{running}, namespace {cfg.namespace}): commands use them; stop that "
                    "`agentledger serve` (Ctrl-C) before starting another"
                )
            with err.status("connecting to Ray…"):
                ensure_ray(address, namespace=cfg.namespace)
            runtime = Runtime(cfg)
            since = store.head_position()  # what the agents do from their start is shown
            with err.status("starting the agents…"):
                runtime.start(detached=True)
            # SIGTERM (a service manager's stop) stops the agents as Ctrl-C does.
            signal.signal(signal.SIGTERM, signal.default_int_handler)
            with serving_record(cfg.namespace, address) as ray_address:
                err.print(
                    f"serving {len(runtime.names())} agents and the approval-expiry watcher "
                    f"on {store.url} (Ray at {ray_address}, namespace {cfg.namespace}); "
                    "Ctrl-C stops them"
                )
                try:
                    _serve_activity(store, runtime, agents_table, since)
                except KeyboardInterrupt:
                    err.print("stopping the agents…")
                    runtime.stop()

    _run(body)


# What `serve` prints as it happens: runs starting and ending, and what waits for a human.
_ACTIVITY = ("run.started", "run.forked", "run.completed", "run.failed", "run.cancelled")
_ACTIVITY += ("run.paused", "run.resumed", "approval.requested", "approval.expired")


def _serve_activity(store: EventStore, runtime: Any, agents_table: Any, since: int) -> None:
    """Print each run's start, end and approval request appended after position ``since`` (as
    the agents take up a run waiting for them, too), and the agents' table now and every ten
    minutes (and when one of them is down), until Ctrl-C."""
    import time

    from agentledger.console import progress_line

    out.print(agents_table(runtime.status()))
    shown = checked = time.monotonic()
    healthy = True
    with store.subscribe(since, list(_ACTIVITY)) as subscription:
        while True:
            for event in subscription.poll(timeout=5.0):
                line = progress_line(event)
                if line is not None:
                    out.print(f"{event.stream}  {line.lstrip()}")
            now = time.monotonic()
            if now - checked >= 30:  # the agents' health, twice a minute
                status, checked = runtime.status(), now
                alive = all(r.get("alive") for r in status)
                if alive != healthy or now - shown >= 600:
                    out.print(agents_table(status))
                    shown = now
                healthy = alive


# ---------------------------------------------------------------------------- audit

audit_app = typer.Typer(
    help="Tamper-evident audit exports (signed JSON Lines) and human-readable audit reports.",
    no_args_is_help=True,
)
app.add_typer(audit_app, name="audit")


@audit_app.command("export")
def audit_export_command(
    run: Annotated[
        str,
        typer.Argument(help=f"The run's stream ({RUN_EXAMPLE})."),
    ],
    out_file: Annotated[Path, typer.Option("--out", help="The export file to write (JSON Lines).")],
    key: Annotated[
        Path | None,
        typer.Option("--key", help="ed25519 private key (PEM) to sign the manifest with."),
    ] = None,
    user: Annotated[
        str | None,
        typer.Option(
            "--as",
            help="Who exports (recorded in the manifest). Default: your OS account.",
            show_default=False,
        ),
    ] = None,
    force: Annotated[
        bool,
        typer.Option(
            "--force",
            help="Replace the --out file if it exists (never the event store's files or the "
            "--key file).",
        ),
    ] = False,
    store_url: StoreOption = None,
) -> None:
    """Export a run's events, with a manifest (count, head hash, digest, signature) at the end.

    An existing --out file is refused unless --force is given.
    """
    from agentledger.events.audit import export_run

    def body() -> None:
        with _store(store_url) as store:
            manifest = export_run(
                store,
                run,
                out_file,
                signing_key=key,
                exporter=f"human:{_principal_name(user)}",
                overwrite=force,
            )
        signed = "signed" if manifest.signature else "unsigned"
        out.print(
            f"exported {manifest.count} events of {run} to {out_file} ({signed}; "
            f"head {manifest.head_hash[:12]}…, digest {manifest.digest[:12]}…)"
        )

    _run(body)


@audit_app.command("verify")
def audit_verify_command(
    file: Annotated[Path, typer.Argument(help="An export written by `agentledger audit export`.")],
    pubkey: Annotated[
        Path | None,
        typer.Option("--pubkey", help="ed25519 public key (PEM): the manifest must verify."),
    ] = None,
) -> None:
    """Check an export: every event's hash and chain, the manifest, and the signature.

    Exit 0 when intact; 1 with the first problem and its line number.
    """
    from agentledger.events.audit import verify_export

    def body() -> None:
        report = verify_export(file, public_key=pubkey)
        if report.ok:
            out.print(f"[green]{escape(str(report))}[/]")
            return
        label = "NOT AN EXPORT" if report.not_an_export else "TAMPERED"
        out.print(f"[bold red]{label}[/]: {escape(str(report))}")
        raise typer.Exit(1)

    _run(body)


@audit_app.command("report")
def audit_report_command(
    run: Annotated[
        str,
        typer.Argument(help=f"The run's stream ({RUN_EXAMPLE})."),
    ],
    out_file: Annotated[
        Path | None, typer.Option("--out", help="Write the Markdown here instead of stdout.")
    ] = None,
    force: Annotated[
        bool,
        typer.Option(
            "--force", help="Replace the --out file if it exists (never the event store's files)."
        ),
    ] = False,
    store_url: StoreOption = None,
) -> None:
    """A run as Markdown for a reviewer: the plan, each action and its approval, the outcome.

    An existing --out file is refused unless --force is given.
    """
    from agentledger.events.audit import write_text
    from agentledger.projections.audit import audit_report
    from agentledger.projections.runner import run_events

    def body() -> None:
        with _store(store_url) as store:
            events = run_events(store, run)
            url = store.url
        text = audit_report(events)
        if out_file is None:
            # At a terminal its control characters are shown, not obeyed; a file gets them.
            sys.stdout.write(printable(text) if sys.stdout.isatty() else text)
            return
        write_text(out_file, text, overwrite=force, store_url=url)
        out.print(f"wrote the audit report of {run} to {out_file}")

    _run(body)


@audit_app.command("keygen")
def audit_keygen_command(
    private: Annotated[Path, typer.Option("--private", help="Where to write the private key.")],
    public: Annotated[Path, typer.Option("--public", help="Where to write the public key.")],
) -> None:
    """Make an ed25519 key pair (PEM) for signing exports; keep the private one secret."""
    from agentledger.events.audit import generate_keypair

    def body() -> None:
        generate_keypair(private, public)
        out.print(f"wrote the private key {private} (mode 600) and the public key {public}")

    _run(body)


def main(argv: list[str] | None = None) -> Any:
    """Entry point of the `agentledger` console script."""
    args = sys.argv[1:] if argv is None else argv
    _refuse_undecodable(args)
    return app(args=args)


def _refuse_undecodable(args: list[str]) -> None:
    """Exit 2 (a usage error, as click's are) on an argument that is not valid UTF-8, before
    anything runs: Python hands its bytes on as lone surrogates, which each later step (an
    event's JSON, SQLite, Ray) would refuse with a traceback of its own, some after writing."""
    for number, arg in enumerate(args, 1):
        try:
            arg.encode()
        except UnicodeEncodeError:
            # The text as typed, the undecodable bytes as \xNN; a long one around the first.
            bad = next(i for i, c in enumerate(arg) if "\ud800" <= c <= "\udfff")
            start = max(0, bad - 30)
            part = arg[start : start + 60]
            try:
                raw = part.encode(errors="surrogateescape")
            except UnicodeEncodeError:  # surrogates that stand for no byte (from Python)
                raw = part.encode(errors="backslashreplace")
            shown = raw.decode(errors="backslashreplace")
            shown = ("…" if start else "") + shown + ("…" if start + 60 < len(arg) else "")
            previous = args[number - 2] if number > 1 else ""
            after = f", after {previous}" if previous.startswith("-") else ""
            err.print(
                f"[bold red]error:[/] argument {number} ({escape(shown)}{escape(after)}) is not "
                "valid UTF-8; give it in UTF-8 (e.g. convert it with iconv), or check that the "
                "terminal's encoding (its locale, LANG) is UTF-8"
            )
            raise SystemExit(2) from None


if __name__ == "__main__":
    main()
