"""The tool registry and every built-in tool, on a real workspace with real processes and git."""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path
from typing import Any, ClassVar

import pytest
from pydantic import BaseModel, JsonValue

from agentledger.actors.sandbox import Workspace
from agentledger.actors.tools import (
    InvalidToolArguments,
    SandboxViolation,
    Tool,
    ToolArguments,
    ToolContext,
    ToolError,
    ToolRegistry,
    ToolTimeout,
    UnknownTool,
    action_hash,
    default_registry,
)
from agentledger.events import RiskLevel

BUILTINS = {
    "read_file": (RiskLevel.LOW, True),
    "list_files": (RiskLevel.LOW, True),
    "write_file": (RiskLevel.MEDIUM, True),
    "delete_file": (RiskLevel.HIGH, True),
    "run_python": (RiskLevel.MEDIUM, False),
    "run_shell": (RiskLevel.MEDIUM, False),
    "git_status": (RiskLevel.LOW, True),
    "git_commit": (RiskLevel.MEDIUM, False),
    "git_merge": (RiskLevel.HIGH, False),
    "search_docs": (RiskLevel.LOW, True),
}


@pytest.fixture(scope="module")
def registry() -> ToolRegistry:
    return default_registry()


@pytest.fixture
def ctx(tmp_path: Path) -> ToolContext:
    return ToolContext(
        workspace=Workspace(tmp_path / "work space"),  # a space, on purpose
        docs=None,
        idempotency_key="run-1/action-1",
        timeout_s=30.0,
    )


def git_log(root: Path, *args: str) -> str:
    """Read the workspace repository from outside, as a user would."""
    return subprocess.run(
        ["git", "-C", str(root), *args], capture_output=True, text=True, check=True
    ).stdout


def field(result: JsonValue, key: str) -> JsonValue:
    """One field of a tool's object result."""
    assert isinstance(result, dict), result
    return result[key]


# ---------------------------------------------------------------- registry


class EchoArgs(ToolArguments):
    text: str


class Echo(Tool[EchoArgs]):
    name = "echo"
    description = "Return the text."
    risk = RiskLevel.LOW
    idempotent = True
    arguments = EchoArgs

    def run(self, args: EchoArgs, ctx: ToolContext) -> JsonValue:
        return args.text


class Broken(Tool[EchoArgs]):
    name = "broken"
    description = "Fails with a bug."
    risk = RiskLevel.MEDIUM
    idempotent = True
    arguments = EchoArgs

    def run(self, args: EchoArgs, ctx: ToolContext) -> JsonValue:
        return int(args.text)  # a bug: the text is not always a number


class LooseArgs(BaseModel):
    text: str


class Loose(Tool[LooseArgs]):
    name = "loose"
    description = "Arguments that would silently drop unknown fields."
    risk = RiskLevel.LOW
    idempotent = True
    arguments: ClassVar[type[BaseModel]] = LooseArgs

    def run(self, args: LooseArgs, ctx: ToolContext) -> JsonValue:
        return None


def test_validate_names_the_tool_and_every_bad_field(registry: ToolRegistry) -> None:
    with pytest.raises(InvalidToolArguments) as caught:
        registry.validate("write_file", {"content": 3, "mode": "w"})
    message = str(caught.value)
    assert message.startswith("write_file: ")
    assert "argument 'path': Field required" in message
    assert "argument 'content': Input should be a valid string" in message
    assert "argument 'mode': Extra inputs are not permitted" in message
    assert {field for field, _ in caught.value.problems} == {"path", "content", "mode"}


def test_validate_names_nested_fields(registry: ToolRegistry) -> None:
    with pytest.raises(InvalidToolArguments, match=r"argument 'paths\[1\]'"):
        registry.validate("git_commit", {"message": "m", "paths": ["a", 5]})


def test_validate_returns_a_frozen_model(registry: ToolRegistry) -> None:
    args = registry.validate("run_python", {"code": "print(1)"})
    assert args.model_dump() == {"code": "print(1)", "timeout_s": 30.0}
    with pytest.raises(ValueError, match="frozen"):
        args.code = "x"  # type: ignore[attr-defined]


