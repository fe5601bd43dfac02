"""Extensions: tools, model providers and agent classes added from outside the package.

An extension is an ``Extension`` object in any importable module, named ``module:object`` in
``agentledger.toml`` (``extensions = ["mytools:extension"]``) or in ``RuntimeConfig.extensions``.
Names, not objects, travel to the agents: each agent's process (a Ray actor, perhaps on another
machine) imports them itself, so the agents that ``agentledger run`` and ``serve`` start have the
same tools, providers and classes as an in-process runtime, and ``verify`` re-executes with them.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from agentledger.events import ConfigurationError, Role

from .agent import Agent
from .models import PROVIDERS, ModelProvider
from .roles import ROLE_CLASSES
from .sandbox import ToolError
from .tools import Tool, ToolRegistry, default_registry

__all__ = ["Extension", "load_extensions", "provider_names", "role_class", "tool_registry"]


@dataclass(frozen=True)
class Extension:
    """What a plugin adds: tools, model providers by name, and agent classes by role.

    ``providers`` maps a provider name (as in ``ROLE=NAME:MODEL``) to a callable that takes no
    arguments and returns a ``ModelProvider`` (a class works); it is called once per agent, in the
    agent's process, when a run first uses it. ``agents`` replaces a role's agent class with a
    subclass of it (e.g. one with another handler).
    """

    tools: Sequence[Tool[Any]] = ()
    providers: Mapping[str, Callable[[], ModelProvider]] = field(default_factory=dict)
    agents: Mapping[Role, type[Agent]] = field(default_factory=dict)


def load_extensions(names: Iterable[str], *, source: str = "extensions") -> list[Extension]:
    """Import each ``module:object`` and check it; ``ConfigurationError`` naming the entry and
    what to do otherwise. ``source`` says where the names came from (a file's setting)."""
    loaded: list[Extension] = []
    for name in names:
        module_name, _, attribute = name.partition(":")
        if not module_name or not attribute:
            raise ConfigurationError(
                f"{source}: {name!r} is not module:object, e.g. 'mytools:extension'"
            )
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise ConfigurationError(
                f"{source}: cannot import {module_name!r} for {name!r} ({exc}). Install it in "
                "the environment that runs the agents (every node of a Ray cluster), or put its "
                "folder on PYTHONPATH there"
            ) from exc
        found: object = module
        for part in attribute.split("."):
            if not hasattr(found, part):
                raise ConfigurationError(
                    f"{source}: module {module_name!r} has no {attribute!r} (from {name!r})"
                )
            found = getattr(found, part)
        if not isinstance(found, Extension):
            raise ConfigurationError(
                f"{source}: {name!r} is a {type(found).__name__}, not an "
                "agentledger.actors.Extension; name an Extension(tools=[...], providers={...}) "
                "object"
            )
        _check(found, name, source)
        loaded.append(found)
    return loaded


def _check(extension: Extension, name: str, source: str) -> None:
    for provider in extension.providers:
        if provider in PROVIDERS or provider == "scripted":
            raise ConfigurationError(
                f"{source}: {name!r} adds a provider {provider!r}, which is built in; name it "
                "otherwise"
            )
        if not provider or ":" in provider or "=" in provider or provider != provider.lower():
            raise ConfigurationError(
                f"{source}: {name!r} adds a provider {provider!r}; a provider name is lowercase, "
                "without ':' or '='"
            )
        if not callable(extension.providers[provider]):
            raise ConfigurationError(
                f"{source}: {name!r} provider {provider!r} is not callable; give a class or a "
                "function that returns a ModelProvider"
            )
    for role, agent_class in extension.agents.items():
        base = ROLE_CLASSES.get(role) if isinstance(role, Role) else None
        if base is None or not (isinstance(agent_class, type) and issubclass(agent_class, base)):
            raise ConfigurationError(
                f"{source}: {name!r} agents: {role!r} must be a Role and its class a subclass "
                f"of that role's class (e.g. Role.EXECUTION: a subclass of Execution)"
            )


def tool_registry(extensions: Iterable[Extension] = ()) -> ToolRegistry:
    """The built-in tools plus the extensions' (a name clash is a ``ConfigurationError``)."""
    registry = default_registry()
    for extension in extensions:
        for tool in extension.tools:
            if isinstance(tool, type):
                raise ConfigurationError(
                    f"extension tool {tool.__name__}: give an instance ({tool.__name__}()), "
                    "not the class"
                )
            try:
                registry.register(tool)
            except ToolError as exc:
                raise ConfigurationError(f"extension tool: {exc}") from None
    return registry


def provider_names(extensions: Iterable[Extension] = ()) -> tuple[str, ...]:
    """The providers a model choice may name: the built-in ones and the extensions'."""
    names = list(PROVIDERS)
    for extension in extensions:
        names.extend(p for p in extension.providers if p not in names)
    return tuple(names)


def role_class(role: Role, extensions: Iterable[Extension] = ()) -> type[Agent]:
    """The agent class of ``role``: the last extension's that replaces it, else the built-in."""
    chosen = ROLE_CLASSES[role]
    for extension in extensions:
        chosen = extension.agents.get(role, chosen)
    return chosen
