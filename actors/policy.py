"""The risk policy: which gate a proposed tool call passes (DESIGN "Risk levels", rules 5-7).

A call's level starts from its tool's declaration. A policy file (TOML) may set a tool's level in
``[tools]`` and raise it with ``[[rules]]`` on argument values; then built-in rules that no file
can switch off raise anything reaching outside the workspace, moving money, touching a protected
branch or deleting/paying/merging to high. An unknown tool is always high.

The result depends only on the tool name and the arguments (never on dict order, the clock or the
process), so re-executing a run assesses every action exactly as the original did, and two
argument mappings with the same canonical JSON (what an approval is bound to) get the same
assessment.

Example policy file::

    [tools]
    run_shell = "high"            # an operator may raise or lower a declared level

    [[rules]]
    argument = "path"
    matches = ["secrets/**", "*.pem"]
    reason = "credentials"        # risk defaults to "high"

    [[rules]]
    tool = "run_python"
    argument = "timeout_s"
    above = 120
    risk = "medium"

    [limits]
    amount = 50                   # money arguments up to 50 are not high by themselves

    [git]
    protected_branches = ["main", "release/*"]
"""

from __future__ import annotations

import difflib
import fnmatch
import math
import posixpath
import re
import tomllib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import JsonValue

from agentledger.events import ConfigurationError, RiskLevel

__all__ = ["DEFAULT_PROTECTED_BRANCHES", "Assessment", "PolicyError", "RiskPolicy"]

# Ranks, because RiskLevel is a StrEnum and "high" < "low" as strings.
_RANK = {RiskLevel.LOW: 0, RiskLevel.MEDIUM: 1, RiskLevel.HIGH: 2}
_LEVEL_VALUES = tuple(level.value for level in RiskLevel)
_LEVELS = ", ".join(repr(value) for value in _LEVEL_VALUES)
_TOOL_NAME = re.compile(r"[a-z][a-z0-9_]*")  # what ToolRegistry.register accepts
_TABLES = ("tools", "rules", "limits", "git")
_RULE_KEYS = ("tool", "argument", "matches", "above", "risk", "reason")
_MAX_SHOWN = 60  # characters of an argument value quoted in a rule string

# ------------------------------------------------------------------ built-in rule data
# Argument names are compared case-insensitively; names inside nested objects count too.

PATH_ARGUMENTS = frozenset(
    {"path", "paths", "file", "files", "target", "dest", "destination", "src", "dir", "directory"}
)
PATH_SUFFIXES = ("_path", "_file", "_dir")
MONEY_ARGUMENTS = frozenset({"amount", "price", "total", "payment", "cost"})
MONEY_SUFFIXES = ("_amount",)
BRANCH_ARGUMENTS = frozenset({"branch"})
BRANCH_SUFFIXES = ("_branch",)
DEFAULT_PROTECTED_BRANCHES = ("main", "master", "release/*")
HIGH_RISK_NAME_PARTS = ("delete", "drop", "pay", "transfer", "refund", "merge", "user_data")


class PolicyError(ConfigurationError):
    """A policy file is malformed; the message names the file, the line and the fix."""

    def __init__(self, source: str, line: int | None, problem: str, fix: str) -> None:
        self.source = source
        self.line = line
        where = source if line is None else f"{source} line {line}"
        super().__init__(f"{where}: {problem}; {fix}")


@dataclass(frozen=True)
class Assessment:
    """A call's risk level and the declaration or rule that set it (recorded in the event)."""

    risk: RiskLevel
    rule: str


# ------------------------------------------------------------------ parsed policy pieces


@dataclass(frozen=True)
class _ToolLevel:
    """One ``[tools]`` entry."""

    level: RiskLevel
    line: int


