"""Record formats of a pipeline's topics: decode one input record, encode its result in kind.

A Kafka message value is one record, in one of three formats told apart by its bytes: Avro
single-object encoding (C3 01 + fingerprint) against the pipeline's input schema, which is
derived from the first model's inputs; the Open Inference Protocol V2 JSON (`inputs: [{name,
shape, datatype, data}]`); or JSON records (an object of model inputs, one row, or a list of
them, as pandas `orient="records"` writes). Records are checked against the first model's
inputs here, so a bad one goes to the dead-letter topic with a reason and spoils no batch.
"""

from __future__ import annotations

import io
import json
import math
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import fastavro
import numpy as np

from agents.records.avro_input import AvroInput, avro_input, input_schema, input_schema_name
from agents.records.avro_reader import read_body
from agents.records.avro_writer import ResultWriter, tensor_texts, timestamp_texts
from agents.records.inference import ModelUsed
from agents.records.input_checks import (
    BadRecord,
    as_array,
    bad_field,
    cast,
    example,
    missing,
    shaped,
)
from control.registry.tensors import STRING, TensorSpec
from schemas.codec import MARKER, codec, reader_error

try:
    import orjson
except ImportError:  # pragma: no cover - a declared dependency; stdlib json is the slow fallback
    orjson = None  # type: ignore[assignment]

# With the Avro input schema (records.avro_input) and BadRecord (records.input_checks).
__all__ = [
    "AVRO", "JSON", "V2", "AvroInput", "BadRecord", "InputRecord", "ModelUsed", "ResultMeta",
    "avro_input", "dead_letter", "decode_record", "encode_result", "input_schema",
    "input_schema_name", "tensor_records"]

JSON, AVRO, V2 = "json", "avro", "v2"
MAX_RECORD_BYTES = 8 * 1024 * 1024
DEAD_LETTER_BYTES = 1_000_000  # librdkafka's default message.max.bytes; brokers take 1 MiB
_REASON_CHARS = 4000
# orjson before 3.9.15 overflows the C stack on deeply nested input (CVE-2024-27454): a single
# hostile record would kill the worker, so such versions only serialise, never parse.
_FAST_LOADS = orjson is not None and tuple(
    int(p) for p in re.findall(r"\d+", orjson.__version__)[:3]) >= (3, 9, 15)
_V2_DTYPES = {"BOOL": "bool", "FP16": "float16", "FP32": "float32", "FP64": "float64",
              "BYTES": STRING, **{f"{u}INT{n}": f"{u.lower()}int{n}" for u in ("", "U")
                                  for n in (8, 16, 32, 64)}}
_V2_NAMES = {dtype: name for name, dtype in _V2_DTYPES.items()}
_SCALARS = (str, int, float, bool)
_SURROGATE = re.compile(rb"\\u[dD][89a-fA-F]")


@dataclass(slots=True)
class InputRecord:
    """One decoded record: its tensors (rows on axis 0), routing fields and original bytes."""

    record_id: str
    key: bytes | None
    format: str
    tensors: dict[str, np.ndarray]
    fields: dict[str, Any]
    raw: bytes
    # A JSON list of row objects: each row's "id" (None where it has none), for the answer.
    row_ids: tuple[str | None, ...] = ()

    @property
    def rows(self) -> int:
        return len(next(iter(self.tensors.values()))) if self.tensors else 0


@dataclass(frozen=True, slots=True)
class ResultMeta:
    """What made a result; models are ModelUsed or plain (step, model, version, role) tuples."""

    pipeline: str
    pipeline_version: int
    workspace: str
    models: Sequence[tuple[int, str, int, str]]
    elapsed_us: int
    worker: str
    time_us: int | None = None  # when the result was made; now when None
    # The validations the record failed; None: its version has none (JSON omits the key).
    anomalies: tuple[str, ...] | None = None


# -- decoding --------------------------------------------------------------------------------

