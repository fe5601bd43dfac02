"""Tools agents may call: typed arguments, a declared risk level, and a registry that runs them.

Every path argument goes through ``Workspace.resolve``; every command, git included, runs in the
workspace's sandbox (git reads config, hooks and filter drivers from the workspace, which sandboxed
code can write, so running git outside the sandbox would be a way out). Results are JSON values,
so the runtime can record them as events and a replay never runs a tool again (DESIGN rule 2).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Annotated, Any, ClassVar, Generic, TypeVar

from pydantic import BaseModel, ConfigDict, Field, JsonValue, ValidationError

from agentledger.actors.sandbox import (
    CommandResult,
    Limits,
    SandboxViolation,
    ToolError,
    ToolTimeout,
    Workspace,
)
from agentledger.events import RiskLevel
from agentledger.events.audit import new_file_mode

__all__ = [
    "InvalidToolArguments",
    "SandboxViolation",
    "Tool",
    "ToolArguments",
    "ToolContext",
    "ToolError",
    "ToolRegistry",
    "ToolTimeout",
    "UnknownTool",
    "action_hash",
    "default_registry",
]

_log = logging.getLogger(__name__)

MAX_READ_BYTES = 1_000_000
MAX_LISTED_FILES = 10_000
MAX_COMMAND_TIMEOUT_S = 600.0
MAX_SNIPPET_CHARS = 300
# A trailer in each commit message: a retried git_commit (at-least-once delivery) finds the commit
# it already made instead of making a second one (DESIGN rule 6).
IDEMPOTENCY_TRAILER = "Agentledger-Idempotency-Key"
GIT_USER_NAME = "agentledger"
GIT_USER_EMAIL = "agentledger@localhost"
_TEXT_SUFFIXES = frozenset(
    {".md", ".markdown", ".txt", ".rst", ".adoc", ".py", ".toml", ".yaml", ".yml", ".json", ".cfg",
     ".ini", ".html", ".csv", ".sh", ".js", ".ts", ".sql"}
)  # fmt: skip
_SKIPPED_DIRS = frozenset({"__pycache__", "node_modules"})
_WORD = re.compile(r"\w+")


class InvalidToolArguments(ToolError):
    """Arguments did not match a tool's argument model; the message names every bad field."""

    def __init__(self, tool: str, problems: Sequence[tuple[str, str]]) -> None:
        self.tool = tool
        self.problems = list(problems)  # (field, message) pairs
        details = "; ".join(
            f"argument {field!r}: {msg}" if field else f"arguments: {msg}"
            for field, msg in problems
        )
        super().__init__(f"{tool}: {details}")


class UnknownTool(ToolError):
    """No tool of that name is registered."""


@dataclass(frozen=True)
class ToolContext:
    """What a tool call may use besides its arguments."""

    workspace: Workspace
    docs: Path | None
    idempotency_key: str
    timeout_s: float = 30.0


class ToolArguments(BaseModel):
    """Base of every tool's arguments: immutable, and unknown fields are errors, not ignored."""

    model_config = ConfigDict(frozen=True, extra="forbid")


ArgsT = TypeVar("ArgsT", bound=BaseModel)


class Tool(ABC, Generic[ArgsT]):
    """One tool: its name, description, risk, idempotence, argument model and ``run``."""

    name: ClassVar[str]
    description: ClassVar[str]
    risk: ClassVar[RiskLevel]
    idempotent: ClassVar[bool]
    arguments: ClassVar[type[BaseModel]]

    @abstractmethod
    def run(self, args: ArgsT, ctx: ToolContext) -> JsonValue:
        """Do the work and return a JSON value; raise a ToolError subclass on failure."""


def action_hash(run: str, action_id: str, tool: str, arguments: Mapping[str, JsonValue]) -> str:
    """SHA-256 of the canonical JSON of one action: what an approval is bound to."""
    canonical = json.dumps(
        {"run": run, "action_id": action_id, "tool": tool, "arguments": arguments},
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
        allow_nan=False,  # NaN has no canonical JSON form
    )
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