@dataclass(frozen=True)
class _Rule:
    """One ``[[rules]]`` entry, validated and with its globs compiled."""

    line: int
    tool: str  # a tool name, or "*" for every tool
    argument: str
    globs: tuple[str, ...]  # empty when `above` is set
    patterns: tuple[re.Pattern[str], ...]
    above: int | float | None
    risk: RiskLevel
    reason: str | None

    def condition(self) -> str:
        """The rule's test as text: ``path matches 'secrets/**'`` or ``amount > 100``."""
        subject = self.argument if self.tool == "*" else f"{self.tool} {self.argument}"
        if self.above is not None:
            return f"{subject} > {self.above}"
        return f"{subject} matches {' or '.join(repr(g) for g in self.globs)}"

    def label(self, source: str, glob: str | None = None) -> str:
        """The rule string recorded when this rule sets the level (naming the glob that hit)."""
        condition = self.condition()
        if glob is not None and len(self.globs) > 1:
            subject = self.argument if self.tool == "*" else f"{self.tool} {self.argument}"
            condition = f"{subject} matches {glob!r}"
        reason = f" ({self.reason})" if self.reason else ""
        return f"{source} line {self.line}: {condition} → {self.risk.value}{reason}"

    def hit(self, tool: str, values: Sequence[tuple[str, JsonValue]]) -> str | None:
        """The glob that matched (``""`` for an `above` rule), or None when the rule misses."""
        if self.tool not in ("*", tool):
            return None
        for name, value in values:
            if name != self.argument:
                continue
            if self.above is not None:
                number = _as_number(value)
                # NaN compares false with everything; it cannot be shown to be under the bound.
                if number is not None and (_is_nan(number) or number > self.above):
                    return ""
                continue
            for text in _texts(value):
                for glob, pattern in zip(self.globs, self.patterns, strict=True):
                    if pattern.match(text):
                        return glob
        return None


@dataclass(frozen=True)
class _Settings:
    """What the file may tune in the built-in rules, and the lines that tuned it."""

    source: str | None = None
    amount_limit: int | float = 0
    amount_line: int | None = None
    protected_branches: tuple[str, ...] = DEFAULT_PROTECTED_BRANCHES
    branches_line: int | None = None

    def where(self, line: int | None) -> str:
        """`` (policy.toml line 9)`` when the file set the value, else nothing."""
        return f" ({self.source} line {line})" if line is not None and self.source else ""


# ------------------------------------------------------------------ built-in rules


def _named(name: str, exact: frozenset[str], suffixes: tuple[str, ...]) -> bool:
    """True when an argument name is in ``exact`` or ends with a suffix, ignoring case."""
    lowered = name.lower()
    return lowered in exact or lowered.endswith(suffixes)


def _outside_workspace(
    tool: str, values: Sequence[tuple[str, JsonValue]], s: _Settings
) -> str | None:
    """A path argument that is absolute or climbs out with ``..``."""
    for name, value in values:
        if isinstance(value, str) and _named(name, PATH_ARGUMENTS, PATH_SUFFIXES):
            parts = re.split(r"[/\\]", value)
            # "~" is expanded by shells, "C:" and "file:" name places outside any relative root.
            absolute = value.startswith(("/", "\\", "~")) or bool(
                re.match(r"[A-Za-z]:|file:", value, re.IGNORECASE)
            )
            if absolute or ".." in parts:
                return f"{name} {_shown(value)} points outside the workspace → high"
    return None


def _moves_money(tool: str, values: Sequence[tuple[str, JsonValue]], s: _Settings) -> str | None:
    """A money argument whose size is over the limit (0 unless ``[limits] amount`` is set)."""
    for name, value in values:
        if value is None or not _named(name, MONEY_ARGUMENTS, MONEY_SUFFIXES):
            continue
        number = _as_number(value)
        if number is None or _is_nan(number):
            # A tool may still parse "$100" or a bad float; fail closed rather than guess.
            return f"{name} {_shown(value)} is not a plain number: affects financial state → high"
        # The size counts, not the sign: a negative payment or transfer moves money too.
        if abs(number) > s.amount_limit:
            limit = ""
            if s.amount_line is not None:
                limit = f" (over the limit {s.amount_limit} set in {s.source} line {s.amount_line})"
            return f"{name} {_shown(value)} affects financial state{limit} → high"
    return None


