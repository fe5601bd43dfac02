"""Projections: pure folds of the log (run state, memory tiers, …), their runner and snapshots."""

from .base import Anomaly, PerStream, Projection
from .run_state import (
    TRANSITIONS,
    ActionInfo,
    ActionStatus,
    PendingApproval,
    RunState,
    RunStateProjection,
    RunStatus,
    TaskInfo,
    TaskStatus,
)

__all__ = [
    "TRANSITIONS",
    "ActionInfo",
    "ActionStatus",
    "Anomaly",
    "PendingApproval",
    "PerStream",
    "Projection",
    "RunState",
    "RunStateProjection",
    "RunStatus",
    "TaskInfo",
    "TaskStatus",
]