class ToolRegistry:
    """The tools an agent may call, by name."""

    def __init__(self) -> None:
        self._tools: dict[str, Tool[Any]] = {}

    def register(self, tool: Tool[Any]) -> None:
        """Add a tool; checks its declaration now rather than at its first call."""
        owner = type(tool).__name__
        for attribute in ("name", "description", "risk", "idempotent", "arguments"):
            if not hasattr(tool, attribute):
                raise ToolError(f"tool class {owner} does not declare {attribute!r}")
        if not re.fullmatch(r"[a-z][a-z0-9_]*", tool.name):
            raise ToolError(f"tool class {owner}: name {tool.name!r} must be snake_case")
        if not isinstance(tool.risk, RiskLevel):
            raise ToolError(f"tool {tool.name}: risk must be a RiskLevel, got {tool.risk!r}")
        config = tool.arguments.model_config
        if config.get("extra") != "forbid" or not config.get("frozen"):
            raise ToolError(
                f"tool {tool.name}: its arguments model {tool.arguments.__name__} must be frozen "
                "and forbid extra fields; derive it from ToolArguments"
            )
        if tool.name in self._tools:
            holder = type(self._tools[tool.name]).__name__
            raise ToolError(f"tool {tool.name!r} is already registered (by {holder})")
        self._tools[tool.name] = tool

    def get(self, name: str) -> Tool[Any]:
        """The tool called name, or UnknownTool listing the known names."""
        try:
            return self._tools[name]
        except KeyError:
            raise UnknownTool(
                f"unknown tool {name!r}; known tools: {', '.join(self.names()) or 'none'}"
            ) from None

    def __contains__(self, name: object) -> bool:
        return name in self._tools

    def names(self) -> list[str]:
        """The registered tool names, sorted."""
        return sorted(self._tools)

    def validate(self, name: str, arguments: Mapping[str, Any]) -> BaseModel:
        """The tool's argument model built from arguments, or InvalidToolArguments."""
        tool = self.get(name)
        try:
            return tool.arguments.model_validate(arguments)
        except ValidationError as exc:
            problems = [(_field_name(err["loc"]), err["msg"]) for err in exc.errors()]
            raise InvalidToolArguments(name, problems) from None

    def describe(self) -> str:
        """A compact listing of the tools and their arguments, for model prompts."""
        lines: list[str] = []
        for name in self.names():
            tool = self._tools[name]
            kind = "idempotent" if tool.idempotent else "not idempotent"
            lines.append(f"- {name} (risk: {tool.risk.value}, {kind}): {tool.description}")
            schema = tool.arguments.model_json_schema()
            required = set(schema.get("required", []))
            for arg, spec in schema.get("properties", {}).items():
                parts = [_schema_type(spec)]
                if arg in required:
                    parts.append("required")
                elif "default" in spec:
                    parts.append(f"default {json.dumps(spec['default'])}")
                else:
                    parts.append("optional")
                text = f"    {arg}: {', '.join(parts)}"
                if spec.get("description"):
                    text += f" - {spec['description']}"
                lines.append(text)
            if not schema.get("properties"):
                lines.append("    (no arguments)")
        return "\n".join(lines)

    def execute(self, name: str, arguments: Mapping[str, Any], ctx: ToolContext) -> JsonValue:
        """Validate the arguments, run the tool and return its JSON result."""
        tool = self.get(name)
        args = self.validate(name, arguments)
        try:
            result = _recordable(tool.run(args, ctx))
            json.dumps(result, allow_nan=False)  # it will be recorded in an event
        except ToolError as exc:
            # Every message starts with the tool name, whoever raised it (e.g. Workspace.resolve).
            if exc.args:
                message = _text(str(exc.args[0]))
                if not message.startswith(f"{name}:"):
                    message = f"{name}: {message}"
                exc.args = (message, *exc.args[1:])
            raise
        except OSError as exc:
            # The file system refused (a name too long, a full disk, a file where a folder is
            # needed): the reason is the answer, not a bug.
            where = _os_error_path(exc, ctx.workspace)
            raise ToolError(
                _text(
                    f"{name}: {exc.strerror or exc}{where}; the call may have changed the "
                    "workspace in part, so check it before retrying"
                )
            ) from exc
        except Exception as exc:
            _log.warning("tool %s failed unexpectedly", name, exc_info=True)
            raise ToolError(
                _text(
                    f"{name}: unexpected {type(exc).__name__}: {exc} (a bug in the tool; the "
                    "call had no clear outcome, so check the workspace before retrying)"
                )
            ) from exc
        return result