def _protected_branch(
    tool: str, values: Sequence[tuple[str, JsonValue]], s: _Settings
) -> str | None:
    """A branch argument naming a protected branch."""
    for name, value in values:
        if not isinstance(value, str) or not _named(name, BRANCH_ARGUMENTS, BRANCH_SUFFIXES):
            continue
        # "refs/heads/main" and "heads/main" are the same branch to git.
        short = value.removeprefix("refs/").removeprefix("heads/")
        for pattern in s.protected_branches:
            if fnmatch.fnmatchcase(value, pattern) or fnmatch.fnmatchcase(short, pattern):
                return (
                    f"{name} {_shown(value)} is a protected branch{s.where(s.branches_line)} → high"
                )
    return None


def _dangerous_name(tool: str, values: Sequence[tuple[str, JsonValue]], s: _Settings) -> str | None:
    """A tool whose name says it deletes, pays, transfers, refunds, merges or touches user data."""
    lowered = tool.lower()
    for part in HIGH_RISK_NAME_PARTS:
        if part in lowered:
            return f"tool {tool} contains {part!r}: affects user data or financial state → high"
    return None


@dataclass(frozen=True)
class _Builtin:
    """One built-in rule: its description (for ``describe``) and its check."""

    describe: Callable[[_Settings], str]
    check: Callable[[str, Sequence[tuple[str, JsonValue]], _Settings], str | None]


def _names(exact: frozenset[str], suffixes: tuple[str, ...]) -> str:
    return ", ".join([*sorted(exact), *(f"*{suffix}" for suffix in suffixes)])


# Checked in this order; each can only raise a call to high, and no policy file can turn one off.
_BUILTINS: tuple[_Builtin, ...] = (
    _Builtin(
        lambda s: (
            f"a path argument ({_names(PATH_ARGUMENTS, PATH_SUFFIXES)}) that is absolute "
            "or has a '..' component → high (points outside the workspace)"
        ),
        _outside_workspace,
    ),
    _Builtin(
        lambda s: (
            f"a money argument ({_names(MONEY_ARGUMENTS, MONEY_SUFFIXES)}) whose size is "
            f"over {s.amount_limit}{s.where(s.amount_line)} or is not a plain number → high "
            "(affects financial state)"
        ),
        _moves_money,
    ),
    _Builtin(
        lambda s: (
            f"a branch argument ({_names(BRANCH_ARGUMENTS, BRANCH_SUFFIXES)}) naming a "
            f"protected branch ({', '.join(s.protected_branches)}){s.where(s.branches_line)} → high"
        ),
        _protected_branch,
    ),
    _Builtin(
        lambda s: (
            f"a tool whose name contains {', '.join(HIGH_RISK_NAME_PARTS)} → high, even "
            "when [tools] lowers it (affects user data or financial state)"
        ),
        _dangerous_name,
    ),
)


# ------------------------------------------------------------------ the policy


