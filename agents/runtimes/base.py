"""The one interface every model runtime implements: load an artifact, predict a batch."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np

from control.registry.tensors import STRING, Cast, TensorSpec, dtype_cast
from schemas.errors import ArtifactError, InferstreamError


class InputMismatch(InferstreamError):
    """A batch does not fit a model's inputs (missing name, wrong shape or dtype)."""


class UnknownFramework(ArtifactError):
    """No runtime is registered for a framework name."""


class ModelRuntime(ABC):
    """A loaded model. Subclasses implement load() and _predict(); predict() validates."""

    framework: ClassVar[str]

    def __init__(self, inputs: tuple[TensorSpec, ...], outputs: tuple[TensorSpec, ...]) -> None:
        self._inputs = inputs
        self._outputs = outputs

    @classmethod
    @abstractmethod
    def load(cls, path: Path) -> ModelRuntime:
        """Load the artifact at path; raise ArtifactError if it cannot be loaded."""

    @property
    def inputs(self) -> tuple[TensorSpec, ...]:
        return self._inputs

    @property
    def outputs(self) -> tuple[TensorSpec, ...]:
        return self._outputs

    def predict(self, batch: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run a whole batch (batch on the first axis); keys the model does not take are ignored."""
        arrays = {spec.name: conform(spec, batch) for spec in self._inputs}
        sizes = {name: len(a) for name, a in arrays.items()}
        if len(set(sizes.values())) > 1:
            raise InputMismatch(
                f"inputs of one batch differ in batch size: {sizes}; give every input the same rows"
            )
        return self._predict(arrays)

    @abstractmethod
    def _predict(self, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run validated arrays, exactly one per input, through the model."""


def conform(spec: TensorSpec, batch: Mapping[str, np.ndarray]) -> np.ndarray:
    """The array for spec from batch, cast to spec's dtype when no value changes meaning."""
    if spec.name not in batch:
        raise InputMismatch(
            f"input {spec.name!r} ({spec.dtype}, shape {list(spec.shape)}) is missing; "
            f"the batch has {sorted(batch)}"
        )
    array = np.asarray(batch[spec.name])
    if not fits_shape(spec, array):
        raise InputMismatch(
            f"input {spec.name!r} expects shape {list(spec.shape)} (-1 = any size, first axis = "
            f"batch) but got {list(array.shape)}"
        )
    return _cast(spec, array)


def fits_shape(spec: TensorSpec, array: np.ndarray) -> bool:
    """Whether array has spec's rank and its fixed sizes (-1: any size)."""
    return array.ndim == len(spec.shape) and all(
        want in (-1, got) for want, got in zip(spec.shape, array.shape, strict=True))


def _cast(spec: TensorSpec, array: np.ndarray) -> np.ndarray:
    cast = cast_to(spec.dtype, array)
    if cast is None:
        raise InputMismatch(
            f"input {spec.name!r} expects dtype {spec.dtype} but got {array.dtype.name}, which "
            f"cannot be cast without changing values; send {spec.dtype} values"
        )
    return cast


def cast_to(dtype: str, array: np.ndarray) -> np.ndarray | None:
    """array as dtype, or None when a value would change meaning.

    The registry's rules (control/registry/tensors.py), so a chain it accepts runs here:
    precision loss within floats (JSON numbers into float32) and ints and bools into floats
    are cast; ints into another int type only when every value fits."""
    how = dtype_cast(STRING if array.dtype.kind in "OUS" else array.dtype.name, dtype)
    if how is Cast.SAME:
        return array
    if how is Cast.ALWAYS or (how is Cast.IF_FITS and _fits(array, np.dtype(dtype))):
        return array.astype(np.dtype(dtype))
    return None


def _fits(array: np.ndarray, want: np.dtype) -> bool:
    info = np.iinfo(want)
    return array.size == 0 or (int(array.min()) >= info.min and int(array.max()) <= info.max)


@dataclass(slots=True)
class Retries:
    """The solo retries that follow a failed call of several records: how many records are
    left to try, and the time budget a runtime that bounds its calls (Python steps) shares
    among them (None until that runtime sets it)."""

    left: int
    budget_s: float | None = None


_RETRIES: ContextVar[Retries | None] = ContextVar("retries", default=None)


@contextmanager
def retrying(retries: Retries | None) -> Iterator[None]:
    """Predict calls within run as these retries (None: a first call)."""
    token = _RETRIES.set(retries)
    try:
        yield
    finally:
        _RETRIES.reset(token)


def current_retries() -> Retries | None:
    """The retries the current predict call belongs to, or None for a first call."""
    return _RETRIES.get()
