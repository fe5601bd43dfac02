"""How an event becomes a stored row and back, and the hash chain that makes edits visible.

Layout of a stored row (an eventsourcing ``StoredEvent``):

- ``originator_id`` = stream, ``originator_version`` = version;
- ``topic`` = ``"<type>@<schema_version>"``, so a reader can filter by type in SQL and take the
  fast path (no upcasting) without parsing the body;
- ``state`` = the JSON body of the envelope (every field but ``position`` and ``hash``), then the
  hash appended as its last member: ``…,"hash":"<64 hex>"}``.

``hash = sha256(body)`` where ``body`` is the JSON without the hash member. The body holds
``stream``, ``version`` and ``prev_hash`` (the hash of the previous event of the stream), so
editing, moving, removing or reordering events breaks either an event's own hash or the chain.
The hash member has a fixed length, so the exact hashed bytes are recovered without
re-serialising (which would tie the hash to one JSON library's formatting).
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Sequence
from typing import Any, cast

from eventsourcing.persistence import Mapper, Notification, StoredEvent, Transcoder
from pydantic import ValidationError

from .catalogue import EVENT_ADAPTER, EVENT_LIST_ADAPTER, EVENT_TYPES, Event
from .envelope import Envelope, restamped
from .errors import CorruptEvent, UnknownEventType, UnsupportedSchemaVersion
from .upcasting import upcast

_HASH_PREFIX = b',"hash":"'
_NOT_HASHED = {"hash", "position"}
_HASH_SUFFIX_LEN = len(_HASH_PREFIX) + 64 + 2  # prefix, 64 hex digits, '"}'
_HASH_TAIL = 64 + 2  # the recorded hash's digits and the closing '"}'
CURRENT_TOPICS: dict[str, str] = {
    name: f"{name}@{cls.current_schema_version}" for name, cls in EVENT_TYPES.items()
}
_CURRENT_CLASSES: dict[str, type[Envelope]] = {
    CURRENT_TOPICS[name]: cls for name, cls in EVENT_TYPES.items()
}


def topics_for(event_type: str) -> list[str]:
    """Every stored topic an event type can have (all its schema versions)."""
    cls = EVENT_TYPES[event_type]
    return [f"{event_type}@{v}" for v in range(1, cls.current_schema_version + 1)]


def seal(event: Envelope) -> tuple[bytes, str]:
    """The stored state of ``event`` (stream, version and prev_hash already set) and its hash."""
    body = type(event).__pydantic_serializer__.to_json(event, exclude=_NOT_HASHED)
    digest = hashlib.sha256(body).hexdigest()
    return b"".join((body[:-1], _HASH_PREFIX, digest.encode(), b'"}')), digest


_PLACED = {"hash", "position", "stream", "version", "prev_hash"}
_ID_END = len(b'{"id":"') + 36 + len(b'",')  # the id member: a UUID's 36 characters


def seal_as(event: Envelope, stream: str, version: int, prev_hash: str | None) -> tuple[bytes, str]:
    """``seal`` of ``event`` placed at ``stream``/``version`` after ``prev_hash``, without
    copying it: the same bytes as ``seal(restamped(event, stream=…, version=…, prev_hash=…))``.

    ``stream`` must be a valid stream name (no character JSON escapes) and ``event.at`` in UTC.
    The members the store assigns are spliced into the serialised event at the places the
    model's field order gives them (after ``id``; ``prev_hash`` last): the append path's
    per-event copy costs more than the rest of the encoding.
    """
    if type(event.id) is not uuid.UUID:
        # Only a UUID id has the fixed length the splice relies on (an event made without
        # validation may hold anything): seal a copy, and let validation say what is wrong.
        return seal(restamped(event, stream=stream, version=version, prev_hash=prev_hash))
    rest = type(event).__pydantic_serializer__.to_json(event, exclude=_PLACED)
    last = b"null" if prev_hash is None else b'"%s"' % prev_hash.encode()
    body = b'%s"stream":"%s","version":%d,%s,"prev_hash":%s}' % (
        rest[:_ID_END],
        stream.encode(),
        version,
        rest[_ID_END:-1],
        last,
    )
    digest = hashlib.sha256(body).hexdigest()
    return b'%s,"hash":"%s"}' % (body[:-1], digest.encode()), digest


def stored_row(stream: str, version: int, topic: str, state: bytes) -> StoredEvent:
    """``StoredEvent(stream, version, topic, state)``, made without the frozen dataclass's
    four ``object.__setattr__`` calls (a tenth of the append path's own cost per event)."""
    row = _new_stored(StoredEvent)
    row.__dict__.update(originator_id=stream, originator_version=version, topic=topic, state=state)
    return row


_new_stored = object.__new__


def split_state(state: bytes) -> tuple[bytes, str] | None:
    """The hashed body and the recorded hash of a stored state, or None if it has no hash."""
    if len(state) < _HASH_SUFFIX_LEN or not state.endswith(b'"}'):
        return None
    cut = len(state) - _HASH_SUFFIX_LEN
    if state[cut : cut + len(_HASH_PREFIX)] != _HASH_PREFIX:
        return None
    recorded = state[cut + len(_HASH_PREFIX) : -2].decode("ascii", "replace")
    return state[:cut] + b"}", recorded


def body_hash(body: bytes) -> str:
    """The hash of a stored body (see the module docstring)."""
    return hashlib.sha256(body).hexdigest()


def where(n: Notification | StoredEvent) -> str:
    """Human-readable location of a stored row for error messages."""
    position = n.id if isinstance(n, Notification) else None
    return _where(position, str(n.originator_id), n.originator_version)


class _NoTranscoder(Transcoder):
    # The envelope serialises itself through pydantic (one JSON codec, validated both ways);
    # eventsourcing's Mapper still owns the optional compressor and cipher around it.
    def encode(self, obj: Any) -> bytes:
        return cast(bytes, obj)

    def decode(self, data: bytes) -> Any:
        return data


class EnvelopeMapper(Mapper[str]):
    """eventsourcing Mapper for pydantic envelopes: typed topics, upcasting, located errors."""

    def __init__(self) -> None:
        super().__init__(transcoder=_NoTranscoder())

    def to_stored_event(self, domain_event: Any) -> StoredEvent:
        event = cast(Envelope, domain_event)
        state, _ = seal(event)
        return self.stored(event, state)

    def stored(self, event: Envelope, state: bytes) -> StoredEvent:
        """The stored row for ``event`` whose sealed body is ``state``."""
        return self.stored_state(event.stream, event.version, CURRENT_TOPICS[event.type], state)

    def stored_state(self, stream: str, version: int, topic: str, state: bytes) -> StoredEvent:
        """The stored row for a sealed body, compressed and encrypted if configured."""
        if self.compressor:
            state = self.compressor.compress(state)
        if self.cipher:
            state = self.cipher.encrypt(state)
        return stored_row(stream, version, topic, state)

    def plain_state(self, stored: StoredEvent) -> bytes:
        """The stored state with the cipher and compressor undone."""
        state = stored.state
        if self.cipher:
            state = self.cipher.decrypt(state)
        if self.compressor:
            state = self.compressor.decompress(state)
        return state

    def to_domain_event(self, stored_event: StoredEvent) -> Any:
        return self.decode(stored_event)

    def decode(self, stored: StoredEvent) -> Event:
        """The typed, current-schema event of a stored row (raises located errors)."""
        position = stored.id if isinstance(stored, Notification) else None
        return self.decode_row(
            position,
            str(stored.originator_id),
            stored.originator_version,
            stored.topic,
            stored.state,
        )

    def decode_rows(self, rows: Sequence[tuple[int | None, str, int, str, bytes]]) -> list[Event]:
        """``decode_row`` of each row (position, stream, version, topic, state) of a page.

        Rows of current topics are parsed and validated in one call, which allocates and
        calls less than a call per row (~1 µs an event of ~8); if any row is not current or
        does not pass, the page is decoded row by row, so the error names its row. Like
        ``decode_row`` this checks each body's type, stream and version against its row, not
        that its hash is right (``verify`` does): a row made to run into the next on purpose
        can pass here, as any edited row passes a read.
        """
        if rows and self.cipher is None and self.compressor is None:
            try:
                events = EVENT_LIST_ADAPTER.validate_json(
                    b"".join((b"[", b",".join([row[4] for row in rows]), b"]"))
                )
            except ValidationError:
                events = []
            if len(events) == len(rows) and _one_body_each(events, rows):
                return events
        return [self.decode_row(*row) for row in rows]

    def decode_row(
        self, position: int | None, stream: str, version: int, topic: str, state: bytes
    ) -> Event:
        """``decode`` for a row given as its columns (the read path's tuples)."""
        # The hot path of every read: a current-version row goes straight from its bytes into
        # its class (one Rust-side parse and validation), with no intermediate dict.
        cls = _CURRENT_CLASSES.get(topic)
        if self.cipher is not None or self.compressor is not None:
            try:
                state = self.plain_state(StoredEvent(stream, version, topic, state))
            except Exception as exc:
                raise CorruptEvent(
                    f"{_where(position, stream, version)}: cannot decode stored bytes: {exc}"
                ) from exc
        try:
            if cls is not None:
                event: Envelope = cls.model_validate_json(state)
            else:
                document = json.loads(state)
                if not isinstance(document, dict):
                    raise ValueError("stored body is not a JSON object")
                event = EVENT_ADAPTER.validate_python(
                    upcast(document, where=_where(position, stream, version))
                )
        except (UnknownEventType, UnsupportedSchemaVersion):
            raise
        except (ValidationError, ValueError, KeyError, TypeError, RecursionError) as exc:
            raise CorruptEvent(
                f"{_where(position, stream, version)}: stored event of topic {topic!r} is "
                f"damaged: {_short(exc)}. The log was not modified; run `agentledger verify-log`."
            ) from exc
        if event.version != version or event.stream != stream:
            raise CorruptEvent(
                f"{_where(position, stream, version)}: the body says stream {event.stream!r} "
                f"version {event.version}; the row was moved. Run `agentledger verify-log`."
            )
        if position is not None:
            # The position is the store's, known only on read: set it on the frozen model
            # without a second validation pass.
            object.__setattr__(event, "position", position)
        return cast(Event, event)


def _one_body_each(
    events: list[Event], rows: Sequence[tuple[int | None, str, int, str, bytes]]
) -> bool:
    """Whether each row held exactly the event parsed for it (then positioned from it).

    Each row must hold one sealed body of its row's current topic, stream and version: it
    starts with the id and ends with the hash the event carries (a body that ran into the
    next row's, as a damaged pair might, fails this, and the rows are decoded one by one).
    """
    current = _CURRENT_CLASSES
    for event, (position, stream, version, topic, state) in zip(events, rows, strict=True):
        fields = event.__dict__
        if (
            event.__class__ is not current.get(topic)
            or fields["version"] != version
            or fields["stream"] != stream
            or not state.startswith(b'{"id":"')
            or not state.endswith(b'"}')
            or state[-_HASH_TAIL:-2] != (fields["hash"] or "").encode()
        ):
            return False
        if position is not None:
            fields["position"] = position  # the store's, known only on read (frozen otherwise)
    return True


def _where(position: int | None, stream: str, version: int) -> str:
    pos = f"position {position}, " if position is not None else ""
    return f"{pos}stream {stream!r} version {version}"


def _short(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        first = exc.errors()[0]
        loc = ".".join(str(p) for p in first["loc"]) or "(body)"
        return f"field {loc}: {first['msg']}"
    return str(exc)