class RiskPolicy:
    """Assesses a tool call's risk level; ``RiskPolicy()`` has the built-in rules only."""

    def __init__(self) -> None:
        self._settings = _Settings()
        self._tools: dict[str, _ToolLevel] = {}
        self._rules: tuple[_Rule, ...] = ()

    @property
    def source(self) -> str | None:
        """The policy file's name, or None for the defaults."""
        return self._settings.source

    @classmethod
    def load(cls, path: Path) -> RiskPolicy:
        """The policy in a TOML file; PolicyError names the file and line of any mistake."""
        source = str(path)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise PolicyError(
                source, None, "no such policy file", "check the path, or leave the option out"
            ) from None
        except OSError as exc:
            raise PolicyError(
                source,
                None,
                f"cannot read the policy file ({exc.strerror})",
                "check its permissions",
            ) from None
        try:
            text = data.decode("utf-8-sig")  # TOML is UTF-8; tolerate an editor's BOM
        except UnicodeDecodeError as exc:
            line = data[: exc.start].count(b"\n") + 1
            raise PolicyError(
                source, line, f"byte {exc.start} is not UTF-8", "save the file as UTF-8"
            ) from None
        return cls.from_text(text, source=source)

    @classmethod
    def from_text(cls, text: str, *, source: str) -> RiskPolicy:
        """The policy in TOML ``text``; ``source`` names it in errors and rule strings."""
        try:
            document = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            message = str(exc)
            found = re.search(r"\s*\(at line (\d+), column \d+\)$", message)
            if found:
                line = int(found.group(1))
                message = message[: found.start()]
            else:  # "(at end of document)": an unterminated string, array or table
                line = max(1, len(text.splitlines()))
                message = re.sub(r"\s*\(at end of document\)$", " at the end of the file", message)
            raise PolicyError(
                source,
                line,
                f"TOML syntax error: {message}",
                'fix the syntax (text values need quotes, e.g. write_file = "low"; '
                "see https://toml.io)",
            ) from None
        policy = cls()
        parser = _Parser(source, text)
        parser.tables(document)
        policy._tools = parser.tools(document)
        policy._rules = parser.rules(document)
        amount_limit, amount_line = parser.limits(document)
        branches, branches_line = parser.git(document)
        policy._settings = _Settings(
            source=source,
            amount_limit=amount_limit,
            amount_line=amount_line,
            protected_branches=branches,
            branches_line=branches_line,
        )
        return policy

    def assess(
        self, tool: str, arguments: Mapping[str, JsonValue], declared: RiskLevel | None
    ) -> Assessment:
        """The call's level and the rule that set it; ``declared`` is None for an unknown tool."""
        if declared is None:
            return Assessment(RiskLevel.HIGH, "unknown tool: high")
        risk, rule = declared, f"declared by tool {tool}"
        override = self._tools.get(tool)
        if override is not None:
            risk = override.level
            rule = (
                f"{self.source} line {override.line}: [tools] {tool} = {risk.value} "
                f"(declared {declared.value})"
            )
        values = _named_values(arguments)
        # Built-ins first, so when one and a file rule both say high the built-in is named: it
        # is the reason no policy edit can change. Only a strictly higher level replaces the
        # current one, so ties keep the earlier rule.
        for builtin in _BUILTINS:
            if risk is RiskLevel.HIGH:
                return Assessment(risk, rule)
            found = builtin.check(tool, values, self._settings)
            if found is not None:
                risk, rule = RiskLevel.HIGH, found
        source = self.source or "policy"
        for file_rule in self._rules:
            if _RANK[file_rule.risk] <= _RANK[risk]:
                continue
            glob = file_rule.hit(tool, values)
            if glob is not None:
                risk, rule = file_rule.risk, file_rule.label(source, glob or None)
        return Assessment(risk, rule)

    def check_tools(self, known: Iterable[str]) -> None:
        """PolicyError for a ``[tools]`` entry or rule naming a tool not in ``known``."""
        # A misspelt tool name would otherwise be silently ignored; call with registry.names().
        names = set(known)
        named = [(entry.line, tool) for tool, entry in self._tools.items()]
        named += [(rule.line, rule.tool) for rule in self._rules if rule.tool != "*"]
        for line, tool in sorted(named):
            if tool not in names:
                raise PolicyError(
                    self.source or "policy",
                    line,
                    f"no tool is called {tool!r}",
                    f"use one of {', '.join(sorted(names)) or 'none'}{_did_you_mean(tool, names)}",
                )

    def describe(self) -> str:
        """The rules in the order they apply, one per line (for ``--help`` and docs)."""
        source = self.source or "policy"
        lines = [
            f"risk policy: {self.source or 'built-in rules only (no policy file)'}",
            "an unknown tool → high, always",
            "otherwise the tool's declared level",
        ]
        for tool, entry in sorted(self._tools.items(), key=lambda item: item[1].line):
            lines.append(f"{source} line {entry.line}: [tools] {tool} = {entry.level.value}")
        lines.extend(f"built-in: {builtin.describe(self._settings)}" for builtin in _BUILTINS)
        lines.extend(rule.label(source) for rule in self._rules)
        lines.append("rules only raise the level: the highest wins, and of equals the first listed")
        return "\n".join(lines)


