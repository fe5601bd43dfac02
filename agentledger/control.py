"""What humans do to runs — approve, deny, pause, resume, cancel — checked against the log first.

Each decision is validated on the run's state as the log has it (the action exists, is waiting,
has not expired, has not changed, the human may decide it and did not propose it) and then
appended at the version it was checked against, so two people deciding at once cannot both win.
A refused decision writes nothing.
"""

from __future__ import annotations

import getpass
import hashlib
import hmac
import os
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from agentledger.events import (
    AgentLedgerError,
    ApprovalDenied,
    ApprovalGranted,
    ConcurrencyConflict,
    Envelope,
    Event,
    EventStore,
    InvalidEvent,
    NotAuthorized,
    NotFound,
    RunCancelled,
    RunPaused,
    RunResumed,
)
from agentledger.projections import ActionStatus, RunState, RunStateProjection, RunStatus
from agentledger.projections.run_state import TERMINAL, IllegalTransition, advance
from agentledger.projections.runner import run_events

TOKEN_ENV = "AGENTLEDGER_APPROVER_TOKEN"
APPROVER_ROLE = "approver"

_E = TypeVar("_E", bound=Envelope)


class Approver(BaseModel):
    """``[approvers.<name>]`` in agentledger.toml: who may decide approvals, and how they prove
    it on this machine (their OS account, or a token whose SHA-256 is configured)."""

    model_config = ConfigDict(extra="forbid")

    roles: list[str] = Field(default_factory=lambda: [APPROVER_ROLE])
    os_users: list[str] | None = Field(
        default=None, description="OS accounts that may act as this approver (default: the name)"
    )
    token_sha256: str | None = Field(
        default=None, pattern=r"^[0-9a-f]{64}$", description=f"SHA-256 of ${TOKEN_ENV}"
    )


@dataclass(frozen=True)
class Human:
    """An authenticated human: the principal their decisions are recorded under."""

    name: str
    roles: tuple[str, ...]

    @property
    def principal(self) -> str:
        """``human:<name>``."""
        return f"human:{self.name}"


def os_user() -> str | None:
    """The OS account this process acts for ($LOGNAME, $USER, …, else the account of its
    uid): whom humans' commands record by default, for a run as for a decision. None where
    no account can be told (a uid with none, as in some containers)."""
    try:
        return getpass.getuser()
    except (OSError, KeyError):  # KeyError before Python 3.13
        return None


def authenticate(
    name: str | None, approvers: dict[str, Approver], *, source: str | None = None
) -> Human:
    """The human acting: ``name`` (default: the OS user), proven by token or OS account.

    With no approvers configured (a single-user machine), the OS user acts as themselves with
    the approver role; naming someone else is refused. ``source``, the settings file the
    approvers were read from (None: there was none), is named in the refusals.
    """
    account = _os_account()
    name = name or account
    where = source or "the settings file"
    if not approvers:
        if name != account:
            configured = (
                f"no [approvers] are configured in {source}"
                if source
                else "no [approvers] are configured (there is no settings file: "
                "./agentledger.toml, or one named by --config or $AGENTLEDGER_CONFIG)"
            )
            raise NotAuthorized(
                f"--as {name}: you are the OS user {account!r}, and {configured} to let you act "
                "as someone else"
            )
        return Human(name, (APPROVER_ROLE,))
    approver = approvers.get(name)
    if approver is None:
        raise NotAuthorized(
            f"--as {name}: {name!r} is not an approver; approvers in {where}: "
            + ", ".join(sorted(approvers))
        )
    if approver.token_sha256 is not None:
        token = os.environ.get(TOKEN_ENV, "")
        digest = hashlib.sha256(token.encode()).hexdigest()
        if not token or not hmac.compare_digest(digest, approver.token_sha256):
            raise NotAuthorized(
                f"acting as {name} needs their token in ${TOKEN_ENV} (its SHA-256 is configured "
                f"in [approvers.{name}] of {where})"
            )
    elif account not in (approver.os_users or [name]):
        raise NotAuthorized(
            f"the OS user {account!r} may not act as {name}; add it to "
            f"[approvers.{name}] os_users in {where}, or configure a token"
        )
    return Human(name, tuple(approver.roles))


def _os_account() -> str:
    account = os_user()
    if account is None:
        raise NotAuthorized(
            f"cannot tell this process's OS account (uid {os.getuid()} has none, and $LOGNAME "
            "and $USER are unset): a decision needs one; set $USER to your account's name"
        )
    return account


def human_event(cls: type[_E], options: Mapping[str, str], /, **fields: Any) -> _E:
    """``cls(**fields)``: the event a person's command records, or ``InvalidEvent`` naming the
    option (``options``: payload field -> the command's option) whose text it cannot hold."""
    try:
        return cls(**fields)
    except ValidationError as exc:
        raise InvalidEvent(_refusal(exc, options)) from None


