"""Projections: pure folds of the log (run state, memory tiers, …), their runner and snapshots."""

from .base import Anomaly, PerStream, Projection
from .checkpoints import CheckpointStore
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
from .runner import ProjectionRunner, as_of

__all__ = [
    "TRANSITIONS",
    "ActionInfo",
    "ActionStatus",
    "Anomaly",
    "CheckpointStore",
    "PendingApproval",
    "PerStream",
    "Projection",
    "ProjectionRunner",
    "RunState",
    "RunStateProjection",
    "RunStatus",
    "TaskInfo",
    "TaskStatus",
    "as_of",
]
