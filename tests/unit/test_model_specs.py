"""``ROLE=PROVIDER:MODEL`` specs: what parses, and what each bad input is told."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from agentledger.actors.models import PROVIDERS, ModelSpec, parse_model_spec
from agentledger.events import AgentLedgerError, Role


@pytest.mark.parametrize(
    ("text", "role", "provider", "model"),
    [
        ("research=openai:gpt-4o-mini", Role.RESEARCH, "openai", "gpt-4o-mini"),
        ("coordinator=offline:planner", Role.COORDINATOR, "offline", "planner"),
        ("review=offline:rules", Role.REVIEW, "offline", "rules"),
        # Everything after the first colon is the model: Ollama tags and Hugging Face paths.
        ("execution=openai:qwen2.5:7b", Role.EXECUTION, "openai", "qwen2.5:7b"),
        (
            "execution=openai:meta-llama/Llama-3.1-8B-Instruct",
            Role.EXECUTION,
            "openai",
            "meta-llama/Llama-3.1-8B-Instruct",
        ),
        ("  research=openai:gpt-4o-mini\n", Role.RESEARCH, "openai", "gpt-4o-mini"),
    ],
)
def test_good_specs_parse(text: str, role: Role, provider: str, model: str) -> None:
    spec = parse_model_spec(text)
    assert spec == ModelSpec(role=role, provider=provider, model=model)
    assert isinstance(spec.role, Role)


@pytest.mark.parametrize("role", list(Role))
def test_every_role_is_accepted(role: Role) -> None:
    assert parse_model_spec(f"{role.value}=offline:rules").role is role


@pytest.mark.parametrize("provider", PROVIDERS)
def test_every_provider_is_accepted(provider: str) -> None:
    assert parse_model_spec(f"research={provider}:m").provider == provider


def test_unknown_role_names_it_and_lists_the_roles() -> None:
    with pytest.raises(AgentLedgerError) as caught:
        parse_model_spec("researcher=openai:gpt-4o-mini")
    message = str(caught.value)
    assert "'researcher=openai:gpt-4o-mini'" in message
    assert "unknown role 'researcher'" in message
    assert "roles: coordinator, research, execution, review" in message


def test_unknown_provider_names_it_and_lists_the_providers() -> None:
    with pytest.raises(AgentLedgerError) as caught:
        parse_model_spec("research=anthropic:claude-3")
    message = str(caught.value)
    assert "unknown provider 'anthropic'" in message
    assert "providers: offline, openai" in message


def test_scripted_is_for_tests_only() -> None:
    with pytest.raises(AgentLedgerError, match="unknown provider 'scripted'"):
        parse_model_spec("review=scripted:fixture")


def test_errors_name_their_source() -> None:
    with pytest.raises(AgentLedgerError, match=r"agentledger.toml line 3 'research'"):
        parse_model_spec("research", source="agentledger.toml line 3")


@pytest.mark.parametrize(
    "text",
    [
        "",
        "research",
        "research=openai:",
        "=openai:gpt-4o-mini",
        "research=:gpt-4o-mini",
        "research:openai=gpt-4o-mini",
        "research=openai:gpt 4o",
        "research = openai:gpt-4o-mini",
    ],
)
def test_malformed_specs_show_the_expected_shape(text: str) -> None:
    with pytest.raises(AgentLedgerError) as caught:
        parse_model_spec(text)
    message = str(caught.value)
    assert repr(text) in message
    assert "is not ROLE=PROVIDER:MODEL" in message
    assert "e.g. research=openai:gpt-4o-mini" in message


def test_the_offline_provider_may_go_without_a_model_and_others_may_not() -> None:
    spec = parse_model_spec("execution=offline")
    assert (spec.role, spec.provider, spec.model) == (Role.EXECUTION, "offline", "offline-rules")
    with pytest.raises(
        AgentLedgerError, match=r"name the model, e\.g\. research=openai:gpt-4o-mini"
    ):
        parse_model_spec("research=openai")
    with pytest.raises(AgentLedgerError, match="unknown role 'nobody'"):
        parse_model_spec("nobody=offline")


@pytest.mark.parametrize("text", ["Research=openai:gpt-4o-mini", "research=OpenAI:gpt-4o-mini"])
def test_role_and_provider_are_case_insensitive(text: str) -> None:
    spec = parse_model_spec(text)
    assert (spec.role, spec.provider, spec.model) == (Role.RESEARCH, "openai", "gpt-4o-mini")


def test_spec_is_frozen() -> None:
    spec = parse_model_spec("research=openai:gpt-4o-mini")
    with pytest.raises(ValidationError):
        spec.model = "other"  # type: ignore[misc]
