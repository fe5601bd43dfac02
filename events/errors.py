"""The error hierarchy: every error agentledger raises on purpose derives from AgentLedgerError.

Messages name what is wrong (stream, position, field, file) and what to do next.
"""

from __future__ import annotations


class AgentLedgerError(Exception):
    """Root of every error agentledger raises on purpose."""


class ConfigurationError(AgentLedgerError):
    """A setting (store URL, option, file) is malformed."""


class StoreUnavailable(AgentLedgerError):
    """The event store cannot be reached (server down, file unwritable, lock held too long)."""


class InvalidEvent(AgentLedgerError):
    """An event failed validation; it was rejected before the log was touched."""


class ConcurrencyConflict(AgentLedgerError):
    """An append expected a stream version the stream no longer has; nothing was written."""

    def __init__(self, stream: str, expected_version: int, actual_version: int | None) -> None:
        self.stream = stream
        self.expected_version = expected_version
        self.actual_version = actual_version
        actual = "unknown" if actual_version is None else str(actual_version)
        super().__init__(
            f"concurrent append to stream {stream!r}: expected version {expected_version}, "
            f"but the stream is at version {actual}; nothing was written. "
            "Re-read the stream and decide again."
        )


class AlreadyProcessed(AgentLedgerError):
    """A consumer tried to record a position it has already recorded (a duplicate delivery)."""

    def __init__(self, consumer: str, position: int, recorded: int | None) -> None:
        self.consumer = consumer
        self.position = position
        self.recorded = recorded
        super().__init__(
            f"consumer {consumer!r} has already processed position {recorded} "
            f"(tried to record {position}); the duplicate was discarded and nothing was written"
        )


class NotAuthorized(AgentLedgerError):
    """A principal tried to append an event type it may not append."""


class UnknownEventType(AgentLedgerError):
    """The log holds an event type this version of agentledger does not know."""


class UnsupportedSchemaVersion(AgentLedgerError):
    """The log holds an event written by a newer schema than this version of agentledger reads."""


class CorruptEvent(AgentLedgerError):
    """A stored event cannot be decoded (damaged bytes, invalid JSON, invalid fields)."""


class TamperDetected(AgentLedgerError):
    """The hash chain of the log does not hold: an event was edited, removed, inserted or moved."""


class NotFound(AgentLedgerError):
    """A stream, run or event that was asked for does not exist."""
