"""Python steps: a user's predict() run in child processes, never in the worker's own.

A small pool of children per loaded version (python_child.py) gets each batch as raw arrays
over a pipe and sends the outputs back the same way; the worker never unpickles what the
user's code made. A call that raises, runs past its time limit, or ends its child (os._exit,
a crash, the memory limit) raises PythonStepError here, so the runner dead-letters the
records that still fail alone; a dead or killed child is replaced at once.

After a call of several records fails, the runner tries each record alone (base.retrying
says so). Those retries share one more time limit (the batch's retry budget), split evenly
among the records still to try but never below a tenth of the limit each, so a batch costs
about twice the limit whatever its size (the exact bound: docs/models.md).
"""

from __future__ import annotations

import time
import weakref
from pathlib import Path

import numpy as np

from agents.runtimes.base import ModelRuntime, Retries, cast_to, current_retries, fits_shape
from agents.runtimes.python_child import ENTRY
from agents.runtimes.python_pool import (
    START_TIMEOUT_S,
    ChildPool,
    PythonLimits,
    PythonStepError,
)
from control.config import Settings
from control.registry.tensors import STRING, TIMESTAMP, TensorSpec
from schemas.errors import ArtifactError

SHARE_FLOOR = 0.1  # of the limit: the least a record retried alone gets, however many remain


class PythonRuntime(ModelRuntime):
    """A Python step: its INPUTS, OUTPUTS and predict() run by a pool of child processes."""

    framework = "python"

    def __init__(self, inputs: tuple[TensorSpec, ...], outputs: tuple[TensorSpec, ...],
                 pool: ChildPool) -> None:
        super().__init__(inputs, outputs)
        self._pool = pool
        self._limits = pool.limits
        weakref.finalize(self, pool.close)  # a dropped runtime leaves no process behind

    @classmethod
    def load(cls, path: Path, limits: PythonLimits | None = None) -> PythonRuntime:
        """Start one child on a .py file or a folder holding step.py; read its specs."""
        path = Path(path)
        if not ((path.is_file() and path.suffix == ".py") or (path / ENTRY).is_file()):
            raise ArtifactError(f"{str(path)!r} is not a Python step; give a .py file or a "
                                f"folder holding {ENTRY}")
        limits = limits or PythonLimits.from_settings(Settings())
        name = path.name if path.is_dir() else path.parent.name if path.stem == "model" else (
            path.stem)
        pool = ChildPool(path, limits, name[:12])
        try:
            hello = pool.first()
        except PythonStepError as exc:
            pool.close()
            raise ArtifactError(f"cannot load Python step {str(path)!r}: {exc}") from None
        specs = [tuple(TensorSpec(n, d, tuple(s)) for n, (d, s) in hello[k].items())
                 for k in ("inputs", "outputs")]
        return cls(specs[0], specs[1], pool)

    def close(self) -> None:
        """Stop the children; a later call (an in-flight batch, a task run still holding this
        version) runs in a child started for it and stopped after it."""
        self._pool.close()

    def _predict(self, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        rows = len(next(iter(arrays.values())))
        sent = {name: np.asarray(a, dtype=str) if a.dtype.kind in "OS" else a
                for name, a in arrays.items()}
        timeout = self._limits.timeout_s
        # Finding a ready child (others busy, a replacement still in its load()) is bounded
        # apart from the batch's own limit.
        wait = START_TIMEOUT_S + 2 * timeout
        retries = current_retries()
        if retries is None:
            outputs = self._pool.run(sent, lambda: timeout, wait, rows,
                                     f"the limit is INFERSTREAM_PYTHON_TIMEOUT_S={timeout:g}")
        else:
            if retries.budget_s is None:
                retries.budget_s = timeout
            if retries.budget_s <= 0:
                raise PythonStepError(
                    f"not run alone: the retries of its batch spent their {timeout:g} s budget "
                    "on records that hung or crashed the python step")
            started = time.monotonic()
            try:
                outputs = self._pool.run(sent, lambda: _share(retries, timeout), wait, rows,
                                         "its share of the batch's retry budget")
            finally:
                # The whole call is charged, a replacement's start-up included: the budget
                # bounds the batch; the share's floor keeps a slow start from starving a row.
                retries.budget_s -= time.monotonic() - started
                retries.left = max(retries.left - 1, 0)
        return {spec.name: _output(spec, outputs[spec.name], rows) for spec in self._outputs}


def _share(retries: Retries, timeout: float) -> float:
    """A retried record's time limit: its even share of what is left, at least the floor."""
    left = max(retries.budget_s or 0.0, 0.0)
    return min(timeout, max(left / max(retries.left, 1), SHARE_FLOOR * timeout))


def _output(spec: TensorSpec, array: np.ndarray, rows: int) -> np.ndarray:
    """An output checked against OUTPUTS: its rows and shape, and cast by the registry's rules
    (ints into a narrower int only when every value fits)."""
    if not fits_shape(spec, array) or len(array) != rows:
        raise PythonStepError(f"output {spec.name!r} has shape {list(array.shape)} for {rows} "
                              f"rows; OUTPUTS declares {list(spec.shape)} (-1: any size)")
    if spec.dtype == TIMESTAMP and array.dtype.kind == "M":
        return array.astype(TIMESTAMP)  # any unit, pandas' ns among them: stored in µs
    cast = cast_to(spec.dtype, array)
    if cast is None:
        got = STRING if array.dtype.kind in "OUS" else array.dtype.name
        raise PythonStepError(f"output {spec.name!r} has dtype {got}, which OUTPUTS declares as "
                              f"{spec.dtype}, or a value out of its range; return "
                              f"{spec.dtype} values")
    return cast
