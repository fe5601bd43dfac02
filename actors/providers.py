"""Model providers: any OpenAI-compatible HTTP endpoint, and a scripted provider for tests.

The third provider, ``offline`` (deterministic and rule-based, not a language model), lives in
``agentledger.actors.offline``. Providers only answer; recording each call as events is the
runtime's job (DESIGN rule 2), so nothing here touches the log.
"""

from __future__ import annotations

import email.utils
import json
import logging
import math
import os
import random
import re
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field

from agentledger.actors.models import (
    PROVIDERS,
    ModelEndpointError,
    ModelError,
    ModelProvider,
    ModelReply,
    ModelRequest,
    ModelSpec,
)
from agentledger.events import ConfigurationError

if TYPE_CHECKING:
    import openai

__all__ = [
    "OpenAIProvider",
    "ProviderSettings",
    "ScriptedProvider",
    "provider_for",
]

_log = logging.getLogger(__name__)

OPENAI_BASE_URL = "https://api.openai.com/v1"
# Statuses with which a server says "I do not take response_format=json_schema": OpenAI-style
# servers answer 400; FastAPI-based ones may answer 422 for an unknown enum value.
_SCHEMA_REJECTED = frozenset({400, 422})
_MAX_MESSAGE = 300


@dataclass(frozen=True)
class _Answer:
    """What one successful attempt returned."""

    content: str
    model: str
    input_tokens: int
    output_tokens: int


@dataclass(frozen=True)
class _Failure:
    """Why one attempt failed, and whether trying again can help."""

    status: int | None  # HTTP status; None when no response came back
    reason: str
    advice: str
    retryable: bool
    retry_after: float | None = None  # seconds the server asked us to wait


