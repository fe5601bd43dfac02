"""OpenAIProvider against a real chat-completions server on 127.0.0.1 (no mocks of the client).

The official ``openai`` client sends real HTTP requests to ``fake_openai_server.ChatServer``;
each test picks how the server behaves and then checks both what the provider returned and what
the server received (how many attempts, which body, which headers).
"""

from __future__ import annotations

import json
import time
import traceback
from collections.abc import Callable, Iterator

import pytest
from fake_openai_server import ChatServer, Received, Reply, closed_port, completion, error
from pydantic import BaseModel

from agentledger.actors.models import (
    ModelEndpointError,
    ModelError,
    ModelProvider,
    ModelRequest,
    parse_model_spec,
)
from agentledger.actors.providers import OpenAIProvider, ProviderSettings, provider_for
from agentledger.events import Role

KEY = "sk-test-4f9c1e-DO-NOT-SHOW"
FAST = {"backoff": 0.01, "max_backoff": 0.05}


class Plan(BaseModel):
    steps: list[str]
    done: bool


PLAN_JSON = json.dumps({"steps": ["search", "summarize"], "done": False})


def request(**overrides: object) -> ModelRequest:
    fields: dict[str, object] = {
        "role": Role.RESEARCH,
        "model": "qwen2.5-7b-instruct",
        "purpose": "research",
        "system": "You are the research agent.",
        "prompt": "Find the retention policy.",
    }
    fields.update(overrides)
    return ModelRequest.model_validate(fields)


Serve = Callable[[Callable[[Received], Reply]], ChatServer]


@pytest.fixture
def serve() -> Iterator[Serve]:
    servers: list[ChatServer] = []

    def start(behaviour: Callable[[Received], Reply]) -> ChatServer:
        server = ChatServer(behaviour)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


def provider(server: ChatServer, **options: object) -> OpenAIProvider:
    settings: dict[str, object] = {"timeout": 5.0, "max_retries": 3, **FAST}
    settings.update(options)
    return OpenAIProvider(server.base_url, KEY, **settings)  # type: ignore[arg-type]


def fails_then(count: int, failure: Reply, success: Reply) -> Callable[[Received], Reply]:
    return lambda received: failure if received.number <= count else success


def assert_no_key(exc: BaseException) -> None:
    shown = "".join(traceback.format_exception(exc))
    assert KEY not in shown
    assert KEY not in repr(exc)


# ---------------------------------------------------------------- success


def test_reply_carries_content_usage_and_latency(serve: Serve) -> None:
    server = serve(
        lambda r: completion("The policy is DP-7.", prompt_tokens=42, completion_tokens=9)
    )
    reply = provider(server).complete(request())

    assert reply.content == "The policy is DP-7."
    assert (reply.input_tokens, reply.output_tokens) == (42, 9)
    assert reply.model == "served-model-0001"  # what the server says it ran
    assert reply.latency_ms > 0

    [sent] = server.chat_requests
    assert sent.method == "POST"
    assert sent.headers["authorization"] == f"Bearer {KEY}"
    assert sent.body["model"] == "qwen2.5-7b-instruct"
    assert sent.body["messages"] == [
        {"role": "system", "content": "You are the research agent."},
        {"role": "user", "content": "Find the retention policy."},
    ]
    assert "response_format" not in sent.body
    assert not sent.body.get("stream")


def test_no_system_message_when_the_request_has_none(serve: Serve) -> None:
    server = serve(lambda r: completion("ok"))
    provider(server).complete(request(system=""))
    [sent] = server.chat_requests
    assert sent.body["messages"] == [{"role": "user", "content": "Find the retention policy."}]


def test_usage_missing_means_zero_tokens(serve: Serve) -> None:
    body = completion("ok").body
    assert isinstance(body, dict)
    server = serve(lambda r: Reply(body={k: v for k, v in body.items() if k != "usage"}))
    reply = provider(server).complete(request())
    assert (reply.content, reply.input_tokens, reply.output_tokens) == ("ok", 0, 0)


def test_without_a_key_no_authorization_header_is_sent(serve: Serve) -> None:
    server = serve(lambda r: completion("ok"))
    OpenAIProvider(server.base_url, None, timeout=5.0).complete(request())
    [sent] = server.chat_requests
    assert "authorization" not in sent.headers


def test_is_a_model_provider(serve: Serve) -> None:
    server = serve(lambda r: completion("ok"))
    made = provider(server)
    assert isinstance(made, ModelProvider)
    assert made.name == "openai"
    assert made.endpoint == server.endpoint


# ---------------------------------------------------------------- structured output


def test_structured_request_asks_for_json_schema(serve: Serve) -> None:
    server = serve(lambda r: completion(PLAN_JSON))
    schema = Plan.model_json_schema()
    reply = provider(server).complete(request(purpose="plan", response_schema=schema))

    assert Plan.model_validate_json(reply.content) == Plan(
        steps=["search", "summarize"], done=False
    )
    [sent] = server.chat_requests
    assert sent.body["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "Plan", "schema": schema},
    }
    assert sent.body["messages"][0] == {"role": "system", "content": "You are the research agent."}


