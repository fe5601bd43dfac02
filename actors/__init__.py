"""Agents: the Agent base and four roles, model providers, tools, the Memory Manager, and the
runtime that runs each agent as a Ray actor following the log."""

from .agent import (
    Agent,
    AgentSettings,
    DecisionFailed,
    HandlerFailed,
    ModelChoice,
    RunView,
    Turn,
)
from .extensions import Extension
from .memory_manager import MemoryManager
from .models import ModelError, ModelProvider, ModelReply, ModelRequest, ModelSpec
from .offline import OfflineProvider
from .policy import Assessment, PolicyError, RiskPolicy
from .providers import OpenAIProvider, ProviderSettings, ScriptedProvider
from .roles import ROLE_CLASSES, Coordinator, Execution, Research, Review
from .runtime import (
    AgentWorker,
    Runtime,
    RuntimeConfig,
    ensure_ray,
    follow_run,
    start_run,
    workers_for,
)
from .sandbox import SandboxViolation, ToolError, ToolTimeout, Workspace
from .tools import (
    Tool,
    ToolArguments,
    ToolContext,
    ToolRegistry,
    action_hash,
    default_registry,
)

__all__ = [
    "ROLE_CLASSES",
    "Agent",
    "AgentSettings",
    "AgentWorker",
    "Assessment",
    "Coordinator",
    "DecisionFailed",
    "Execution",
    "Extension",
    "HandlerFailed",
    "MemoryManager",
    "ModelChoice",
    "ModelError",
    "ModelProvider",
    "ModelReply",
    "ModelRequest",
    "ModelSpec",
    "OfflineProvider",
    "OpenAIProvider",
    "PolicyError",
    "ProviderSettings",
    "Research",
    "Review",
    "RiskPolicy",
    "RunView",
    "Runtime",
    "RuntimeConfig",
    "SandboxViolation",
    "ScriptedProvider",
    "Tool",
    "ToolArguments",
    "ToolContext",
    "ToolError",
    "ToolRegistry",
    "ToolTimeout",
    "Turn",
    "Workspace",
    "action_hash",
    "default_registry",
    "ensure_ray",
    "follow_run",
    "start_run",
    "workers_for",
]