class OpenAIProvider:
    """Chat completions from any OpenAI-compatible endpoint (OpenAI, vLLM, Ollama, …).

    Transient failures (connection errors, timeouts, 429, 5xx) are retried ``max_retries`` times
    with exponential backoff, honouring ``Retry-After``; other 4xx are not retried. Each attempt
    has a hard deadline of ``timeout`` seconds, so a call returns or raises ``ModelEndpointError``
    within about ``timeout * (max_retries + 1)`` plus the backoff.
    """

    name: str = "openai"

    def __init__(
        self,
        base_url: str,
        api_key: str | None,
        *,
        timeout: float = 30.0,
        max_retries: int = 3,
        backoff: float = 0.5,
        max_backoff: float = 30.0,
        key_source: str = "the API key",
    ) -> None:
        """Talk to ``base_url`` (usually ending in ``/v1``); ``api_key=None`` sends no
        ``Authorization`` header (local servers). ``key_source`` names where the key came from,
        for error messages (e.g. ``$OPENAI_API_KEY``); the key itself is never shown."""
        if not timeout > 0 or not math.isfinite(timeout):
            raise ConfigurationError(
                f"model timeout must be a positive number of seconds, got {timeout}"
            )
        if max_retries < 0:
            raise ConfigurationError(f"max_retries must be 0 or more, got {max_retries}")
        if backoff < 0 or max_backoff < 0:
            raise ConfigurationError(f"backoff must be 0 or more, got {backoff} / {max_backoff}")
        self._endpoint = _endpoint(base_url)
        self._api_key = api_key or None
        self._key_source = key_source
        self._timeout = float(timeout)
        self._max_retries = max_retries
        self._backoff = backoff
        self._max_backoff = max_backoff
        # Set once a server rejected json_schema and accepted json_object instead, so later
        # structured calls do not pay for a rejected request each time.
        self._json_schema_unsupported = False
        # Imported here: the client library takes over a second to import, and most processes
        # that import this module (the CLI, agents on the offline provider) never use it.
        import openai

        self._client = openai.OpenAI(
            base_url=base_url,
            # The client insists on a key; a placeholder is never sent (see _arguments).
            api_key=self._api_key or "no-key",
            timeout=self._timeout,
            # Ours are the only retries, so attempts, backoff and the time bound are ours to state.
            max_retries=0,
        )
        # Resolved now: the client loads its resource classes on first use, which would
        # otherwise count against the first call's deadline.
        self._completions = self._client.chat.completions

    @property
    def endpoint(self) -> str:
        """``host:port`` of the server this provider talks to."""
        return self._endpoint

    def complete(self, request: ModelRequest) -> ModelReply:
        """Answer ``request``; ``latency_ms`` is the whole call, retries and backoff included."""
        started = time.perf_counter()
        use_json_schema = request.response_schema is not None and not self._json_schema_unsupported
        attempts = self._max_retries + 1
        attempt = 0
        failure: _Failure | None = None
        while attempt < attempts:
            attempt += 1
            outcome = self._attempt(request, json_schema=use_json_schema)
            if (
                isinstance(outcome, _Failure)
                and use_json_schema
                and outcome.status in _SCHEMA_REJECTED
            ):
                # The server does not do structured output: ask for plain JSON, schema in the
                # prompt. Not a retry of the same request, so it does not use up an attempt.
                _log.info(
                    "%s rejected response_format json_schema (HTTP %s); using json_object",
                    self._endpoint,
                    outcome.status,
                )
                use_json_schema = False
                outcome = self._attempt(request, json_schema=False)
                if isinstance(outcome, _Answer):
                    self._json_schema_unsupported = True
            if isinstance(outcome, _Answer):
                return ModelReply(
                    model=outcome.model or request.model,
                    content=outcome.content,
                    input_tokens=outcome.input_tokens,
                    output_tokens=outcome.output_tokens,
                    latency_ms=(time.perf_counter() - started) * 1000.0,
                )
            failure = outcome
            if not failure.retryable or attempt >= attempts:
                break
            delay = self._delay(attempt, failure.retry_after)
            _log.warning(
                "model call to %s failed (attempt %d of %d): %s; retrying in %.2fs",
                self._endpoint,
                attempt,
                attempts,
                failure.reason,
                delay,
            )
            time.sleep(delay)
        assert failure is not None  # the loop runs at least once and returns on success
        tried = f"after {attempt} attempts" if attempt > 1 else "(not retried)"
        # Raised without the client's exception as cause: its text can echo a key or a body.
        raise ModelEndpointError(
            f"model call to {self._endpoint} (model {request.model!r}) failed {tried}: "
            f"{failure.reason}. {failure.advice}",
            endpoint=self._endpoint,
            status=failure.status,
            attempts=attempt,
            retryable=failure.retryable,
        ) from None

    def close(self) -> None:
        """Release the HTTP connections."""
        self._client.close()

    # ------------------------------------------------------------------ one attempt

    def _attempt(self, request: ModelRequest, *, json_schema: bool) -> _Answer | _Failure:
        arguments = self._arguments(request, json_schema=json_schema)
        box: dict[str, Any] = {}
        done = threading.Event()

        def call() -> None:
            try:
                box["result"] = self._completions.create(**arguments)
            except Exception as exc:
                box["error"] = exc
            finally:
                done.set()

        # The HTTP timeouts bound each phase (connect, each read), not the whole exchange: a
        # server trickling bytes could hold a call forever. So the attempt runs in a thread and
        # is abandoned at the deadline; the thread ends by itself when the server stops sending
        # or an HTTP phase times out, and its result is dropped.
        worker = threading.Thread(target=call, name=f"model-call {self._endpoint}", daemon=True)
        worker.start()
        if not done.wait(self._timeout):
            return self._timed_out()
        if "error" in box:
            return self._classify(box["error"])
        return self._parse(box["result"])

    def _arguments(self, request: ModelRequest, *, json_schema: bool) -> dict[str, Any]:
        system = request.system
        response_format: dict[str, Any] | None = None
        schema = request.response_schema
        if schema is not None and json_schema:
            response_format = {
                "type": "json_schema",
                "json_schema": {"name": _schema_name(schema), "schema": schema},
            }
        elif schema is not None:
            # json_object guarantees JSON but not its shape; the schema goes in the prompt (and
            # OpenAI requires the word "JSON" in the messages for this mode).
            response_format = {"type": "json_object"}
            instruction = (
                "Answer with a single JSON object and nothing else. It must follow this "
                "JSON Schema:\n" + json.dumps(schema, sort_keys=True)
            )
            system = f"{system}\n\n{instruction}" if system else instruction
        messages: list[dict[str, str]] = []
        if system:
            messages.append({"role": "system", "content": system})
        messages.append({"role": "user", "content": request.prompt})
        arguments: dict[str, Any] = {"model": request.model, "messages": messages}
        if response_format is not None:
            arguments["response_format"] = response_format
        if self._api_key is None:
            import openai

            arguments["extra_headers"] = {"Authorization": openai.Omit()}
        return arguments

    def _parse(self, result: object) -> _Answer | _Failure:
        if isinstance(result, str):  # the client hands back bodies it could not read as JSON
            return self._malformed("a body that is not JSON")
        try:
            choices = result.choices  # type: ignore[attr-defined]
            message = choices[0].message
            content = message.content
            refusal = getattr(message, "refusal", None)
            usage = getattr(result, "usage", None)
            model = getattr(result, "model", None)
            input_tokens = _count(getattr(usage, "prompt_tokens", 0))
            output_tokens = _count(getattr(usage, "completion_tokens", 0))
        except (AttributeError, IndexError, KeyError, TypeError):
            return self._malformed(f"a {type(result).__name__} without choices[0].message")
        if content is None:
            if refusal:
                return _Failure(
                    status=200,
                    reason=f"the model refused: {self._clean(str(refusal))}",
                    advice="Rephrase the request or use another model.",
                    retryable=False,
                )
            return self._malformed("a reply whose message has no content")
        if not isinstance(content, str):
            return self._malformed(f"message content of type {type(content).__name__}")
        return _Answer(
            content=content,
            model=model if isinstance(model, str) else "",
            input_tokens=input_tokens,
            output_tokens=output_tokens,
        )

    # ------------------------------------------------------------------ failures

    def _classify(self, exc: Exception) -> _Failure:
        import openai

        if isinstance(exc, openai.APITimeoutError):
            return self._timed_out()
        if isinstance(exc, openai.APIConnectionError):
            cause = exc.__cause__ or exc.__context__ or exc
            return _Failure(
                status=None,
                reason=f"could not connect ({self._clean(str(cause)) or type(cause).__name__})",
                advice=(
                    f"Check that the model server at {self._endpoint} is running and that "
                    "base_url is right."
                ),
                retryable=True,
            )
        if isinstance(exc, openai.APIStatusError):
            return self._status_failure(exc)
        if isinstance(exc, (openai.APIResponseValidationError, ValueError)):
            # ValueError: the client could not decode a body that claimed to be JSON.
            return self._malformed(f"a body that is not valid JSON ({type(exc).__name__})")
        if isinstance(exc, openai.OpenAIError):
            return _Failure(
                status=None,
                reason=self._clean(str(exc)),
                advice="Check the provider settings.",
                retryable=False,
            )
        raise exc

    def _status_failure(self, exc: openai.APIStatusError) -> _Failure:
        status = exc.status_code
        reason = f"HTTP {status}"
        detail = _server_message(exc.body) or _server_message(_safe_text(exc.response))
        if detail:
            reason += f": {self._clean(detail)}"
        retry_after = _retry_after(exc.response.headers)
        if status == 429:
            advice = (
                "The server is rate-limiting: wait, run fewer agents at once, or raise the quota."
            )
        elif status >= 500:
            advice = f"The model server at {self._endpoint} is failing: check its logs and load."
        elif status in (401, 403):
            advice = f"Check {self._key_source}: the server did not accept it."
        elif status == 404:
            advice = (
                "Check base_url (OpenAI-compatible servers usually serve under /v1) and that "
                "the model name exists on that server."
            )
        else:
            advice = "The server rejected the request; repeating it will not help."
        return _Failure(
            status=status,
            reason=reason,
            advice=advice,
            retryable=status == 429 or status >= 500,
            retry_after=retry_after,
        )

    def _timed_out(self) -> _Failure:
        return _Failure(
            status=None,
            reason=f"no complete answer within {self._timeout:g}s",
            advice=(
                f"Check that the model server at {self._endpoint} is not overloaded, or raise "
                "the timeout (large models can take longer)."
            ),
            retryable=True,
        )

    def _malformed(self, what: str) -> _Failure:
        # Not retried: a server that answers in another format will do so again.
        return _Failure(
            status=200,
            reason=f"the server answered with {what}, not a chat completion",
            advice=(
                "Check that base_url points at an OpenAI-compatible API (usually ending in /v1), "
                "not at a web page or a proxy."
            ),
            retryable=False,
        )

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(retry_after, self._max_backoff)
        # Exponential, with jitter so agents that failed together do not retry together.
        base = min(self._backoff * 2.0 ** (attempt - 1), self._max_backoff)
        return base * random.uniform(0.5, 1.0)

    def _clean(self, text: str) -> str:
        """``text`` on one line, shortened, with the API key blanked out."""
        if self._api_key:
            text = text.replace(self._api_key, "***")
        text = " ".join(text.split())
        return text if len(text) <= _MAX_MESSAGE else text[: _MAX_MESSAGE - 1] + "…"


