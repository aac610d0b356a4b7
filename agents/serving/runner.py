"""Run one pipeline version over a micro-batch of records, every model once per step per batch.

- Steps are numbered from 1, as in the registry. Step 1 reads the records' tensors; step N+1
  reads only what step N returned (by name, through the step's input_map).
- Records are concatenated along axis 0 per input. Records that cannot share a call (another
  trailing shape, text beside numbers) form a group of their own: one call per group. Numeric
  dtypes share a group; the model's input spec casts them as it would one record.
- RecordResult.elapsed_us is the wall time of the whole batch's steps, given to every record
  (each waited for all of it); a log entry's elapsed_us is that of the call that served it.
- A random split hashes str(value) of the hash-key field with blake2b: a value takes the same
  route in every worker and batch while the weights stay. Records without the field (or None)
  draw from a numpy Generator seeded from `seed`. A key split routes on str(value); a missing
  field, None or an unlisted value takes the default route.
- RecordResult.models lists the model versions that returned outputs for the record; a failed
  challenger appears only in the logs, with its error.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Any, Generic, Protocol, TypeVar

import numpy as np

from agents.records.inference import Call, InferenceLogEntry, ModelUsed
from agents.runtimes.base import ModelRuntime
from control.registry.state import (
    KeySplit,
    ModelStep,
    PipelineVersion,
    RandomSplit,
    ShadowStep,
    Step,
    step_models,
)
from schemas.errors import InferstreamError

MODEL, ROUTE, CHAMPION, CHALLENGER = "model", "route", "champion", "challenger"


class MissingRuntime(InferstreamError):
    """A pipeline version names a model version that the runner was given no runtime for."""


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
    outputs: dict[str, np.ndarray]  # the last step's outputs, this record's rows
    models: list[ModelUsed]
    elapsed_us: int


@dataclass(slots=True)
class Failure(Generic[R]):
    record: R
    reason: str  # "step N (model vV): what was wrong"


@dataclass(slots=True)
class BatchOutcome(Generic[R]):
    results: list[RecordResult[R]] = field(default_factory=list)
    failures: list[Failure[R]] = field(default_factory=list)
    logs: list[InferenceLogEntry] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class _Model:
    """A model step bound to its loaded runtime."""

    step: int
    model: str
    version: int
    runtime: ModelRuntime
    feeds: tuple[tuple[str, str], ...]  # (model input, field that feeds it)

    @property
    def where(self) -> str:
        return f"step {self.step} ({self.model} v{self.version})"


@dataclass(frozen=True, slots=True)
class _Stage:
    step: Step
    models: tuple[_Model, ...]  # in step_models order: default / champion first
    bounds: np.ndarray | None = None  # random split: cumulative weights, last exactly 1
    key_routes: Mapping[str, int] | None = None  # key split: value -> index in models


@dataclass(slots=True)
class _Block:
    """The arrays of one predict call (or one record's own tensors), rows split among records."""

    arrays: Mapping[str, np.ndarray]
    offsets: list[int] | None  # record j owns rows offsets[j]:offsets[j + 1]; None: one, all
    _rows: list[dict[str, np.ndarray]] | None = None

    def rows(self, j: int) -> dict[str, np.ndarray]:
        """Record j's rows of every array, as views; split once per block, not per record."""
        if self._rows is None:
            self._rows = _split(self.arrays, self.offsets)
        return self._rows[j]


_Position = tuple[_Block, int]
_GroupKey = tuple[tuple[tuple[int, ...], str], ...]


class _RowsMismatch(InferstreamError):
    """A model returned another number of rows than it was given."""


class PipelineRunner:
    """Runs one pipeline version over micro-batches; keeps nothing between batches but an RNG.

    run() may be called from several threads at once (numpy's Generator holds a lock).
    """

    def __init__(
        self,
        version: PipelineVersion,
        runtimes: Mapping[tuple[str, int], ModelRuntime],
        worker: str,
        seed: int | None = None,
    ) -> None:
        if not version.steps:
            raise InferstreamError(
                f"pipeline {version.pipeline!r} v{version.version} has no steps; "
                "deploy a version with at least one step"
            )
        self.version = version
        self.worker = worker
        self._rng = np.random.default_rng(seed)
        self._stages = [_stage(n, step, runtimes) for n, step in enumerate(version.steps, 1)]

    def chain(self) -> tuple[_Model, ...] | None:
        """The models in order when every step runs one model (no split, no shadow)."""
        if all(type(stage.step) is ModelStep for stage in self._stages):
            return tuple(stage.models[0] for stage in self._stages)
        return None

    def run(self, records: Sequence[R]) -> BatchOutcome[R]:
        """Run every step over the batch; bad records go to failures, the others on."""
        start = time.perf_counter_ns()
        batch = _BatchRun(records)
        for stage in self._stages:
            alive = [i for i, p in enumerate(batch.where) if p is not None]
            if not alive:
                break
            served: dict[int, _Position] = {}
            if isinstance(stage.step, ShadowStep):
                champion, *challengers = stage.models
                served = batch.infer(champion, CHAMPION, alive)
                kept = [i for i in alive if i in served]
                for challenger in challengers:
                    batch.infer(challenger, CHALLENGER, kept)
            else:
                role = MODEL if isinstance(stage.step, ModelStep) else ROUTE
                # Routes that run the same model version the same way share one call.
                by_model: dict[_Model, list[int]] = {}
                for model, members in zip(stage.models, self._route(stage, alive, records),
                                          strict=True):
                    by_model.setdefault(model, []).extend(members)
                for model, members in by_model.items():
                    if members:
                        served.update(batch.infer(model, role, sorted(members)))
            batch.where = [served.get(i) for i in range(len(records))]
        elapsed_us = (time.perf_counter_ns() - start) // 1000
        for i, position in enumerate(batch.where):
            if position is not None:
                block, j = position
                # A copy: the last step's log entry holds the same rows, and callers may edit.
                batch.outcome.results.append(
                    RecordResult(records[i], dict(block.rows(j)), batch.used[i], elapsed_us)
                )
        return batch.outcome

    def _route(self, stage: _Stage, alive: list[int], records: Sequence[R]) -> list[list[int]]:
        """The records of each of stage.models, in batch order."""
        step = stage.step
        routes: list[list[int]] = [[] for _ in stage.models]
        if isinstance(step, RandomSplit):
            assert stage.bounds is not None
            draws = np.empty(len(alive))
            unkeyed: list[int] = []
            for pos, i in enumerate(alive):
                value = records[i].fields.get(step.hash_key) if step.hash_key else None
                if value is None:
                    unkeyed.append(pos)
                else:
                    draws[pos] = _unit(value)
            draws[unkeyed] = self._rng.random(len(unkeyed))
            choice = np.searchsorted(stage.bounds, draws, side="right")
            for i, r in zip(alive, choice.tolist(), strict=True):
                routes[r].append(i)
        elif isinstance(step, KeySplit):
            assert stage.key_routes is not None
            for i in alive:
                value = records[i].fields.get(step.field)
                routes[0 if value is None else stage.key_routes.get(str(value), 0)].append(i)
        else:
            routes[0] = alive
        return routes


class _BatchRun(Generic[R]):
    """One batch on its way through the steps: where each record's rows are, what served it."""

    def __init__(self, records: Sequence[R]) -> None:
        self.records = records
        # Before step 1 every record is a block of its own; None once a record has failed.
        self.where: list[_Position | None] = [(_Block(r.tensors, None), 0) for r in records]
        self.used: list[list[ModelUsed]] = [[] for _ in records]
        self.outcome: BatchOutcome[R] = BatchOutcome()

    def at(self, i: int) -> _Position:
        position = self.where[i]
        assert position is not None, "only records served so far reach a step"
        return position

    def infer(self, model: _Model, role: str, members: list[int]) -> dict[int, _Position]:
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

        served: dict[int, _Position] = {}
        for group in groups.values():
            tries = [group]
            while tries:
                attempt = tries.pop()
                try:
                    inputs, offsets, block, elapsed_us = self.predict(model, attempt)
                except Exception as e:  # ORT and TF raise many unrelated types for bad data
                    # Find the culprits: each record on its own, in order. Only a failing group
                    # pays for this (a challenger that always crashes: one call per record).
                    if len(attempt) > 1:
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
                    logs.append(InferenceLogEntry(
                        records[i].record_id, model.step, model.model, model.version, shadow,
                        None, None, elapsed_us, None, call, j,
                    ))
        return served

    def predict(
        self, model: _Model, members: list[int]
    ) -> tuple[dict[str, np.ndarray], list[int], _Block, int]:
        """One predict call over members' rows: (inputs, row offsets, output block, elapsed µs)."""
        first = model.feeds[0][1]
        # Records that sit next to each other in one block (the usual case after a step that
        # served the whole batch) are copied as one slice, or not at all when they are all of it.
        runs: list[tuple[_Block, int, int]] = []
        offsets = [0]
        previous: _Position | None = None
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
            return inputs, offsets, _Block(outputs, None), elapsed_us
        if wrong := {
            n: list(a.shape) for n, a in outputs.items() if a.ndim == 0 or len(a) != offsets[-1]
        }:
            raise _RowsMismatch(
                f"the model returned shapes {wrong} for {offsets[-1]} input rows; a model must "
                "return one row per input row"
            )
        return inputs, offsets, _Block(outputs, offsets), elapsed_us

    def fail(self, model: _Model, i: int, error: str, shadow: bool) -> None:
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


def _stage(n: int, step: Step, runtimes: Mapping[tuple[str, int], ModelRuntime]) -> _Stage:
    def bind(m: ModelStep) -> _Model:
        runtime = runtimes.get((m.model, m.version))
        if runtime is None:
            raise MissingRuntime(
                f"step {n} needs model {m.model!r} v{m.version}, which is not loaded (loaded: "
                f"{sorted(f'{k}:v{v}' for k, v in runtimes)}); load it before running the "
                "pipeline version"
            )
        feeds = tuple((s.name, m.input_map.get(s.name, s.name)) for s in runtime.inputs)
        return _Model(n, m.model, m.version, runtime, feeds)

    models = tuple(bind(m) for m in step_models(step))
    if isinstance(step, RandomSplit):
        weights = np.array([w for w, _ in step.routes], dtype=np.float64)
        if not len(weights) or not np.all(np.isfinite(weights)) or np.any(weights <= 0):
            raise InferstreamError(
                f"step {n}: a random split needs positive weights, got {weights.tolist()}"
            )
        bounds = np.cumsum(weights) / weights.sum()
        bounds[-1] = 1.0  # draws are < 1, so rounding can never route past the last route
        return _Stage(step, models, bounds=bounds)
    if isinstance(step, KeySplit):
        # step_models puts the default first, then the routes in order.
        return _Stage(step, models, key_routes={v: r for r, (v, _) in enumerate(step.routes, 1)})
    return _Stage(step, models)


def _group_key(model: _Model, block: _Block) -> _GroupKey | str:
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


def _unit(value: Any) -> float:
    """A uniform float in [0, 1) from str(value): the same in every process, unlike hash()."""
    digest = hashlib.blake2b(str(value).encode(), digest_size=8).digest()
    return (int.from_bytes(digest, "big") >> 11) / float(1 << 53)

