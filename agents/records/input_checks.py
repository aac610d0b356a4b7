"""A record's fields checked against the first model's inputs: as arrays of each input's
dtype and shape (rows first), or a BadRecord that names the field, what it held and why.

A value is cast only when none changes meaning: ints and bools to floats, integral floats to
ints in range, text only to string inputs. Floats may be NaN or ±inf (null reads as NaN, as
pandas writes it); a float beyond a narrower float's range, or an int beyond an int's, is bad.
A timestamp input (dtype datetime64[us], UTC) takes ISO-8601 text (UTC unless it names an
offset), numbers of seconds since 1970 (UTC), or datetimes (Avro timestamp-micros).
"""

from __future__ import annotations

import math
import re
import reprlib
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np

from control.registry.tensors import STRING, TIMESTAMP, TensorSpec
from schemas.errors import InferstreamError

_KINDS = {"U": "text", "b": "booleans", "i": "integers", "u": "integers", "f": "numbers"}
_TYPES = {type(None): "null", str: "text", bool: "booleans", int: "integers", float: "numbers",
          list: "lists", dict: "objects"}
_MAX_DIMS = 32
_SHORT = reprlib.Repr()  # keyword arguments only from Python 3.12
_SHORT.maxlevel, _SHORT.maxlist, _SHORT.maxdict = 3, 8, 4
_SHORT.maxstring = _SHORT.maxlong = _SHORT.maxother = 40
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_MICROSECOND = timedelta(microseconds=1)
_MAX_SECONDS = 9.2e12  # about ±290,000 years: what int64 microseconds hold
_NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)(e[-+]?\d+)?|[-+]?(nan|inf(inity)?)", re.I)


class BadRecord(InferstreamError):
    """A record that cannot be served: it does not decode, or does not fit the model's inputs."""

    def __init__(self, reason: str, format: str | None = None, field: str | None = None) -> None:
        self.reason, self.format, self.field = reason, format, field
        super().__init__(f"{format} record: {reason}" if format else reason)


def as_array(spec: TensorSpec, values: Any, fmt: str) -> np.ndarray:
    """A field's (nested) lists as an array; ragged or too deep ones are a BadRecord."""
    try:  # objects for text and times: numpy would quietly turn a number beside text into text
        array = np.asarray(values, dtype=object if spec.dtype in (STRING, TIMESTAMP) else None)
    except (ValueError, TypeError, OverflowError, RecursionError):
        raise bad_field(spec, fmt, "ragged or too deeply nested lists") from None
    # numpy nests up to 64 levels, but iterating (array.flat) stops at 32; no input has as many
    if array.ndim > _MAX_DIMS:
        raise bad_field(spec, fmt, f"lists nested {array.ndim} or more levels deep")
    return array


def shaped(spec: TensorSpec, array: np.ndarray, fmt: str, stacked: bool) -> np.ndarray:
    """The array with rows on axis 0: a single row gains it, scalars fill [-1, 1]-like inputs."""
    shape = spec.shape or (-1,)  # a rank-0 input still takes one value per row
    ones = all(d == 1 for d in shape[1:])
    if stacked:
        if array.ndim == len(shape) - 1 and ones:
            array = array.reshape(-1, *shape[1:])
    elif array.ndim == len(shape) - 1:
        array = array[np.newaxis]
    elif array.ndim == 0 and ones:
        array = array.reshape((1,) * len(shape))
    if array.ndim != len(shape) or not len(array) or any(
            want not in (-1, got) for want, got in zip(shape, array.shape, strict=True)):
        raise bad_field(spec, fmt, f"shape {list(array.shape)}")
    return array


def cast(spec: TensorSpec, array: np.ndarray, fmt: str) -> np.ndarray:
    """The values as spec's dtype when no value changes meaning, else BadRecord."""
    kind = array.dtype.kind
    if spec.dtype == STRING:
        bad = [v for v in array.flat if not isinstance(v, str)][:1] if kind == "O" else [None]
        if kind == "U" or not bad:
            return array.astype(str, copy=False)
        raise bad_field(spec, fmt, _got(array, bad[0]))
    want = np.dtype(spec.dtype)
    if want.kind == "M":
        return _timestamps(spec, array, fmt)
    if kind == "O":
        array = _objects(spec, array, want, fmt)
        kind = array.dtype.kind
    if array.dtype == want:
        return array
    if want.kind == "f" and kind in "biuf":
        with np.errstate(over="ignore"):
            out = array.astype(want)
        if not np.isfinite(out).all() and (
                kind != "f" or (np.isfinite(out) != np.isfinite(array)).any()):
            raise bad_field(spec, fmt, f"numbers beyond the range of {want.name}")
        return out
    if want.kind in "iu" and kind in "biuf":
        if kind == "f":
            wrong = ~(np.isfinite(array) & (array == np.trunc(array)))
            if wrong.any():
                first = array[wrong].flat[0].item()
                raise bad_field(spec, fmt, f"non-integer numbers (e.g. {first})")
        if kind != "b" and array.size and _beyond(array, np.iinfo(want)):
            raise bad_field(spec, fmt, f"numbers beyond the range of {want.name}")
        return array.astype(want)
    raise bad_field(spec, fmt, _got(array))


