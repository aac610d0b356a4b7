"""Which records of a batch the canary version serves while a canary runs.

A record with the canary's hash key goes to the canary when a stable hash of str(value)
(blake2b, the same in every worker and process), mod 10000, is below share * 100: the same
value always takes the same side at a share, and a value on the canary side stays there as
the share grows. A record without the key (none given, a missing or null field, or a record
that does not decode) draws at random.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from confluent_kafka import Message

    from agents.serving.dataplane import Serving

BUCKETS = 10_000


def bucket(value: Any) -> int:
    """A value's place in 0..9999, the same in every process (unlike hash())."""
    digest = hashlib.blake2b(str(value).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % BUCKETS


def in_canary(value: Any, share: float, draw: float) -> bool:
    """Whether a record goes to the canary at `share` percent: by its key's bucket when it has
    one (None: it has not), else by `draw`, uniform in [0, 1)."""
    if value is None:
        return draw * 100 < share
    return bucket(value) < share * BUCKETS / 100


@dataclass
class CanarySide:
    """What serves the canary's share of a deployed pipeline's records."""

    serving: Serving  # the canary version, loaded beside the current one
    share: int  # percent
    hash_key: str | None

    def split(self, messages: Sequence[Message], key_of: Callable[[Message], Any],
              rng: np.random.Generator) -> tuple[list[Message], list[Message]]:
        """The messages the current version serves, and those the canary serves."""
        current: list[Message] = []
        canary: list[Message] = []
        draws = rng.random(len(messages))
        for m, draw in zip(messages, draws.tolist(), strict=True):
            value = key_of(m) if self.hash_key else None
            (canary if in_canary(value, self.share, draw) else current).append(m)
        return current, canary
