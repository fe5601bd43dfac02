"""What each role asks its model for, as pydantic models, and how prompts are laid out.

A model's answer is parsed into one of these models (structured output); an answer that does
not parse is a recorded validation error, never a crash. Prompts are plain text made of
``## <section>`` blocks (see ``Prompt``) so any model, and the rule-based offline provider,
reads the same thing.
"""

from __future__ import annotations

import functools
import json
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, JsonValue

from agentledger.events import MAX_REASONING

Purpose = Literal["plan", "research", "act", "review", "summarize"]

# Section names shared by the roles (which write them) and the offline provider (which reads
# them). A real model reads them as headings.
GOAL = "goal"
SUB_GOAL = "sub-goal"
TOOLS = "tools"
INPUTS = "results of earlier steps"
SOURCES = "sources"
RESULT = "result to review"
CHECKS = "checks"
FEEDBACK = "feedback from review"
ANSWER_FORMAT = "answer format"


class _Decision(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class PlannedStep(_Decision):
    """One sub-task of a plan."""

    task_id: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.\-]{1,40}$")]
    goal: Annotated[str, Field(min_length=1, max_length=5_000)]
    role: Literal["research", "execution"]
    depends_on: list[str] = Field(default_factory=list)
    reasoning: str = ""


class Plan(_Decision):
    """The coordinator's decomposition of a goal."""

    reasoning: Annotated[str, Field(max_length=MAX_REASONING)]
    steps: Annotated[list[PlannedStep], Field(min_length=1, max_length=2_000)]


class ToolCall(_Decision):
    """One tool call the execution agent wants to make."""

    tool: Annotated[str, Field(min_length=1, max_length=200)]
    arguments: dict[str, JsonValue] = Field(default_factory=dict)
    reasoning: str = ""


class Actions(_Decision):
    """The execution agent's tool calls for a sub-task, in order."""

    reasoning: Annotated[str, Field(max_length=MAX_REASONING)]
    actions: Annotated[list[ToolCall], Field(max_length=50)]


class Findings(_Decision):
    """The research agent's answer, with the sources it rests on."""

    reasoning: Annotated[str, Field(max_length=MAX_REASONING)]
    answer: Annotated[str, Field(min_length=1, max_length=50_000)]
    sources: list[str] = Field(default_factory=list)


class Verdict(_Decision):
    """The review agent's judgement of one result against its sub-goal."""

    accepted: bool
    reasons: Annotated[str, Field(min_length=1, max_length=MAX_REASONING)]


class Summary(_Decision):
    """A summary of older history."""

    summary: Annotated[str, Field(min_length=1, max_length=50_000)]


DECISIONS: dict[str, type[_Decision]] = {
    "plan": Plan,
    "research": Findings,
    "act": Actions,
    "review": Verdict,
    "summarize": Summary,
}
"""The answer model each purpose expects."""


@functools.cache
def answer_schema_text(purpose: str) -> str:
    """The JSON Schema a model's answer for ``purpose`` must follow, as compact JSON."""
    return json.dumps(DECISIONS[purpose].model_json_schema(), sort_keys=True, separators=(",", ":"))


def answer_schema(purpose: str) -> dict[str, Any]:
    """The JSON Schema a model's answer for ``purpose`` must follow (a fresh copy)."""
    parsed: dict[str, Any] = json.loads(answer_schema_text(purpose))
    return parsed


class Prompt:
    """A prompt made of ``## name`` sections, in the order they are added."""

    def __init__(self) -> None:
        self._sections: list[tuple[str, str]] = []

    def add(self, name: str, text: str) -> Prompt:
        """Add a section (empty text is skipped)."""
        if text.strip():
            self._sections.append((name, text.strip()))
        return self

    def text(self) -> str:
        """The prompt as text."""
        return "\n\n".join(f"## {name}\n{text}" for name, text in self._sections)


def sections(prompt: str) -> dict[str, str]:
    """The ``## name`` sections of a prompt (the last one wins when a name repeats)."""
    found: dict[str, str] = {}
    name: str | None = None
    lines: list[str] = []
    for line in prompt.splitlines():
        if line.startswith("## "):
            if name is not None:
                found[name] = "\n".join(lines).strip()
            name, lines = line[3:].strip(), []
        elif name is not None:
            lines.append(line)
    if name is not None:
        found[name] = "\n".join(lines).strip()
    return found
