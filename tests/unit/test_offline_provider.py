"""OfflineProvider: the rule-based, deterministic default provider (not a language model)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from agentledger.actors import decisions as d
from agentledger.actors.models import ModelError, ModelProvider, ModelReply, ModelRequest
from agentledger.actors.offline import OfflineProvider
from agentledger.events import Role
from agentledger.projections.tokens import approx_tokens

LABEL = "offline rules (not a language model): "
FIVE_STEPS = (
    "Find out how long we keep audit logs, then summarise the retention docs; "
    "write a report to report.md. Then check that report.md mentions retention "
    "and then commit it."
)


def ask(purpose: str, sub_goal: str, **sections: str) -> ModelReply:
    """Ask the offline provider about ``sub_goal``, with more sections keyed by their names."""
    prompt = d.Prompt().add(d.SUB_GOAL, sub_goal)
    for name, text in sections.items():
        prompt.add(name, text)
    return OfflineProvider().complete(request(purpose, prompt.text()))


def request(purpose: str, prompt: str) -> ModelRequest:
    return ModelRequest(role=Role.COORDINATOR, model="any", purpose=purpose, prompt=prompt)


def act(sub_goal: str, **sections: str) -> d.Actions:
    return d.Actions.model_validate_json(ask("act", sub_goal, **sections).content)


def calls(actions: d.Actions) -> list[tuple[str, dict[str, object]]]:
    return [(call.tool, dict(call.arguments)) for call in actions.actions]


# ---------------------------------------------------------------- the provider itself


def test_is_a_model_provider_labelled_as_rules() -> None:
    provider = OfflineProvider()
    assert isinstance(provider, ModelProvider)
    assert provider.name == "offline"
    prompt = d.Prompt().add(d.GOAL, FIVE_STEPS).text()
    reply = provider.complete(request("plan", prompt))
    assert reply.model == "offline-rules"
    assert reply.input_tokens == approx_tokens(prompt) > 0
    assert reply.output_tokens == approx_tokens(reply.content) > 0
    assert reply.latency_ms >= 0


def test_unknown_purpose_is_a_model_error_naming_the_purposes() -> None:
    with pytest.raises(ModelError) as caught:
        OfflineProvider().complete(request("dance", d.Prompt().add(d.GOAL, "x").text()))
    message = str(caught.value)
    assert "'dance'" in message
    assert "plan, research, act, review, summarize" in message


@pytest.mark.parametrize("purpose", ["plan", "research", "act", "review"])
def test_a_prompt_without_its_main_section_is_a_model_error(purpose: str) -> None:
    with pytest.raises(ModelError) as caught:
        OfflineProvider().complete(request(purpose, "Please do the thing."))
    assert "section" in str(caught.value)
    assert "decisions.Prompt" in str(caught.value)


# ---------------------------------------------------------------- plan


def plan(goal: str) -> d.Plan:
    reply = OfflineProvider().complete(request("plan", d.Prompt().add(d.GOAL, goal).text()))
    return d.Plan.model_validate_json(reply.content)


def test_a_five_clause_goal_becomes_five_sequential_steps() -> None:
    result = plan(FIVE_STEPS)
    assert [(s.task_id, s.goal, s.role, s.depends_on) for s in result.steps] == [
        ("t1", "Find out how long we keep audit logs", "research", []),
        ("t2", "summarise the retention docs", "research", ["t1"]),
        ("t3", "write a report to report.md", "execution", ["t2"]),
        ("t4", "check that report.md mentions retention", "execution", ["t3"]),
        ("t5", "commit it", "execution", ["t4"]),
    ]
    assert result.reasoning.startswith(LABEL)
    assert "5 steps" in result.reasoning
    assert all(step.reasoning.startswith(LABEL) for step in result.steps)


def test_bullets_and_numbered_lines_are_steps() -> None:
    result = plan("- Look up the API limits\n- draft a memo to memo.md\n1. Run `make`\n2. Commit")
    assert [(s.goal, s.role) for s in result.steps] == [
        ("Look up the API limits", "research"),
        ("draft a memo to memo.md", "execution"),
        ("Run `make`", "execution"),
        ("Commit", "execution"),
    ]


def test_three_or_fewer_clauses_stay_one_task_for_one_worker() -> None:
    goal = "Research the retention policy and then write it to notes.md"
    result = plan(goal)
    assert [(s.task_id, s.goal, s.role, s.depends_on) for s in result.steps] == [
        ("t1", goal, "execution", [])
    ]
    assert result.reasoning.startswith(LABEL)


def test_a_short_all_research_goal_is_one_research_task() -> None:
    [step] = plan("Investigate the outage; then compare it with last year's").steps
    assert step.role == "research"


# ---------------------------------------------------------------- research

SOURCES = "\n".join(
    [
        "- docs/ops.md:3: Rotate logs weekly and keep compressed copies.",
        "- memory m-3: The team prefers tea to coffee.",
        "- docs/retention.md:12: Audit logs are kept for 90 days, then deleted.",
        "- memory m-7: Audit trails are signed.",
        "- docs/logs.md:1: Logs live in /var/log.",
    ]
)


def test_research_keeps_the_three_best_overlapping_sources() -> None:
    reply = ask("research", "How long are audit logs kept?", **{d.SOURCES: SOURCES})
    findings = d.Findings.model_validate_json(reply.content)
    # retention.md shares audit+logs+kept; the rest share one word each, first given first.
    assert findings.sources == ["docs/retention.md:12", "docs/ops.md:3", "memory m-7"]
    lines = findings.answer.splitlines()
    assert lines[0] == "Found 3 relevant passages for: How long are audit logs kept?"
    assert lines[1].startswith("- Audit logs are kept for 90 days")
    assert "tea" not in findings.answer
    assert findings.reasoning.startswith(LABEL)


def test_research_keeps_one_memory_however_well_earlier_runs_match() -> None:
    # Each earlier run of the same goal left a memory that repeats the goal word for word:
    # one is kept, and the run's own documents fill the rest.
    sources = "\n".join(
        [
            "- docs/retention.md:12: Audit logs are kept for 90 days",
            "- docs/ops.md:3: logs rotate nightly",
            "- memory mem-1: Run run-1 reached 'How long are audit logs kept?'",
            "- memory mem-2: Run run-2 reached 'How long are audit logs kept?'",
        ]
    )
    reply = ask("research", "How long are audit logs kept?", **{d.SOURCES: sources})
    findings = d.Findings.model_validate_json(reply.content)
    assert findings.sources == ["memory mem-1", "docs/retention.md:12", "docs/ops.md:3"]


def test_research_without_a_matching_source_says_so() -> None:
    reply = ask("research", "Which GPU do we rent?", **{d.SOURCES: SOURCES})
    findings = d.Findings.model_validate_json(reply.content)
    assert findings.answer == (
        "No source in the docs folder or long-term memory mentions: Which GPU do we rent?"
    )
    assert findings.sources == []


def test_research_with_no_sources_section_finds_nothing() -> None:
    findings = d.Findings.model_validate_json(ask("research", "audit logs").content)
    assert findings.sources == []
    assert findings.answer.startswith("No source")


# ---------------------------------------------------------------- act


@pytest.mark.parametrize(
    ("sub_goal", "expected"),
    [
        ("Run `pytest -q`", [("run_shell", {"command": "pytest -q"})]),
        ("run the command `ls -la`", [("run_shell", {"command": "ls -la"})]),
        ("run python `print(2 + 2)`", [("run_python", {"code": "print(2 + 2)"})]),
        ("Delete old/notes.txt", [("delete_file", {"path": "old/notes.txt"})]),
        ("remove the file 'draft.md'", [("delete_file", {"path": "draft.md"})]),
        ("merge feature/retention", [("git_merge", {"branch": "feature/retention"})]),
        ("merge the branch `hotfix`", [("git_merge", {"branch": "hotfix"})]),
        ("list files", [("list_files", {})]),
        ("read docs/a.md", [("read_file", {"path": "docs/a.md"})]),
        ('commit with message "Add the report"', [("git_commit", {"message": "Add the report"})]),
        ("commit the changes", [("git_commit", {"message": "agentledger: commit the changes"})]),
    ],
)
def test_act_turns_wording_into_tool_calls(
    sub_goal: str, expected: list[tuple[str, dict[str, object]]]
) -> None:
    actions = act(sub_goal)
    assert calls(actions) == expected
    assert all(call.reasoning.startswith(LABEL + "matched '") for call in actions.actions)
    assert actions.reasoning.startswith(LABEL)


def test_write_puts_a_title_and_the_earlier_results_in_the_file() -> None:
    actions = act(
        "Write a summary of the retention policy to `report.md`",
        **{d.INPUTS: "Audit logs are kept 90 days."},
    )
    assert calls(actions) == [
        (
            "write_file",
            {
                "path": "report.md",
                "content": "# A summary of the retention policy\n\nAudit logs are kept 90 days.\n",
            },
        )
    ]


def test_several_steps_come_in_text_order() -> None:
    actions = act("save the notes into notes/a.txt and commit it, then run `git log`")
    assert [call.tool for call in actions.actions] == ["write_file", "git_commit", "run_shell"]
    assert actions.actions[0].arguments == {"path": "notes/a.txt", "content": "# The notes\n"}


def test_words_inside_a_command_are_not_steps() -> None:
    assert calls(act("run `git commit -m wip && rm x.txt`")) == [
        ("run_shell", {"command": "git commit -m wip && rm x.txt"})
    ]


def test_unrecognised_wording_gives_no_calls_and_says_how_to_phrase_steps() -> None:
    actions = act("make the product better")
    assert actions.actions == []
    assert actions.reasoning.startswith(LABEL + "no tool step recognised")
    assert "'check that FILE mentions WORD'" in actions.reasoning
    assert "--model execution=openai:MODEL" in actions.reasoning


def test_feedback_is_acknowledged_but_does_not_change_the_calls() -> None:
    plain = act("run `make`")
    with_feedback = act("run `make`", **{d.FEEDBACK: "The build failed."})
    assert with_feedback.actions == plain.actions
    assert "feedback" in with_feedback.reasoning
    assert "feedback" not in plain.reasoning


def test_tools_not_offered_are_left_out_and_named() -> None:
    tools = "- write_file: write a file\n- read_file: read a file"
    actions = act("write a note to n.md and commit it", **{d.TOOLS: tools})
    assert [call.tool for call in actions.actions] == ["write_file"]
    assert "left out git_commit" in actions.reasoning


def check_code(sub_goal: str) -> str:
    [call] = act(sub_goal).actions
    assert call.tool == "run_python"
    code = call.arguments["code"]
    assert isinstance(code, str)
    return code


@pytest.mark.parametrize(
    ("sub_goal", "text", "exit_code"),
    [
        ("check that report.md mentions retention", "Our RETENTION policy.", 0),
        ("verify that report.md mentions retention", "Nothing about it.", 1),
        ('test that report.md contains "ninety days"', "Kept for Ninety Days.", 0),
        ('test that report.md contains "ninety days"', "Kept for ninety-one days.", 1),
    ],
)
def test_check_that_code_passes_only_when_the_file_mentions_the_phrase(
    tmp_path: Path, sub_goal: str, text: str, exit_code: int
) -> None:
    (tmp_path / "report.md").write_text(text, encoding="utf-8")
    done = subprocess.run(
        [sys.executable, "-c", check_code(sub_goal)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == exit_code
    if exit_code == 0:
        assert done.stdout.startswith("ok: report.md mentions ")
    else:
        assert "does not mention" in done.stderr


def test_check_that_code_fails_for_a_missing_file(tmp_path: Path) -> None:
    code = check_code("check that notes/missing.txt mentions anything")
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 1
    assert "does not exist" in done.stderr


# ---------------------------------------------------------------- review and summarize


def verdict(**sections: str) -> d.Verdict:
    reply = ask("review", "write the report", **sections)
    return d.Verdict.model_validate_json(reply.content)


def test_review_accepts_a_result_whose_checks_all_pass() -> None:
    result = verdict(**{d.RESULT: "wrote report.md", d.CHECKS: "- PASS: exists\n- PASS: words"})
    assert result == d.Verdict(accepted=True, reasons=LABEL + "all 2 checks passed")


def test_review_rejects_failed_checks_and_names_them() -> None:
    checks = "- PASS: exists\n- FAIL: mentions retention\n- FAIL: under 500 words"
    result = verdict(**{d.RESULT: "wrote report.md", d.CHECKS: checks})
    assert not result.accepted
    assert result.reasons == (LABEL + "2 of 3 checks failed: mentions retention; under 500 words")


def test_review_rejects_an_empty_result() -> None:
    result = verdict(**{d.CHECKS: "- PASS: exists"})
    assert not result.accepted
    assert "the result is empty" in result.reasons


def test_summary_keeps_a_count_and_the_newest_entries_within_the_word_bound() -> None:
    history = "\n".join(f"- entry {i}: " + "detail " * 40 for i in range(30))
    reply = OfflineProvider().complete(request("summarize", f"## history\n{history}"))
    summary = d.Summary.model_validate_json(reply.content).summary
    lines = summary.splitlines()
    assert lines[0].startswith("30 earlier entries (offline rules, not a language model")
    assert lines[-1].startswith("- entry 29:")
    assert "entry 0:" not in summary
    assert len(summary.split()) <= 200


# ---------------------------------------------------------------- determinism

_PRINT_REPLIES = """
from agentledger.actors import decisions as d
from agentledger.actors.models import ModelRequest
from agentledger.actors.offline import OfflineProvider
from agentledger.events import Role
import json, sys
for purpose, prompt in json.loads(sys.stdin.read()):
    request = ModelRequest(role=Role.COORDINATOR, model="m", purpose=purpose, prompt=prompt)
    print(OfflineProvider().complete(request).content)
