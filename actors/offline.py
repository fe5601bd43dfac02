"""The ``offline`` provider: deterministic rules, not a language model (the no-network default).

It reads the ``## section`` prompts of ``agentledger.actors.decisions`` and answers each purpose
with the matching decision model as JSON. Every answer says it came from rules, and the same
request always gets byte-identical content: nothing here reads the clock, a random source or
the iteration order of a set.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass

from pydantic import BaseModel, JsonValue

from agentledger.actors import decisions as d
from agentledger.actors.models import ModelError, ModelReply, ModelRequest
from agentledger.projections.tokens import approx_tokens

__all__ = ["OfflineProvider"]

MODEL = "offline-rules"
_LABEL = "offline rules (not a language model): "
_GOAL_LIMIT = 5_000  # PlannedStep.goal's bound
_ANSWER_LIMIT = 50_000  # Findings.answer's and Summary.summary's bound
_MAX_ACTIONS = 50  # Actions.actions' bound
_SUMMARY_WORDS = 200  # whole summary, head line included
_LINE_WORDS = 25

# ------------------------------------------------------------------ plan

_BULLET = re.compile(r"^\s*(?:[-*•]|\d+[.)])\s+")
# Alternatives are tried left to right, so ", and then" is consumed whole before " then ".
_BREAK = re.compile(r";|(?<=[.!?])\s+|,?\s+and\s+then\s+|,\s*then\s+|\s+then\s+", re.IGNORECASE)
_LEADING = re.compile(
    r"^(?:(?:and\s+)?then|next|finally|first(?:ly)?|lastly|after\s+that|afterwards|also|please)"
    r"\b[,:]?\s*",
    re.IGNORECASE,
)


def _word_set(text: str) -> frozenset[str]:
    """A word list written as one string (reads better than a column of quoted words)."""
    return frozenset(text.split())


_RESEARCH_VERBS = _word_set(
    "research find search learn investigate read gather collect survey compare summarize "
    "summarise study explore identify determine"
)
_RESEARCH_PHRASES = ("look up", "look into", "find out")


def _clauses(goal: str) -> list[str]:
    """The goal's logical steps: its lines, cut at ';', sentence ends and 'then'."""
    found: list[str] = []
    for line in goal.splitlines():
        for piece in _BREAK.split(_BULLET.sub("", line)):
            clause = piece.strip().rstrip(".").strip()
            # Strip repeatedly: "Then, finally, write ..." carries two connectives.
            while (shorter := _LEADING.sub("", clause, count=1)) != clause:
                clause = shorter
            if clause:
                found.append(clause)
    return found


def _research_verb(clause: str) -> str | None:
    """The research verb the clause starts with, if any."""
    words = re.findall(r"[a-z]+", clause.lower())
    for phrase in _RESEARCH_PHRASES:
        if " ".join(words[:2]) == phrase:
            return phrase
    return words[0] if words and words[0] in _RESEARCH_VERBS else None


def _plan(parts: dict[str, str]) -> d.Plan:
    goal = _required(parts, d.GOAL, "plan")
    clauses = _clauses(goal) or [goal]
    verbs = [_research_verb(clause) for clause in clauses]
    if len(clauses) <= 3:
        # DESIGN: decompose only when there are more than three logical steps.
        role = "research" if all(verbs) else "execution"
        why = "every clause starts with a research verb" if all(verbs) else "not all research"
        return d.Plan(
            reasoning=_LABEL + f"the goal has {len(clauses)} step(s) (split at new lines, 'then', "
            "';' and sentence ends); three or fewer go to one worker as one task",
            steps=[
                d.PlannedStep(
                    task_id="t1", goal=goal[:_GOAL_LIMIT], role=role, reasoning=_LABEL + why
                )
            ],
        )
    if len(clauses) > 2_000:
        raise ModelError(
            f"offline provider: the goal splits into {len(clauses)} steps, more than a plan may "
            "hold (2000); split the goal into several runs"
        )
    steps = []
    for number, (clause, verb) in enumerate(zip(clauses, verbs, strict=True), start=1):
        why = f"starts with the research verb '{verb}'" if verb else "not a research verb"
        steps.append(
            d.PlannedStep(
                task_id=f"t{number}",
                goal=clause[:_GOAL_LIMIT],
                role="research" if verb else "execution",
                depends_on=[f"t{number - 1}"] if number > 1 else [],
                reasoning=_LABEL + why,
            )
        )
    return d.Plan(
        reasoning=_LABEL + "split the goal at new lines, 'then', ';' and sentence ends into "
        f"{len(steps)} steps; steps run in order",
        steps=steps,
    )


# ------------------------------------------------------------------ research

