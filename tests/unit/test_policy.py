"""The risk policy: declared levels, [tools] overrides, [[rules]], the built-in rules no file can
lower, and errors that name the file and line of the mistake."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import JsonValue

from agentledger.actors.policy import Assessment, PolicyError, RiskPolicy
from agentledger.actors.tools import default_registry
from agentledger.events import ConfigurationError, RiskLevel

LOW, MEDIUM, HIGH = RiskLevel.LOW, RiskLevel.MEDIUM, RiskLevel.HIGH
RANK = {LOW: 0, MEDIUM: 1, HIGH: 2}


def policy(text: str) -> RiskPolicy:
    return RiskPolicy.from_text(text, source="policy.toml")


# ------------------------------------------------------------------ declarations and [tools]


def test_defaults_keep_each_built_in_tools_declared_level() -> None:
    registry = default_registry()
    harmless: dict[str, dict[str, JsonValue]] = {
        "read_file": {"path": "a.txt"},
        "write_file": {"path": "a.txt", "content": "x"},
        "git_merge": {"branch": "feature"},
    }
    for name in registry.names():
        declared = registry.get(name).risk
        assessed = RiskPolicy().assess(name, harmless.get(name, {}), declared)
        assert assessed == Assessment(declared, f"declared by tool {name}")
    assert RiskPolicy().source is None


def test_an_unknown_tool_is_high_whatever_the_file_says() -> None:
    lenient = policy('[tools]\nmystery = "low"\n')
    assert lenient.assess("mystery", {}, None) == Assessment(HIGH, "unknown tool: high")
    assert RiskPolicy().assess("read_file", {}, None) == Assessment(HIGH, "unknown tool: high")


def test_tools_table_lowers_and_raises_declared_levels_and_names_its_line() -> None:
    p = policy('# operator choices\n[tools]\nrun_shell = "low"\nread_file = "high"\n')
    assert p.assess("run_shell", {"command": "ls"}, MEDIUM) == Assessment(
        LOW, "policy.toml line 3: [tools] run_shell = low (declared medium)"
    )
    assert p.assess("read_file", {"path": "a"}, LOW) == Assessment(
        HIGH, "policy.toml line 4: [tools] read_file = high (declared low)"
    )
    assert p.assess("write_file", {"path": "a"}, MEDIUM).rule == "declared by tool write_file"


def test_tools_table_cannot_lower_a_tool_that_deletes_pays_or_merges() -> None:
    p = policy(
        "[tools]\n"
        + "".join(
            f'{name} = "low"\n'
            for name in (
                "delete_file",
                "git_merge",
                "pay_invoice",
                "drop_table",
                "export_user_data",
            )
        )
    )
    for name, part in [
        ("delete_file", "delete"),
        ("git_merge", "merge"),
        ("pay_invoice", "pay"),
        ("drop_table", "drop"),
        ("export_user_data", "user_data"),
    ]:
        assessed = p.assess(name, {}, HIGH)
        assert assessed.risk is HIGH
        assert f"contains {part!r}: affects user data or financial state" in assessed.rule


# ------------------------------------------------------------------ [[rules]]

RULES = """
[[rules]]
argument = "path"
matches = ["secrets/**", "*.pem"]
reason = "credentials"

