"""Declared handlers: ``@on(EventClass)`` tags a method; registration collects and checks the tags.

Used by projections (fold steps) and agents (reactions) alike. The decorator only marks; the
class's registration (``collect_handlers``) fails early on a handler for a type that is not in
the catalogue or on two handlers for one type, instead of at run time when an event arrives.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from .catalogue import EVENT_TYPES
from .envelope import Envelope

F = TypeVar("F", bound=Callable[..., Any])
_MARK = "__agentledger_handles__"


def on(*event_classes: type[Envelope]) -> Callable[[F], F]:
    """Mark a method as the handler of the given event classes."""
    if not event_classes:
        raise TypeError("@on needs at least one event class, e.g. @on(TaskAssigned)")

    def mark(fn: F) -> F:
        types = tuple(getattr(cls, "event_type", "") for cls in event_classes)
        setattr(fn, _MARK, (*getattr(fn, _MARK, ()), *types))
        return fn

    return mark


def collect_handlers(cls: type) -> dict[str, str]:
    """Map event type -> method name for every ``@on`` method of ``cls`` (checked).

    A subclass may override a base class's handler for a type; one class may not declare two.
    """
    handlers: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        own: dict[str, str] = {}
        for name, member in vars(klass).items():
            for event_type in getattr(member, _MARK, ()):
                if event_type not in EVENT_TYPES:
                    raise TypeError(
                        f"{klass.__name__}.{name} handles {event_type!r}, which is not an event "
                        "type of the catalogue"
                    )
                if event_type in own:
                    raise TypeError(
                        f"{klass.__name__} has two handlers for {event_type}: "
                        f"{own[event_type]} and {name}"
                    )
                own[event_type] = name
        handlers.update(own)
    return handlers
