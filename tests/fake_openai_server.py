"""A real HTTP server on 127.0.0.1 that speaks OpenAI chat completions, for provider tests.

Not a mock: the official ``openai`` client talks to it over TCP. Each test picks the server's
behaviour as a function of the request (and its number), and reads back what the server got.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

CHAT_PATH = "/v1/chat/completions"


@dataclass(frozen=True)
class Received:
    """One request as the server saw it."""

    number: int  # 1-based, in arrival order
    at: float  # time.monotonic() on arrival
    method: str
    path: str
    headers: dict[str, str]  # names lower-cased
    body: Any  # parsed JSON, or the raw text when it was not JSON


@dataclass(frozen=True)
class Reply:
    """What the server answers: status, body, headers, and how slowly."""

    status: int = 200
    body: bytes | str | dict[str, Any] = b""
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0  # seconds to wait before answering
    trickle: float | None = None  # send the body one byte per this many seconds


Behaviour = Callable[[Received], Reply]


def completion(
    content: str | None,
    *,
    model: str = "served-model-0001",
    prompt_tokens: int = 11,
    completion_tokens: int = 7,
    refusal: str | None = None,
) -> Reply:
    """A chat completion in the shape OpenAI returns, with ``usage``."""
    return Reply(
        body={
            "id": "chatcmpl-test",
            "object": "chat.completion",
            "created": 1_700_000_000,
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": content, "refusal": refusal},
                    "finish_reason": "stop",
                    "logprobs": None,
                }
            ],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
        }
    )


def error(status: int, message: str, **headers: str) -> Reply:
    """An OpenAI-style error body."""
    return Reply(
        status=status,
        body={"error": {"message": message, "type": "test_error", "code": None}},
        headers=headers,
    )


class ChatServer:
    """The server, listening on a free port of 127.0.0.1 until ``stop()``."""

    def __init__(self, behaviour: Behaviour) -> None:
        self.behaviour = behaviour
        self.requests: list[Received] = []
        self._lock = threading.Lock()
        # Set at stop: slow and trickling handlers give up at once instead of lingering.
        self.stopping = threading.Event()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self._httpd.daemon_threads = True
        self.port = self._httpd.server_address[1]
        # A short poll interval: stop() waits for it, once per test.
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )
        self._thread.start()

    @property
    def base_url(self) -> str:
        """The ``base_url`` a client uses."""
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def endpoint(self) -> str:
        """``host:port``, as error messages name it."""
        return f"127.0.0.1:{self.port}"

    @property
    def chat_requests(self) -> list[Received]:
        """The chat-completion requests received so far."""
        with self._lock:
            return [r for r in self.requests if r.path == CHAT_PATH]

    def record(self, method: str, path: str, headers: dict[str, str], raw: bytes) -> Received:
        try:
            body: Any = json.loads(raw)
        except ValueError:
            body = raw.decode(errors="replace")
        with self._lock:
            received = Received(
                number=len(self.requests) + 1,
                at=time.monotonic(),
                method=method,
                path=path,
                headers=headers,
                body=body,
            )
            self.requests.append(received)
        return received

    def stop(self) -> None:
        self.stopping.set()
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)


def _handler_for(server: ChatServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length)
            headers = {k.lower(): v for k, v in self.headers.items()}
            received = server.record("POST", self.path, headers, raw)
            if self.path != CHAT_PATH:
                reply = error(404, f"no route {self.path}")
            else:
                reply = server.behaviour(received)
            if reply.delay and server.stopping.wait(reply.delay):
                return
            self._send(reply)

        def _send(self, reply: Reply) -> None:
            if isinstance(reply.body, dict):
                payload = json.dumps(reply.body).encode()
            else:
                payload = reply.body.encode() if isinstance(reply.body, str) else reply.body
            headers = {"Content-Type": "application/json", **reply.headers}
            try:
                self.send_response(reply.status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                if reply.trickle is None:
                    self.wfile.write(payload)
                    return
                for byte in payload:
                    self.wfile.write(bytes([byte]))
                    self.wfile.flush()
                    if server.stopping.wait(reply.trickle):
                        return
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up (its timeout): expected in the timeout tests

        def log_message(self, format: str, *args: Any) -> None:
            pass  # keep test output clean

    return Handler


def closed_port() -> int:
    """A port on 127.0.0.1 with nothing listening (connections are refused)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