def decode_record(raw: bytes, key: bytes | None, specs: tuple[TensorSpec, ...], default_id: str,
                  avro: AvroInput | None = None, max_bytes: int = MAX_RECORD_BYTES) -> InputRecord:
    """Decode one message value and check it against the first model's inputs.

    Floats may be NaN or ±inf (NaN/Infinity literals, or null for NaN, as pandas writes);
    ints must be integral and in range; text only feeds string inputs. Raises BadRecord.
    """
    if not raw:
        raise BadRecord("empty message value (a tombstone?); send one JSON or Avro record")
    if len(raw) > max_bytes:
        raise BadRecord(f"record is {len(raw)} bytes, over the limit of {max_bytes} bytes; "
                        "split it into smaller records, or raise the workers' "
                        "INFERSTREAM_MAX_RECORD_BYTES")
    raw = bytes(raw)
    if raw[:2] == MARKER:
        return _decode_avro(raw, key, default_id, avro)
    try:
        doc = _loads(raw)
    except (ValueError, RecursionError) as exc:
        raise BadRecord(f"neither JSON nor Avro single-object encoding (C3 01 + fingerprint): "
                        f"{str(exc)[:200]}; it starts {raw[:24]!r}") from None
    inputs = doc.get("inputs") if isinstance(doc, dict) else None
    if (isinstance(inputs, list) and inputs and all(isinstance(i, dict) for i in inputs)
            and all(s.name != "inputs" for s in specs)):
        return _decode_v2(doc, inputs, raw, key, specs, default_id)
    return _decode_json(doc, raw, key, specs, default_id)


def _decode_avro(raw: bytes, key: bytes | None, default_id: str,
                 avro: AvroInput | None) -> InputRecord:
    if avro is None:
        raise BadRecord("this pipeline has no Avro input schema; send JSON or V2 JSON", AVRO)
    if raw[2:10] != avro.fingerprint:
        raise BadRecord(f"written with schema fingerprint {raw[2:10].hex()}, but the pipeline's "
                        f"input schema {avro.name} is {avro.fingerprint.hex()}; fetch the "
                        "current input schema of the pipeline", AVRO)
    doc = read_body(raw, avro.plan) if avro.plan is not None else None
    if doc is None:  # not the common case, or not well-formed: fastavro says what is wrong
        doc = _read_avro(raw, avro)
    tensors = {}
    for avro_name, spec in avro.fields:
        try:  # numbers as they came: _cast checks their range (an Avro int holds 300, a uint8
            # does not; an Avro float holds 1e38, a float16 does not), as for JSON records
            array = np.asarray(doc[avro_name], dtype=str if spec.dtype == STRING else None)
        except (ValueError, TypeError, OverflowError):
            raise bad_field(spec, AVRO, "ragged lists (rows or items of different lengths)"
                            ) from None
        tensors[spec.name] = cast(spec, shaped(spec, array, AVRO, stacked=True), AVRO)
    fields: dict[str, Any] = {"id": doc["id"]} if doc["id"] is not None else {}
    _add_single_values(tensors, fields)
    return _record(doc["id"] or default_id, key, AVRO, tensors, fields, raw)


def _read_avro(raw: bytes, avro: AvroInput) -> dict[str, Any]:
    body = io.BytesIO(raw)
    body.seek(10)
    try:
        doc = fastavro.schemaless_reader(body, avro.parsed, None)
    except Exception as exc:  # fastavro raises many types (EOFError, IndexError...) on garbage
        raise BadRecord(f"corrupt or truncated {avro.name} ({len(raw)} bytes): "
                        f"{reader_error(exc)}", AVRO) from None
    if body.tell() != len(raw):
        raise BadRecord(f"corrupt {avro.name}: {len(raw) - body.tell()} bytes after it", AVRO)
    return doc


def _decode_v2(doc: dict, inputs: list[dict], raw: bytes, key: bytes | None,
               specs: tuple[TensorSpec, ...], default_id: str) -> InputRecord:
    given: dict[str, dict] = {}
    for i, item in enumerate(inputs):
        name, shape, datatype = item.get("name"), item.get("shape"), item.get("datatype")
        if not isinstance(name, str) or datatype not in _V2_DTYPES or "data" not in item or not (
                isinstance(shape, list) and all(type(d) is int and d >= 0 for d in shape)):
            raise BadRecord(f"inputs[{i}] needs a name, a shape (list of sizes), data and a "
                            f"datatype of {', '.join(_V2_DTYPES)}; got name={name!r} "
                            f"shape={str(shape)[:40]} datatype={str(datatype)[:20]!r}", V2)
        if name in given:
            raise BadRecord(f"input {name!r} is given twice", V2, name)
        given[name] = item
    tensors = {}
    for spec in specs:
        item = given.get(spec.name)
        if item is None:
            raise missing(spec, V2, sorted(given))
        declared, want = (np.dtype(str if t == STRING else t).kind
                          for t in (_V2_DTYPES[item["datatype"]], spec.dtype))
        if (declared == "U") != (want == "U") or (want == "b") != (declared == "b") or (
                declared == "f" and want in "iu"):
            raise bad_field(spec, V2, f"datatype {item['datatype']} (send "
                                 f"{_V2_NAMES.get(spec.dtype, spec.dtype)})")
        array = cast(spec, as_array(spec, item["data"], V2), V2)
        if array.size != math.prod(item["shape"]):
            raise bad_field(spec, V2, f"shape {item['shape']} with {array.size} values of data")
        tensors[spec.name] = shaped(spec, array.reshape(item["shape"]), V2, stacked=False)
    rid, params = doc.get("id"), doc.get("parameters")
    fields = _scalars(params) if isinstance(params, dict) else {}
    if isinstance(rid, _SCALARS):
        fields["id"] = rid
    _add_single_values(tensors, fields)
    return _record(_id(rid, default_id), key, V2, tensors, fields, raw)