_NOTHING_FOUND = "No source in the docs folder or long-term memory mentions: "
_MEMORY_SOURCE = re.compile(r"memory [^\s:]+$")  # a memory by id; a document is PATH:LINE
_SOURCE_LINE = re.compile(r"^\s*[-*]\s*(?P<source>.+?):\s+(?P<snippet>.*\S)\s*$")
_STOPWORDS = _RESEARCH_VERBS | _word_set(
    "the and for with that this from into are was were what which how does did about our "
    "your their its has have had not but all any can will should would could there these "
    "those them they you who when where why also than then each use used using out look"
)


def _words(text: str) -> list[str]:
    """Lowercase content words of three letters or more, first occurrence order, no repeats."""
    found = (w for w in re.findall(r"[a-z]+", text.lower()) if len(w) >= 3 and w not in _STOPWORDS)
    return list(dict.fromkeys(found))


def _research(parts: dict[str, str]) -> d.Findings:
    sub_goal = _required(parts, d.SUB_GOAL, "research")
    wanted = _words(sub_goal)
    lines: list[tuple[str, str]] = []
    for line in parts.get(d.SOURCES, "").splitlines():
        match = _SOURCE_LINE.match(line)
        if match:
            lines.append((match["source"].strip(), match["snippet"].strip()))
        elif lines and line.strip():  # a wrapped snippet continues the previous source
            lines[-1] = (lines[-1][0], f"{lines[-1][1]} {line.strip()}")
    scored = [
        (sum(w in set(_words(f"{s} {t}")) for w in wanted), i, s, t)
        for i, (s, t) in enumerate(lines)
    ]
    # Best score first; equal scores keep the order the sources were given in. At most one
    # memory of an earlier run: they repeat its goal word for word, so they would outrank the
    # run's own documents each time a goal is asked again.
    best: list[tuple[int, int, str, str]] = []
    memories = 0
    for item in sorted((item for item in scored if item[0] > 0), key=lambda x: (-x[0], x[1])):
        memory = _MEMORY_SOURCE.match(item[2]) is not None
        if not (memory and memories):
            best.append(item)
            memories += memory
        if len(best) == 3:
            break
    if not best:
        return d.Findings(
            reasoning=_LABEL + f"none of {len(lines)} source lines shares a word with the sub-goal "
            f"({', '.join(wanted) or 'no content words'})",
            answer=_NOTHING_FOUND + sub_goal[:_GOAL_LIMIT],
            sources=[],
        )
    noun = "passage" if len(best) == 1 else "passages"
    body = "\n".join(f"- {text} ({source})" for _, _, source, text in best)
    return d.Findings(
        reasoning=_LABEL + f"ranked {len(lines)} source lines by words shared with the sub-goal "
        f"({', '.join(wanted)}); kept the top {len(best)}, at most one of them a memory",
        answer=f"Found {len(best)} relevant {noun} for: {sub_goal}\n{body}"[:_ANSWER_LIMIT],
        sources=[source for _, _, source, _ in best],
    )


# ------------------------------------------------------------------ act

_Q = r"`[^`\n]+`|\"[^\"\n]+\"|'[^'\n]+'"  # a quoted or backticked token
_PATH = rf"(?P<path>{_Q}|[\w\-./]*\w\.\w+|[\w\-.]+/[\w\-./]*\w)"
_NOT_BRANCHES = _word_set(
    "it them this that these those the results findings changes all everything"
)


@dataclass(frozen=True)
class _Rule:
    """One wording the act rules recognise, and the tool call it becomes."""

    name: str
    pattern: re.Pattern[str]
    build: Callable[[re.Match[str], dict[str, str]], tuple[str, dict[str, JsonValue]] | None]


def _unquote(token: str) -> str:
    return token[1:-1] if token[:1] in "`'\"" and token[-1:] == token[:1] else token


def _write(match: re.Match[str], parts: dict[str, str]) -> tuple[str, dict[str, JsonValue]]:
    path = _unquote(match["path"])
    title = " ".join(match["desc"].split()) or path
    body = parts.get(d.INPUTS, "").strip()
    content = f"# {title[:1].upper()}{title[1:]}\n" + (f"\n{body}\n" if body else "")
    return "write_file", {"path": path, "content": content}


def _check(match: re.Match[str], parts: dict[str, str]) -> tuple[str, dict[str, JsonValue]]:
    path, phrase = _unquote(match["path"]), _unquote(match["phrase"])
    # Exits 1 with the reason on stderr, so the run_python result carries why the check failed.
    code = (
        "import pathlib\nimport sys\n\n"
        f"path = pathlib.Path({path!r})\nphrase = {phrase!r}\n"
        "if not path.is_file():\n    sys.exit(f'check failed: {path} does not exist')\n"
        "if phrase.lower() not in path.read_text(encoding='utf-8', errors='replace').lower():\n"
        "    sys.exit(f'check failed: {path} does not mention {phrase!r}')\n"
        "print(f'ok: {path} mentions {phrase}')\n"
    )
    return "run_python", {"code": code}