def test_timeout_is_bounded(registry: ToolRegistry) -> None:
    with pytest.raises(InvalidToolArguments, match="argument 'timeout_s'"):
        registry.validate("run_shell", {"command": "true", "timeout_s": 601})


def test_an_unknown_tool_is_named_with_the_known_ones(registry: ToolRegistry) -> None:
    # (Its risk: high, by the policy; tests/unit/test_policy.py.)
    assert registry.get("write_file").risk is RiskLevel.MEDIUM
    assert "format_disk" not in registry
    with pytest.raises(UnknownTool, match=r"format_disk.*known tools: delete_file, git_commit"):
        registry.get("format_disk")


def test_builtins_declare_their_risk_and_idempotence(registry: ToolRegistry) -> None:
    assert registry.names() == sorted(BUILTINS)
    for name, (risk, idempotent) in BUILTINS.items():
        assert registry.get(name).risk is risk, name
        assert registry.get(name).idempotent is idempotent, name


def test_duplicate_registration_is_refused() -> None:
    registry = ToolRegistry()
    registry.register(Echo())
    with pytest.raises(ToolError, match="'echo' is already registered"):
        registry.register(Echo())


def test_arguments_that_ignore_unknown_fields_are_refused() -> None:
    with pytest.raises(ToolError, match="must be frozen and forbid extra fields"):
        ToolRegistry().register(Loose())


def test_unexpected_exception_becomes_tool_error(ctx: ToolContext) -> None:
    registry = ToolRegistry()
    registry.register(Broken())
    with pytest.raises(ToolError, match="broken: unexpected ValueError") as caught:
        registry.execute("broken", {"text": "x"}, ctx)
    assert isinstance(caught.value.__cause__, ValueError)


def test_describe_lists_every_tool_with_its_arguments(registry: ToolRegistry) -> None:
    text = registry.describe()
    for name, (risk, idempotent) in BUILTINS.items():
        kind = "idempotent" if idempotent else "not idempotent"
        assert f"- {name} (risk: {risk.value}, {kind}):" in text
    assert "    path: string, required" in text
    assert "    timeout_s: number, default 30.0" in text
    assert "    paths: array of string, default []" in text


def test_action_hash_is_stable_and_canonical() -> None:
    first = action_hash("run-1", "a1", "write_file", {"path": "x", "content": "é"})
    again = action_hash("run-1", "a1", "write_file", {"content": "é", "path": "x"})
    assert first == again
    canonical = (
        '{"action_id":"a1","arguments":{"content":"é","path":"x"},"run":"run-1",'
        '"tool":"write_file"}'
    )

    assert first == hashlib.sha256(canonical.encode()).hexdigest()


@pytest.mark.parametrize(
    "changed",
    [
        ("run-2", "a1", "write_file", {"path": "x", "content": "é"}),
        ("run-1", "a2", "write_file", {"path": "x", "content": "é"}),
        ("run-1", "a1", "delete_file", {"path": "x", "content": "é"}),
        ("run-1", "a1", "write_file", {"path": "y", "content": "é"}),
        ("run-1", "a1", "write_file", {"path": "x", "content": "é", "extra": None}),
    ],
)
def test_action_hash_changes_with_each_field(changed: tuple[Any, ...]) -> None:
    assert action_hash(*changed) != action_hash(
        "run-1", "a1", "write_file", {"path": "x", "content": "é"}
    )


# ---------------------------------------------------------------- files


def test_write_read_list_delete(registry: ToolRegistry, ctx: ToolContext) -> None:
    root = ctx.workspace.root
    written = registry.execute("write_file", {"path": "src/a b.txt", "content": "héllo"}, ctx)
    assert written == {"path": "src/a b.txt", "bytes": 6}
    assert (root / "src" / "a b.txt").read_text(encoding="utf-8") == "héllo"
    registry.execute("write_file", {"path": "z.txt", "content": ""}, ctx)
    (root / ".git").mkdir()
    (root / ".git" / "HEAD").write_text("ignored")

    assert registry.execute("read_file", {"path": "src/a b.txt"}, ctx) == {
        "path": "src/a b.txt",
        "content": "héllo",
    }
    assert registry.execute("list_files", {}, ctx) == ["src/a b.txt", "z.txt"]
    assert registry.execute("list_files", {"path": "src"}, ctx) == ["src/a b.txt"]

    assert registry.execute("delete_file", {"path": "z.txt"}, ctx) == {
        "path": "z.txt",
        "deleted": True,
    }
    assert not (root / "z.txt").exists()
    assert registry.execute("delete_file", {"path": "z.txt"}, ctx) == {
        "path": "z.txt",
        "deleted": False,
    }