_SURROGATE = re.compile("[\ud800-\udfff]")


def _recordable(value: JsonValue) -> JsonValue:
    """value with every lone surrogate replaced by U+FFFD. Python hands a file name that is
    not UTF-8 over with surrogates in it (os.walk, OSError.filename), and an event holding one
    cannot be encoded, so the whole turn's events would be lost."""
    if isinstance(value, str):
        return _text(value)
    if isinstance(value, list):
        return [_recordable(item) for item in value]
    if isinstance(value, dict):
        return {_text(key): _recordable(item) for key, item in value.items()}
    return value


def _text(text: str) -> str:
    """text with every lone surrogate replaced by U+FFFD (see ``_recordable``)."""
    return _SURROGATE.sub("\ufffd", text)


def _os_error_path(exc: OSError, workspace: Workspace) -> str:
    """`` (at 'a/b')``: the file an OSError names, relative to the workspace when inside it."""
    if not exc.filename:
        return ""
    path = Path(os.fsdecode(exc.filename))
    if path.is_relative_to(workspace.root):
        return f" (at {path.relative_to(workspace.root).as_posix()!r})"
    return f" (at {str(path)!r})"


def _field_name(loc: tuple[int | str, ...]) -> str:
    """A pydantic error location as one field name: ('paths', 0) -> 'paths[0]'."""
    name = ""
    for part in loc:
        name += f"[{part}]" if isinstance(part, int) else (f".{part}" if name else str(part))
    return name


def _schema_type(spec: Mapping[str, Any]) -> str:
    """A short type name for one JSON-schema property."""
    if "anyOf" in spec:
        return " | ".join(_schema_type(option) for option in spec["anyOf"])
    kind = str(spec.get("type", "any"))
    if kind == "array":
        return f"array of {_schema_type(spec.get('items', {}))}"
    return kind


def _relative(ctx: ToolContext, path: Path) -> str:
    """A resolved workspace path as the relative POSIX path tools report."""
    relative = path.relative_to(ctx.workspace.root).as_posix()
    return relative if relative else "."


def _result_json(result: CommandResult) -> dict[str, JsonValue]:
    """The JSON shape of a finished command."""
    return {
        "exit_code": result.exit_code,
        "stdout": result.stdout,
        "stderr": result.stderr,
        "duration_ms": result.duration_ms,
    }


# ---------------------------------------------------------------- files


PathArg = Annotated[
    str, Field(min_length=1, max_length=4096, description="relative to the workspace")
]


class ReadFileArgs(ToolArguments):
    path: PathArg