# ------------------------------------------------------------------ argument values


def _named_values(arguments: Mapping[str, JsonValue]) -> list[tuple[str, JsonValue]]:
    """Every scalar in the arguments with the name of its nearest key, keys in sorted order
    (so the result does not depend on dict order) and list items under their list's name."""
    found: list[tuple[str, JsonValue]] = []
    # An explicit stack instead of recursion: arguments come from a model and may nest deeply.
    stack: list[tuple[str, Any]] = [
        (str(key), value) for key, value in sorted(arguments.items(), key=_by_key, reverse=True)
    ]
    while stack:
        name, value = stack.pop()
        if isinstance(value, Mapping):
            items = sorted(value.items(), key=_by_key, reverse=True)
            stack.extend((str(key), item) for key, item in items)
        elif isinstance(value, list | tuple):
            stack.extend((name, item) for item in reversed(value))
        else:
            found.append((name, value))
    return found


def _by_key(item: tuple[Any, Any]) -> str:
    return str(item[0])


def _as_number(value: JsonValue) -> int | float | None:
    """A value as a number, as a tool's lax pydantic model would read it (True, "12", 1.5)."""
    if isinstance(value, bool | int | float):
        return value
    if isinstance(value, str):
        try:
            return int(value)
        except ValueError:
            pass
        try:
            return float(value)
        except ValueError:
            return None
    return None


def _is_nan(number: int | float) -> bool:
    return isinstance(number, float) and math.isnan(number)


def _texts(value: JsonValue) -> list[str]:
    """The strings a glob is tested against: the value, its normalized path form (so
    "./secrets/k" and "a//b" cannot slip past "secrets/**"), and numbers as JSON text."""
    if isinstance(value, bool) or value is None:
        return []
    if isinstance(value, int | float):
        return [repr(value)]
    if not isinstance(value, str):
        return []
    texts = [value]
    if value:
        normalized = posixpath.normpath(value.replace("\\", "/"))
        if normalized != value:
            texts.append(normalized)
    return texts


def _shown(value: JsonValue) -> str:
    """A value quoted for a rule string, cut short."""
    text = repr(value)
    return text if len(text) <= _MAX_SHOWN else text[: _MAX_SHOWN - 1] + "…"