def test_write_replaces_content(registry: ToolRegistry, ctx: ToolContext) -> None:
    registry.execute("write_file", {"path": "f", "content": "long content"}, ctx)
    registry.execute("write_file", {"path": "f", "content": "short"}, ctx)
    assert (ctx.workspace.root / "f").read_text() == "short"
    assert sorted(p.name for p in ctx.workspace.root.iterdir()) == ["f"]  # no temporary left


def test_write_takes_any_name_the_file_system_takes(
    registry: ToolRegistry, ctx: ToolContext
) -> None:
    # 255 bytes is the longest name; the temporary written first must not be longer.
    name = "n" * 255
    assert field(registry.execute("write_file", {"path": name, "content": "x"}, ctx), "bytes") == 1
    assert (ctx.workspace.root / name).read_text() == "x"
    assert sorted(p.name for p in ctx.workspace.root.iterdir()) == [name]  # no temporary left


def test_write_says_why_the_file_system_refused(registry: ToolRegistry, ctx: ToolContext) -> None:
    registry.execute("write_file", {"path": "f", "content": "x"}, ctx)
    with pytest.raises(ToolError, match=r"^write_file: 'f/g/h': 'f' is a file, not a folder"):
        registry.execute("write_file", {"path": "f/g/h", "content": "x"}, ctx)
    with pytest.raises(ToolError) as caught:
        registry.execute("write_file", {"path": "d/" + "n" * 256, "content": "x"}, ctx)
    message = str(caught.value)
    assert message.startswith("write_file: File name too long (at 'd/nnn"), message
    assert "a bug in the tool" not in message


def test_names_that_are_not_utf8_come_back_as_recordable_text(
    registry: ToolRegistry, ctx: ToolContext
) -> None:
    # Sandboxed code can make such names; Python hands them over with lone surrogates, which
    # no event can hold (the agent's whole turn failed to append).
    root = ctx.workspace.root
    open(bytes(root) + b"/bad\xffname", "w").close()
    (root / "link").symlink_to(b"/no\xffwhere".decode("utf-8", "surrogateescape"))
    listed = registry.execute("list_files", {}, ctx)
    assert listed == ["bad\ufffdname", "link"]
    json.dumps(listed, ensure_ascii=False).encode("utf-8")
    with pytest.raises(SandboxViolation) as caught:
        registry.execute("read_file", {"path": "link"}, ctx)
    assert "/no\ufffdwhere" in str(caught.value)
    str(caught.value).encode("utf-8")


def test_read_refuses_large_missing_and_binary_files(
    registry: ToolRegistry, ctx: ToolContext
) -> None:
    root = ctx.workspace.root
    (root / "big.txt").write_text("x" * 1_000_001)
    with pytest.raises(ToolError, match=r"read_file: 'big.txt' is 1000001 bytes, over the"):
        registry.execute("read_file", {"path": "big.txt"}, ctx)
    with pytest.raises(ToolError, match=r"read_file: no file 'nope\.txt'"):
        registry.execute("read_file", {"path": "nope.txt"}, ctx)
    (root / "blob").write_bytes(b"\xff\xfe\x00")
    with pytest.raises(ToolError, match="not UTF-8 text"):
        registry.execute("read_file", {"path": "blob"}, ctx)


def test_delete_refuses_directories_and_removes_links_not_targets(
    registry: ToolRegistry, ctx: ToolContext
) -> None:
    root = ctx.workspace.root
    (root / "d").mkdir()
    with pytest.raises(ToolError, match="is a directory"):
        registry.execute("delete_file", {"path": "d"}, ctx)
    (root / "target.txt").write_text("keep")
    (root / "link").symlink_to("target.txt")
    assert field(registry.execute("delete_file", {"path": "link"}, ctx), "deleted") is True
    assert (root / "target.txt").read_text() == "keep"


