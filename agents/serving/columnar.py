"""Serving a micro-batch as columns: the fast path of the common case.

The common case is a pipeline version whose every step runs one model (no split, no shadow),
fed Avro records that each hold one row of float inputs, encoded the canonical way (one block
per array). Such a batch is decoded with numpy, one array per input for the whole batch; each
step is one predict call; results and inference logs are written from the calls' arrays. No
object is made per record but its bytes: record by record, decoding, routing and encoding cost
~15 µs a record, more than the models did.

Anything else returns None and agents.serving.deployments serves the batch record by record,
which also finds and dead-letters the culprits: JSON, a record of several rows, a malformed one, a
model that raises or returns another number of rows. Both paths write the same bytes
(tests/test_columnar.py).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import numpy as np
from confluent_kafka import Message

from agents.records.avro_input import AvroInput
from agents.records.avro_logs import LogWriter
from agents.records.avro_writer import ResultWriter, long
from agents.serving.batch_run import result_outputs
from agents.serving.runner import MODEL, BoundModel, Call, PipelineRunner
from agents.serving.validations import CheckReport, Checks, texts
from control.registry.tensors import STRING, TensorSpec
from control.registry.validations import INPUT_STEP, RECORD, Ref
from schemas.codec import MARKER

if TYPE_CHECKING:
    from agents.metrics import StageMetrics

_ITEMS = {"float32": np.dtype("<f4"), "float64": np.dtype("<f8")}
_LONG_ID = 0x80  # an id of 64 bytes or more has a varint length of two bytes: record path


class Outgoing(Protocol):
    """Where a served batch's results, dead letters and logs go (a transaction's buffer, an
    HTTP request's shipment)."""

    def send(self, topic: str, key: bytes | None, value: bytes) -> None: ...


@dataclass(frozen=True, slots=True)
class _Input:
    """Where one model input's values sit in a one-row record, after its id."""

    name: str
    dtype: np.dtype
    shape: tuple[int, ...]  # the batch's array: (-1, *row)
    start: int  # of the values, counted from the end of the id
    size: int  # bytes of values