def _endpoint(base_url: str) -> str:
    parts = urlsplit(base_url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigurationError(
            f"model base_url {base_url!r} is not an http(s) URL; "
            "use e.g. http://127.0.0.1:8000/v1 or https://api.openai.com/v1"
        )
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError as exc:
        raise ConfigurationError(f"model base_url {base_url!r} has a bad port: {exc}") from None
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return f"{host}:{port}"


def _schema_name(schema: dict[str, Any]) -> str:
    # OpenAI requires ^[a-zA-Z0-9_-]{1,64}$ for the schema name.
    title = schema.get("title")
    name = re.sub(r"[^a-zA-Z0-9_-]", "_", title)[:64] if isinstance(title, str) else ""
    return name or "reply"


def _count(value: object) -> int:
    return value if isinstance(value, int) and value >= 0 else 0


def _server_message(body: object) -> str:
    """The human part of an error body: ``{"error": {"message": …}}`` and its variants."""
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict):
            message = inner.get("message") or inner.get("detail")
            return message if isinstance(message, str) else json.dumps(inner)[:_MAX_MESSAGE]
        if isinstance(inner, str):
            return inner
        return json.dumps(body)[:_MAX_MESSAGE]
    if isinstance(body, str):
        return body
    return ""


def _safe_text(response: Any) -> str:
    try:
        text = response.text
    except Exception:  # a streamed or undecodable body: the status alone will do
        return ""
    return text if isinstance(text, str) else ""


