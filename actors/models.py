"""Model providers: the one nondeterministic edge agents reason through.

Every call goes through a ``ModelProvider`` and is recorded by the runtime as
``model.requested`` / ``model.responded`` events, so a replay never calls a model again.
Three providers: ``offline`` (the default; deterministic and rule-based, *not* a language
model), ``openai`` (any OpenAI-compatible HTTP endpoint: OpenAI, vLLM, Ollama) and ``scripted``
(tests: returns what the test says).
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Collection
from typing import Any, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field

from agentledger.events import AgentLedgerError, ConfigurationError, Role


class ModelError(AgentLedgerError):
    """A model call failed (unreachable endpoint, refusal, timeout); recorded, never hangs."""


class ModelRequest(BaseModel):
    """One call to a model."""

    model_config = ConfigDict(frozen=True)

    role: Role
    model: str
    purpose: str = Field(description="plan, research, act, review or summarize")
    system: str = ""
    prompt: str
    response_schema: dict[str, Any] | None = Field(
        default=None, description="JSON Schema the reply must follow (structured output)"
    )
    context_event_ids: list[uuid.UUID] = Field(default_factory=list)


class ModelReply(BaseModel):
    """What a model answered, with its cost."""

    model_config = ConfigDict(frozen=True)

    model: str
    content: str
    input_tokens: int = 0
    output_tokens: int = 0
    latency_ms: float = 0.0


@runtime_checkable
class ModelProvider(Protocol):
    """Anything that answers model requests."""

    name: str

    def complete(self, request: ModelRequest) -> ModelReply:
        """Answer ``request`` (raise ``ModelError`` on failure)."""
        ...


class ModelSpec(BaseModel):
    """Which provider and model a role uses: parsed from ``ROLE=PROVIDER:MODEL``."""

    model_config = ConfigDict(frozen=True)

    role: Role
    provider: str
    model: str


PROVIDERS = ("offline", "openai")
"""Providers a configuration may name; ``scripted`` exists only inside tests."""
_SPEC = re.compile(r"^(?P<role>[^=:\s]+)=(?P<provider>[^=:\s]+)(?::(?P<model>\S+))?$")
_OFFLINE_MODEL = "offline-rules"  # the one model of the offline provider: it may go unnamed


def parse_model_spec(
    text: str, *, source: str = "--model", providers: Collection[str] | None = PROVIDERS
) -> ModelSpec:
    """Parse ``research=openai:gpt-4o-mini`` (clear errors for unknown roles or providers;
    ``research=offline`` names the offline provider's one model).

    ``source`` names where the text came from (an option or a config file line) in errors;
    ``providers`` are the names allowed (extensions add theirs: ``extensions.provider_names``);
    ``None`` lets any name through, for a caller that checks it once extensions are imported.
    """
    match = _SPEC.match(text.strip())
    if match is None:
        raise ConfigurationError(
            f"{source} {text!r} is not ROLE=PROVIDER:MODEL, e.g. research=openai:gpt-4o-mini"
        )
    role, provider = match["role"].lower(), match["provider"].lower()
    if role not in {r.value for r in Role}:
        raise ConfigurationError(
            f"{source} {text!r}: unknown role {role!r}; roles: " + ", ".join(r.value for r in Role)
        )
    if providers is not None and provider not in providers:
        raise ConfigurationError(
            f"{source} {text!r}: unknown provider {provider!r}; providers: {', '.join(providers)}"
            " (a provider of your own is added by an extension: docs/extending.md)"
        )
    model = match["model"]
    if model is None:
        if provider != "offline":
            raise ConfigurationError(
                f"{source} {text!r}: name the model, e.g. {role}={provider}:gpt-4o-mini"
            )
        model = _OFFLINE_MODEL
    return ModelSpec(role=Role(role), provider=provider, model=model)


class ModelEndpointError(ModelError):
    """An OpenAI-compatible endpoint did not answer usefully: unreachable, too slow, an HTTP
    error, or a body that is not a chat completion. Says where, what, and what to do."""

    def __init__(
        self, message: str, *, endpoint: str, status: int | None, attempts: int, retryable: bool
    ) -> None:
        super().__init__(message)
        self.endpoint = endpoint
        self.status = status
        self.attempts = attempts
        # True when the last failure was transient (connection, timeout, 429, 5xx): a later call
        # may succeed; False when repeating the same request would fail the same way.
        self.retryable = retryable