class ReadFile(Tool[ReadFileArgs]):
    """Read a UTF-8 text file from the workspace."""

    name = "read_file"
    description = "Read a UTF-8 text file (at most 1 MB) from the workspace."
    risk = RiskLevel.LOW
    idempotent = True
    arguments = ReadFileArgs

    def run(self, args: ReadFileArgs, ctx: ToolContext) -> JsonValue:
        """Return {"path", "content"}."""
        path = ctx.workspace.resolve(args.path)
        if not path.exists():
            raise ToolError(f"no file {args.path!r} in the workspace; list_files shows what exists")
        if not path.is_file():
            raise ToolError(f"{args.path!r} is not a regular file; list_files shows its contents")
        with path.open("rb") as handle:
            # Read one byte past the limit rather than trust a size that may change meanwhile.
            data = handle.read(MAX_READ_BYTES + 1)
        size = max(len(data), path.stat().st_size)
        if size > MAX_READ_BYTES:
            raise ToolError(
                f"{args.path!r} is {size} bytes, over the {MAX_READ_BYTES}-byte limit; read a part "
                "of it with run_shell (e.g. head -c 100000, or sed -n '1,200p')"
            )
        try:
            content = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ToolError(
                f"{args.path!r} is not UTF-8 text (byte {exc.start}); inspect it with run_shell "
                "(e.g. file or xxd)"
            ) from None
        return {"path": _relative(ctx, path), "content": content}


class ListFilesArgs(ToolArguments):
    path: PathArg = "."


class ListFiles(Tool[ListFilesArgs]):
    """List the files under a workspace directory."""

    name = "list_files"
    description = "List files under a workspace directory, recursively, as sorted relative paths."
    risk = RiskLevel.LOW
    idempotent = True
    arguments = ListFilesArgs

    def run(self, args: ListFilesArgs, ctx: ToolContext) -> JsonValue:
        """Return sorted paths relative to the workspace root, skipping .git."""
        start = ctx.workspace.resolve(args.path)
        if not start.exists():
            raise ToolError(f"no file or directory {args.path!r} in the workspace")
        if not start.is_dir():
            return [_relative(ctx, start)]
        found: list[str] = []
        # Symlinked directories are not followed: they may lead outside the workspace.
        for directory, subdirs, files in os.walk(start):
            subdirs[:] = [d for d in subdirs if d != ".git"]
            for file in files:
                found.append(_relative(ctx, Path(directory, file)))
            for sub in subdirs:
                if Path(directory, sub).is_symlink():
                    found.append(_relative(ctx, Path(directory, sub)))
            if len(found) > MAX_LISTED_FILES:
                raise ToolError(
                    f"{args.path!r} holds more than {MAX_LISTED_FILES} files; list a "
                    "subdirectory instead"
                )
        listing: list[JsonValue] = [*sorted(found)]
        return listing


class WriteFileArgs(ToolArguments):
    path: PathArg
    content: Annotated[str, Field(max_length=10_000_000)]


class WriteFile(Tool[WriteFileArgs]):
    """Create or replace a text file in the workspace."""

    name = "write_file"
    description = "Create or replace a UTF-8 text file in the workspace (parent folders are made)."
    risk = RiskLevel.MEDIUM
    idempotent = True
    arguments = WriteFileArgs

    def run(self, args: WriteFileArgs, ctx: ToolContext) -> JsonValue:
        """Return {"path", "bytes"}."""
        path = ctx.workspace.resolve(args.path)
        if path == ctx.workspace.root or path.is_dir():
            raise ToolError(f"{args.path!r} is a directory; give a file path")
        nearest = next(parent for parent in path.parents if parent.exists())  # root exists
        if not nearest.is_dir():
            raise ToolError(
                f"{args.path!r}: {_relative(ctx, nearest)!r} is a file, not a folder; choose "
                "another path or delete that file first"
            )
        # resolve() returned the real path, so every missing parent lies inside the workspace.
        path.parent.mkdir(parents=True, exist_ok=True)
        data = args.content.encode("utf-8")
        # Write then rename, so a crash leaves the old file or the new one, never half of one.
        # A short fixed name: one derived from the file's could pass the 255-byte name limit.
        fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=".agentledger-", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
            # mkstemp makes the file private: give it the mode of the file it replaces, or
            # the one a new file gets here.
            os.chmod(temporary, path.stat().st_mode & 0o777 if path.exists() else new_file_mode())
            os.replace(temporary, path)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
        return {"path": _relative(ctx, path), "bytes": len(data)}


