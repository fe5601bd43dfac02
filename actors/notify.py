"""Tell humans what needs them: notifications and approval requests, to a command or a webhook.

Optional (``[runtime] notify_command`` / ``notify_webhook`` in agentledger.toml). The notifier
follows the log like any consumer and records its position as ``system:notifier``, so a restart
neither repeats nor skips a notice; delivery is best effort (a failed delivery is logged, and the
event stays in the log and in ``agentledger approvals``). The webhook must be on this machine
(loopback): a notice carries an action's preview and reasoning.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import logging
import shlex
import subprocess
import threading
import urllib.request
from typing import Any
from urllib.parse import urlsplit

from agentledger.events import AlreadyProcessed, ConfigurationError, Event, EventStore, Lease

_log = logging.getLogger(__name__)

NOTICE_TYPES = ("notification.sent", "approval.requested")
CONSUMER = "system:notifier"


def check_webhook(url: str) -> str:
    """``url`` if it is an http(s) URL on a loopback address, else ``ConfigurationError``."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    loopback = host == "localhost"
    with contextlib.suppress(ValueError):  # not an IP address: only "localhost" qualifies
        loopback = loopback or ipaddress.ip_address(host).is_loopback
    if parts.scheme not in ("http", "https") or not loopback:
        raise ConfigurationError(
            f"notify_webhook {url!r} must be an http(s) URL on this machine (127.0.0.1, ::1 or "
            "localhost): notices carry actions' previews and reasoning. Relay from there."
        )
    return url


DECISION_TYPES = ("approval.granted", "approval.denied", "approval.expired")
"""What ends an approval request: a human's decision or its expiry."""


def open_requests(events: list[Event]) -> list[Event]:
    """The approval requests among ``events`` that none of them decides."""
    decided = {getattr(e.payload, "action_id", None) for e in events if e.type in DECISION_TYPES}
    return [
        e
        for e in events
        if e.type == "approval.requested" and getattr(e.payload, "action_id", None) not in decided
    ]


def notice(event: Event) -> dict[str, Any]:
    """The JSON a human-facing channel receives for ``event``."""
    payload = event.payload.model_dump(mode="json")
    return {
        "run": event.stream,
        "type": event.type,
        "position": event.position,
        "at": event.at.isoformat(),
        "by": event.actor,
        **{
            k: payload[k]
            for k in ("action_id", "message", "tool", "risk", "preview", "reasoning", "expires_at")
            if k in payload
        },
    }


class Notifier:
    """Delivers each notice to the configured command (JSON on stdin) and/or webhook (POST)."""

    def __init__(
        self,
        store: EventStore,
        *,
        command: str | None = None,
        webhook: str | None = None,
        timeout: float = 10.0,
    ) -> None:
        self.store = store
        self.command = shlex.split(command) if command else None
        self.webhook = check_webhook(webhook) if webhook else None
        self.timeout = timeout
        self.delivered = 0
        self.failed = 0

    def run(self, stop: threading.Event) -> None:
        """Deliver notices until ``stop`` is set, from where it left off (or from now); while
        another process's notifier delivers on this store (another ``serve``), stand by, and
        likewise after losing the lease (a PostgreSQL session the server ended)."""
        while not stop.is_set():
            lease = self.store.lease(CONSUMER)
            while lease is None:  # both would send every notice
                if stop.wait(1.0):
                    return
                lease = self.store.lease(CONSUMER)
            try:
                start = self.store.position_of(CONSUMER) or self.store.head_position()
                self._deliver_from(start, stop, lease)
            finally:
                lease.release()

    def _deliver_from(self, start: int, stop: threading.Event, lease: Lease) -> None:
        # A quarter of a second is soon enough for a person: not woken by every append.
        with self.store.subscribe(start, [*NOTICE_TYPES, "run.forked"], wake=False) as subscription:
            while not stop.is_set():
                batch = subscription.poll(1.0)
                # Asked before each batch (one round trip on PostgreSQL; none while idle): a
                # notifier that lost its lease sends nothing more, though a batch it was
                # sending when the loss came may also be sent by the one that took over
                # (delivery is best effort; its position is recorded after each batch).
                if batch and not lease.held():
                    _log.warning(
                        "the notifier lost its lease (its database session ended): stopped "
                        "sending notices; takes it again when no other process holds it"
                    )
                    return
                for event in batch:
                    if event.type == "run.forked":
                        for request in open_requests(self.store.inherited(event)):
                            self.deliver(request)  # the fork waits for its own decision
                    else:
                        self.deliver(event)
                if batch:
                    # A notifier that took over meanwhile may have recorded past it already.
                    with contextlib.suppress(AlreadyProcessed):
                        self.store.record_position(CONSUMER, batch[-1].position or start)

    def deliver(self, event: Event) -> None:
        """Send one notice to every channel (failures are logged, never raised)."""
        body = json.dumps(notice(event), ensure_ascii=False).encode()
        if self.command:
            try:
                subprocess.run(
                    self.command,
                    input=body,
                    timeout=self.timeout,
                    check=True,
                    capture_output=True,
                )
                self.delivered += 1
            except (OSError, subprocess.SubprocessError) as exc:
                self.failed += 1
                _log.warning(
                    "notify_command %s failed for position %s: %s",
                    self.command[0],
                    event.position,
                    exc,
                )
        if self.webhook:
            request = urllib.request.Request(
                self.webhook, data=body, headers={"Content-Type": "application/json"}
            )
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    response.read()
                self.delivered += 1
            except OSError as exc:
                self.failed += 1
                _log.warning(
                    "notify_webhook %s failed for position %s: %s",
                    self.webhook,
                    event.position,
                    exc,
                )