def _retry_after(headers: Any) -> float | None:
    """Seconds from ``retry-after-ms`` or ``Retry-After`` (seconds or an HTTP date)."""
    try:
        millis = headers.get("retry-after-ms")
        if millis is not None:
            return max(0.0, float(millis) / 1000.0)
        value = headers.get("retry-after")
    except (AttributeError, ValueError):
        return None
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


# ---------------------------------------------------------------------- scripted

ScriptedAnswer = str | ModelReply | ModelError
Script = Sequence[ScriptedAnswer] | Callable[[ModelRequest], str | ModelReply]


class ScriptedProvider:
    """Answers what the test says: a list of replies in order, or a function of the request.

    A string becomes a ``ModelReply`` for the requested model (no tokens, no latency); a
    ``ModelError`` in the list is raised at its turn, to script a failing call. Every request
    is kept in ``calls``, in order.
    """

    name: str = "scripted"

    def __init__(self, script: Script) -> None:
        """Script the replies (see the class docstring)."""
        if isinstance(script, str):
            raise TypeError("ScriptedProvider takes a list of replies, e.g. ['hello'], not a str")
        self.calls: list[ModelRequest] = []
        self._lock = threading.Lock()
        self._function: Callable[[ModelRequest], str | ModelReply] | None = None
        self._steps: list[ScriptedAnswer] = []
        if callable(script):
            self._function = script
        else:
            self._steps = list(script)

    def __getstate__(self) -> dict[str, Any]:
        # Picklable (a test's script travels to the Ray actor that runs the agent); the lock
        # is per process.
        return {k: v for k, v in self.__dict__.items() if k != "_lock"}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def complete(self, request: ModelRequest) -> ModelReply:
        """The next scripted reply (``ModelError`` when the script has none left)."""
        with self._lock:
            self.calls.append(request)
            number = len(self.calls)
        answer: object
        if self._function is not None:
            answer = self._function(request)
        elif number <= len(self._steps):
            answer = self._steps[number - 1]
        else:
            raise ModelError(
                f"scripted provider: call {number} ({request.role.value}, {request.purpose}, "
                f"model {request.model!r}) but the script has only {len(self._steps)} "
                "replies; add replies to the test's script"
            )
        if isinstance(answer, ModelError):
            raise answer
        if isinstance(answer, ModelReply):
            return answer
        if isinstance(answer, str):
            return ModelReply(model=request.model, content=answer)
        raise ModelError(
            f"scripted provider: call {number} got a {type(answer).__name__} from the script; "
            "a script answers with a str, a ModelReply or a ModelError"
        )


