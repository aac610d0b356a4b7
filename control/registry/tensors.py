"""What a model takes and gives: named tensors with a dtype and a shape, and what may feed what.

The cast rules here are the runtime's (agents/runtimes/base.py casts by them) and the fold's
(a chain whose next step cannot read the previous step's outputs is refused): one set of rules,
so a chain the registry accepts is a chain the workers can run.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass

STRING = "string"  # dtype name of text tensors; numpy itself has no single name for them
TIMESTAMP = "datetime64[us]"  # dtype of timestamps (UTC): what a Python step's "timestamp" is

# Numeric dtypes by numpy name: (kind, bits). Kinds as numpy's: b bool, i int, u uint, f float.
_NUMBERS = {
    "bool": ("b", 8),
    **{f"int{n}": ("i", n) for n in (8, 16, 32, 64)},
    **{f"uint{n}": ("u", n) for n in (8, 16, 32, 64)},
    **{f"float{n}": ("f", n) for n in (16, 32, 64, 128)},
}
# Units of datetime64 from coarse to fine: a time feeds a finer unit unchanged ([s] into [us]).
_TIME_UNITS = ("Y", "M", "W", "D", "h", "m", "s", "ms", "us", "ns", "ps", "fs", "as")


@dataclass(frozen=True)
class TensorSpec:
    """One named input or output: numpy dtype name and shape, -1 for a dynamic dimension."""

    name: str
    dtype: str
    shape: tuple[int, ...]


def described(spec: TensorSpec) -> str:
    """'x' (float32 [-1, 4]), as messages name a tensor."""
    return f"{spec.name!r} ({spec.dtype} {list(spec.shape)})"


class Cast(enum.Enum):
    """How values of one dtype feed an input of another."""

    SAME = "same"  # nothing to do (text feeds text whatever numpy's width)
    ALWAYS = "always"  # no value changes meaning (floats may lose precision: JSON's float64)
    IF_FITS = "if each value fits"  # ints into another int type: checked value by value
    NEVER = "never"  # values would change meaning (float to int, text to number, ...)


def dtype_cast(got: str, want: str) -> Cast:
    """How `got` values (a dtype name, or 'string') feed a `want` input."""
    if got == want:
        return Cast.SAME
    if got.startswith("datetime64[") and want.startswith("datetime64["):
        units = [t.removeprefix("datetime64[").rstrip("]") for t in (got, want)]
        known = all(u in _TIME_UNITS for u in units)
        finer = known and _TIME_UNITS.index(units[1]) >= _TIME_UNITS.index(units[0])
        return Cast.ALWAYS if finer else Cast.NEVER
    g, w = _NUMBERS.get(got), _NUMBERS.get(want)
    if g is None or w is None:  # text, or a dtype no runtime casts (complex, ...)
        return Cast.NEVER
    (got_kind, got_bits), (want_kind, want_bits) = g, w
    if want_kind == "f":  # any number: ints and bools lose nothing that matters to a model
        return Cast.ALWAYS
    if want_kind in "iu":
        if got_kind == "b":
            return Cast.ALWAYS
        if got_kind in "iu":
            widens = want_bits > got_bits or (want_bits == got_bits and got_kind == want_kind)
            safe = widens and not (got_kind == "i" and want_kind == "u")
            return Cast.ALWAYS if safe else Cast.IF_FITS
    return Cast.NEVER  # floats to ints lose fractions; only bools are bools


def feed_problem(output: TensorSpec, target: TensorSpec) -> str | None:
    """Why `output` cannot feed the input `target`, or None when it can (dtype, rank, sizes)."""
    if dtype_cast(output.dtype, target.dtype) is Cast.NEVER:
        return f"{output.dtype} values cannot be cast to {target.dtype} without changing them"
    if len(output.shape) != len(target.shape):
        return f"it has {len(output.shape)} dimensions, the input {len(target.shape)}"
    for axis, (got, want) in enumerate(zip(output.shape, target.shape, strict=True)):
        if got >= 0 and want >= 0 and got != want:  # -1 (any size) may fit: the runtime checks
            return f"its dimension {axis} is {got}, the input's {want}"
    return None


def can_feed(output: TensorSpec, target: TensorSpec) -> bool:
    """Whether `output` can feed the input `target` (an int may still be out of range)."""
    return feed_problem(output, target) is None


def interface_changes(old: Iterable[TensorSpec], new: Iterable[TensorSpec], what: str
                      ) -> list[str]:
    """What differs between two sets of inputs or outputs (`what`: 'input' or 'output')."""
    before, after = {s.name: s for s in old}, {s.name: s for s in new}
    changes = [f"{what} {described(s)} is gone" for n, s in before.items() if n not in after]
    changes += [f"new {what} {described(s)}" for n, s in after.items() if n not in before]
    for name, s in before.items():
        t = after.get(name)
        if t is not None and t.dtype != s.dtype:
            changes.append(f"{what} {name!r} dtype {s.dtype} -> {t.dtype}")
        if t is not None and t.shape != s.shape:
            changes.append(f"{what} {name!r} shape {list(s.shape)} -> {list(t.shape)}")
    return changes
