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
from typing import Any, TypeVar

import numpy as np

M = TypeVar("M")

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


def split(messages: Sequence[M], share: int, hash_key: str | None,
          key_of: Callable[[M], Any], rng: np.random.Generator) -> tuple[list[M], list[M]]:
    """The messages the current version serves, and those the canary serves at `share`
    percent (by key_of's value of each when a hash key is given)."""
    current: list[M] = []
    canary: list[M] = []
    draws = rng.random(len(messages))
    for m, draw in zip(messages, draws.tolist(), strict=True):
        value = key_of(m) if hash_key else None
        (canary if in_canary(value, share, draw) else current).append(m)
    return current, canary