def _decode_json(doc: Any, raw: bytes, key: bytes | None, specs: tuple[TensorSpec, ...],
                 default_id: str) -> InputRecord:
    if isinstance(doc, dict):
        rows, stacked = [doc], False
    elif isinstance(doc, list) and doc and all(isinstance(row, dict) for row in doc):
        rows, stacked = doc, True
    else:
        raise BadRecord(f"expected an object of model inputs or a non-empty list of them (or V2 "
                        f"'inputs'), got {example(doc)}", JSON)
    tensors = {}
    for spec in specs:
        try:
            values = [row[spec.name] for row in rows] if stacked else doc[spec.name]
        except KeyError:
            row = next(i for i, row in enumerate(rows) if spec.name not in row)
            where = f" from row {row}" if stacked else ""
            raise missing(spec, JSON, sorted(rows[row]), where) from None
        array = shaped(spec, as_array(spec, values, JSON), JSON, stacked)
        tensors[spec.name] = cast(spec, array, JSON)
    first = rows[0]
    record = _record(_id(first.get("id"), default_id), key, JSON, tensors, _scalars(first), raw)
    if stacked:
        record.row_ids = tuple(_id(row.get("id"), "") or None for row in rows)
    return record


def _record(record_id: str, key: bytes | None, fmt: str, tensors: dict[str, np.ndarray],
            fields: dict[str, Any], raw: bytes) -> InputRecord:
    rows = {name: len(a) for name, a in tensors.items()}
    if len(set(rows.values())) > 1:
        raise BadRecord(f"inputs differ in their number of rows: {rows}; give each the same", fmt)
    return InputRecord(record_id, key, fmt, tensors, fields, raw)


def _scalars(doc: dict) -> dict[str, Any]:
    return {k: v for k, v in doc.items() if v is None or isinstance(v, _SCALARS)}


def _id(value: Any, default: str) -> str:
    return str(value) if isinstance(value, str | int) and not isinstance(value, bool) else default


def _add_single_values(tensors: dict[str, np.ndarray], fields: dict[str, Any]) -> None:
    # Routing (key split, sticky hash key) reads fields; V2 and Avro have nowhere but the
    # inputs to carry a value like a country, so an input holding one value serves as one.
    for name, array in tensors.items():
        if array.size == 1:
            fields.setdefault(name, array.item())


def _loads(raw: bytes) -> Any:
    if _FAST_LOADS:
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError:
            # orjson keeps to the JSON standard; NaN and Infinity literals (Python's json and
            # pandas write them) need the stdlib parser, which also fails cleanly when too deep.
            if b"NaN" not in raw and b"Infinity" not in raw:
                raise
    doc = json.loads(raw)
    # orjson refuses text with a lone UTF-16 surrogate escape (no Unicode text, no UTF-8
    # either); the stdlib keeps it, and it would fail the result and log writers later.
    if _SURROGATE.search(raw):
        json.dumps(doc, ensure_ascii=False).encode()  # UnicodeEncodeError is a ValueError
    return doc


# -- encoding --------------------------------------------------------------------------------

