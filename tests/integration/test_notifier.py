"""The notifier: notices of medium-risk actions and approval requests reach a command and a
loopback webhook, once each, across restarts; non-loopback webhooks are refused."""

from __future__ import annotations

import json
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from agentledger.actors.notify import CONSUMER, Notifier, check_webhook
from agentledger.actors.runtime import follow_run, start_run
from agentledger.demo import DEMO_GOAL, prepare_demo
from agentledger.events import ConfigurationError, EventStore, NotificationSent


class Inbox(BaseHTTPRequestHandler):
    received: list[dict[str, Any]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        Inbox.received.append(json.loads(body))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


def test_notices_reach_a_command_and_a_loopback_webhook_once(
    tmp_path: Path, threaded_agents: Any
) -> None:
    Inbox.received = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), Inbox)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    sink = tmp_path / "notices.jsonl"
    script = tmp_path / "sink.py"
    script.write_text(f"import sys\nopen({str(sink)!r}, 'a').write(sys.stdin.read() + '\\n')\n")
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    docs, workspace = prepare_demo(tmp_path)
    webhook = f"http://127.0.0.1:{server.server_address[1]}/hook"

    def notifier(store: EventStore) -> Notifier:
        return Notifier(store, command=f"{sys.executable} {script}", webhook=webhook)

    stop = threading.Event()
    with EventStore.open(url) as store:
        store.record_position(CONSUMER, 1)  # as if it had run before: deliver from here on
        first = notifier(EventStore.open(url))
        thread = threading.Thread(target=first.run, args=(stop,), daemon=True)
        thread.start()
        with threaded_agents(url, tmp_path):
            run = start_run(store, DEMO_GOAL, docs=docs, workspace=workspace).stream
            follow_run(store, run, timeout=60)
        deadline = time.monotonic() + 10
        while len(Inbox.received) < 4 and time.monotonic() < deadline:
            time.sleep(0.05)
        stop.set()
        thread.join(timeout=10)
        # A restart delivers nothing twice.
        stop2 = threading.Event()
        second = notifier(EventStore.open(url))
        thread = threading.Thread(target=second.run, args=(stop2,), daemon=True)
        thread.start()
        time.sleep(1.5)
        stop2.set()
        thread.join(timeout=10)
    server.shutdown()
    kinds = [n["type"] for n in Inbox.received]
    assert kinds.count("notification.sent") == 3  # write, check, commit: medium risk
    assert kinds.count("approval.requested") == 1
    (request,) = [n for n in Inbox.received if n["type"] == "approval.requested"]
    assert request["tool"] == "delete_file" and request["reasoning"] and request["run"] == run
    lines = [json.loads(line) for line in sink.read_text().splitlines() if line.strip()]
    assert lines == Inbox.received
    assert second.delivered == 0


def test_two_notifiers_on_one_store_send_each_notice_once(tmp_path: Path) -> None:
    # Two `serve` on one store (each with its notifier) sent every notice twice, and the
    # slower one then crashed on the position the other had recorded.
    sink = tmp_path / "notices.jsonl"
    script = tmp_path / "sink.py"
    script.write_text(f"import sys\nopen({str(sink)!r}, 'a').write(sys.stdin.read() + '\\n')\n")
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    stops = [threading.Event(), threading.Event()]
    with EventStore.open(url) as store:
        store.record_position(CONSUMER, 1)
        notifiers = [
            Notifier(EventStore.open(url), command=f"{sys.executable} {script}") for _ in stops
        ]
        threads = [
            threading.Thread(target=n.run, args=(stop,), daemon=True)
            for n, stop in zip(notifiers, stops, strict=True)
        ]
        for thread in threads:
            thread.start()
        run = start_run(store, "anything").stream
        for n in range(3):
            note = NotificationSent(
                actor="agent:execution/1",
                payload={"action_id": f"a{n}", "channel": "inbox", "message": f"ran {n}"},
            )
            store.append(run, [note])
            deadline = time.monotonic() + 30
            while sum(x.delivered for x in notifiers) <= n and time.monotonic() < deadline:
                time.sleep(0.05)
        # Stopped, the one that delivered hands over; the other delivers what comes next.
        (active,) = [i for i, x in enumerate(notifiers) if x.delivered]
        stops[active].set()
        threads[active].join(timeout=10)
        store.append(run, [note.model_copy(update={"id": uuid.uuid4()})])
        deadline = time.monotonic() + 30
        while notifiers[1 - active].delivered < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        stops[1 - active].set()
        threads[1 - active].join(timeout=10)
        for x in notifiers:
            x.store.close()
    assert [x.delivered for x in notifiers][active] == 3
    assert notifiers[1 - active].delivered == 1
    lines = [json.loads(line) for line in sink.read_text().splitlines() if line.strip()]
    assert [n["message"] for n in lines] == ["ran 0", "ran 1", "ran 2", "ran 2"]


@pytest.mark.parametrize(
    "url", ["http://10.0.0.5/hook", "https://hooks.example.com/x", "ftp://127.0.0.1/x"]
)
def test_a_webhook_off_this_machine_is_refused(url: str) -> None:
    with pytest.raises(ConfigurationError, match="must be an http\\(s\\) URL on this machine"):
        check_webhook(url)


def test_loopback_webhooks_are_accepted() -> None:
    for url in ("http://127.0.0.1:9000/x", "http://localhost/x", "http://[::1]:80/x"):
        assert check_webhook(url) == url