@pytest.mark.parametrize("tool", ["read_file", "write_file", "delete_file", "list_files"])
@pytest.mark.parametrize("path", ["../outside.txt", "/etc/passwd", "a/../../x", "link/passwd"])
def test_every_path_argument_stays_inside(
    registry: ToolRegistry, ctx: ToolContext, tool: str, path: str
) -> None:
    (ctx.workspace.root / "link").symlink_to("/etc")
    arguments: dict[str, JsonValue] = {"path": path}
    if tool == "write_file":
        arguments["content"] = "x"
    with pytest.raises(SandboxViolation, match=rf"^{tool}: path "):
        registry.execute(tool, arguments, ctx)
    assert not (ctx.workspace.root.parent / "outside.txt").exists()


# ---------------------------------------------------------------- commands


def test_run_python_reports_output_and_exit_code(registry: ToolRegistry, ctx: ToolContext) -> None:
    code = "import sys, pathlib\nprint(pathlib.Path('in.txt').read_text())\nsys.exit(3)"
    (ctx.workspace.root / "in.txt").write_text("from the workspace")
    result = registry.execute("run_python", {"code": code}, ctx)
    assert isinstance(result, dict)
    assert result["exit_code"] == 3  # a failure of the code is a result, not an exception
    assert result["stdout"] == "from the workspace\n"
    assert result["stderr"] == ""
    assert isinstance(result["duration_ms"], int)


def test_run_python_traceback_is_in_stderr(registry: ToolRegistry, ctx: ToolContext) -> None:
    result = registry.execute("run_python", {"code": "1/0"}, ctx)
    assert isinstance(result, dict)
    assert result["exit_code"] == 1
    assert "ZeroDivisionError" in str(result["stderr"])


def test_run_shell_writes_into_the_workspace(registry: ToolRegistry, ctx: ToolContext) -> None:
    result = registry.execute("run_shell", {"command": "echo hi > out.txt; ls; exit 7"}, ctx)
    assert isinstance(result, dict)
    assert (result["exit_code"], result["stdout"]) == (7, "out.txt\n")
    assert (ctx.workspace.root / "out.txt").read_text() == "hi\n"


def test_run_shell_timeout_is_a_clear_error(registry: ToolRegistry, ctx: ToolContext) -> None:
    with pytest.raises(ToolTimeout, match=r"run_shell: command .*sleep 5.* within 0.5 s"):
        registry.execute("run_shell", {"command": "sleep 5", "timeout_s": 0.5}, ctx)


def test_long_output_is_truncated_with_a_note(registry: ToolRegistry, ctx: ToolContext) -> None:
    result = registry.execute("run_python", {"code": "print('x' * 100_000, end='END')"}, ctx)
    assert isinstance(result, dict)
    stdout = str(result["stdout"])
    assert len(stdout) < 21_000
    assert "bytes omitted: output was 100003 bytes" in stdout
    assert stdout.startswith("xxx") and stdout.endswith("xEND")


# ---------------------------------------------------------------- git


def test_git_commit_initialises_commits_and_reports(
    registry: ToolRegistry, ctx: ToolContext
) -> None:
    root = ctx.workspace.root
    assert registry.execute("git_status", {}, ctx) == {
        "repository": False,
        "branch": None,
        "entries": [],
        "clean": True,
    }
    (root / "a.txt").write_text("a")
    (root / "b.txt").write_text("b")
    first = registry.execute("git_commit", {"message": "Add a", "paths": ["a.txt"]}, ctx)
    assert isinstance(first, dict)
    assert first["files"] == ["a.txt"]
    assert git_log(root, "rev-parse", "HEAD").strip() == first["commit"]
    assert git_log(root, "log", "-1", "--format=%an <%ae>|%s|%(trailers:valueonly)").strip() == (
        "agentledger <agentledger@localhost>|Add a|run-1/action-1"
    )
    status = registry.execute("git_status", {}, ctx)
    assert isinstance(status, dict)
    assert status["repository"] is True and status["clean"] is False
    assert status["entries"] == [{"path": "b.txt", "status": "??"}]

    everything = ToolContext(ctx.workspace, None, "run-1/action-2")
    second = registry.execute("git_commit", {"message": "Add the rest"}, everything)
    assert isinstance(second, dict)
    assert second["files"] == ["b.txt"]
    assert registry.execute("git_commit", {"message": "Nothing"}, ToolContext(
        ctx.workspace, None, "run-1/action-3"
    )) == {"commit": None, "files": []}  # fmt: skip
    assert field(registry.execute("git_status", {}, ctx), "clean") is True