def encode_result(record: InputRecord, outputs: dict[str, np.ndarray], meta: ResultMeta) -> bytes:
    """The result of one record in its own format: JSON, V2 JSON or an Avro InferenceResult."""
    if record.format == AVRO:
        return _result_writer(meta.workspace, meta.pipeline, meta.pipeline_version,
                              meta.worker).encode(
            record.record_id, record.key, meta.models, outputs, meta.elapsed_us,
            meta.time_us or time.time_ns() // 1000, meta.anomalies or ())
    if any(a.dtype.kind == "M" for a in outputs.values()):  # times: the text Avro writes too
        outputs = {k: np.reshape(timestamp_texts(a), a.shape) if a.dtype.kind == "M" else a
                   for k, a in outputs.items()}
    models = [{"step": s, "model": m, "version": v, "role": r} for s, m, v, r in meta.models]
    key = record.key.decode("utf-8", "replace") if record.key is not None else None
    if record.format == V2:
        return _dumps({
            "id": record.record_id, "model_name": meta.pipeline,
            "model_version": str(meta.pipeline_version),
            "outputs": [{"name": name, "shape": list(a.shape), "data": np.ravel(a),
                         "datatype": _V2_NAMES.get(a.dtype.name, "BYTES")}
                        for name, a in outputs.items()],
            "parameters": {"key": key, "workspace": meta.workspace, "models": models,
                           "elapsed_ms": meta.elapsed_us / 1000, "worker": meta.worker,
                           **_flagged(meta)}})
    answer = {"id": record.record_id}
    if record.row_ids:  # a list of rows: each row's id, in the order of the outputs' rows
        answer["ids"] = record.row_ids
    return _dumps({
        **answer, "key": key, "workspace": meta.workspace,
        "pipeline": meta.pipeline, "pipeline_version": meta.pipeline_version, "models": models,
        "outputs": outputs, "elapsed_ms": meta.elapsed_us / 1000, "worker": meta.worker,
        **_flagged(meta)})


def _flagged(meta: ResultMeta) -> dict[str, list[str]]:
    # JSON results of a version with validations always carry the key; others as before.
    return {} if meta.anomalies is None else {"anomalies": list(meta.anomalies)}


@lru_cache(maxsize=256)
def _result_writer(workspace: str, pipeline: str, version: int, worker: str) -> ResultWriter:
    # The parts of an InferenceResult that one pipeline version repeats, encoded once.
    return ResultWriter(workspace, pipeline, version, worker)


def tensor_records(arrays: Mapping[str, np.ndarray]) -> list[dict]:
    """Arrays as Avro Tensor records: numbers row-major as doubles, anything else as text."""
    tensors = []
    for name, array in arrays.items():
        a = np.asarray(array)
        numeric = a.dtype.kind in "biuf"
        tensors.append({
            "name": name, "dtype": a.dtype.name if numeric else STRING, "shape": list(a.shape),
            "values": a.astype(np.float64, copy=False).ravel().tolist() if numeric else [],
            "strings": [] if numeric else tensor_texts(a)})
    return tensors


def dead_letter(raw: bytes | None, key: bytes | None, reason: str | BaseException, pipeline: str,
                pipeline_version: int | None, topic: str, partition: int, offset: int, *,
                workspace: str | None = None, time_us: int | None = None,
                max_bytes: int = DEAD_LETTER_BYTES, redrive_count: int = 0,
                redrive_id: str | None = None) -> bytes:
    """An Avro DeadLetter for the dead-letter topic: the reason and the original bytes.

    A record near the broker's message size makes a letter over it, which would never be
    written (its batch failing again and again): past max_bytes the letter keeps the first
    bytes of the original (then of the key), and its reason says how many.
    """
    original, text = bytes(raw or b""), str(reason)
    if len(text) > _REASON_CHARS:
        text = f"{text[:_REASON_CHARS]}… ({len(text)} characters)"
    letter = {"time": time_us or time.time_ns() // 1000, "reason": text, "workspace": workspace,
              "pipeline": pipeline, "pipeline_version": pipeline_version, "topic": topic,
              "partition": partition, "offset": offset, "key": key, "original": original,
              "redrive_count": redrive_count, "redrive_id": redrive_id}
    dead = codec("DeadLetter")
    # Room for key and original: the letter without them, and a margin for the note below.
    room = max_bytes - len(dead.encode({**letter, "key": None, "original": b""})) - 200
    if len(original) + len(key or b"") > room:
        key_room = max(room - len(original), room // 2)
        kept_key = key if key is None or len(key) <= key_room else key[:key_room]
        kept = original[:max(room - len(kept_key or b""), 0)]
        cut = [f"the first {len(kept)} of its {len(original)} bytes"] if kept != original else []
        if kept_key is not key:
            cut.append(f"the first {len(kept_key or b'')} bytes of its {len(key or b'')}-byte key")
        note = f" (this letter keeps {' and '.join(cut)})" if cut else ""
        letter |= {"key": kept_key, "original": kept, "reason": text + note}
    return dead.encode(letter)


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.ndarray | np.generic):
        return value.tolist()
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    raise TypeError(f"cannot write {type(value).__name__} as JSON")


def _dumps(doc: Any) -> bytes:
    if orjson is not None:  # numpy arrays go straight to JSON lists; NaN and inf become null
        return orjson.dumps(doc, default=_jsonable, option=orjson.OPT_SERIALIZE_NUMPY)
    return json.dumps(doc, default=_jsonable).encode()
