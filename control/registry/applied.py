"""The ids of the events a registry has applied: a persistent set, cheap to grow in a replay."""

from __future__ import annotations

import itertools
from collections.abc import Iterator


class AppliedEvents:
    """The ids of the events a registry has applied, and their offsets: a persistent set.

    Each fold step would copy a frozenset (O(n²) over a replay). Instead the registries of one
    replay share one dict of id -> (position, offset), and each sees its first `size` entries;
    growing the newest appends in O(1). Growing an older one (a branch: tests apply several
    events to one state) copies its part first, so no registry ever sees another one change.
    """

    __slots__ = ("_log", "_size")

    def __init__(self, log: dict[str, tuple[int, int]] | None = None, size: int = 0) -> None:
        self._log = {} if log is None else log
        self._size = size

    def offset_of(self, event_id: str) -> int | None:
        """Where the event was applied (its offset), or None if it was not."""
        found = self._log.get(event_id)
        return found[1] if found is not None and found[0] < self._size else None

    def __contains__(self, event_id: object) -> bool:
        return isinstance(event_id, str) and self.offset_of(event_id) is not None

    def __len__(self) -> int:
        return self._size

    def __iter__(self) -> Iterator[str]:
        return itertools.islice(iter(self._log), self._size)

    def add(self, event_id: str, offset: int) -> AppliedEvents:
        """These ids and one more."""
        log = self._log
        if len(log) != self._size:
            log = dict(itertools.islice(log.items(), self._size))
        log[event_id] = (self._size, offset)
        return AppliedEvents(log, self._size + 1)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, AppliedEvents):
            return NotImplemented
        if self._size != other._size:
            return False
        return self._log is other._log or set(self) == set(other)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"AppliedEvents({self._size} events)"

    def __deepcopy__(self, memo: dict) -> AppliedEvents:
        return AppliedEvents(dict(itertools.islice(self._log.items(), self._size)), self._size)
