"""Calls of a real object's method, recorded as they pass through (the method still runs)."""

from __future__ import annotations

import inspect
from typing import Any


def calls_of(obj: object, name: str) -> list[dict[str, Any]]:
    """Wrap ``obj``'s method ``name`` (on this object only): each call appends its arguments,
    by parameter name with the defaults filled in, to the list returned, then runs as before."""
    method = getattr(obj, name)
    signature = inspect.signature(method)
    calls: list[dict[str, Any]] = []

    def recorded(*args: Any, **kwargs: Any) -> Any:
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        calls.append(dict(bound.arguments))
        return method(*args, **kwargs)

    setattr(obj, name, recorded)
    return calls
