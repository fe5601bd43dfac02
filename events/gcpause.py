"""A pause of Python's cyclic garbage collector around allocation bursts without cycles."""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator
from contextlib import contextmanager

_pause_lock = threading.Lock()
_pauses = 0
_was_enabled = False


@contextmanager
def collector_paused() -> Iterator[None]:
    """Pause Python's cyclic garbage collector for a bounded burst of allocation that makes no
    reference cycles: decoding a page of the log (``EventStore.read_all``), a fold (a
    projection's ``fold``, a runner's catch-up).

    Each decoded event is several objects the collector tracks, and the state or list they go
    into grows with the log: the collector's passes over it cost a fifth of a read and a
    quarter of a rebuild (bench/store.py, bench/projections.py) and find nothing — events and
    fold states hold no reference cycles (reference counting frees them). Pauses nest across
    threads; the collector runs again when the last one ends, if it was running when the first
    began.
    """
    global _pauses, _was_enabled
    with _pause_lock:
        if _pauses == 0:
            _was_enabled = gc.isenabled()
            gc.disable()
        _pauses += 1
    try:
        yield
    finally:
        with _pause_lock:
            _pauses -= 1
            if _pauses == 0 and _was_enabled:
                gc.enable()
