"""The event envelope every agentledger event shares, and principals (who appended it)."""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any, ClassVar, TypeVar

from pydantic import AfterValidator, AwareDatetime, BaseModel, ConfigDict, Field

PRINCIPAL_PATTERN = re.compile(
    r"^(agent:(coordinator|research|execution|review)/[A-Za-z0-9_.\-]{1,64}"
    r"|human:[A-Za-z0-9_.@\-]{1,64}"
    r"|system(:[A-Za-z0-9_.\-]{1,64})?)$"
)


class PrincipalKind(StrEnum):
    """The three kinds of principal that may append events."""

    AGENT = "agent"
    HUMAN = "human"
    SYSTEM = "system"


def _check_principal(value: str) -> str:
    # Every event read or written passes here; a log names few principals, so the valid ones
    # are remembered (bounded) rather than matched again.
    if value in _VALID_PRINCIPALS:
        return value
    if not PRINCIPAL_PATTERN.fullmatch(value):
        raise ValueError(
            f"{value!r} is not a principal; use 'agent:<role>/<id>' "
            "(role: coordinator, research, execution, review), 'human:<name>' or 'system[:<name>]'"
        )
    if len(_VALID_PRINCIPALS) < 10_000:
        _VALID_PRINCIPALS.add(value)
    return value


_VALID_PRINCIPALS: set[str] = set()
Principal = Annotated[str, AfterValidator(_check_principal)]
_KINDS = {kind.value: kind for kind in PrincipalKind}
"""Who appended an event: ``agent:<role>/<id>``, ``human:<name>`` or ``system[:<name>]``."""


def principal_kind(principal: str) -> PrincipalKind:
    """The kind of a (valid) principal string."""
    return _KINDS[principal.partition(":")[0]]


UTCDateTime = AwareDatetime
"""A timezone-aware timestamp; the store records it in UTC (checked in Rust: this is on the
hot path of every read, where a Python validator would cost more than the rest of the field)."""


def _now() -> datetime:
    return datetime.now(UTC)


M = TypeVar("M", bound=BaseModel)


def restamped(model: M, **changes: Any) -> M:
    """A copy of ``model`` with fields the store assigns (stream, version, hashes, position)
    set to ``changes``, unvalidated: for the store's own, well-typed values only (a third of
    ``model_copy``'s cost, on the append and fork-read paths)."""
    copied = type(model).__new__(type(model))
    object.__setattr__(copied, "__dict__", {**model.__dict__, **changes})
    object.__setattr__(
        copied, "__pydantic_fields_set__", model.__pydantic_fields_set__ | changes.keys()
    )
    object.__setattr__(copied, "__pydantic_extra__", None)
    object.__setattr__(copied, "__pydantic_private__", None)
    return copied


class Payload(BaseModel):
    """Base of every typed payload: frozen, and strict about unknown fields."""

    model_config = ConfigDict(frozen=True, extra="forbid")


class Envelope(BaseModel):
    """Fields every event carries; subclasses fix ``type`` and the payload model.

    ``id`` and ``at`` are recorded once, when the event is created, and never recomputed.
    ``stream``, ``version``, ``prev_hash`` and ``hash`` are assigned by the store on append;
    ``position`` (the global order) is assigned by the store and known only on read.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    # Set by each concrete event class.
    event_type: ClassVar[str] = ""
    current_schema_version: ClassVar[int] = 1
    allowed_principals: ClassVar[frozenset[PrincipalKind]] = frozenset(PrincipalKind)

    id: uuid.UUID = Field(default_factory=uuid.uuid4)
    stream: str = ""
    version: int = Field(default=0, ge=0)
    type: str
    schema_version: int = 1
    at: UTCDateTime = Field(default_factory=_now)
    actor: Principal
    causation_id: uuid.UUID | None = None
    correlation_id: uuid.UUID | None = None
    payload: Any
    prev_hash: str | None = None
    hash: str | None = None
    position: int | None = Field(default=None, exclude=True)

    def caused_by(self, cause: Envelope) -> dict[str, Any]:
        """Keyword arguments that link a new event to ``cause`` (causation and correlation)."""
        return {
            "causation_id": cause.id,
            "correlation_id": cause.correlation_id or cause.id,
        }