def test_git_commit_retry_with_same_key_does_not_commit_twice(
    registry: ToolRegistry, ctx: ToolContext
) -> None:
    root = ctx.workspace.root
    (root / "a.txt").write_text("a")
    first = registry.execute("git_commit", {"message": "Add a"}, ctx)
    (root / "c.txt").write_text("c")  # a change after the crash must not join the retried commit
    retried = registry.execute("git_commit", {"message": "Add a"}, ctx)
    assert retried == first
    assert git_log(root, "rev-list", "--count", "HEAD").strip() == "1"
    # A key that merely starts like the first one is a different action.
    longer = registry.execute("git_commit", {"message": "Add c"}, ToolContext(
        ctx.workspace, None, ctx.idempotency_key + "0"
    ))  # fmt: skip
    assert isinstance(longer, dict) and longer["files"] == ["c.txt"]


def test_git_ignores_hooks_written_into_the_workspace(
    registry: ToolRegistry, ctx: ToolContext
) -> None:
    root = ctx.workspace.root
    (root / "a.txt").write_text("a")
    registry.execute("git_commit", {"message": "first"}, ctx)
    hook = root / ".git" / "hooks" / "pre-commit"
    hook.write_text("#!/bin/sh\ntouch hook-ran\nexit 1\n")
    hook.chmod(0o755)
    (root / "b.txt").write_text("b")
    done = registry.execute("git_commit", {"message": "second"}, ToolContext(
        ctx.workspace, None, "k2"
    ))  # fmt: skip
    assert isinstance(done, dict) and done["files"] == ["b.txt"]
    assert not (root / "hook-ran").exists()


def test_git_merge(registry: ToolRegistry, ctx: ToolContext) -> None:
    root = ctx.workspace.root
    with pytest.raises(ToolError, match="git_merge: the workspace is not a git repository"):
        registry.execute("git_merge", {"branch": "feature"}, ctx)
    (root / "a.txt").write_text("base\n")
    registry.execute("git_commit", {"message": "base"}, ctx)
    main = git_log(root, "symbolic-ref", "--short", "HEAD").strip()
    git_log(root, "checkout", "-q", "-b", "feature")
    (root / "f.txt").write_text("feature\n")
    (root / "a.txt").write_text("feature side\n")
    registry.execute("git_commit", {"message": "feature"}, ToolContext(ctx.workspace, None, "k2"))
    git_log(root, "checkout", "-q", main)

    with pytest.raises(ToolError, match=r"git_merge: .*no local branch 'nope'"):
        registry.execute("git_merge", {"branch": "nope"}, ctx)
    with pytest.raises(InvalidToolArguments, match="argument 'branch'"):
        registry.validate("git_merge", {"branch": "--upload-pack=x"})

    merged = registry.execute("git_merge", {"branch": "feature"}, ctx)
    assert isinstance(merged, dict)
    assert merged["merged"] is True and merged["branch"] == "feature"
    assert merged["commit"] == git_log(root, "rev-parse", "HEAD").strip()
    assert (root / "f.txt").read_text() == "feature\n"
    again = registry.execute("git_merge", {"branch": "feature"}, ctx)
    assert isinstance(again, dict) and again["merged"] is False