class DeleteFileArgs(ToolArguments):
    path: PathArg


class DeleteFile(Tool[DeleteFileArgs]):
    """Delete a file from the workspace."""

    name = "delete_file"
    description = (
        "Delete one file from the workspace; deleting a missing file reports deleted=false."
    )
    risk = RiskLevel.HIGH
    idempotent = True
    arguments = DeleteFileArgs

    def run(self, args: DeleteFileArgs, ctx: ToolContext) -> JsonValue:
        """Return {"path", "deleted"}."""
        resolved = ctx.workspace.resolve(args.path)  # refuses links that lead outside
        relative = PurePosixPath(args.path)
        if relative.name in ("", ".", ".."):
            raise ToolError(f"{args.path!r} is not a file path")
        # Delete the name itself, so a symlink inside the workspace loses the link, not its target.
        parent = ctx.workspace.resolve(str(relative.parent))
        target = parent / relative.name
        if target.is_symlink():
            target.unlink()
            return {"path": _relative(ctx, target), "deleted": True}
        if resolved.is_dir():
            raise ToolError(f"{args.path!r} is a directory; delete_file removes files only")
        if not resolved.exists():
            return {"path": _relative(ctx, resolved), "deleted": False}
        resolved.unlink()
        return {"path": _relative(ctx, resolved), "deleted": True}


# ---------------------------------------------------------------- commands


Timeout = Annotated[
    float, Field(gt=0, le=MAX_COMMAND_TIMEOUT_S, description="seconds, at most 600")
]


def _run_command(
    tool: str, ctx: ToolContext, argv: list[str], timeout_s: float, stdin: str | None = None
) -> JsonValue:
    """Run argv in the sandbox; a non-zero exit is a result, a timeout a ToolTimeout."""
    # The CPU limit must not end a command earlier than its own timeout allows.
    limits = Limits(cpu_seconds=max(Limits().cpu_seconds, math.ceil(timeout_s)))
    try:
        result = ctx.workspace.run(argv, timeout_s=timeout_s, stdin=stdin, limits=limits)
    except ToolTimeout as exc:
        raise ToolTimeout(
            f"{tool}: {exc} (timeout_s may be up to {MAX_COMMAND_TIMEOUT_S:g})", exc.result
        ) from None
    return _result_json(result)


class RunPythonArgs(ToolArguments):
    code: Annotated[str, Field(min_length=1, max_length=1_000_000)]
    timeout_s: Timeout = 30.0


class RunPython(Tool[RunPythonArgs]):
    """Run Python code in the sandbox."""

    name = "run_python"
    description = (
        "Run Python 3 code in the workspace's sandbox (cwd is the workspace); "
        "returns exit_code, stdout, stderr and duration_ms."
    )
    risk = RiskLevel.MEDIUM
    idempotent = False
    arguments = RunPythonArgs

    def run(self, args: RunPythonArgs, ctx: ToolContext) -> JsonValue:
        """Return {"exit_code", "stdout", "stderr", "duration_ms"}."""
        # The code goes through stdin: a command-line argument is capped at 128 KiB by the kernel.
        # The system interpreter, since the venv's is not visible inside the sandbox; -I ignores
        # PYTHON* variables and the user's site-packages.
        return _run_command(self.name, ctx, ["python3", "-I", "-"], args.timeout_s, args.code)


class RunShellArgs(ToolArguments):
    # sh -c takes the command as one argument, which the kernel caps at 128 KiB.
    command: Annotated[str, Field(min_length=1, max_length=32_000)]
    timeout_s: Timeout = 30.0


