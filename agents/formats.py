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
from typing import Any, NamedTuple

import fastavro
import numpy as np
from fastavro.validation import ValidationError, validate

from agents.avro_reader import plan_for, read_body
from agents.avro_writer import ResultWriter
from agents.runtimes.base import STRING, TensorSpec
from schemas.codec import MARKER, codec, schema_fingerprint
from schemas.errors import InferstreamError

try:
    import orjson
except ImportError:  # pragma: no cover - a declared dependency; stdlib json is the slow fallback
    orjson = None  # type: ignore[assignment]

JSON, AVRO, V2 = "json", "avro", "v2"
MAX_RECORD_BYTES = 8 * 1024 * 1024
# orjson before 3.9.15 overflows the C stack on deeply nested input (CVE-2024-27454): a single
# hostile record would kill the worker, so such versions only serialise, never parse.
_FAST_LOADS = orjson is not None and tuple(
    int(p) for p in re.findall(r"\d+", orjson.__version__)[:3]) >= (3, 9, 15)
_V2_DTYPES = {"BOOL": "bool", "FP16": "float16", "FP32": "float32", "FP64": "float64",
              "BYTES": STRING, **{f"{u}INT{n}": f"{u.lower()}int{n}" for u in ("", "U")
                                  for n in (8, 16, 32, 64)}}
_V2_NAMES = {dtype: name for name, dtype in _V2_DTYPES.items()}
_AVRO_TYPES = {"float16": "float", "float32": "float", "float64": "double", "bool": "boolean",
               "int64": "long", "uint32": "long", "uint64": "long", STRING: "string",
               **dict.fromkeys(("int8", "int16", "int32", "uint8", "uint16"), "int")}
_SCALARS = (str, int, float, bool)
_KINDS = {"U": "text", "b": "booleans", "i": "integers", "u": "integers", "f": "numbers"}
_TYPES = {type(None): "null", str: "text", bool: "booleans", int: "integers", float: "numbers",
          list: "lists", dict: "objects"}
_NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)(e[-+]?\d+)?|[-+]?(nan|inf(inity)?)", re.I)


class BadRecord(InferstreamError):
    """A record that cannot be served: it does not decode, or does not fit the model's inputs."""

    def __init__(self, reason: str, format: str | None = None, field: str | None = None) -> None:
        self.reason, self.format, self.field = reason, format, field
        super().__init__(f"{format} record: {reason}" if format else reason)


class ModelUsed(NamedTuple):
    step: int
    model: str
    version: int
    role: str  # model | route | champion | challenger


@dataclass(slots=True)
class InputRecord:
    """One decoded record: its tensors (rows on axis 0), routing fields and original bytes."""

    record_id: str
    key: bytes | None
    format: str
    tensors: dict[str, np.ndarray]
    fields: dict[str, Any]
    raw: bytes

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


# -- the Avro input schema ------------------------------------------------------------------

def input_schema_name(workspace: str, pipeline: str) -> str:
    """The one name of a pipeline's input schema: the name is part of the fingerprint."""
    return f"inferstream.input.{workspace}.{pipeline}"


def input_schema(specs: tuple[TensorSpec, ...], name: str) -> dict:
    """The Avro record producers write; name it with input_schema_name(workspace, pipeline).

    An optional string `id`, then one field per model input holding its rows: one array level
    per dimension of the spec (rows first), of float/double/int/long/boolean/string.
    """
    parts = [_avro_name(p) for p in name.split(".") if p]
    fields: list[dict] = [{"name": "id", "type": ["null", "string"], "default": None}]
    for spec in specs:
        if spec.dtype not in _AVRO_TYPES:
            raise InferstreamError(f"input {spec.name!r} has dtype {spec.dtype}, which has no "
                                   f"Avro type; known: {', '.join(_AVRO_TYPES)}")
        avro_type: Any = _AVRO_TYPES[spec.dtype]
        for _ in range(max(len(spec.shape), 1)):
            avro_type = {"type": "array", "items": avro_type}
        fields.append({"name": _avro_name(spec.name), "type": avro_type,
                       "doc": f"{spec.name}: {spec.dtype} {list(spec.shape)}, rows first"})
    names = [f["name"] for f in fields]
    if len(set(names)) != len(names):
        raise InferstreamError(f"model inputs {[s.name for s in specs]} give clashing Avro field "
                               f"names {names}; rename the model's inputs")
    return {"type": "record", "name": parts[-1] if parts else "Input",
            "namespace": ".".join(parts[:-1]), "fields": fields,
            "doc": "One record for a pipeline: its first model's inputs, each holding rows."}


def _avro_name(name: str) -> str:
    clean = re.sub(r"[^A-Za-z0-9_]", "_", name)
    return clean if re.match(r"[A-Za-z_]", clean) else "_" + clean


