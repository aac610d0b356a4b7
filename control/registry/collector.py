"""Python's cyclic collector paused while the control log is replayed.

A replay makes no cycles (its records are frozen dataclasses, tuples and dicts, freed by their
reference counts), but the registry grows with every event folded, and the collector's passes
over that growing heap took half of the time of folding 100k events.
"""

from __future__ import annotations

import contextlib
import gc
import threading
from collections.abc import Iterator

_paused = 0  # folds under way with the cyclic collector paused, in any thread
_paused_lock = threading.Lock()
_was_enabled = False


@contextlib.contextmanager
def collector_paused() -> Iterator[None]:
    """No cyclic collection while a replay folds. The collector is one for the
    process: the first of overlapping replays (a worker's follower and registrar) pauses it,
    the last one to finish lets it run again, if it ran before the first."""
    global _paused, _was_enabled
    with _paused_lock:
        if _paused == 0:
            _was_enabled = gc.isenabled()
            gc.disable()
        _paused += 1
    try:
        yield
    finally:
        with _paused_lock:
            _paused -= 1
            if _paused == 0 and _was_enabled:
                gc.enable()