def rejects_json_schema(received: Received) -> Reply:
    if received.body.get("response_format", {}).get("type") == "json_schema":
        return error(400, "response_format.type 'json_schema' is not supported")
    return completion(PLAN_JSON)


def test_json_schema_rejected_falls_back_to_json_object_with_schema_in_prompt(serve: Serve) -> None:
    server = serve(rejects_json_schema)
    schema = Plan.model_json_schema()
    made = provider(server, max_retries=0)  # the fallback is not a retry: it needs no attempts

    reply = made.complete(request(purpose="plan", response_schema=schema))

    assert Plan.model_validate_json(reply.content).steps == ["search", "summarize"]
    first, second = server.chat_requests
    assert first.body["response_format"]["type"] == "json_schema"
    assert second.body["response_format"] == {"type": "json_object"}
    system = second.body["messages"][0]
    assert system["role"] == "system"
    assert system["content"].startswith("You are the research agent.")
    assert json.dumps(schema, sort_keys=True) in system["content"]
    assert "JSON" in system["content"]
    assert second.body["messages"][1] == {"role": "user", "content": "Find the retention policy."}

    # The provider remembers: the next structured call goes straight to json_object.
    made.complete(request(purpose="plan", response_schema=schema))
    assert len(server.chat_requests) == 3
    assert server.chat_requests[2].body["response_format"] == {"type": "json_object"}


def test_a_400_for_another_reason_is_reported_after_the_fallback_also_fails(serve: Serve) -> None:
    server = serve(lambda r: error(400, "model 'nope' does not exist"))
    with pytest.raises(ModelEndpointError) as caught:
        provider(server).complete(request(response_schema=Plan.model_json_schema()))
    assert caught.value.status == 400
    assert "does not exist" in str(caught.value)
    assert len(server.chat_requests) == 2  # json_schema, then json_object; no retries


# ---------------------------------------------------------------- retries


def test_server_errors_are_retried_until_success(serve: Serve) -> None:
    server = serve(fails_then(2, error(500, "overloaded"), completion("third time")))
    reply = provider(server, max_retries=3).complete(request())
    assert reply.content == "third time"
    assert [r.number for r in server.chat_requests] == [1, 2, 3]


def test_backoff_grows_between_retries(serve: Serve) -> None:
    server = serve(fails_then(2, error(503, "busy"), completion("ok")))
    provider(server, backoff=0.2, max_backoff=5.0).complete(request())
    first, second, third = (r.at for r in server.chat_requests)
    # Jitter draws each delay from [half, all] of backoff * 2**(retry - 1).
    assert second - first >= 0.1
    assert third - second >= 0.2


def test_429_waits_as_long_as_retry_after_says(serve: Serve) -> None:
    server = serve(fails_then(1, error(429, "slow down", **{"Retry-After": "1"}), completion("ok")))
    reply = provider(server, backoff=0.01, max_backoff=5.0).complete(request())
    assert reply.content == "ok"
    first, second = server.chat_requests
    assert second.at - first.at >= 0.9  # the backoff alone would have waited 10 ms


def test_always_500_gives_up_after_max_retries_naming_the_endpoint_not_the_key(
    serve: Serve,
) -> None:
    # The server echoes the key in its error, as some proxies do; we must not repeat it.
    server = serve(lambda r: error(500, f"upstream failed for key {KEY}"))
    with pytest.raises(ModelEndpointError) as caught:
        provider(server, max_retries=2).complete(request())

    exc = caught.value
    # Exactly max_retries + 1 requests: the openai client's own retries are off.
    assert len(server.chat_requests) == 3
    assert (exc.status, exc.attempts, exc.retryable) == (500, 3, True)
    assert exc.endpoint == server.endpoint
    message = str(exc)
    assert server.endpoint in message
    assert "HTTP 500" in message
    assert "after 3 attempts" in message
    assert "check its logs" in message  # what to do
    assert_no_key(exc)


@pytest.mark.parametrize(
    ("status", "advice"),
    [
        (400, "repeating it will not help"),
        (401, "Check the API key"),
        (403, "Check the API key"),
        (404, "/v1"),
        (422, "repeating it will not help"),
    ],
)
def test_client_errors_are_not_retried(serve: Serve, status: int, advice: str) -> None:
    server = serve(lambda r: error(status, "no"))
    with pytest.raises(ModelEndpointError) as caught:
        provider(server, max_retries=3).complete(request())
    assert len(server.chat_requests) == 1
    assert (caught.value.status, caught.value.attempts, caught.value.retryable) == (
        status,
        1,
        False,
    )
    assert f"HTTP {status}" in str(caught.value)
    assert advice in str(caught.value)


def test_wrong_base_url_path_says_to_check_v1(serve: Serve) -> None:
    server = serve(lambda r: completion("unreachable"))
    made = OpenAIProvider(f"http://127.0.0.1:{server.port}", KEY, timeout=5.0, backoff=0.01)
    with pytest.raises(ModelEndpointError) as caught:
        made.complete(request())
    assert caught.value.status == 404
    assert "/v1" in str(caught.value)