def _refusal(exc: ValidationError, options: Mapping[str, str]) -> str:
    # What a person typed is refused as a run's goal is (runtime.validate_goal): by its option,
    # its length and the limit, not by pydantic's field path.
    first = exc.errors()[0]
    loc = [str(part) for part in first["loc"]]
    option = options.get(loc[1]) if len(loc) == 2 and loc[0] == "payload" else None
    what = option or f"field {'.'.join(loc) or '(event)'}"
    limit = first.get("ctx", {}).get("max_length")
    if first["type"] == "string_too_long" and isinstance(first["input"], str) and limit:
        return (
            f"{what} is {len(first['input']):,} characters; the limit is {limit:,}. Shorten "
            "it (say where longer material is kept, rather than paste it); nothing was written"
        )
    return f"{what}: {first['msg']}; nothing was written"


def run_state(store: EventStore, run: str) -> tuple[RunState, list[Event]]:
    """The run's state from its whole stream (``NotFound`` if there is no such run)."""
    events = run_events(store, run)
    return RunStateProjection().fold(events), events


def decide(
    store: EventStore,
    run: str,
    action_id: str,
    human: Human,
    *,
    grant: bool,
    note: str,
    now: datetime | None = None,
) -> Event:
    """Grant or deny a pending approval; every check passes first, or nothing is written."""
    if APPROVER_ROLE not in human.roles:
        raise NotAuthorized(
            f"{human.name} does not have the {APPROVER_ROLE!r} role (roles: "
            f"{', '.join(human.roles) or 'none'})"
        )
    if not grant and not note.strip():
        raise AgentLedgerError("a denial needs a reason (--reason), so the agents can replan")
    state, events = run_state(store, run)
    if state.status in TERMINAL:
        raise AgentLedgerError(
            f"run {run} is {state.status.value}; nothing in it will run, so there is nothing "
            "to decide"
        )
    pending = state.pending_approvals.get(action_id)
    action = state.actions.get(action_id)
    if pending is None:
        if action is None:
            waiting = ", ".join(state.pending_approvals) or "none"
            raise NotFound(
                f"run {run} has no action {action_id!r}; waiting for approval: {waiting}"
            )
        if action.decided_by is not None or action.status is ActionStatus.EXPIRED:
            by = f" by {action.decided_by}" if action.decided_by else ""
            raise AgentLedgerError(
                f"action {action_id} was already decided{by}; it is {action.status.value} now"
            )
        raise AgentLedgerError(
            f"action {action_id} is {action.status.value}; it is not waiting for an approval"
        )
    now = now or datetime.now(UTC)
    if pending.expires_at is not None and pending.expires_at <= now:
        raise AgentLedgerError(
            f"the approval request for {action_id} expired at {pending.expires_at:%Y-%m-%d %H:%M} "
            "UTC; the run's agents will ask again if the action is still needed"
        )
    if action is not None and action.action_hash != pending.action_hash:
        raise AgentLedgerError(
            f"action {action_id} changed after approval was requested; it needs a new request"
        )
    if pending.requested_by == human.principal or (
        action is not None and action.proposed_by == human.principal
    ):
        raise NotAuthorized(
            f"{human.name} proposed action {action_id}; someone else must decide it"
        )
    payload = {"action_id": action_id, "action_hash": pending.action_hash}
    cause = next(
        e
        for e in reversed(events)
        if e.type == "approval.requested" and getattr(e.payload, "action_id", None) == action_id
    )
    link = cause.caused_by(cause)
    event: Envelope
    if grant:
        event = human_event(
            ApprovalGranted,
            {"comment": "--comment"},
            actor=human.principal,
            payload=payload | {"comment": note},
            **link,
        )
    else:
        event = human_event(
            ApprovalDenied,
            {"reason": "--reason"},
            actor=human.principal,
            payload=payload | {"reason": note},
            **link,
        )
    try:
        (recorded,) = store.append(run, [event], expected_version=len(events))
    except ConcurrencyConflict:
        raise AgentLedgerError(
            f"run {run} moved while you decided (someone else may have decided {action_id}); "
            f"check `agentledger approvals {run}` and try again"
        ) from None
    return recorded


def steer(store: EventStore, run: str, human: Human, what: str, reason: str = "") -> Event:
    """Pause, resume or cancel a run (refused, with the reason, where the run cannot)."""
    kinds = {"pause": RunPaused, "resume": RunResumed, "cancel": RunCancelled}
    state, events = run_state(store, run)
    event = human_event(
        kinds[what], {"reason": "--reason"}, actor=human.principal, payload={"reason": reason}
    )
    try:
        advance(state.status, state.resume_to, state.pending_approvals, event)
    except IllegalTransition:
        hint = {
            RunStatus.PAUSED: "it is already paused; `agentledger resume` continues it",
            RunStatus.COMPLETED: "it has completed",
            RunStatus.FAILED: "it has failed",
            RunStatus.CANCELLED: "it was cancelled",
        }.get(state.status, f"it is {state.status.value}")
        raise AgentLedgerError(f"cannot {what} run {run}: {hint}") from None
    try:
        (recorded,) = store.append(run, [event], expected_version=len(events))
    except ConcurrencyConflict:
        # The run moved on (agents at work): check again against the newer state.
        return steer(store, run, human, what, reason)
    return recorded