class RunShell(Tool[RunShellArgs]):
    """Run a shell command in the sandbox."""

    name = "run_shell"
    description = (
        "Run a POSIX sh command in the workspace's sandbox (cwd is the workspace); "
        "returns exit_code, stdout, stderr and duration_ms."
    )
    risk = RiskLevel.MEDIUM
    idempotent = False
    arguments = RunShellArgs

    def run(self, args: RunShellArgs, ctx: ToolContext) -> JsonValue:
        """Return {"exit_code", "stdout", "stderr", "duration_ms"}."""
        return _run_command(self.name, ctx, ["sh", "-c", args.command], args.timeout_s)


# ---------------------------------------------------------------- git


def _git(
    tool: str,
    ctx: ToolContext,
    args: list[str],
    *,
    stdin: str | None = None,
    script: bool = False,
    check: bool = True,
) -> CommandResult:
    """Run git (or an sh script of git commands) in the sandbox, deterministically configured."""
    root = ctx.workspace.command_root
    env = {
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_CONFIG_GLOBAL": "/dev/null",
        # Never find a repository above the workspace (e.g. the project the workspace sits in).
        "GIT_CEILING_DIRECTORIES": str(root.parent),
        "GIT_TERMINAL_PROMPT": "0",
        "GIT_LITERAL_PATHSPECS": "1",
        # Hooks and fsmonitor would run whatever the workspace holds; keep git's work plain.
        "GIT_CONFIG_COUNT": "2",
        "GIT_CONFIG_KEY_0": "core.hooksPath",
        "GIT_CONFIG_VALUE_0": "/dev/null",
        "GIT_CONFIG_KEY_1": "core.fsmonitor",
        "GIT_CONFIG_VALUE_1": "false",
    }
    argv = ["sh", "-c", *args] if script else ["git", *args]
    try:
        result = ctx.workspace.run(argv, timeout_s=ctx.timeout_s, stdin=stdin, extra_env=env)
    except ToolTimeout as exc:
        raise ToolTimeout(
            f"{tool}: git did not finish within {ctx.timeout_s:g} s and was killed; the "
            "repository may be very large, raise the tool timeout of the context",
            exc.result,
        ) from None
    if check and result.exit_code != 0:
        raise ToolError(f"{tool}: git failed (exit {result.exit_code}): {result.stderr.strip()}")
    return result


def _nul_list(text: str) -> list[JsonValue]:
    """Names from NUL-separated git output."""
    return [name for name in text.split("\0") if name]


class NoArgs(ToolArguments):
    pass


class GitStatus(Tool[NoArgs]):
    """Report the workspace repository's branch and changed files."""

    name = "git_status"
    description = "Show the workspace's git branch and changed files (repository=false if none)."
    risk = RiskLevel.LOW
    idempotent = True
    arguments = NoArgs

    def run(self, args: NoArgs, ctx: ToolContext) -> JsonValue:
        """Return {"repository", "branch", "entries": [{"path", "status"}], "clean"}."""
        if not (ctx.workspace.root / ".git").exists():
            return {"repository": False, "branch": None, "entries": [], "clean": True}
        script = (
            "git symbolic-ref --short -q HEAD || echo; "
            "git status --porcelain=v1 -z --untracked-files=all"
        )
        out = _git(self.name, ctx, [script], script=True).stdout
        branch, _, status = out.partition("\n")
        entries: list[JsonValue] = []
        records = status.split("\0")
        i = 0
        while i < len(records):
            record = records[i]
            i += 1
            if len(record) < 4:
                continue
            code, path = record[:2], record[3:]
            if code[0] in "RC":
                i += 1  # a rename or copy is followed by its source path
            entries.append({"path": path, "status": code.strip()})
        return {
            "repository": True,
            "branch": branch.strip() or None,
            "entries": entries,
            "clean": not entries,
        }