[[rules]]
tool = "run_python"
argument = "timeout_s"
above = 120
risk = "medium"
"""


@pytest.mark.parametrize(
    ("tool", "arguments", "declared", "expected"),
    [
        ("read_file", {"path": "secrets/db/key"}, LOW, (HIGH, "line 2: path matches 'secrets/**'")),
        ("read_file", {"path": "./secrets/key"}, LOW, (HIGH, "matches 'secrets/**'")),
        ("read_file", {"path": "a//secrets/../secrets/k"}, LOW, (HIGH, "outside the workspace")),
        ("write_file", {"path": "certs/server.pem"}, MEDIUM, (HIGH, "matches '*.pem' → high")),
        ("read_file", {"path": "public/readme.md"}, LOW, (LOW, "declared by tool read_file")),
        ("run_python", {"timeout_s": 121}, LOW, (MEDIUM, "line 7: run_python timeout_s > 120")),
        ("run_python", {"timeout_s": "300"}, LOW, (MEDIUM, "timeout_s > 120 → medium")),
        ("run_python", {"timeout_s": 120}, LOW, (LOW, "declared by tool run_python")),
        ("run_shell", {"timeout_s": 500}, LOW, (LOW, "declared by tool run_shell")),
    ],
)
def test_rules_raise_the_level_when_they_match(
    tool: str,
    arguments: dict[str, JsonValue],
    declared: RiskLevel,
    expected: tuple[RiskLevel, str],
) -> None:
    assessed = policy(RULES).assess(tool, arguments, declared)
    assert assessed.risk is expected[0]
    assert expected[1] in assessed.rule


def test_a_rule_names_its_reason_and_a_list_argument_matches_by_item() -> None:
    assessed = policy(RULES).assess("git_commit", {"paths": ["a.py"], "path": ["x", "k.pem"]}, LOW)
    assert assessed == Assessment(
        HIGH, "policy.toml line 2: path matches '*.pem' → high (credentials)"
    )


def test_a_rule_never_lowers_a_declared_level() -> None:
    p = policy('[[rules]]\nargument = "path"\nmatches = "*"\nrisk = "medium"\n')
    assert p.assess("write_file", {"path": "a"}, HIGH) == Assessment(
        HIGH, "declared by tool write_file"
    )


def test_the_highest_matching_rule_wins_and_ties_go_to_the_first_in_the_file() -> None:
    p = policy(
        '[[rules]]\nargument = "q"\nmatches = "*"\nrisk = "medium"\n'  # line 1
        '[[rules]]\nargument = "q"\nmatches = "a*"\nreason = "first high"\n'  # line 5
        '[[rules]]\nargument = "q"\nmatches = "ab"\nreason = "second high"\n'  # line 9
    )
    assert p.assess("search_docs", {"q": "ab"}, LOW).rule == (
        "policy.toml line 5: q matches 'a*' → high (first high)"
    )
    assert (
        p.assess("search_docs", {"q": "zz"}, LOW).rule
        == "policy.toml line 1: q matches '*' → medium"
    )


def test_the_reported_rule_does_not_depend_on_argument_order() -> None:
    p = policy(
        '[[rules]]\nargument = "a"\nmatches = "*"\n[[rules]]\nargument = "b"\nmatches = "*"\n'
    )
    forward = p.assess("tool_x", {"a": "1", "b": "2", "path": "/x", "file": "../y"}, LOW)
    backward = p.assess("tool_x", {"file": "../y", "path": "/x", "b": "2", "a": "1"}, LOW)
    assert (
        forward == backward == Assessment(HIGH, "file '../y' points outside the workspace → high")
    )


# ------------------------------------------------------------------ built-in rules


@pytest.mark.parametrize(
    "arguments",
    [
        {"path": "/etc/passwd"},
        {"path": "../outside.txt"},
        {"path": "a/../../b"},
        {"path": "~/notes"},
        {"path": "C:\\Windows"},
        {"path": "a\\..\\..\\b"},
        {"paths": ["ok.txt", "/abs"]},
        {"target": "/x"},
        {"DEST": "../x"},
        {"output_path": "/tmp/x"},
        {"options": {"src": "/etc"}},
    ],
)
def test_a_path_outside_the_workspace_is_high(arguments: dict[str, JsonValue]) -> None:
    assessed = RiskPolicy().assess("read_file", arguments, LOW)
    assert assessed.risk is HIGH
    assert "points outside the workspace → high" in assessed.rule


def test_workspace_relative_paths_and_non_path_arguments_keep_the_declared_level() -> None:
    for arguments in [{"path": "a/b..c/d"}, {"path": "./x"}, {"content": "/etc/passwd"}]:
        assert RiskPolicy().assess("write_file", arguments, MEDIUM).risk is MEDIUM


@pytest.mark.parametrize(
    ("arguments", "high"),
    [
        ({"amount": 0}, False),
        ({"amount": 0.01}, True),
        ({"Price": 3}, True),
        ({"shipping_amount": 1}, True),
        ({"order": {"total": 5}}, True),
        ({"amount": -20}, True),  # a negative payment moves money too
        ({"amount": "12.50"}, True),
        ({"amount": "$12"}, True),  # unreadable: fail closed
        ({"amount": None}, False),
        ({"amounts_shown": 9}, False),
    ],
)
def test_a_money_argument_is_high(arguments: dict[str, JsonValue], high: bool) -> None:
    assessed = RiskPolicy().assess("quote", arguments, LOW)
    assert (assessed.risk is HIGH) is high
    if high:
        assert "affects financial state" in assessed.rule


def test_limits_amount_raises_the_money_threshold_but_not_above_it() -> None:
    p = policy("[limits]\namount = 100\n")
    assert p.assess("quote", {"amount": 100}, LOW).risk is LOW
    assert p.assess("quote", {"amount": 100.5}, LOW) == Assessment(
        HIGH,
        "amount 100.5 affects financial state "
        "(over the limit 100 set in policy.toml line 2) → high",
    )


@pytest.mark.parametrize(
    ("branch", "high"),
    [("main", True), ("master", True), ("release/2.0", True), ("refs/heads/main", True),
     ("feature/x", False), ("mainline", False)],
)  # fmt: skip
def test_a_protected_branch_is_high(branch: str, high: bool) -> None:
    assessed = RiskPolicy().assess("git_push", {"branch": branch}, LOW)
    assert (assessed.risk is HIGH) is high
    if high:
        assert assessed.rule == f"branch {branch!r} is a protected branch → high"


def test_git_protected_branches_replaces_the_defaults() -> None:
    p = policy('[git]\nprotected_branches = ["trunk", "prod/*"]\n')
    assert p.assess("git_push", {"branch": "main"}, LOW).risk is LOW
    assert p.assess("git_push", {"target_branch": "prod/eu"}, LOW) == Assessment(
        HIGH, "target_branch 'prod/eu' is a protected branch (policy.toml line 2) → high"
    )


def test_no_file_can_lower_the_built_in_rules() -> None:
    p = policy(
        '[tools]\nread_file = "low"\ngit_push = "low"\nquote = "low"\n[limits]\namount = 10\n'
    )
    assert p.assess("read_file", {"path": "/etc/shadow"}, MEDIUM).risk is HIGH
    assert p.assess("git_push", {"branch": "main"}, MEDIUM).risk is HIGH
    assert p.assess("quote", {"cost": 11}, MEDIUM).risk is HIGH


# ------------------------------------------------------------------ errors


@pytest.mark.parametrize(
    ("text", "line", "says"),
    [
        ('[tools]\nread_file = "low"\nwrite_file = low\n', 3, "TOML syntax error"),
        ('[[rules]]\nargument = "path"\nmatches = "a\n', 3, "TOML syntax error"),
        ('[tools]\nread_file = "low"\n\nrun_shell = "hihg"\n', 4, "'hihg' is not a risk level"),
        ('\n[[rules]]\nargument = "x"\nmatches = "*"\nrisk = "severe"\n', 5, "not a risk level"),
        ('[[rules]]\nargument = "a"\nmatches = "*"\n\n[[rules]]\nargument = "b"\nmatch = "*"\n',
         7, "unknown key 'match' in a rule"),
        ('[[rules]]\nargument = "a"\nmatches = "*"\nabove = 3\n', 4, "both matches and above"),
        ('[tools]\n\n[[rules]]\nargument = "a"\nrisk = "high"\n', 3, "neither matches nor above"),
        ('[[rules]]\nargument = "a"\nabove = "ten"\n', 3, "above = 'ten' is not a number"),
        ('[[rules]]\nargument = "a"\nabove = nan\n', 3, "is not a number"),
        ('[[rules]]\nargument = "a"\nabove = true\n', 3, "is not a number"),
        ('[tools]\nread_file = "low"\n[toolz]\nx = 1\n', 3, "unknown table [toolz]"),
        ('approvers = ["ann"]\n', 1, "unknown table [approvers]"),
        ('[[rules]]\nargument = "a"\nmatches = ["ok", "[abc"]\n', 3, "unclosed '['"),
        ('[[rules]]\nargument = "a"\nmatches = "[z-a]"\n', 3, "reversed range"),
        ('[[rules]]\nargument = "a"\nmatches = []\n', 3, "non-empty list of globs"),
        ('[[rules]]\nmatches = "*"\n', 1, "needs the argument"),
        ('[[rules]]\nargument = "a"\nmatches = "*"\nrisk = "low"\n', 4, "could never change"),
        ('[[rules]]\ntool = "Write File"\nargument = "a"\nabove = 1\n', 2, "not a tool name"),
        ('[limits]\namount = -1\n', 2, "must not be negative"),
        ('[limits]\namont = 1\n', 2, "unknown key 'amont' in [limits]"),
        ('[git]\nprotected_branches = []\n', 2, "non-empty list"),
        ('tools = "all low"\n', 1, "tools must be a table"),
        ('[tools]\n"Read File" = "low"\n', 2, "is not a tool name"),
    ],
)  # fmt: skip
def test_errors_name_the_file_the_line_and_the_fix(text: str, line: int, says: str) -> None:
    with pytest.raises(PolicyError) as raised:
        policy(text)
    error = raised.value
    assert isinstance(error, ConfigurationError)
    assert (error.source, error.line) == ("policy.toml", line)
    message = str(error)
    assert message.startswith(f"policy.toml line {line}: ")
    assert says in message
    assert "; " in message  # the fix follows the problem


def test_errors_suggest_the_name_that_was_probably_meant() -> None:
    with pytest.raises(PolicyError, match=r"did you mean 'matches'\?"):
        policy('[[rules]]\nargument = "a"\nmatchs = "*"\n')
    with pytest.raises(PolicyError, match=r"did you mean 'rules'\?"):
        policy('[[rule]]\nargument = "a"\n')


def test_lines_are_found_past_multi_line_strings_and_arrays() -> None:
    text = (
        '[[rules]]\nargument = "a"\nmatches = [\n  "[x]",\n  "y",\n]\n'
        'reason = """\n[[rules]]\nnot a header\n"""\n'
        '[[rules]]\nargument = "b"\nabove = 1\nrisky = "high"\n'
    )
    with pytest.raises(PolicyError) as raised:
        policy(text)
    assert raised.value.line == 14


def test_load_reads_a_real_file_and_errors_name_its_path(tmp_path: Path) -> None:
    path = tmp_path / "policy.toml"
    path.write_text(
        '[tools]\nrun_shell = "high"\n\n[[rules]]\nargument = "path"\nmatches = "*.env"\n'
    )
    loaded = RiskPolicy.load(path)
    assert loaded.source == str(path)
    assert loaded.assess("run_shell", {}, MEDIUM) == Assessment(
        HIGH, f"{path} line 2: [tools] run_shell = high (declared medium)"
    )
    assert loaded.assess("read_file", {"path": "prod.env"}, LOW) == Assessment(
        HIGH, f"{path} line 4: path matches '*.env' → high"
    )
    path.write_text('[tools]\nrun_shell = "high"\nread_file = "none"\n')
    with pytest.raises(PolicyError, match=rf"^{path} line 3: "):
        RiskPolicy.load(path)
    with pytest.raises(PolicyError, match="no such policy file"):
        RiskPolicy.load(tmp_path / "missing.toml")
    path.write_bytes(b'[tools]\nread_file = "low"\n# caf\xe9\n')
    with pytest.raises(PolicyError, match=rf"^{path} line 3: .*UTF-8"):
        RiskPolicy.load(path)


def test_check_tools_catches_a_misspelt_tool_name() -> None:
    p = policy(
        '[tools]\nread_file = "low"\n[[rules]]\ntool = "run_shel"\nargument = "c"\nabove = 1\n'
    )
    known = default_registry().names()
    with pytest.raises(PolicyError) as raised:
        p.check_tools(known)
    assert raised.value.line == 3
    assert "did you mean 'run_shell'?" in str(raised.value)
    policy('[tools]\nread_file = "low"\n').check_tools(known)


# ------------------------------------------------------------------ describe


def test_describe_lists_every_rule_one_per_line() -> None:
    text = '[tools]\nrun_shell = "high"\n' + RULES + "[limits]\namount = 25\n"
    lines = policy(text).describe().splitlines()
    assert lines[0] == "risk policy: policy.toml"
    assert "an unknown tool → high, always" in lines
    assert "policy.toml line 2: [tools] run_shell = high" in lines
    assert "policy.toml line 4: path matches 'secrets/**' or '*.pem' → high (credentials)" in lines
    assert "policy.toml line 9: run_python timeout_s > 120 → medium" in lines
    builtins = [line for line in lines if line.startswith("built-in: ")]
    assert len(builtins) == 4
    assert any("over 25 (policy.toml line 15)" in line for line in builtins)
    assert any("main, master, release/*" in line for line in builtins)
    defaults = RiskPolicy().describe()
    assert "built-in rules only" in defaults and "policy.toml" not in defaults


# ------------------------------------------------------------------ properties

_names = st.sampled_from(["path", "q", "n", "mode"])
_scalars = st.one_of(
    st.text(alphabet="ab/.*x", max_size=6), st.integers(-5, 300), st.floats(-5, 300)
)
_arguments = st.dictionaries(
    _names, st.one_of(_scalars, st.lists(_scalars, max_size=3)), max_size=4
)
_rule = st.tuples(
    st.sampled_from(["*", "read_file", "write_file", "tool_x"]),
    _names,
    st.one_of(
        st.lists(st.text(alphabet="ab/.*x?", min_size=1, max_size=5), min_size=1, max_size=2),
        st.integers(-5, 300),
    ),
    st.sampled_from(["medium", "high"]),
)


def _policy_text(rules: list[tuple[str, str, list[str] | int, str]]) -> str:
    text = ""
    for tool, argument, test, risk in rules:
        key = "above" if isinstance(test, int) else "matches"
        text += f"[[rules]]\ntool = {json.dumps(tool)}\nargument = {json.dumps(argument)}\n"
        text += f"{key} = {json.dumps(test)}\nrisk = {json.dumps(risk)}\n\n"
    return text


@settings(max_examples=150, deadline=None)
@given(
    rules=st.lists(_rule, max_size=4),
    extra=_rule,
    tool=st.sampled_from(["read_file", "write_file", "tool_x"]),
    declared=st.sampled_from(list(RiskLevel)),
    arguments=_arguments,
)
def test_rules_never_lower_the_level_and_adding_one_never_lowers_it(
    rules: list[tuple[str, str, list[str] | int, str]],
    extra: tuple[str, str, list[str] | int, str],
    tool: str,
    declared: RiskLevel,
    arguments: dict[str, JsonValue],
) -> None:
    before = policy(_policy_text(rules)).assess(tool, arguments, declared)
    after = policy(_policy_text([*rules, extra])).assess(tool, arguments, declared)
    assert RANK[before.risk] >= RANK[declared]
    assert RANK[after.risk] >= RANK[before.risk]
    reordered = dict(reversed(list(arguments.items())))
    assert policy(_policy_text(rules)).assess(tool, reordered, declared) == before


def test_the_documented_example_policy_loads_and_does_what_its_comments_say() -> None:
    example = Path(__file__).parents[2] / "docs" / "policy.example.toml"
    loaded = RiskPolicy.load(example)
    assert loaded.assess("run_shell", {"command": "ls"}, MEDIUM).risk is HIGH  # [tools]
    # Without that line, the lighter rule asks a human for matching commands only.
    lines = example.read_text().splitlines(keepends=True)
    lighter = RiskPolicy.from_text(
        "".join(line for line in lines if not line.startswith("run_shell =")), source="x.toml"
    )
    assert lighter.assess("run_shell", {"command": "rm -rf build"}, MEDIUM).risk is HIGH
    assert lighter.assess("run_shell", {"command": "ls"}, MEDIUM).risk is MEDIUM
    assert loaded.assess("write_file", {"path": "secrets/key"}, LOW).risk is HIGH
    assert loaded.assess("list_files", {}, MEDIUM).risk is LOW
