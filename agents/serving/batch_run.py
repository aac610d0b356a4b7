"""One micro-batch on its way through a pipeline version's steps: where each record's rows
are, one predict call per group of records that can share it, and what served or failed each.

The runner (runner.py) decides which records each model serves; this module feeds them.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from itertools import pairwise
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar

import numpy as np

from agents.records.inference import Call, InferenceLogEntry, ModelUsed
from agents.runtimes.base import ModelRuntime, Retries, retrying
from control.registry.chains import result_name
from schemas.errors import InferstreamError

if TYPE_CHECKING:
    from agents.serving.validations import CheckReport

MODEL, ROUTE, CHAMPION, CHALLENGER = "model", "route", "champion", "challenger"


class Record(Protocol):
    """What the runner reads of a decoded record; records.formats.InputRecord fits it."""

    @property
    def record_id(self) -> str: ...
    @property
    def tensors(self) -> Mapping[str, np.ndarray]: ...
    @property
    def fields(self) -> Mapping[str, Any]: ...


R = TypeVar("R", bound=Record)


@dataclass(slots=True)
class RecordResult(Generic[R]):
    record: R
    outputs: dict[str, np.ndarray]  # the result steps' outputs, this record's rows
    models: list[ModelUsed]
    elapsed_us: int
    anomalies: tuple[str, ...] = ()  # the version's validations this record failed


@dataclass(slots=True)
class Failure(Generic[R]):
    record: R
    reason: str  # "step N (model vV): what was wrong"


@dataclass(slots=True)
class BatchOutcome(Generic[R]):
    results: list[RecordResult[R]] = field(default_factory=list)
    failures: list[Failure[R]] = field(default_factory=list)
    logs: list[InferenceLogEntry] = field(default_factory=list)
    checks: CheckReport | None = None  # the validations' findings, when the version has any


@dataclass(frozen=True, slots=True)
class BoundModel:
    """A model step bound to its loaded runtime."""

    step: int
    model: str
    version: int
    runtime: ModelRuntime
    feeds: tuple[tuple[str, str], ...]  # (model input, field that feeds it)

    @property
    def where(self) -> str:
        return f"step {self.step} ({self.model} v{self.version})"


@dataclass(slots=True)
class Block:
    """The arrays of one predict call (or one record's own tensors), rows split among records."""

    arrays: Mapping[str, np.ndarray]
    offsets: list[int] | None  # record j owns rows offsets[j]:offsets[j + 1]; None: one, all
    _rows: list[dict[str, np.ndarray]] | None = None

    def rows(self, j: int) -> dict[str, np.ndarray]:
        """Record j's rows of every array, as views; split once per block, not per record."""
        if self._rows is None:
            self._rows = _split(self.arrays, self.offsets)
        return self._rows[j]


Position = tuple[Block, int]
_GroupKey = tuple[tuple[tuple[int, ...], str], ...]


class _RowsMismatch(InferstreamError):
    """A model returned another number of rows than it was given."""


class BatchRun(Generic[R]):
    """One batch on its way through the steps: where each record's rows are, what served it."""

    def __init__(self, records: Sequence[R]) -> None:
        self.records = records
        # Before step 1 every record is a block of its own; None once a record has failed.
        self.where: list[Position | None] = [(Block(r.tensors, None), 0) for r in records]
        self.used: list[list[ModelUsed]] = [[] for _ in records]
        # Each record's log of the last step that served it (shadows aside): where the
        # validations it failed are logged.
        self.logged: list[InferenceLogEntry | None] = [None] * len(records)
        self.outcome: BatchOutcome[R] = BatchOutcome()

    def at(self, i: int) -> Position:
        position = self.where[i]
        assert position is not None, "only records served so far reach a step"
        return position

    def infer(self, model: BoundModel, role: str, members: list[int]) -> dict[int, Position]:
        """Run model over members, one call per group; where each record served now is."""
        shadow = role == CHALLENGER
        groups: dict[_GroupKey, list[int]] = {}
        keys: dict[int, _GroupKey | str] = {}  # by id(block): a block's records share a key
        for i in members:
            block, j = self.at(i)
            key = keys.get(id(block))
            if key is None:
                key = keys[id(block)] = _group_key(model, block)
            if isinstance(key, str):
                self.fail(model, i, key, shadow)
            else:
                groups.setdefault(key, []).append(i)

        served: dict[int, Position] = {}
        for group in groups.values():
            tries, retries = [group], None
            while tries:
                attempt = tries.pop()
                try:
                    # A runtime that bounds its calls' time (Python steps) shares one budget
                    # among a failed group's solo retries: told so here, not by their rows.
                    with retrying(retries if len(attempt) == 1 else None):
                        inputs, offsets, block, elapsed_us = self.predict(model, attempt)
                except Exception as e:  # ORT and TF raise many unrelated types for bad data
                    # Find the culprits: each record on its own, in order. Only a failing group
                    # pays for this (a challenger that always crashes: one call per record).
                    if len(attempt) > 1:
                        retries = Retries(len(attempt))
                        tries.extend([i] for i in reversed(attempt))
                    else:
                        self.fail(model, attempt[0], _describe(e), shadow)
                    continue
                # One ModelUsed for the call, shared by its records' lists: read, never changed.
                used = ModelUsed(model.step, model.model, model.version, role)
                call = Call(inputs, offsets if len(attempt) > 1 else None, block.arrays,
                            block.offsets)
                logs, records = self.outcome.logs, self.records
                for j, i in enumerate(attempt):
                    served[i] = (block, j)
                    self.used[i].append(used)
                    entry = InferenceLogEntry(
                        records[i].record_id, model.step, model.model, model.version, shadow,
                        None, None, elapsed_us, None, call, j,
                    )
                    logs.append(entry)
                    if not shadow:
                        self.logged[i] = entry
        return served

    def predict(
        self, model: BoundModel, members: list[int]
    ) -> tuple[dict[str, np.ndarray], list[int], Block, int]:
        """One predict call over members' rows: (inputs, row offsets, output block, elapsed µs)."""
        first = model.feeds[0][1]
        # Records that sit next to each other in one block (the usual case after a step that
        # served the whole batch) are copied as one slice, or not at all when they are all of it.
        runs: list[tuple[Block, int, int]] = []
        offsets = [0]
        previous: Position | None = None
        for i in members:
            block, j = self.at(i)
            if block.offsets is None:
                begin, end = 0, len(block.arrays[first])
            else:
                begin, end = block.offsets[j], block.offsets[j + 1]
            if previous is not None and previous[0] is block and previous[1] == j - 1:
                runs[-1] = (block, runs[-1][1], end)
            else:
                runs.append((block, begin, end))
            offsets.append(offsets[-1] + end - begin)
            previous = (block, j)
        inputs: dict[str, np.ndarray] = {}
        for name, source in model.feeds:
            pieces = [block.arrays[source][begin:end] for block, begin, end in runs]
            inputs[name] = pieces[0] if len(pieces) == 1 else np.concatenate(pieces)
        started = time.perf_counter_ns()
        outputs = model.runtime.predict(inputs)
        elapsed_us = (time.perf_counter_ns() - started) // 1000
        if len(members) == 1:  # whatever it returned is this record's
            return inputs, offsets, Block(outputs, None), elapsed_us
        if wrong := {
            n: list(a.shape) for n, a in outputs.items() if a.ndim == 0 or len(a) != offsets[-1]
        }:
            raise _RowsMismatch(
                f"the model returned shapes {wrong} for {offsets[-1]} input rows; a model must "
                "return one row per input row"
            )
        return inputs, offsets, Block(outputs, offsets), elapsed_us

    def fail(self, model: BoundModel, i: int, error: str, shadow: bool) -> None:
        """Log the failed inference; fail the record unless it was a challenger's."""
        reason = f"{model.where}: {error}"
        block, j = self.at(i)
        rows = block.rows(j)
        inputs = {name: rows[source] for name, source in model.feeds if source in rows}
        record = self.records[i]
        self.outcome.logs.append(InferenceLogEntry(
            record.record_id, model.step, model.model, model.version, shadow, inputs, {}, 0, reason
        ))
        if not shadow:  # a challenger's failure is only logged: it served nobody
            self.outcome.failures.append(Failure(record, reason))


def result_outputs(by_step: Sequence[tuple[int, Mapping[str, np.ndarray]]], last: int
                   ) -> dict[str, np.ndarray]:
    """A record's outputs of the result steps (step number, outputs): the last step's first,
    by their own names, an earlier step's as 'step<N>.<output>' (control/registry/chains.py)."""
    if len(by_step) == 1 and by_step[0][0] == last:  # the usual case: only the last step's
        return dict(by_step[0][1])
    outputs: dict[str, np.ndarray] = {}
    for n, arrays in sorted(by_step, key=lambda c: c[0] != last):
        outputs.update({result_name(n, last, k): a for k, a in arrays.items()})
    return outputs


def _group_key(model: BoundModel, block: Block) -> _GroupKey | str:
    """What records must share to be concatenated for model, or why the block cannot be fed."""
    key: list[tuple[tuple[int, ...], str]] = []
    lengths: dict[str, int] = {}
    for name, source in model.feeds:
        array = block.arrays.get(source)
        if array is None:
            return (
                f"input {name!r} needs field {source!r}, which is missing; available fields: "
                f"{sorted(block.arrays)}" + ("" if source == name else " (see the input_map)")
            )
        if array.ndim == 0:
            return f"field {source!r} is a single value; give it rows (a first, batch axis)"
        lengths[source] = len(array)
        kind = "number" if array.dtype.kind in "biuf" else array.dtype.kind
        key.append((array.shape[1:], kind))
    if block.offsets is None and len(set(lengths.values())) > 1:
        return f"the fields feeding one model must have as many rows each, got {lengths}"
    return tuple(key)


def _split(
    arrays: Mapping[str, np.ndarray], offsets: list[int] | None
) -> list[dict[str, np.ndarray]]:
    """Each record's rows of arrays, as views."""
    if offsets is None:
        return [dict(arrays)]
    n = len(offsets) - 1
    sizes = np.diff(offsets)
    parts: list[Sequence[np.ndarray]]
    if n and (sizes == sizes[0]).all():  # the usual case: iterating a reshape beats slicing
        parts = [list(a.reshape(n, int(sizes[0]), *a.shape[1:])) for a in arrays.values()]
    else:
        parts = [[a[b:e] for b, e in pairwise(offsets)] for a in arrays.values()]
    names = list(arrays)
    return [dict(zip(names, row, strict=True)) for row in zip(*parts, strict=True)]


def _describe(error: Exception) -> str:
    # Our own errors say what to do; foreign ones (ORT, TF) need their type to be recognised.
    return str(error) if isinstance(error, InferstreamError) else f"{type(error).__name__}: {error}"