# Commits once per idempotency key: a retry finds the commit it made before by its trailer.
# Arguments: the key, then the paths (none = everything). Output: nothing if there was nothing to
# commit, else the commit id on the first line and its files, NUL-separated, after it.
_COMMIT_SCRIPT = rf"""
set -eu
key=$1; shift
[ -e .git ] || git init -q
git config user.name >/dev/null || git config user.name {GIT_USER_NAME}
git config user.email >/dev/null || git config user.email {GIT_USER_EMAIL}
done=$(git log --fixed-strings --grep="{IDEMPOTENCY_TRAILER}: $key" \
         --format='%H %(trailers:key={IDEMPOTENCY_TRAILER},valueonly,separator=%x20)' 2>/dev/null \
       | while read -r sha value; do [ "$value" = "$key" ] && echo "$sha" && break; done || true)
if [ -z "$done" ]; then
  if [ $# -eq 0 ]; then git add -A; else git add -A -- "$@"; fi
  git diff --cached --quiet -- "$@" && exit 0
  git commit -q -F - -- "$@"
  done=$(git rev-parse HEAD)
fi
echo "$done"
git diff-tree --no-commit-id --name-only -r -z --root "$done"
"""


class GitCommitArgs(ToolArguments):
    message: Annotated[str, Field(min_length=1, max_length=10_000)]
    paths: list[PathArg] = Field(default=[], description="files to commit; [] = all")


class GitCommit(Tool[GitCommitArgs]):
    """Commit workspace changes (initialising a repository if needed)."""

    name = "git_commit"
    description = (
        "Commit changes in the workspace (all of them, or only `paths`); makes the workspace a "
        "git repository first if it is not one. Returns the commit id (null if nothing changed)."
    )
    risk = RiskLevel.MEDIUM
    idempotent = False
    arguments = GitCommitArgs

    def run(self, args: GitCommitArgs, ctx: ToolContext) -> JsonValue:
        """Return {"commit": sha or None, "files": [...]}."""
        if "\n" in ctx.idempotency_key or not ctx.idempotency_key:
            raise ToolError(f"invalid idempotency key {ctx.idempotency_key!r}")
        paths = [_relative(ctx, ctx.workspace.resolve(p)) for p in args.paths]
        message = f"{args.message.rstrip()}\n\n{IDEMPOTENCY_TRAILER}: {ctx.idempotency_key}\n"
        argv = [_COMMIT_SCRIPT, "git_commit", ctx.idempotency_key, *paths]
        out = _git(self.name, ctx, argv, stdin=message, script=True).stdout
        if not out.strip():
            return {"commit": None, "files": []}
        commit, _, files = out.partition("\n")
        return {"commit": commit.strip(), "files": _nul_list(files)}


class GitMergeArgs(ToolArguments):
    branch: Annotated[
        str,
        Field(
            pattern=r"^[A-Za-z0-9_][A-Za-z0-9._/-]*$", max_length=200, description="local branch"
        ),
    ]


# Output: "merged <before> <after>", or "failed" then the NUL-separated conflicting files, with
# git's own explanation on stderr; a failed merge is aborted, leaving the workspace as it was.
_MERGE_SCRIPT = r"""
set -u
branch=$1
git rev-parse -q --verify "refs/heads/$branch" >/dev/null \
  || { echo "no local branch '$branch'; git_status shows the current one" >&2; exit 3; }
before=$(git rev-parse -q --verify HEAD) \
  || { echo "the current branch has no commit yet; commit first" >&2; exit 3; }
if output=$(git merge --no-edit "$branch" 2>&1); then
  echo "merged $before $(git rev-parse HEAD)"
  exit 0
fi
echo failed
git diff --name-only --diff-filter=U -z
echo "$output" >&2
git merge --abort >/dev/null 2>&1 || git reset -q --merge
"""