"""


def determinism_requests() -> list[tuple[str, str]]:
    tools = "- write_file\n- run_shell\n- git_commit"
    return [
        ("plan", d.Prompt().add(d.GOAL, FIVE_STEPS).text()),
        ("research", d.Prompt().add(d.SUB_GOAL, "audit logs kept").add(d.SOURCES, SOURCES).text()),
        (
            "act",
            d.Prompt()
            .add(d.SUB_GOAL, "write notes to n.md, merge dev and commit it")
            .add(d.TOOLS, tools)
            .text(),
        ),
        ("review", d.Prompt().add(d.SUB_GOAL, "x").add(d.CHECKS, "- FAIL: a\n- FAIL: b").text()),
        ("summarize", "## history\n" + "\n".join(f"- e{i} " * 9 for i in range(40))),
    ]


def test_the_same_request_gets_byte_identical_content() -> None:
    for purpose, prompt in determinism_requests():
        first = OfflineProvider().complete(request(purpose, prompt))
        second = OfflineProvider().complete(request(purpose, prompt))
        assert first.content == second.content
        d.DECISIONS[purpose].model_validate_json(first.content)


@pytest.mark.parametrize("seed", ["0", "12345"])
def test_content_does_not_depend_on_the_hash_seed(seed: str) -> None:
    asked = determinism_requests()
    here = [OfflineProvider().complete(request(p, text)).content for p, text in asked]
    done = subprocess.run(
        [sys.executable, "-c", _PRINT_REPLIES],
        input=json.dumps(asked),
        env={**os.environ, "PYTHONHASHSEED": seed},
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert done.stdout.splitlines() == here
