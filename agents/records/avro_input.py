"""A pipeline's Avro input schema: derived from its first model's inputs, parsed once.

Producers write records of it in single-object encoding (C3 01, the schema's CRC-64-AVRO
fingerprint, the body); agents.records.formats reads them back.
"""

from __future__ import annotations

import io
import re
from collections.abc import Mapping
from functools import lru_cache
from typing import Any

import fastavro
import numpy as np
from fastavro.validation import ValidationError, validate

from agents.records.avro_reader import plan_for
from control.registry.tensors import STRING, TensorSpec
from schemas.codec import MARKER, schema_fingerprint
from schemas.errors import InferstreamError

_AVRO_TYPES = {"float16": "float", "float32": "float", "float64": "double", "bool": "boolean",
               "int64": "long", "uint32": "long", "uint64": "long", STRING: "string",
               # a timestamp input: microseconds since 1970 (UTC); writers may give datetimes
               "datetime64[us]": {"type": "long", "logicalType": "timestamp-micros"},
               **dict.fromkeys(("int8", "int16", "int32", "uint8", "uint16"), "int")}


def input_schema_name(workspace: str, pipeline: str) -> str:
    """The one name of a pipeline's input schema: the name is part of the fingerprint."""
    return f"inferstream.input.{workspace}.{pipeline}"


def input_schema(specs: tuple[TensorSpec, ...], name: str) -> dict:
    """The Avro record producers write; name it with input_schema_name(workspace, pipeline).

    An optional string `id`, then one field per model input holding its rows: one array level
    per dimension of the spec (rows first), of float/double/int/long/boolean/string, or
    long timestamp-micros for a timestamp (datetime64[us]) input.
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