class AvroInput:
    """A pipeline's Avro input schema, parsed once; keep one per pipeline version."""

    __slots__ = ("fields", "fingerprint", "name", "parsed", "plan", "schema")

    def __init__(self, specs: tuple[TensorSpec, ...], name: str) -> None:
        self.schema = input_schema(specs, name)
        self.parsed = fastavro.parse_schema(self.schema)
        self.name = self.parsed["name"]
        self.fingerprint = schema_fingerprint(self.parsed)
        self.fields = tuple((_avro_name(spec.name), spec) for spec in specs)
        self.plan = plan_for(self.fields)  # floats only: read without fastavro

    def encode(self, record: Mapping[str, Any]) -> bytes:
        """One record ({"id": ..., input name: rows}) single-object encoded, as producers write."""
        body = {"id": record.get("id"), **{
            a: v.tolist() if isinstance(v := record.get(s.name), np.ndarray) else v
            for a, s in self.fields}}
        out = io.BytesIO(MARKER + self.fingerprint)
        out.seek(10)
        try:
            validate(body, self.parsed, raise_errors=True)  # fastavro would truncate 1.5 to 1
            fastavro.schemaless_writer(out, self.parsed, body)
        except (ValidationError, ValueError, TypeError) as exc:
            raise InferstreamError(f"cannot encode a {self.name} record: {exc}") from exc
        return out.getvalue()


@lru_cache(maxsize=256)
def avro_input(specs: tuple[TensorSpec, ...], name: str) -> AvroInput:
    """The parsed input schema for these specs, made once per (specs, name)."""
    return AvroInput(specs, name)


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
                        "split it into smaller records or raise the pipeline's limit")
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
        try:
            array = np.asarray(doc[avro_name], dtype=str if spec.dtype == STRING else spec.dtype)
        except (ValueError, TypeError, OverflowError) as exc:
            raise _bad(spec, AVRO, f"values that do not fit: {str(exc)[:120]}") from None
        tensors[spec.name] = _shaped(spec, array, AVRO, stacked=True)
    fields: dict[str, Any] = {"id": doc["id"]} if doc["id"] is not None else {}
    _add_single_values(tensors, fields)
    return _record(doc["id"] or default_id, key, AVRO, tensors, fields, raw)


def _read_avro(raw: bytes, avro: AvroInput) -> dict[str, Any]:
    body = io.BytesIO(raw)
    body.seek(10)
    try:
        doc = fastavro.schemaless_reader(body, avro.parsed, None)
    except Exception as exc:  # fastavro raises many types (EOFError, IndexError...) on garbage
        raise BadRecord(f"corrupt or truncated {avro.name} ({len(raw)} bytes): {exc!r}",
                        AVRO) from None
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
            raise _missing(spec, V2, sorted(given))
        declared, want = (np.dtype(str if t == STRING else t).kind
                          for t in (_V2_DTYPES[item["datatype"]], spec.dtype))
        if (declared == "U") != (want == "U") or (want == "b") != (declared == "b") or (
                declared == "f" and want in "iu"):
            raise _bad(spec, V2, f"datatype {item['datatype']} (send "
                                 f"{_V2_NAMES.get(spec.dtype, spec.dtype)})")
        array = _cast(spec, _array(spec, item["data"], V2), V2)
        if array.size != math.prod(item["shape"]):
            raise _bad(spec, V2, f"shape {item['shape']} with {array.size} values of data")
        tensors[spec.name] = _shaped(spec, array.reshape(item["shape"]), V2, stacked=False)
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
                        f"'inputs'), got {_example(doc)}", JSON)
    tensors = {}
    for spec in specs:
        try:
            values = [row[spec.name] for row in rows] if stacked else doc[spec.name]
        except KeyError:
            row = next(i for i, row in enumerate(rows) if spec.name not in row)
            where = f" from row {row}" if stacked else ""
            raise _missing(spec, JSON, sorted(rows[row]), where) from None
        array = _shaped(spec, _array(spec, values, JSON), JSON, stacked)
        tensors[spec.name] = _cast(spec, array, JSON)
    first = rows[0]
    return _record(_id(first.get("id"), default_id), key, JSON, tensors, _scalars(first), raw)


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


def _array(spec: TensorSpec, values: Any, fmt: str) -> np.ndarray:
    try:  # objects for text: numpy would quietly turn a number in a text list into text
        return np.asarray(values, dtype=object if spec.dtype == STRING else None)
    except (ValueError, TypeError, OverflowError, RecursionError):
        raise _bad(spec, fmt, "ragged or too deeply nested lists") from None


def _shaped(spec: TensorSpec, array: np.ndarray, fmt: str, stacked: bool) -> np.ndarray:
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
        raise _bad(spec, fmt, f"shape {list(array.shape)}")
    return array


