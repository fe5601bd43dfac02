"""ScriptedProvider: the model fake tests use (replies in order, or a function of the request)."""

from __future__ import annotations

import threading

import pytest

from agentledger.actors.models import ModelError, ModelProvider, ModelReply, ModelRequest
from agentledger.actors.providers import ScriptedProvider
from agentledger.events import AgentLedgerError, Role


def request(prompt: str = "plan the work", **overrides: object) -> ModelRequest:
    fields: dict[str, object] = {
        "role": Role.COORDINATOR,
        "model": "gpt-4o-mini",
        "purpose": "plan",
        "prompt": prompt,
    }
    fields.update(overrides)
    return ModelRequest.model_validate(fields)


def test_is_a_model_provider_named_scripted() -> None:
    provider = ScriptedProvider([])
    assert isinstance(provider, ModelProvider)
    assert provider.name == "scripted"


def test_list_replies_come_in_order_and_strings_become_replies() -> None:
    provider = ScriptedProvider(["first", "second"])
    one = provider.complete(request("a"))
    two = provider.complete(request("b", model="other-model"))
    assert one == ModelReply(model="gpt-4o-mini", content="first")
    assert two == ModelReply(model="other-model", content="second")
    assert (one.input_tokens, one.output_tokens, one.latency_ms) == (0, 0, 0.0)


def test_model_replies_are_returned_as_they_are() -> None:
    scripted = ModelReply(
        model="m-1", content="{}", input_tokens=5, output_tokens=2, latency_ms=3.5
    )
    assert ScriptedProvider([scripted]).complete(request()) is scripted


def test_calls_are_recorded_in_order() -> None:
    provider = ScriptedProvider(["x", "y"])
    first, second = request("a"), request("b", role=Role.REVIEW, purpose="review")
    provider.complete(first)
    provider.complete(second)
    assert provider.calls == [first, second]


def test_exhausted_script_raises_model_error_saying_which_call() -> None:
    provider = ScriptedProvider(["only"])
    provider.complete(request())
    with pytest.raises(ModelError) as caught:
        provider.complete(request(role=Role.RESEARCH, purpose="research"))
    message = str(caught.value)
    assert "call 2" in message
    assert "research" in message
    assert "only 1 replies" in message
    assert isinstance(caught.value, AgentLedgerError)
    assert len(provider.calls) == 2  # the failed call is recorded too


def test_empty_script_fails_on_the_first_call() -> None:
    with pytest.raises(ModelError, match="call 1"):
        ScriptedProvider([]).complete(request())


def test_a_model_error_in_the_script_is_raised_at_its_turn() -> None:
    down = ModelError("endpoint down")
    provider = ScriptedProvider(["before", down, "after"])
    assert provider.complete(request()).content == "before"
    with pytest.raises(ModelError) as caught:
        provider.complete(request())
    assert caught.value is down
    assert provider.complete(request()).content == "after"


def test_function_script_answers_from_the_request() -> None:
    def answer(req: ModelRequest) -> str | ModelReply:
        if req.response_schema is not None:
            return ModelReply(model="fn", content='{"ok": true}')
        return f"echo: {req.prompt}"

    provider = ScriptedProvider(answer)
    assert provider.complete(request("hi")).content == "echo: hi"
    structured = provider.complete(request(response_schema={"type": "object"}))
    assert structured == ModelReply(model="fn", content='{"ok": true}')
    assert len(provider.calls) == 2


def test_function_script_can_fail_a_call() -> None:
    def answer(req: ModelRequest) -> str:
        raise ModelError(f"no answer for {req.purpose}")

    with pytest.raises(ModelError, match="no answer for plan"):
        ScriptedProvider(answer).complete(request())


def test_function_script_returning_the_wrong_type_is_a_model_error() -> None:
    provider = ScriptedProvider(lambda req: 42)  # type: ignore[arg-type, return-value]
    with pytest.raises(ModelError, match="got a int"):
        provider.complete(request())


def test_a_bare_string_script_is_refused() -> None:
    # A str is a sequence: without this check it would answer one character per call.
    with pytest.raises(TypeError, match="list of replies"):
        ScriptedProvider("hello")


def test_the_script_list_is_copied() -> None:
    replies = ["a"]
    provider = ScriptedProvider(replies)
    replies.append("b")
    provider.complete(request())
    with pytest.raises(ModelError):
        provider.complete(request())


def test_concurrent_calls_each_get_a_different_reply() -> None:
    count = 50
    provider = ScriptedProvider([str(i) for i in range(count)])
    answers: list[str] = []
    lock = threading.Lock()

    def call() -> None:
        content = provider.complete(request()).content
        with lock:
            answers.append(content)

    threads = [threading.Thread(target=call) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(answers, key=int) == [str(i) for i in range(count)]
    assert len(provider.calls) == count