def _commit(match: re.Match[str], parts: dict[str, str]) -> tuple[str, dict[str, JsonValue]]:
    first_line = parts[d.SUB_GOAL].strip().splitlines()[0]
    message = _unquote(match["msg"]) if match["msg"] else f"agentledger: {first_line[:60].rstrip()}"
    return "git_commit", {"message": message}


def _merge(match: re.Match[str], parts: dict[str, str]) -> tuple[str, dict[str, JsonValue]] | None:
    branch = _unquote(match["branch"])
    return None if branch.lower() in _NOT_BRANCHES else ("git_merge", {"branch": branch})


def _rule(
    name: str, pattern: str, build: Callable[..., tuple[str, dict[str, JsonValue]] | None]
) -> _Rule:
    return _Rule(name, re.compile(pattern, re.IGNORECASE), build)


# Order matters only for matches at the same position: 'run python `x`' before 'run `x`'.
_RULES = (
    _rule(
        "write X to FILE",
        rf"\b(?:write|create|draft|save|append)\b(?P<desc>[^;\n]*?)\b(?:to|in|into|as)\s+"
        rf"(?:the\s+)?(?:file\s+)?{_PATH}",
        _write,
    ),
    _rule(
        "run python `CODE`",
        r"\brun\s+(?:the\s+)?python(?:\s+code|\s+snippet)?\s*:?\s*`(?P<code>[^`]+)`",
        lambda m, p: ("run_python", {"code": m["code"]}),
    ),
    _rule(
        "run `COMMAND`",
        r"\b(?:run|execute)\s+(?:the\s+)?(?:shell\s+)?(?:command\s+)?:?\s*`(?P<cmd>[^`]+)`",
        lambda m, p: ("run_shell", {"command": m["cmd"]}),
    ),
    _rule(
        "check that FILE mentions WORD",
        rf"\b(?:check|verify|test|ensure|confirm)\s+(?:that\s+)?(?:the\s+file\s+)?{_PATH}\s+"
        rf"(?:mentions|contains|includes|has)\s+(?:the\s+(?:word|phrase)\s+)?(?P<phrase>{_Q}|[\w\-]+)",
        _check,
    ),
    _rule(
        "commit",
        rf"\bcommit\b(?:[^;\n\"'`]*?\b(?:message|-m)\s*:?\s*(?P<msg>{_Q}))?",
        _commit,
    ),
    _rule(
        "delete FILE",
        rf"\b(?:delete|remove)\s+(?:the\s+)?(?:(?:[a-z]+\s+){{0,2}}file\s+)?{_PATH}",
        lambda m, p: ("delete_file", {"path": _unquote(m["path"])}),
    ),
    _rule(
        "merge BRANCH",
        rf"\bmerge\s+(?:the\s+)?(?:branch\s+)?(?P<branch>{_Q}|[\w\-./]+)",
        _merge,
    ),
    _rule("list files", r"\blist\s+(?:the\s+|all\s+)?files\b", lambda m, p: ("list_files", {})),
    _rule(
        "read FILE",
        rf"\bread\s+(?:the\s+)?(?:(?:[a-z]+\s+){{0,2}}file\s+)?{_PATH}",
        lambda m, p: ("read_file", {"path": _unquote(m["path"])}),
    ),
)
_TOOL_NAMES = _word_set(
    "write_file run_python run_shell git_commit delete_file git_merge list_files read_file"
)
_NO_MATCH = (
    _LABEL + "no tool step recognised in the sub-goal; phrase steps as 'write X to FILE', "
    "'run `CMD`', 'check that FILE mentions WORD', 'commit', 'delete FILE', or use a real "
    "model with --model execution=openai:MODEL"
)


def _offered_tools(parts: dict[str, str]) -> list[str]:
    """Tool names listed in the tools section (first identifier of each line)."""
    names = re.findall(r"^\s*(?:[-*]\s*)?`?([A-Za-z_]\w*)", parts.get(d.TOOLS, ""), re.MULTILINE)
    return list(dict.fromkeys(names))