class Columnar:
    """The column-wise serving of one deployed pipeline version; see Columnar.of."""

    def __init__(self, models: tuple[BoundModel, ...], inputs: tuple[_Input, ...], frame: bytes,
                 prefix: bytes, results: ResultWriter, logs: LogWriter,
                 output_topic: str, logs_topic: str, max_bytes: int,
                 carried: tuple[int, ...] = (), checks: Checks | None = None) -> None:
        self.models = models
        self.checks = checks
        self.carried = carried or (len(models),)  # the result steps, as the record path's
        self.inputs = inputs
        self.prefix = prefix  # the single-object header of the input schema
        self.size = len(frame)  # of a record after its id
        # The bytes of a record after its id that are not values: counts and array ends.
        mask = np.ones(self.size, dtype=bool)
        for i in inputs:
            mask[i.start:i.start + i.size] = False
        self._frame_at = np.flatnonzero(mask)
        self._frame = np.frombuffer(frame, np.uint8)[self._frame_at]
        self.results, self.logs = results, logs
        self.output_topic, self.logs_topic = output_topic, logs_topic
        self.max_bytes = max_bytes
        self._used = [(m.step, m.model, m.version, MODEL) for m in models]

    @classmethod
    def of(cls, runner: PipelineRunner, specs: tuple[TensorSpec, ...], avro: AvroInput,
           results: ResultWriter, logs: LogWriter, output_topic: str, logs_topic: str,
           max_bytes: int) -> Columnar | None:
        """The fast path for a version, or None when its steps or inputs are not the case."""
        models = runner.chain()
        if models is None or any(name != source for name, source in models[0].feeds):
            return None
        # A Python step's failed call may have cost its whole time limit; the record path
        # would run it again before its solo retries, past the bound docs/models.md states.
        if any(m.runtime.framework == "python" for m in models):
            return None
        # Text outputs are written record by record: found here, not after every batch's
        # inference (which the record path would then run again).
        if any(spec.dtype == STRING for m in models for spec in m.runtime.outputs):
            return None
        inputs, frame = [], b""
        for spec in specs:
            item = _ITEMS.get(spec.dtype)
            if item is None or not spec.shape or spec.shape[0] != -1 or len(spec.shape) > 2 or (
                    len(spec.shape) == 2 and spec.shape[1] < 1):
                return None
            values = spec.shape[1] if len(spec.shape) == 2 else 1
            # One row: an array of one item (then its end); a row of a 2-D input is itself an
            # array of `values` items (then its end).
            head = long(1) + (long(values) if len(spec.shape) == 2 else b"")
            tail = b"\x00" * len(spec.shape)
            size = values * item.itemsize
            inputs.append(_Input(spec.name, item, (-1, *spec.shape[1:]), len(frame) + len(head),
                                 size))
            frame += head + bytes(size) + tail
        return cls(models, tuple(inputs), frame, MARKER + avro.fingerprint, results, logs,
                   output_topic, logs_topic, max_bytes, runner.version.returned_steps,
                   runner.checks)

    def serve(self, messages: Sequence[Message], out: Outgoing, metrics: StageMetrics,
              checked: Callable[[CheckReport], None] | None = None) -> int | None:
        """Serve the batch into out and return its number of results, or None (nothing sent)
        when it is not the common case; checked gets what the validations found."""
        started = time.perf_counter_ns()
        decoded = self._decode(messages)
        if decoded is None:
            return None
        ids, keys, arrays = decoded
        started = metrics.add("decode", started)
        calls = self._infer(arrays, len(ids))
        if calls is None:
            return None
        elapsed_us = sum(e for _, e in calls)
        report = None if self.checks is None else self._check(ids, keys, arrays, calls)
        started = metrics.add("infer", started)
        now_us = time.time_ns() // 1000
        flags = None if report is None else report.anomalies
        results = self.results.encode_rows(ids, keys, self._used, self._outputs(calls),
                                           elapsed_us, now_us, flags)
        last = len(self.models)
        logs = [self.logs.blocks(now_us, m.step, m.model, m.version, False, e, call, ids, None,
                                 flags if m.step == last else None)
                for m, (call, e) in zip(self.models, calls, strict=True)]
        if results is None or any(blocks is None for blocks in logs):
            return None
        if report is not None and checked is not None:
            checked(report)
        send, output = out.send, self.output_topic
        for key, value in zip(keys, results, strict=True):
            send(output, key, value)
        topic = self.logs_topic
        for blocks in logs:
            for value in blocks:  # type: ignore[union-attr]
                send(topic, None, value)
        metrics.add("encode", started)
        return len(ids)

    def _check(self, ids: list[str], keys: list[bytes | None], arrays: dict[str, np.ndarray],
               calls: list[tuple[Call, int]]) -> CheckReport:
        """The validations over the batch's columns: one row a record, as they are."""
        assert self.checks is not None
        n = len(ids)

        def values(ref: Ref) -> np.ndarray:
            if ref.step == RECORD:
                return texts(ids if ref.name == "id" else keys)
            source = arrays if ref.step == INPUT_STEP else calls[ref.step - 1][0].outputs
            return source[ref.name].reshape(n, -1)

        return self.checks.evaluate(values, n)

    def _outputs(self, calls: list[tuple[Call, int]]) -> dict[str, np.ndarray]:
        """The result steps' outputs, named as PipelineRunner names them."""
        return result_outputs([(n, calls[n - 1][0].outputs) for n in self.carried], len(calls))

    def _decode(self, messages: Sequence[Message]
                ) -> tuple[list[str], list[bytes | None], dict[str, np.ndarray]] | None:
        """Ids, keys and one array per input, or None unless every record is the case."""
        prefix, size, limit = self.prefix, self.size, self.max_bytes
        ids: list[str] = []
        keys: list[bytes | None] = []
        bodies: list[bytes] = []
        try:
            for m in messages:
                value = m.value()
                if value is None or value[:10] != prefix or len(value) > limit:
                    return None
                if value[10] == 2:  # ["null", "string"]: a string, its length one byte
                    length = value[11]
                    if length >= _LONG_ID or length & 1:
                        return None
                    start = 12 + (length >> 1)
                    record_id = value[12:start].decode() or (
                        f"{m.topic()}:{m.partition()}:{m.offset()}")
                elif value[10] == 0:
                    start, record_id = 11, f"{m.topic()}:{m.partition()}:{m.offset()}"
                else:
                    return None
                if len(value) - start != size:
                    return None
                ids.append(record_id)
                keys.append(m.key())
                bodies.append(value[start:])
        except (IndexError, UnicodeDecodeError):
            return None
        table = np.frombuffer(b"".join(bodies), np.uint8).reshape(len(bodies), size)
        if not np.array_equal(table[:, self._frame_at], np.broadcast_to(self._frame, (
                len(bodies), len(self._frame)))):
            return None
        arrays = {i.name: np.ascontiguousarray(table[:, i.start:i.start + i.size]).view(
            i.dtype).reshape(i.shape) for i in self.inputs}
        return ids, keys, arrays

    def _infer(self, arrays: dict[str, np.ndarray], n: int) -> list[tuple[Call, int]] | None:
        """Each step's call over the whole batch and its µs, or None if one fails."""
        calls = []
        offsets = list(range(n + 1)) if n > 1 else None
        current = arrays
        for model in self.models:
            try:
                feeds = {name: current[source] for name, source in model.feeds}
                began = time.perf_counter_ns()
                outputs = model.runtime.predict(feeds)
            except Exception:
                return None
            elapsed_us = (time.perf_counter_ns() - began) // 1000
            if n > 1 and any(a.ndim == 0 or len(a) != n for a in outputs.values()):
                return None
            calls.append((Call(feeds, offsets, outputs, offsets), elapsed_us))
            current = outputs
        return calls