def test_git_merge_conflict_is_aborted(registry: ToolRegistry, ctx: ToolContext) -> None:
    root = ctx.workspace.root
    (root / "a.txt").write_text("base\n")
    registry.execute("git_commit", {"message": "base"}, ctx)
    main = git_log(root, "symbolic-ref", "--short", "HEAD").strip()
    git_log(root, "checkout", "-q", "-b", "other")
    (root / "a.txt").write_text("other\n")
    registry.execute("git_commit", {"message": "other"}, ToolContext(ctx.workspace, None, "k2"))
    git_log(root, "checkout", "-q", main)
    (root / "a.txt").write_text("mine\n")
    registry.execute("git_commit", {"message": "mine"}, ToolContext(ctx.workspace, None, "k3"))

    with pytest.raises(
        ToolError, match=r"git_merge: merging 'other' conflicts in a\.txt; the merge"
    ):
        registry.execute("git_merge", {"branch": "other"}, ctx)
    assert (root / "a.txt").read_text() == "mine\n"
    assert field(registry.execute("git_status", {}, ctx), "clean") is True


def test_git_does_not_see_a_repository_around_the_workspace(
    registry: ToolRegistry, tmp_path: Path
) -> None:
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    inner = ToolContext(Workspace(tmp_path / "ws"), None, "k")
    assert field(registry.execute("git_status", {}, inner), "repository") is False
    (inner.workspace.root / "a.txt").write_text("a")
    registry.execute("git_commit", {"message": "inner"}, inner)
    assert (inner.workspace.root / ".git").is_dir()


# ---------------------------------------------------------------- docs


def test_search_docs_ranks_by_word_overlap(registry: ToolRegistry, tmp_path: Path) -> None:
    docs = tmp_path / "docs"
    (docs / "guide").mkdir(parents=True)
    (docs / "guide" / "setup.md").write_text("# Setup\nInstall the Ray cluster first.\nThen run.\n")
    (docs / "b.txt").write_text("ray\nRay CLUSTER install\n")
    (docs / "a.rst").write_text("cluster\n")
    (docs / "image.png").write_bytes(b"ray cluster install")  # not a text suffix
    (docs / "bin.txt").write_bytes(b"ray cluster install\0\0")  # binary
    (docs / "huge.md").write_text("ray cluster install\n" * 60_000)  # over 1 MB
    (docs / ".hidden").mkdir()
    (docs / ".hidden" / "x.md").write_text("ray cluster install")
    ctx = ToolContext(Workspace(tmp_path / "ws"), docs, "k")

    hits = registry.execute("search_docs", {"query": "install Ray cluster?", "k": 4}, ctx)
    assert hits == [
        {"path": "b.txt", "line": 2, "snippet": "Ray CLUSTER install"},
        {"path": "guide/setup.md", "line": 2, "snippet": "Install the Ray cluster first."},
        {"path": "a.rst", "line": 1, "snippet": "cluster"},
        {"path": "b.txt", "line": 1, "snippet": "ray"},
    ]
    assert registry.execute("search_docs", {"query": "kubernetes"}, ctx) == []
    with pytest.raises(ToolError, match="has no words"):
        registry.execute("search_docs", {"query": "?!"}, ctx)


def test_search_docs_without_docs_is_empty(registry: ToolRegistry, ctx: ToolContext) -> None:
    assert registry.execute("search_docs", {"query": "anything"}, ctx) == []


def test_every_result_is_json(registry: ToolRegistry, ctx: ToolContext) -> None:
    result = registry.execute("run_shell", {"command": "printf '\\377'"}, ctx)
    json.dumps(result, allow_nan=False)


def test_a_written_file_gets_the_mode_a_new_file_gets_or_keeps_the_one_it_had(
    registry: ToolRegistry, ctx: ToolContext
) -> None:
    # Written beside and renamed into place; mkstemp made it private (0600).
    import os

    registry.execute("write_file", {"path": "report.md", "content": "hi"}, ctx)
    written = ctx.workspace.root / "report.md"
    umask = os.umask(0)
    os.umask(umask)
    assert written.stat().st_mode & 0o777 == 0o666 & ~umask
    written.chmod(0o640)
    registry.execute("write_file", {"path": "report.md", "content": "again"}, ctx)
    assert written.stat().st_mode & 0o777 == 0o640