def test_connection_refused_is_retried_then_reported() -> None:
    port = closed_port()
    made = OpenAIProvider(
        f"http://127.0.0.1:{port}/v1", KEY, timeout=5.0, max_retries=2, backoff=0.01
    )
    started = time.monotonic()
    with pytest.raises(ModelEndpointError) as caught:
        made.complete(request())
    assert time.monotonic() - started < 5.0  # refused at once, never waits for the timeout
    exc = caught.value
    assert (exc.status, exc.attempts, exc.retryable) == (None, 3, True)
    assert f"127.0.0.1:{port}" in str(exc)
    assert "could not connect" in str(exc)
    assert "is running" in str(exc)
    assert_no_key(exc)


# ---------------------------------------------------------------- never hangs


def test_slow_server_times_out_within_the_bound(serve: Serve) -> None:
    server = serve(lambda r: Reply(delay=30.0, body=completion("too late").body))
    timeout, retries = 0.4, 2
    made = provider(server, timeout=timeout, max_retries=retries)
    started = time.monotonic()
    with pytest.raises(ModelEndpointError) as caught:
        made.complete(request())
    elapsed = time.monotonic() - started
    # A correctness bound (every attempt stopped at its deadline), not a performance target.
    assert elapsed <= timeout * (retries + 1) + 1.5
    assert len(server.chat_requests) == retries + 1
    assert caught.value.status is None
    assert "within 0.4s" in str(caught.value)
    assert server.endpoint in str(caught.value)


def test_trickling_server_is_cut_off_at_the_deadline(serve: Serve) -> None:
    # Headers at once, then one byte every 0.1 s: each read succeeds, so the HTTP read timeout
    # never fires; only the per-attempt deadline ends the call.
    body = completion("x" * 400).body
    server = serve(lambda r: Reply(body=body, trickle=0.1))
    made = provider(server, timeout=0.5, max_retries=0)
    started = time.monotonic()
    with pytest.raises(ModelEndpointError) as caught:
        made.complete(request())
    assert time.monotonic() - started <= 0.5 + 1.5
    assert "within 0.5s" in str(caught.value)


# ---------------------------------------------------------------- bad bodies


@pytest.mark.parametrize(
    "reply",
    [
        Reply(body='{"id": "chatcmpl-1", "choices": [{"message": '),  # truncated JSON
        Reply(body="<html>Bad gateway</html>", headers={"Content-Type": "text/html"}),
        Reply(body={"status": "ok"}),  # JSON, but not a chat completion
        Reply(body={"object": "chat.completion", "choices": []}),
        completion(None),  # no content and no refusal
    ],
    ids=["truncated-json", "html", "other-json", "no-choices", "no-content"],
)
def test_malformed_body_is_a_clear_error_not_retried(serve: Serve, reply: Reply) -> None:
    server = serve(lambda r: reply)
    with pytest.raises(ModelEndpointError) as caught:
        provider(server, max_retries=3).complete(request())
    assert len(server.chat_requests) == 1
    assert caught.value.retryable is False
    assert "not a chat completion" in str(caught.value)
    assert "OpenAI-compatible" in str(caught.value)
    assert server.endpoint in str(caught.value)


def test_refusal_is_reported(serve: Serve) -> None:
    server = serve(lambda r: completion(None, refusal="I can't help with that."))
    with pytest.raises(ModelError, match="the model refused: I can't help with that"):
        provider(server).complete(request())
    assert len(server.chat_requests) == 1


# ---------------------------------------------------------------- from configuration


def test_provider_for_reads_the_key_from_the_named_variable(
    serve: Serve, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LOCAL_LLM_KEY", KEY)
    server = serve(lambda r: completion("configured"))
    settings = ProviderSettings(
        base_url=server.base_url, api_key_env="LOCAL_LLM_KEY", timeout=5.0, max_retries=0
    )
    made = provider_for(parse_model_spec("execution=openai:llama3.1:8b"), settings)

    reply = made.complete(request(role=Role.EXECUTION, model="llama3.1:8b"))

    assert reply.content == "configured"
    [sent] = server.chat_requests
    assert sent.headers["authorization"] == f"Bearer {KEY}"
    assert sent.body["model"] == "llama3.1:8b"


def test_provider_for_names_the_key_variable_when_the_server_rejects_it(
    serve: Serve, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LOCAL_LLM_KEY", KEY)
    server = serve(lambda r: error(401, f"Incorrect API key provided: {KEY}"))
    settings = ProviderSettings(base_url=server.base_url, api_key_env="LOCAL_LLM_KEY")
    made = provider_for(parse_model_spec("review=openai:m"), settings)
    with pytest.raises(ModelEndpointError, match=r"Check \$LOCAL_LLM_KEY") as caught:
        made.complete(request())
    assert_no_key(caught.value)
