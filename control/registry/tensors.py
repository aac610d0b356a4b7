"""What a model takes and gives: named tensors with a dtype and a shape."""

from __future__ import annotations

from dataclasses import dataclass

STRING = "string"  # dtype name of text tensors; numpy itself has no single name for them


@dataclass(frozen=True)
class TensorSpec:
    """One named input or output: numpy dtype name and shape, -1 for a dynamic dimension."""

    name: str
    dtype: str
    shape: tuple[int, ...]
