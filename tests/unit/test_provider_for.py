"""provider_for: building a provider from a spec and settings, and its refusals."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from agentledger.actors.models import ModelSpec, parse_model_spec
from agentledger.actors.providers import OpenAIProvider, ProviderSettings, provider_for
from agentledger.events import ConfigurationError, Role


def test_settings_defaults() -> None:
    settings = ProviderSettings()
    assert settings.base_url == "https://api.openai.com/v1"
    assert settings.api_key_env == "OPENAI_API_KEY"
    assert settings.timeout > 0
    assert settings.max_retries >= 0


@pytest.mark.parametrize(
    "fields", [{"timeout": 0}, {"timeout": -1}, {"max_retries": -1}, {"colour": "blue"}]
)
def test_settings_reject_bad_values(fields: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        ProviderSettings.model_validate(fields)


def test_openai_spec_builds_an_openai_provider(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-unit")
    provider = provider_for(parse_model_spec("research=openai:gpt-4o-mini"), ProviderSettings())
    assert isinstance(provider, OpenAIProvider)
    assert provider.name == "openai"
    assert provider.endpoint == "api.openai.com:443"


def test_openai_without_a_key_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MY_KEY", raising=False)
    settings = ProviderSettings(api_key_env="MY_KEY")
    with pytest.raises(ConfigurationError) as caught:
        provider_for(parse_model_spec("research=openai:gpt-4o-mini"), settings)
    message = str(caught.value)
    assert "$MY_KEY is not set" in message
    assert "research=openai:gpt-4o-mini" in message
    assert "Export MY_KEY" in message


def test_a_local_server_needs_no_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    settings = ProviderSettings(base_url="http://127.0.0.1:11434/v1")
    provider = provider_for(parse_model_spec("execution=openai:qwen2.5:7b"), settings)
    assert isinstance(provider, OpenAIProvider)
    assert provider.endpoint == "127.0.0.1:11434"


def test_offline_is_resolved_elsewhere() -> None:
    with pytest.raises(ConfigurationError, match=r"agentledger\.actors\.offline"):
        provider_for(parse_model_spec("coordinator=offline:rules"), ProviderSettings())


def test_scripted_cannot_be_configured() -> None:
    with pytest.raises(ConfigurationError, match=r"ScriptedProvider\(\[\.\.\.\]\) in the test"):
        provider_for(
            ModelSpec(role=Role.REVIEW, provider="scripted", model="x"), ProviderSettings()
        )


def test_unknown_provider_is_refused() -> None:
    spec = ModelSpec(role=Role.REVIEW, provider="anthropic", model="claude")
    with pytest.raises(ConfigurationError, match="unknown provider 'anthropic'"):
        provider_for(spec, ProviderSettings())


@pytest.mark.parametrize(
    ("base_url", "endpoint"),
    [
        ("http://localhost:8000/v1", "localhost:8000"),
        ("http://vllm.internal/v1", "vllm.internal:80"),
        ("https://user:secret@proxy.example:8443/v1", "proxy.example:8443"),
        ("http://[::1]:8000/v1", "[::1]:8000"),
    ],
)
def test_endpoint_is_host_and_port_only(base_url: str, endpoint: str) -> None:
    assert OpenAIProvider(base_url, None).endpoint == endpoint


@pytest.mark.parametrize(
    "base_url", ["localhost:8000", "ftp://host/v1", "http://", "http://h:99999/v1"]
)
def test_bad_base_url_is_a_configuration_error(base_url: str) -> None:
    with pytest.raises(ConfigurationError, match="base_url"):
        OpenAIProvider(base_url, None)


@pytest.mark.parametrize(
    "options", [{"timeout": 0.0}, {"timeout": float("inf")}, {"max_retries": -1}, {"backoff": -1.0}]
)
def test_bad_retry_options_are_configuration_errors(options: dict[str, float]) -> None:
    with pytest.raises(ConfigurationError):
        OpenAIProvider("http://127.0.0.1:8000/v1", None, **options)  # type: ignore[arg-type]