def _did_you_mean(word: str, choices: Iterable[str]) -> str:
    close = difflib.get_close_matches(word, sorted(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


# ------------------------------------------------------------------ parsing


class _Parser:
    """Checks a parsed policy document, raising PolicyError at the line of the first mistake."""

    def __init__(self, source: str, text: str) -> None:
        self.source = source
        self.layout = _Layout(text)

    def fail(self, line: int, problem: str, fix: str) -> PolicyError:
        return PolicyError(self.source, line, problem, fix)

    def tables(self, document: Mapping[str, Any]) -> None:
        # Sorted by line, so the first typo in the file is the one reported.
        for key in sorted(document, key=self.layout.table):
            if key not in _TABLES:
                raise self.fail(
                    self.layout.table(key),
                    f"unknown table [{key}]",
                    "a policy file has only [tools], [[rules]], [limits] and [git]"
                    + _did_you_mean(key, _TABLES),
                )

    def table(self, document: Mapping[str, Any], name: str) -> Mapping[str, Any]:
        value = document.get(name, {})
        if not isinstance(value, Mapping):
            raise self.fail(
                self.layout.table(name),
                f"{name} must be a table",
                f"write it as a [{name}] header followed by key = value lines",
            )
        return value

    def tools(self, document: Mapping[str, Any]) -> dict[str, _ToolLevel]:
        levels: dict[str, _ToolLevel] = {}
        for tool, level in self.table(document, "tools").items():
            line = self.layout.key("tools", tool)
            if not _TOOL_NAME.fullmatch(tool):
                raise self.fail(
                    line,
                    f"{tool!r} is not a tool name",
                    "tool names are snake_case, e.g. write_file",
                )
            levels[tool] = _ToolLevel(self.level(level, line, f"[tools] {tool}"), line)
        return levels

    def level(self, value: Any, line: int, what: str) -> RiskLevel:
        if isinstance(value, str) and value in _LEVEL_VALUES:
            return RiskLevel(value)
        raise self.fail(line, f"{what} = {value!r} is not a risk level", f"use one of {_LEVELS}")

    def rules(self, document: Mapping[str, Any]) -> tuple[_Rule, ...]:
        entries = document.get("rules", [])
        if not isinstance(entries, list):
            raise self.fail(
                self.layout.table("rules"),
                "rules must be a list of tables",
                "start each rule with a [[rules]] header (two brackets)",
            )
        return tuple(self.rule(index, entry) for index, entry in enumerate(entries))

    def rule(self, index: int, entry: Any) -> _Rule:
        header = self.layout.rule(index)
        if not isinstance(entry, Mapping):
            raise self.fail(header, "a rule must be a table", "start it with a [[rules]] header")

        def line(key: str) -> int:
            return self.layout.rule_key(index, key)

        for key in sorted(entry, key=line):
            if key not in _RULE_KEYS:
                raise self.fail(
                    line(key),
                    f"unknown key {key!r} in a rule",
                    f"a rule has only {', '.join(_RULE_KEYS)}" + _did_you_mean(key, _RULE_KEYS),
                )
        tool = entry.get("tool", "*")
        if not isinstance(tool, str) or not (tool == "*" or _TOOL_NAME.fullmatch(tool)):
            raise self.fail(
                line("tool"),
                f"tool = {tool!r} is not a tool name",
                'give a snake_case tool name, e.g. tool = "write_file", or "*" for every tool',
            )
        argument = entry.get("argument")
        if not isinstance(argument, str) or not argument:
            raise self.fail(
                line("argument") if "argument" in entry else header,
                "a rule needs the argument it tests",
                'add e.g. argument = "path"',
            )
        if "matches" in entry and "above" in entry:
            raise self.fail(
                max(line("matches"), line("above")),
                "a rule has both matches and above",
                "keep one; write two [[rules]] to test both",
            )
        if "matches" not in entry and "above" not in entry:
            raise self.fail(
                header,
                "a rule has neither matches nor above",
                'add matches = "glob" (or a list of globs) or above = <number>',
            )
        globs: tuple[str, ...] = ()
        patterns: tuple[re.Pattern[str], ...] = ()
        above: int | float | None = None
        if "matches" in entry:
            globs = self.globs(entry["matches"], line("matches"), "matches")
            patterns = tuple(re.compile(fnmatch.translate(glob)) for glob in globs)
        else:
            above = entry["above"]
            if isinstance(above, bool) or not isinstance(above, int | float) or _bad_number(above):
                raise self.fail(
                    line("above"),
                    f"above = {above!r} is not a number",
                    "write a plain number without quotes, e.g. above = 100",
                )
        risk = self.level(entry.get("risk", "high"), line("risk"), "risk")
        if risk is RiskLevel.LOW:
            raise self.fail(
                line("risk"),
                'a rule with risk = "low" could never change a level (rules only raise)',
                'use "medium" or "high", or lower the tool itself in [tools]',
            )
        reason = entry.get("reason")
        if reason is not None and not isinstance(reason, str):
            raise self.fail(line("reason"), "reason must be text", 'write e.g. reason = "keys"')
        return _Rule(header, tool, argument, globs, patterns, above, risk, reason or None)

    def globs(self, value: Any, line: int, what: str) -> tuple[str, ...]:
        globs = [value] if isinstance(value, str) else value
        if not isinstance(globs, list) or not globs or not all(isinstance(g, str) for g in globs):
            raise self.fail(
                line,
                f"{what} must be a glob or a non-empty list of globs",
                f'write e.g. {what} = "secrets/**" or {what} = ["*.pem", "*.key"]',
            )
        for glob in globs:
            problem = _glob_problem(glob)
            if problem:
                raise self.fail(line, f"glob {glob!r} {problem}", "fix the glob")
        return tuple(globs)

    def limits(self, document: Mapping[str, Any]) -> tuple[int | float, int | None]:
        limits = self.table(document, "limits")
        self.known_keys("limits", limits, ("amount",))
        if "amount" not in limits:
            return 0, None
        amount, line = limits["amount"], self.layout.key("limits", "amount")
        if isinstance(amount, bool) or not isinstance(amount, int | float) or _bad_number(amount):
            raise self.fail(line, f"amount = {amount!r} is not a number", "write e.g. amount = 100")
        if amount < 0:
            raise self.fail(line, "amount must not be negative", "write 0 or more")
        return amount, line

    def git(self, document: Mapping[str, Any]) -> tuple[tuple[str, ...], int | None]:
        git = self.table(document, "git")
        self.known_keys("git", git, ("protected_branches",))
        if "protected_branches" not in git:
            return DEFAULT_PROTECTED_BRANCHES, None
        line = self.layout.key("git", "protected_branches")
        value = git["protected_branches"]
        if not isinstance(value, list) or not value:
            # An empty list would switch the built-in rule off, which no file may do.
            raise self.fail(
                line,
                "protected_branches must be a non-empty list",
                'list at least one branch or glob, e.g. ["main", "release/*"]',
            )
        return self.globs(value, line, "protected_branches"), line

    def known_keys(self, table: str, values: Mapping[str, Any], allowed: Sequence[str]) -> None:
        for key in sorted(values, key=lambda k: self.layout.key(table, k)):
            if key not in allowed:
                raise self.fail(
                    self.layout.key(table, key),
                    f"unknown key {key!r} in [{table}]",
                    f"[{table}] has only {', '.join(allowed)}" + _did_you_mean(key, allowed),
                )


def _bad_number(value: int | float) -> bool:
    return isinstance(value, float) and not math.isfinite(value)


def _glob_problem(glob: str) -> str | None:
    """Why a glob cannot work as meant, or None. fnmatch itself accepts anything (an unclosed
    '[' is taken literally, a reversed range matches nothing), which hides typos."""
    if not glob:
        return "is empty"
    i = 0
    while i < len(glob):
        if glob[i] != "[":
            i += 1
            continue
        # The same bracket scan as fnmatch.translate: "!" negates, a leading "]" is literal.
        j = i + 1
        if j < len(glob) and glob[j] == "!":
            j += 1
        if j < len(glob) and glob[j] == "]":
            j += 1
        while j < len(glob) and glob[j] != "]":
            j += 1
        if j >= len(glob):
            return f"has an unclosed '[' at character {i + 1} (write [[] for a literal '[')"
        body = glob[i + 1 : j].lstrip("!")
        for k in range(1, len(body) - 1):
            if body[k] == "-" and body[k - 1] > body[k + 1]:
                return f"has a reversed range {body[k - 1]}-{body[k + 1]} that matches nothing"
        i = j + 1
    try:
        re.compile(fnmatch.translate(glob))
    except re.error as exc:  # not expected from fnmatch's output, but never let it pass silently
        return f"does not compile ({exc})"
    return None


# ------------------------------------------------------------------ where things are in the text


@dataclass
class _Section:
    """A table in the file: its dotted name, whether it is a [[array]] entry, its header line,
    and the line of each key in it (by first component of a dotted key)."""

    name: tuple[str, ...]
    array: bool
    line: int
    keys: dict[str, int]


_KEY = r"""(?:"(?:[^"\\]|\\.)*"|'[^']*'|[A-Za-z0-9_-]+)"""
_KEY_LINE = re.compile(rf"({_KEY})\s*[.=]")
_KEY_PART = re.compile(_KEY)


def _unquote(key: str) -> str:
    """A bare or quoted TOML key as the name tomllib gives it."""
    if key[:1] not in ("'", '"'):
        return key
    try:  # a quoted key is a TOML string, escapes and all
        return str(tomllib.loads(f"k = {key}")["k"])
    except tomllib.TOMLDecodeError:
        return key[1:-1]


class _Layout:
    """Line numbers of tables and keys in a TOML text that tomllib has already accepted.

    tomllib reports no positions for valid documents, so this scans the text: a line starting
    outside any string, array or inline table is a header or a key. Strings and brackets are
    tracked across lines, so a multi-line array or string never looks like a header.
    """

    def __init__(self, text: str) -> None:
        self.sections = [_Section((), False, 1, {})]
        depth, closing = 0, ""
        for number, raw in enumerate(text.splitlines(), start=1):
            if not closing and depth == 0:
                stripped = raw.lstrip()
                if stripped.startswith("["):
                    array = stripped.startswith("[[")
                    body = stripped[2 if array else 1 :]
                    parts = []
                    for match in _KEY_PART.finditer(body):
                        parts.append(_unquote(match.group()))
                        rest = body[match.end() :].lstrip()
                        if not rest.startswith("."):
                            break
                        body = rest[1:]
                    self.sections.append(_Section(tuple(parts), array, number, {}))
                    continue  # a header line holds nothing else but a comment
                key = _KEY_LINE.match(stripped)
                if key:
                    self.sections[-1].keys.setdefault(_unquote(key.group(1)), number)
            depth, closing = _advance(raw, depth, closing)

    def table(self, name: str) -> int:
        """The first line defining top-level ``name`` (a header or a root key)."""
        lines = [s.line for s in self.sections if s.name[:1] == (name,)]
        if name in self.sections[0].keys:
            lines.append(self.sections[0].keys[name])
        return min(lines, default=1)

    def key(self, table: str, key: str) -> int:
        """The line of ``key`` in ``[table]``, else of the table itself."""
        for section in self.sections:
            if section.name == (table,) and key in section.keys:
                return section.keys[key]
            if section.name == (table, key):
                return section.line
        return self.table(table)

    def rule(self, index: int) -> int:
        """The header line of the index-th ``[[rules]]`` entry."""
        headers = [s for s in self.sections if s.name == ("rules",) and s.array]
        return headers[index].line if index < len(headers) else self.table("rules")

    def rule_key(self, index: int, key: str) -> int:
        """The line of ``key`` in the index-th rule, else its header line."""
        headers = [s for s in self.sections if s.name == ("rules",) and s.array]
        if index < len(headers):
            return headers[index].keys.get(key, headers[index].line)
        return self.table("rules")


def _advance(line: str, depth: int, closing: str) -> tuple[int, str]:
    """The bracket depth and open multi-line string delimiter after scanning ``line``."""
    i, n = 0, len(line)
    while i < n:
        if closing:
            if closing == '"""' and line[i] == "\\":
                i += 2
            elif line.startswith(closing, i):
                i, closing = i + 3, ""
            else:
                i += 1
            continue
        char = line[i]
        if char == "#":
            break
        if line.startswith(('"""', "'''"), i):
            closing, i = line[i : i + 3], i + 3
        elif char == '"':
            i += 1
            while i < n and line[i] != '"':
                i += 2 if line[i] == "\\" else 1
            i += 1
        elif char == "'":
            end = line.find("'", i + 1)
            i = n if end < 0 else end + 1
        else:
            if char in "[{":
                depth += 1
            elif char in "]}":
                depth -= 1
            i += 1
    return depth, closing
