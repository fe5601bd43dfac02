"""The ModelProvider contract: one behaviour spec, run against every provider.

``ModelProviderContract`` holds the tests; a provider joins by subclassing it and providing
``answering`` (a provider whose next replies have the given contents) and ``failing`` (a
provider whose calls fail). The OpenAI provider joins through a real chat-completions server on
127.0.0.1; the offline provider joins when it lands (``agentledger.actors.offline``).
"""

from __future__ import annotations

import inspect
import json
import sys
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator

import pytest
from fake_openai_server import ChatServer, Received, Reply, closed_port, completion, error
from pydantic import BaseModel

from agentledger.actors.models import (
    PROVIDERS,
    ModelError,
    ModelProvider,
    ModelReply,
    ModelRequest,
)
from agentledger.actors.providers import OpenAIProvider, ScriptedProvider
from agentledger.events import AgentLedgerError, Role

Answering = Callable[[list[str]], ModelProvider]


class Verdict(BaseModel):
    approved: bool
    reasons: list[str]


def request(prompt: str = "Review the change.", **overrides: object) -> ModelRequest:
    fields: dict[str, object] = {
        "role": Role.REVIEW,
        "model": "reviewer-model",
        "purpose": "review",
        "system": "You review changes.",
        "prompt": prompt,
    }
    fields.update(overrides)
    return ModelRequest.model_validate(fields)


class ModelProviderContract(ABC):
    """Behaviour every model provider has. Not collected itself (no ``Test`` prefix)."""

    @pytest.fixture
    @abstractmethod
    def answering(self) -> Answering:
        """Builds a provider whose next replies have exactly these contents."""

    @pytest.fixture
    @abstractmethod
    def failing(self) -> ModelProvider:
        """A provider whose every call fails."""

    def test_is_a_model_provider_with_a_known_name(self, answering: Answering) -> None:
        provider = answering(["x"])
        assert isinstance(provider, ModelProvider)
        assert provider.name in (*PROVIDERS, "scripted")

    def test_reply_has_content_model_and_non_negative_costs(self, answering: Answering) -> None:
        reply = answering(["The change is fine."]).complete(request())
        assert isinstance(reply, ModelReply)
        assert reply.content == "The change is fine."
        assert reply.model
        assert reply.input_tokens >= 0
        assert reply.output_tokens >= 0
        assert reply.latency_ms >= 0

    def test_replies_come_in_order(self, answering: Answering) -> None:
        provider = answering(["one", "two"])
        assert [provider.complete(request(p)).content for p in ("a", "b")] == ["one", "two"]

    def test_structured_reply_validates_into_the_model(self, answering: Answering) -> None:
        text = json.dumps({"approved": False, "reasons": ["no tests"]})
        reply = answering([text]).complete(request(response_schema=Verdict.model_json_schema()))
        assert Verdict.model_validate_json(reply.content) == Verdict(
            approved=False, reasons=["no tests"]
        )

    def test_failure_is_a_model_error(self, failing: ModelProvider) -> None:
        with pytest.raises(ModelError) as caught:
            failing.complete(request())
        assert isinstance(caught.value, AgentLedgerError)
        assert str(caught.value)


# ---------------------------------------------------------------- the providers


class TestScriptedProvider(ModelProviderContract):
    @pytest.fixture
    def answering(self) -> Answering:
        return lambda contents: ScriptedProvider(contents)

    @pytest.fixture
    def failing(self) -> ModelProvider:
        return ScriptedProvider([])


class TestOpenAIProvider(ModelProviderContract):
    @pytest.fixture
    def answering(self) -> Iterator[Answering]:
        servers: list[ChatServer] = []

        def build(contents: list[str]) -> ModelProvider:
            def behaviour(received: Received) -> Reply:
                if received.number > len(contents):
                    return error(500, "the test scripted no more replies")
                return completion(contents[received.number - 1])

            server = ChatServer(behaviour)
            servers.append(server)
            return OpenAIProvider(server.base_url, "sk-contract", timeout=5.0, max_retries=0)

        yield build
        for server in servers:
            server.stop()

    @pytest.fixture
    def failing(self) -> ModelProvider:
        return OpenAIProvider(
            f"http://127.0.0.1:{closed_port()}/v1", "sk-contract", max_retries=1, backoff=0.01
        )


def test_every_provider_joins_the_contract() -> None:
    # pytest silently skips an abstract class: a provider that forgot a fixture would vanish.
    joined = [
        cls
        for cls in vars(sys.modules[__name__]).values()
        if inspect.isclass(cls)
        and issubclass(cls, ModelProviderContract)
        and cls is not ModelProviderContract
    ]
    assert {cls.__name__ for cls in joined} == {"TestScriptedProvider", "TestOpenAIProvider"}
    assert not [cls for cls in joined if inspect.isabstract(cls)]
