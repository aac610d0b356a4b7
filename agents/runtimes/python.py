"""Python steps: a user's predict() run in child processes, never in the worker's own.

A small pool of children per loaded version (python_child.py) gets each batch as raw arrays
over a pipe and sends the outputs back the same way; the worker never unpickles what the
user's code made. A call that raises, runs past its time limit, or ends its child (os._exit,
a crash, the memory limit) raises PythonStepError here, so the runner dead-letters the
records that still fail alone; a dead or killed child is replaced at once.

After a call of several rows fails, the runner tries each record alone. Those retries share
one more time limit (the batch's retry budget), split evenly among the rows still to try, so
a batch costs at most about twice the limit whatever its size (see docs/models.md).
"""

from __future__ import annotations

import hashlib
import threading
import time
import weakref
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from agents.runtimes.base import ModelRuntime
from agents.runtimes.python_child import ENTRY
from agents.runtimes.python_pool import (
    START_TIMEOUT_S,
    ChildPool,
    PythonLimits,
    PythonStepError,
)
from control.config import Settings
from control.registry.tensors import STRING, TensorSpec
from schemas.errors import ArtifactError

TIMESTAMP = "datetime64[us]"  # timestamps, UTC: what "timestamp" in INPUTS or OUTPUTS means


class PythonRuntime(ModelRuntime):
    """A Python step: its INPUTS, OUTPUTS and predict() run by a pool of child processes."""

    framework = "python"

    def __init__(self, inputs: tuple[TensorSpec, ...], outputs: tuple[TensorSpec, ...],
                 pool: ChildPool) -> None:
        super().__init__(inputs, outputs)
        self._pool = pool
        self._limits = pool.limits
        self._budgets = _Budgets(pool.limits.timeout_s)
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
        """Stop the children; a later call starts one again (an in-flight batch still ends)."""
        self._pool.close()

    def _predict(self, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        rows = len(next(iter(arrays.values())))
        sent = {name: np.asarray(a, dtype=str) if a.dtype.kind in "OS" else a
                for name, a in arrays.items()}
        timeout = self._limits.timeout_s
        retry = self._budgets.take(sent, rows)
        if retry is None:
            limit, wait, why = timeout, START_TIMEOUT_S + 2 * timeout, (
                f"the limit is INFERSTREAM_PYTHON_TIMEOUT_S={timeout:g}")
        else:
            budget, share = retry
            if budget.remaining_s <= 0:
                raise PythonStepError(
                    f"not run alone: the retries of its batch spent their {timeout:g} s budget "
                    "on records that hung or crashed the python step")
            limit, wait = min(timeout, share), budget.remaining_s
            why = "its share of the batch's retry budget"
        started = time.monotonic()
        try:
            outputs = self._pool.run(sent, limit, wait, rows, why)
        except PythonStepError:
            if retry is None and rows > 1:
                self._budgets.open(sent, rows)
            raise
        finally:
            if retry is not None:
                retry[0].remaining_s -= time.monotonic() - started
        return {spec.name: _output(spec, outputs[spec.name], rows) for spec in self._outputs}


def _output(spec: TensorSpec, array: np.ndarray, rows: int) -> np.ndarray:
    """An output checked against OUTPUTS: its rows, shape and a dtype castable to the spec's."""
    if array.ndim != len(spec.shape) or len(array) != rows or any(
            want not in (-1, got) for want, got in zip(spec.shape, array.shape, strict=True)):
        raise PythonStepError(f"output {spec.name!r} has shape {list(array.shape)} for {rows} "
                              f"rows; OUTPUTS declares {list(spec.shape)} (-1: any size)")
    kind = array.dtype.kind
    if spec.dtype == STRING and kind == "U":
        return array
    if spec.dtype == TIMESTAMP and kind == "M":
        return array.astype("datetime64[us]")
    if spec.dtype not in (STRING, TIMESTAMP):
        want = np.dtype(spec.dtype)
        if kind in "biuf" and np.can_cast(array.dtype, want, "same_kind"):
            return array.astype(want, copy=False)
    raise PythonStepError(f"output {spec.name!r} has dtype {array.dtype.name}, which OUTPUTS "
                          f"declares as {spec.dtype}; return {spec.dtype} values")


@dataclass
class _Budget:
    """What the solo retries of one failed call may still spend, and on how many rows."""

    remaining_s: float
    rows: int
    expires: float


@dataclass
class _Budgets:
    """Retry budgets of failed calls, found again by the rows a retry sends."""

    timeout_s: float
    by_row: dict[bytes, list] = field(default_factory=dict)  # row digest -> [budget, count]
    lock: threading.Lock = field(default_factory=threading.Lock)

    def open(self, arrays: dict[str, np.ndarray], rows: int) -> None:
        budget = _Budget(self.timeout_s, rows, time.monotonic() + 2 * self.timeout_s + 60)
        digests = _digests(arrays, rows)
        with self.lock:
            self._purge()
            for digest in digests:
                entry = self.by_row.setdefault(digest, [budget, 0])
                entry[0], entry[1] = budget, entry[1] + 1

    def take(self, arrays: dict[str, np.ndarray], rows: int) -> tuple[_Budget, float] | None:
        """The budget these rows retry under and their share of it, or None."""
        if not self.by_row:
            return None
        digests = _digests(arrays, rows)
        with self.lock:
            self._purge()
            entries = [self.by_row.get(d) for d in digests]
            if not entries or any(e is None for e in entries):
                return None
            budget = entries[0][0]  # type: ignore[index]
            if any(e[0] is not budget for e in entries):  # type: ignore[index]
                return None
            for digest, entry in zip(digests, entries, strict=True):
                entry[1] -= 1  # type: ignore[index]
                if not entry[1]:  # type: ignore[index]
                    del self.by_row[digest]
            share = max(budget.remaining_s, 0.0) * rows / max(budget.rows, rows)
            budget.rows = max(budget.rows - rows, 0)
            return budget, share

    def _purge(self) -> None:
        now = time.monotonic()
        for digest in [d for d, (b, _) in self.by_row.items() if b.expires < now]:
            del self.by_row[digest]


def _digests(arrays: dict[str, np.ndarray], rows: int) -> list[bytes]:
    hashes = [hashlib.blake2b(digest_size=16) for _ in range(rows)]
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        for i, h in enumerate(hashes):
            h.update(name.encode())
            h.update(a[i].tobytes())
    return [h.digest() for h in hashes]