class GitMerge(Tool[GitMergeArgs]):
    """Merge a local branch into the current branch."""

    name = "git_merge"
    description = (
        "Merge a local branch into the workspace's current branch; on conflicts the merge is "
        "aborted and the conflicting files are reported."
    )
    risk = RiskLevel.HIGH
    idempotent = False
    arguments = GitMergeArgs

    def run(self, args: GitMergeArgs, ctx: ToolContext) -> JsonValue:
        """Return {"branch", "commit", "merged"}; merged=false when already up to date."""
        if not (ctx.workspace.root / ".git").exists():
            raise ToolError("the workspace is not a git repository; git_commit creates one")
        done = _git(self.name, ctx, [_MERGE_SCRIPT, "git_merge", args.branch], script=True)
        out = done.stdout
        if out.startswith("failed"):
            files = _nul_list(out.partition("\n")[2])
            if files:
                raise ToolError(
                    f"merging {args.branch!r} conflicts in {', '.join(map(str, files))}; the "
                    "merge was aborted and the workspace is unchanged. Resolve the conflicts on "
                    "one branch and merge again"
                )
            raise ToolError(
                f"merging {args.branch!r} failed and was aborted: {done.stderr.strip()[:1000]}"
            )
        _, before, after = out.split()
        return {"branch": args.branch, "commit": after, "merged": before != after}


# ---------------------------------------------------------------- docs


class SearchDocsArgs(ToolArguments):
    query: Annotated[str, Field(min_length=1, max_length=1_000)]
    k: Annotated[int, Field(ge=1, le=50)] = 5


class SearchDocs(Tool[SearchDocsArgs]):
    """Keyword search over the run's documentation folder."""

    name = "search_docs"
    description = (
        "Keyword search over the documentation folder: the k lines sharing the most words with "
        "the query, as path, line number and snippet."
    )
    risk = RiskLevel.LOW
    idempotent = True
    arguments = SearchDocsArgs

    def run(self, args: SearchDocsArgs, ctx: ToolContext) -> JsonValue:
        """Return [{"path", "line", "snippet"}], best first; [] without a docs folder."""
        if ctx.docs is None:
            return []
        terms = set(_WORD.findall(args.query.lower()))
        if not terms:
            raise ToolError(f"query {args.query!r} has no words to search for")
        root = ctx.docs.resolve()
        if not root.is_dir():
            raise ToolError(f"docs folder {root} does not exist or is not a directory")
        hits: list[tuple[int, str, int, str]] = []
        for path in _text_files(root):
            for number, line in enumerate(_read_text(path).splitlines(), start=1):
                score = len(terms.intersection(_WORD.findall(line.lower())))
                if score:
                    hits.append((-score, path.relative_to(root).as_posix(), number, line))
        hits.sort(key=lambda hit: hit[:3])  # best score, then path, then line: deterministic
        return [
            {"path": path, "line": number, "snippet": line.strip()[:MAX_SNIPPET_CHARS]}
            for _, path, number, line in hits[: args.k]
        ]


def _text_files(root: Path) -> list[Path]:
    """Text files under root, sorted; hidden folders, large files and outside links skipped."""
    found: list[Path] = []
    for directory, subdirs, files in os.walk(root):
        subdirs[:] = [d for d in subdirs if not d.startswith(".") and d not in _SKIPPED_DIRS]
        for file in files:
            path = Path(directory, file)
            if path.suffix.lower() not in _TEXT_SUFFIXES:
                continue
            real = path.resolve()
            if root not in real.parents or not real.is_file():
                continue
            if real.stat().st_size > MAX_READ_BYTES:
                continue
            found.append(path)
    return sorted(found)


def _read_text(path: Path) -> str:
    """The file's text, or "" for a binary file."""
    data = path.read_bytes()
    if b"\0" in data[:8192]:
        return ""
    return data.decode("utf-8", "replace")


def default_registry() -> ToolRegistry:
    """A registry holding the built-in tools."""
    registry = ToolRegistry()
    for tool in (
        ReadFile(),
        ListFiles(),
        WriteFile(),
        DeleteFile(),
        RunPython(),
        RunShell(),
        GitStatus(),
        GitCommit(),
        GitMerge(),
        SearchDocs(),
    ):
        registry.register(tool)
    return registry