# ---------------------------------------------------------------------- from configuration


class ProviderSettings(BaseModel):
    """Where the ``openai`` provider connects, and how patiently."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    base_url: str = OPENAI_BASE_URL
    api_key_env: str = Field(
        default="OPENAI_API_KEY", description="environment variable holding the API key"
    )
    timeout: float = Field(default=30.0, gt=0, description="seconds per attempt, hard bound")
    max_retries: int = Field(default=3, ge=0, description="retries after the first attempt")
    backoff: float = Field(default=0.5, ge=0, description="first retry delay, doubled each time")


def provider_for(spec: ModelSpec, settings: ProviderSettings | None = None) -> ModelProvider:
    """The provider ``spec`` names, configured from ``settings`` (the key read from its env var).

    ``offline`` is built by ``agentledger.actors.offline``, and ``scripted`` only by tests.
    """
    settings = settings or ProviderSettings()
    where = f"model {spec.role.value}={spec.provider}:{spec.model}"
    if spec.provider == "openai":
        api_key = os.environ.get(settings.api_key_env, "").strip() or None
        if api_key is None and urlsplit(settings.base_url).hostname == "api.openai.com":
            raise ConfigurationError(
                f"{where}: ${settings.api_key_env} is not set, and {settings.base_url} needs "
                f"an API key. Export {settings.api_key_env}=<your key>, or point base_url at "
                "a local OpenAI-compatible server (vLLM, Ollama)."
            )
        return OpenAIProvider(
            settings.base_url,
            api_key,
            timeout=settings.timeout,
            max_retries=settings.max_retries,
            backoff=settings.backoff,
            key_source=f"${settings.api_key_env}",
        )
    if spec.provider == "offline":
        raise ConfigurationError(
            f"{where}: the offline provider is built by agentledger.actors.offline, not by "
            "provider_for; resolve 'offline' there."
        )
    if spec.provider == "scripted":
        raise ConfigurationError(
            f"{where}: the scripted provider is for tests and cannot be configured; build "
            "ScriptedProvider([...]) in the test."
        )
    raise ConfigurationError(
        f"{where}: unknown provider {spec.provider!r}; providers: {', '.join(PROVIDERS)}"
    )