def _act(parts: dict[str, str]) -> d.Actions:
    sub_goal = _required(parts, d.SUB_GOAL, "act")
    found = sorted(
        (
            (m.start(), order, m, rule)
            for order, rule in enumerate(_RULES)
            for m in rule.pattern.finditer(sub_goal)
        ),
        key=lambda item: (item[0], item[1]),
    )
    offered = _offered_tools(parts)
    # Filter only when the tools section names tools these rules emit: another listing format
    # must not silently drop every call.
    filtering = any(tool in _TOOL_NAMES for tool in offered)
    calls: list[d.ToolCall] = []
    skipped: list[str] = []
    end = 0
    for start, _, match, rule in found:
        # A match inside an earlier one (a verb inside a backticked command, say) is not a step.
        if start < end or (built := rule.build(match, parts)) is None:
            continue
        end = match.end()
        tool, arguments = built
        if filtering and tool not in offered:
            skipped.append(tool)
            continue
        calls.append(
            d.ToolCall(
                tool=tool,
                arguments=arguments,
                reasoning=_LABEL + f"matched '{rule.name}' in the sub-goal",
            )
        )
    if not calls and not skipped:
        return d.Actions(actions=[], reasoning=_NO_MATCH)
    reasoning = _LABEL + f"{len(calls)} tool call(s) from the sub-goal's wording, in text order"
    if skipped:
        reasoning += f"; left out {', '.join(skipped)}: not among the offered tools"
    if len(calls) > _MAX_ACTIONS:
        reasoning += f"; kept the first {_MAX_ACTIONS} of {len(calls)}"
    if parts.get(d.FEEDBACK):
        reasoning += (
            "; review feedback was given, but these rules answer the same sub-goal the same way: "
            "reword the sub-goal or use a real model to act on the feedback"
        )
    return d.Actions(actions=calls[:_MAX_ACTIONS], reasoning=reasoning)


# ------------------------------------------------------------------ review and summarize

_CHECK_LINE = re.compile(r"^\s*(?:[-*]\s*)?(?P<status>PASS|FAIL)\b\s*:?\s*(?P<text>.*?)\s*$")


def _review(parts: dict[str, str]) -> d.Verdict:
    _required(parts, d.SUB_GOAL, "review")
    checks = [m for m in map(_CHECK_LINE.match, parts.get(d.CHECKS, "").splitlines()) if m]
    failed = [m["text"] or "(unnamed check)" for m in checks if m["status"] == "FAIL"]
    has_result = bool(parts.get(d.RESULT, "").strip())
    problems = [] if has_result else ["the result is empty"]
    if failed:
        problems.append(f"{len(failed)} of {len(checks)} checks failed: " + "; ".join(failed))
    if problems:
        return d.Verdict(accepted=False, reasons=_LABEL + "; ".join(problems))
    passed = f"all {len(checks)} checks passed" if checks else "no checks; the result is not empty"
    return d.Verdict(accepted=True, reasons=_LABEL + passed)


def _summarize(prompt: str) -> d.Summary:
    lines = [
        _BULLET.sub("", line).strip()
        for line in prompt.splitlines()
        if line.strip() and not line.startswith("## ")
    ]
    kept: list[str] = []
    budget = _SUMMARY_WORDS - 20  # room for the head line and each line's "-" and "…"
    for line in reversed(lines):  # the newest entries matter most to whoever reads on
        words = line.split()[:_LINE_WORDS]
        if len(words) + 2 > budget:
            break
        budget -= len(words) + 2
        kept.append(" ".join(words) + (" …" if len(line.split()) > _LINE_WORDS else ""))
    kept.reverse()
    head = (
        f"{len(lines)} earlier entries (offline rules, not a language model; "
        f"the last {len(kept)} kept, abridged)"
    )
    return d.Summary(summary="\n".join([head, *(f"- {line}" for line in kept)])[:_ANSWER_LIMIT])


# ------------------------------------------------------------------ the provider


def _required(parts: dict[str, str], name: str, purpose: str) -> str:
    text = parts.get(name, "").strip()
    if not text:
        raise ModelError(
            f"offline provider: a {purpose} prompt needs a '## {name}' section, and this one has "
            f"{', '.join(repr(n) for n in parts) or 'no sections'}; build prompts with "
            "agentledger.actors.decisions.Prompt"
        )
    return text


class OfflineProvider:
    """Answers every purpose by fixed rules (not a language model); same request, same reply."""

    name: str = "offline"

    def complete(self, request: ModelRequest) -> ModelReply:
        """The rule-based answer to ``request`` as JSON (``ModelError`` when it has none)."""
        started = time.perf_counter()
        parts = d.sections(request.prompt)
        answers: dict[str, Callable[[], BaseModel]] = {
            "plan": lambda: _plan(parts),
            "research": lambda: _research(parts),
            "act": lambda: _act(parts),
            "review": lambda: _review(parts),
            "summarize": lambda: _summarize(request.prompt),
        }
        answer = answers.get(request.purpose)
        if answer is None:
            raise ModelError(
                f"offline provider: unknown purpose {request.purpose!r}; it answers "
                f"{', '.join(answers)} (see agentledger.actors.decisions)"
            )
        content = answer().model_dump_json()
        return ModelReply(
            model=MODEL,
            content=content,
            input_tokens=approx_tokens(request.system) + approx_tokens(request.prompt),
            output_tokens=approx_tokens(content),
            latency_ms=(time.perf_counter() - started) * 1000.0,
        )