def _timestamps(spec: TensorSpec, array: np.ndarray, fmt: str) -> np.ndarray:
    """Times as datetime64[us]: text, seconds since 1970 or datetimes, all taken as UTC."""
    if array.dtype.kind == "M":
        return array.astype(TIMESTAMP)
    micros = np.empty(array.shape, np.int64)
    flat = micros.reshape(-1)
    for i, value in enumerate(array.ravel().tolist()):
        instant = _micros(value)
        if instant is None:
            raise bad_field(spec, fmt, f"{_TYPES.get(type(value), type(value).__name__)} (e.g. "
                            f"{example(value)}), not a time; send ISO-8601 text or seconds "
                            "since 1970")
        flat[i] = instant
    return micros.view(TIMESTAMP)


def _micros(value: Any) -> int | None:
    """Microseconds since 1970 (UTC) of one value, or None if it is not a time."""
    if isinstance(value, datetime):
        moment = value if value.tzinfo else value.replace(tzinfo=UTC)
        return (moment - _EPOCH) // _ONE_MICROSECOND
    if isinstance(value, str):
        try:
            return _micros(datetime.fromisoformat(value.strip()))
        except ValueError:
            return None
    if type(value) in (int, float) and math.isfinite(value) and abs(value) < _MAX_SECONDS:
        return value * 1_000_000 if type(value) is int else round(value * 1e6)
    return None


def _beyond(array: np.ndarray, info: np.iinfo) -> bool:
    if array.dtype.kind == "f":  # float(2**63 - 1) rounds up to 2.0**63, which no int64 holds
        return bool(array.min() < info.min or array.max() >= float(info.max) + 1)
    return bool(array.min() < info.min or array.max() > info.max)


def _objects(spec: TensorSpec, array: np.ndarray, want: np.dtype, fmt: str) -> np.ndarray:
    # Mixed lists: numbers with nulls (pandas writes NaN as null), huge ints, text or lists.
    null_ok = want.kind == "f"
    for value in array.flat:
        if not (type(value) in (int, float, bool) or (value is None and null_ok)):
            raise bad_field(spec, fmt, _got(array, value))
    values = [np.nan if v is None else v for v in array.flat]
    # Through float64 when floats are in it, so that range and integer checks still apply.
    as_float = null_ok or any(type(v) is float for v in values)
    try:
        return np.array(values, dtype=np.float64 if as_float else want).reshape(array.shape)
    except OverflowError:
        raise bad_field(spec, fmt, f"numbers beyond the range of {want.name}") from None


def _got(array: np.ndarray, bad: Any = None) -> str:
    """What a field held, for a message: the kind of values and one offending value."""
    kind = array.dtype.kind
    if kind == "O":
        return f"{_TYPES.get(type(bad), type(bad).__name__)} (e.g. {example(bad)})"
    flat = array.ravel().tolist() or [""]
    # numpy turns a list mixing numbers and text into text: show a value that was text
    bad = next((v for v in flat if not _NUMBER.fullmatch(v)), flat[0]) if kind == "U" else flat[0]
    return f"{_KINDS.get(kind, array.dtype.name)} (e.g. {example(bad)})"


def example(value: Any) -> str:
    """A value for a message: its repr, at most 40 characters however large the value."""
    if isinstance(value, np.ndarray):
        value = value.tolist()[0] if value.size else []
    text = _SHORT.repr(value)  # bounded: a record may hold a huge or deeply nested value
    return text if len(text) <= 40 else text[:37] + "..."


def missing(spec: TensorSpec, fmt: str, has: list[str], where: str = "") -> BadRecord:
    """A record without the field of an input; `has` are the fields it does have."""
    names = ", ".join(example(name) for name in has[:20]) + (", ..." if has[20:] else "")
    return BadRecord(f"field {spec.name!r} ({spec.dtype} {list(spec.shape)}) is missing{where}; "
                     f"the record has [{names}]", fmt, spec.name)


def bad_field(spec: TensorSpec, fmt: str, got: str) -> BadRecord:
    """A field that does not fit its input; `got` says what it held."""
    return BadRecord(f"field {spec.name!r}: expected {spec.dtype} {list(spec.shape)}, got {got}",
                     fmt, spec.name)