def _cast(spec: TensorSpec, array: np.ndarray, fmt: str) -> np.ndarray:
    """The values as spec's dtype when no value changes meaning, else BadRecord."""
    kind = array.dtype.kind
    if spec.dtype == STRING:
        bad = [v for v in array.flat if not isinstance(v, str)][:1] if kind == "O" else [None]
        if kind == "U" or not bad:
            return array.astype(str, copy=False)
        raise _bad(spec, fmt, _got(array, bad[0]))
    want = np.dtype(spec.dtype)
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
            raise _bad(spec, fmt, f"numbers beyond the range of {want.name}")
        return out
    if want.kind in "iu" and kind in "biuf":
        if kind == "f":
            wrong = ~(np.isfinite(array) & (array == np.trunc(array)))
            if wrong.any():
                raise _bad(spec, fmt, f"non-integer numbers (e.g. {array[wrong].flat[0].item()})")
        info = np.iinfo(want)
        if kind != "b" and array.size and (array.min() < info.min or array.max() > info.max):
            raise _bad(spec, fmt, f"numbers beyond the range of {want.name}")
        return array.astype(want)
    raise _bad(spec, fmt, _got(array))


def _objects(spec: TensorSpec, array: np.ndarray, want: np.dtype, fmt: str) -> np.ndarray:
    # Mixed lists: numbers with nulls (pandas writes NaN as null), huge ints, text or lists.
    null_ok = want.kind == "f"
    for value in array.flat:
        if not (type(value) in (int, float, bool) or (value is None and null_ok)):
            raise _bad(spec, fmt, _got(array, value))
    values = [np.nan if v is None else v for v in array.flat]
    # Through float64 when floats are in it, so that range and integer checks still apply.
    as_float = null_ok or any(type(v) is float for v in values)
    try:
        return np.array(values, dtype=np.float64 if as_float else want).reshape(array.shape)
    except OverflowError:
        raise _bad(spec, fmt, f"numbers beyond the range of {want.name}") from None


def _got(array: np.ndarray, bad: Any = None) -> str:
    """What a field held, for a message: the kind of values and one offending value."""
    kind = array.dtype.kind
    if kind == "O":
        return f"{_TYPES.get(type(bad), type(bad).__name__)} (e.g. {_example(bad)})"
    flat = array.ravel().tolist() or [""]
    # numpy turns a list mixing numbers and text into text: show a value that was text
    bad = next((v for v in flat if not _NUMBER.fullmatch(v)), flat[0]) if kind == "U" else flat[0]
    return f"{_KINDS.get(kind, array.dtype.name)} (e.g. {_example(bad)})"


def _example(value: Any) -> str:
    if isinstance(value, np.ndarray):
        value = value.tolist()[0] if value.size else []
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _loads(raw: bytes) -> Any:
    if _FAST_LOADS:
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError:
            # orjson keeps to the JSON standard; NaN and Infinity literals (Python's json and
            # pandas write them) need the stdlib parser, which also fails cleanly when too deep.
            if b"NaN" not in raw and b"Infinity" not in raw:
                raise
    return json.loads(raw)


def _missing(spec: TensorSpec, fmt: str, has: list[str], where: str = "") -> BadRecord:
    return BadRecord(f"field {spec.name!r} ({spec.dtype} {list(spec.shape)}) is missing{where}; "
                     f"the record has {has[:20]}", fmt, spec.name)


def _bad(spec: TensorSpec, fmt: str, got: str) -> BadRecord:
    return BadRecord(f"field {spec.name!r}: expected {spec.dtype} {list(spec.shape)}, got {got}",
                     fmt, spec.name)


# -- encoding --------------------------------------------------------------------------------

def encode_result(record: InputRecord, outputs: dict[str, np.ndarray], meta: ResultMeta) -> bytes:
    """The result of one record in its own format: JSON, V2 JSON or an Avro InferenceResult."""
    if record.format == AVRO:
        return _result_writer(meta.workspace, meta.pipeline, meta.pipeline_version,
                              meta.worker).encode(
            record.record_id, record.key, meta.models, outputs, meta.elapsed_us,
            meta.time_us or time.time_ns() // 1000)
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
                           "elapsed_ms": meta.elapsed_us / 1000, "worker": meta.worker}})
    return _dumps({
        "id": record.record_id, "key": key, "workspace": meta.workspace,
        "pipeline": meta.pipeline, "pipeline_version": meta.pipeline_version, "models": models,
        "outputs": outputs, "elapsed_ms": meta.elapsed_us / 1000, "worker": meta.worker})


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
            "strings": [] if numeric else [v.decode("utf-8", "replace") if isinstance(v, bytes)
                                           else str(v) for v in a.ravel().tolist()]})
    return tensors


def dead_letter(raw: bytes | None, key: bytes | None, reason: str | BaseException, pipeline: str,
                pipeline_version: int | None, topic: str, partition: int, offset: int, *,
                workspace: str | None = None, time_us: int | None = None) -> bytes:
    """An Avro DeadLetter for the dead-letter topic: the reason and the original bytes."""
    return codec("DeadLetter").encode({
        "time": time_us or time.time_ns() // 1000, "reason": str(reason), "workspace": workspace,
        "pipeline": pipeline, "pipeline_version": pipeline_version, "topic": topic,
        "partition": partition, "offset": offset, "key": key, "original": bytes(raw or b"")})


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
