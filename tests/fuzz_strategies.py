"""Hypothesis strategies of bad input for the fuzz tests (test_fuzz_inputs, _control).

Records of a pipeline's input topic, for several kinds of model inputs: JSON records, V2
requests and Avro records with values from the edges, whole or mangled. Control events of
every payload type, drawn from the ControlEvent Avro schema itself, with values that mostly
name things that exist (so that events reach the deeper rules) and otherwise the odd ones.
"""

from __future__ import annotations

import json
import math
import os
from datetime import UTC, datetime, timedelta
from functools import cache
from hashlib import sha256
from typing import Any

import numpy as np
import orjson
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st

from agents.records.formats import AvroInput
from control.registry.events import NAMESPACE, ControlEvent
from control.registry.tensors import STRING, TensorSpec
from schemas.codec import codec

# The same examples on every run (CI reproduces a failure); INFERSTREAM_FUZZ_EXAMPLES=50000
# INFERSTREAM_FUZZ_RANDOM=1 looks further, with new examples each run.
EXAMPLES = int(os.environ.get("INFERSTREAM_FUZZ_EXAMPLES", "3000"))
FUZZ = settings(max_examples=EXAMPLES, derandomize=not os.environ.get("INFERSTREAM_FUZZ_RANDOM"),
                database=None, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def weighted(*choices: tuple[int, st.SearchStrategy]) -> st.SearchStrategy:
    """One of the strategies, drawn about as often as its weight says (one_of would not)."""
    return st.sampled_from([s for n, s in choices for _ in range(n)]).flatmap(lambda s: s)


def mangle(data: bytes, how: int, where: int, byte: int) -> bytes:
    """Truncated, one bit flipped, one byte overwritten, inserted or dropped, or extended."""
    at = where % max(len(data), 1)
    return [data[:at], data[:at] + bytes([data[at] ^ (1 << byte % 8)]) + data[at + 1:]
            if data else data, data[:at] + bytes([byte]) + data[at + 1:],
            data[:at] + bytes([byte]) + data[at:], data[:at] + data[at + 1:],
            data + bytes([byte])][how % 6]


MANGLED = st.tuples(st.integers(0, 5), st.integers(0, 10**6), st.integers(0, 255))


# -- records of a pipeline's input topic ---------------------------------------------------

IRIS = (TensorSpec("float_input", "float32", (-1, 4)),)
INPUTS = {  # kinds of model inputs: every dtype the Avro schema knows, ranks 0 to 3
    "iris": IRIS,
    "mixed": (TensorSpec("amount", "float64", (-1, 1)), TensorSpec("count", "int64", (-1,)),
              TensorSpec("country", STRING, (-1, 1))),
    "small": (TensorSpec("flags", "bool", (-1, 2)), TensorSpec("byte", "uint8", (-1,)),
              TensorSpec("half", "float16", (-1,)), TensorSpec("word", "int16", (-1, 1))),
    "wide": (TensorSpec("x", "float64", ()), TensorSpec("big", "uint64", (-1,)),
             TensorSpec("cube", "int8", (-1, 2, 3)), TensorSpec("u", "uint32", (-1, 2))),
    "fixed": (TensorSpec("one", "float32", (1, 4)), TensorSpec("inputs", "int32", (-1,)),
              TensorSpec("text", STRING, ())),
}
AVRO_INPUTS = {name: AvroInput(specs, f"inferstream.input.ws.{name}")
               for name, specs in INPUTS.items()}
KINDS = st.sampled_from(sorted(INPUTS))


ODD_TEXT = st.sampled_from(["", "US", "1.5", "NaN", "ü", "🙂", "a\x00", "\u202e", "\ud800",
                            "x" * 5000]) | st.text(max_size=8)
BAD_LEAF = st.sampled_from([None, "abc", "1.5", [], [1], {"a": 1}, 2**70, -(2**64), 1e308,
                            -1e308, 1e39, True, math.nan, math.inf, -math.inf, 0.5]) | ODD_TEXT
ONE_IN = {n: st.integers(1, n).map(lambda i: i == 1) for n in (2, 4, 10)}  # True 1 time in n
ROWS, SIZES = st.integers(1, 3), st.lists(st.integers(0, 3), max_size=4)


@cache
def leaf_of(dtype: str) -> st.SearchStrategy:
    """Values for one element of an input: of its dtype mostly, sometimes anything."""
    if dtype == STRING:
        good = ODD_TEXT
    elif np.dtype(dtype).kind == "b":
        good = st.booleans()
    elif np.dtype(dtype).kind in "iu":
        info = np.iinfo(dtype)
        good = weighted((4, st.integers(int(info.min), int(info.max))), (1, st.sampled_from(
            [int(info.min), int(info.max), int(info.min) - 1, int(info.max) + 1, 0, 2.0**63])),
            (1, st.integers(-5, 5).map(float)))
    else:
        good = weighted((4, st.floats(width=64 if dtype == "float64" else 32)),
                        (1, st.floats()), (1, st.integers(-(2**63), 2**64)))
    return weighted((12, good), (1, BAD_LEAF))


@cache
def nested(leaf: st.SearchStrategy, dims: tuple[int, ...]) -> st.SearchStrategy:
    """Lists of `dims` sizes holding leaves; sometimes ragged, as producers get it wrong."""
    if not dims:
        return leaf
    inner = nested(leaf, dims[1:])
    return weighted((8, st.lists(inner, min_size=dims[0], max_size=dims[0])),
                    (1, st.lists(inner, max_size=dims[0] + 1)))


def dims_of(draw: st.DrawFn, spec: TensorSpec, rows: int | None) -> tuple[int, ...]:
    """A shape of the spec's (rows first, unless None): -1 dimensions of 1 to 3."""
    dims = tuple(d if d > 0 else draw(ROWS) for d in spec.shape[1:])
    return dims if rows is None else (rows, *dims)


def value_of(draw: st.DrawFn, spec: TensorSpec, rows: int | None) -> Any:
    """A field's value: rows of the spec's shape, mostly right, sometimes of another shape."""
    if draw(ONE_IN[10]):
        return draw(BAD_LEAF if draw(ONE_IN[2]) else nested(leaf_of(spec.dtype), tuple(
            draw(SIZES))))
    return draw(nested(leaf_of(spec.dtype), dims_of(draw, spec, rows)))


EXTRA = st.dictionaries(st.sampled_from(["id", "customer", "inputs", "parameters"]) | ODD_TEXT,
                        st.none() | BAD_LEAF | ODD_TEXT, max_size=2)


@st.composite
def json_records(draw: st.DrawFn, specs: tuple[TensorSpec, ...]) -> bytes:
    """A JSON record (one object, rows in its fields) or a list of one-row objects."""
    rows = draw(ROWS)

    def row(batch_axis: bool) -> dict[str, Any]:
        doc = {s.name: value_of(draw, s, rows if batch_axis else None) for s in specs}
        if draw(ONE_IN[10]):
            del doc[draw(st.sampled_from(sorted(doc)))]
        return {**draw(EXTRA), **doc}

    doc: Any = [row(False) for _ in range(rows)] if draw(ONE_IN[2]) else row(draw(ONE_IN[2]))
    return _dumps(draw, doc)


V2_NAMES = {"float16": "FP16", "float32": "FP32", "float64": "FP64", "bool": "BOOL",
            STRING: "BYTES"}
OTHER_DATATYPES = st.sampled_from(["FP32", "INT64", "BYTES", "BOOL", "UINT8", "FP8", ""])
OTHER_SHAPES = st.lists(st.integers(-1, 4), max_size=3)
STRAY_INPUT = st.fixed_dictionaries({"name": ODD_TEXT, "shape": st.just([1]),
                                     "datatype": st.just("FP32"), "data": st.just([1.0])})
V2_IDS = st.none() | ODD_TEXT | st.integers()
PARAMETERS = st.dictionaries(ODD_TEXT, BAD_LEAF, max_size=2)


@st.composite
def v2_requests(draw: st.DrawFn, specs: tuple[TensorSpec, ...]) -> bytes:
    """An Open Inference Protocol V2 request: flat or nested data, a shape, a datatype."""
    inputs = []
    for spec in specs:
        value = value_of(draw, spec, draw(ROWS))
        shape = list(np.shape(value)) if _regular(value) else [1]
        inputs.append({
            "name": spec.name,
            "shape": draw(OTHER_SHAPES) if draw(ONE_IN[10]) else shape,
            "datatype": draw(OTHER_DATATYPES) if draw(ONE_IN[10]) else V2_NAMES.get(
                spec.dtype, spec.dtype.upper()),
            "data": np.ravel(value).tolist() if _regular(value) and draw(ONE_IN[2]) else value})
    if draw(ONE_IN[4]):
        inputs.append(draw(STRAY_INPUT))
    doc = {"id": draw(V2_IDS), "inputs": draw(st.permutations(inputs)),
           "parameters": draw(PARAMETERS)}
    return _dumps(draw, doc)


def _regular(value: Any) -> bool:
    try:
        return np.asarray(value).dtype != object
    except ValueError:
        return False


def _dumps(draw: st.DrawFn, doc: Any) -> bytes:
    # Python's json writes NaN and Infinity (orjson refuses to read them, the stdlib does);
    # orjson, like pandas, writes null for them.
    if draw(ONE_IN[2]):
        return json.dumps(doc).encode()
    try:
        return orjson.dumps(doc)
    except orjson.JSONEncodeError:  # a lone surrogate, or an int beyond 64 bits
        return json.dumps(doc).encode()


UTF8_TEXT = ODD_TEXT.filter(lambda text: text != "\ud800")
AVRO_LEAVES = {  # values of the Avro types, which hold more than the model's dtypes: an Avro
    # int holds 300, a uint8 does not; an Avro float holds 1e38, a float16 does not
    "string": UTF8_TEXT, "bool": st.booleans(), "float32": st.floats(width=32),
    "float16": st.floats(width=32), "float64": st.floats(),
    **dict.fromkeys(["int64", "uint32", "uint64"], st.integers(-(2**63), 2**63 - 1)),
    **dict.fromkeys(["int8", "int16", "int32", "uint8", "uint16"],
                    st.integers(-(2**31), 2**31 - 1)),
}
AVRO_IDS = st.none() | UTF8_TEXT


@st.composite
def avro_records(draw: st.DrawFn, kind: str) -> bytes:
    """A record of the pipeline's Avro input schema, as a producer writes it."""
    rows = draw(ROWS)
    record = {spec.name: draw(nested(AVRO_LEAVES[spec.dtype], dims_of(draw, spec, rows)))
              for spec in INPUTS[kind]}
    return AVRO_INPUTS[kind].encode({"id": draw(AVRO_IDS), **record})


def record_bytes(kind: str) -> st.SearchStrategy:
    """Records of every format for inputs of `kind`: whole (most), or mangled."""
    whole = weighted((3, json_records(INPUTS[kind])), (2, v2_requests(INPUTS[kind])),
                     (2, avro_records(kind)))
    return weighted((3, whole), (1, st.tuples(whole, MANGLED).map(
        lambda t: mangle(t[0], *t[1]))))


# -- control events -----------------------------------------------------------------------

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)  # as registry_events.T0
# Mostly names that exist on the platform of test_fuzz_control, so that events get past
# "unknown ..." to the deeper rules; then names that do not or cannot exist, any text.
EXISTING = st.sampled_from([
    "ann", "bob", "carol", "ws", "scaler", "classifier", "fraud", "drift", "inbox", "outbox",
    "nightly", "nightly-3am", "x", "y", "label", "day", "onnx", "UTC", "0 3 * * *"])
ODD = st.sampled_from([
    "lab", "new-model", "Europe/Berlin", "*/5 * * * *", "", " ", "ü", "Ünïcødé", "🙂", "a\0b",
    "\u202eevil", "ws\n", "../etc/passwd", "a" * 64, "x" * 10_000, "NaN", "America"])
TEXT = weighted((6, EXISTING), (2, ODD), (1, st.text(max_size=12)),
               (1, st.text(st.characters(codec="utf-8"), max_size=3)))
INT = st.sampled_from([0, 1, 2, 3, -1, 10_000, 10_001, 2**31 - 1, -(2**31)]) | st.integers(
    -(2**31), 2**31 - 1)
LONG = INT | st.sampled_from([2**63 - 1, -(2**63)]) | st.integers(-(2**63), 2**63 - 1)
DOUBLE = st.floats() | st.sampled_from([0.0, -0.0, 1e-300, 1e308])
TIME = st.sampled_from([T0, T0 + timedelta(hours=1), datetime(1970, 1, 1, tzinfo=UTC),
                        datetime(9999, 12, 31, 23, 59, tzinfo=UTC),
                        datetime(1, 1, 1, tzinfo=UTC)]) | st.datetimes(
    min_value=datetime(1, 1, 1), max_value=datetime(9999, 12, 31, 23),
    timezones=st.just(UTC)).map(lambda t: t.replace(microsecond=t.microsecond // 1000 * 1000))
PRIMITIVES: dict[str, st.SearchStrategy] = {
    "string": TEXT, "int": INT, "long": LONG, "double": DOUBLE, "float": DOUBLE,
    "boolean": st.booleans(), "null": st.none(),
    "bytes": st.binary(max_size=40) | st.binary(min_size=32, max_size=32),
}


HEX = st.sampled_from([sha256(b).hexdigest() for b in (b"s", b"c")] + ["0" * 64]) | st.binary(
    min_size=32, max_size=32).map(bytes.hex)  # the platform's two artifacts, others
# Fields whose values matter to the rules: mostly near the bounds the rules draw.
FIELDS: dict[str, st.SearchStrategy] = {
    "version": st.integers(-1, 4) | INT, "batch_size": st.integers(-2, 12_000) | INT,
    "batch_wait_ms": st.integers(-1, 70_000) | INT, "index": st.integers(-2, 10) | INT,
    "bins": st.integers(-1, 1001) | INT, "width_s": st.integers(-1, 10**6) | LONG,
    "interval_s": st.integers(-1, 10**6) | LONG, "size": st.integers(-1, 10**6) | LONG,
    "chunks": st.integers(-1, 4) | INT, "sha256": HEX | TEXT,
    "dtype": st.sampled_from(["float32", "float64", "int64", "string", "bool", "complex128",
                              "object", ""]) | TEXT,
    "shape": st.lists(st.integers(-2, 5) | LONG, max_size=4),
    "timezone": st.sampled_from(["UTC", "Europe/Berlin", "America", "", "/etc/passwd"]) | TEXT,
    "schedule": st.sampled_from(["0 3 * * *", "*/5 * * * *", "* * *", "@daily", "61 * * * *",
                                 "* * * * * * *"]) | TEXT,
    "type": st.sampled_from(["file", "kafka", "clickhouse"]) | TEXT,
    "mode": st.sampled_from(["topics", "in-process"]) | TEXT,
    "details": st.dictionaries(st.sampled_from(["path", "topic", "key_field", "table", "query",
                                                "url", "format"]) | TEXT, TEXT, max_size=3),
    "public_key": st.binary(min_size=32, max_size=32) | st.binary(max_size=40),
    **{name: st.sampled_from(known) for name, known in {
        "name": ["new-1", "dave", "lab", "ws", "ann", "bob", "drift", "fraud", "scaler",
                 "classifier", "nightly", "nightly-3am", "inbox", "outbox"],
        "pipeline": ["fraud"], "model": ["scaler", "classifier"], "orchestration": ["nightly"],
        "source": ["inbox", "outbox"], "destination": ["outbox", "inbox"],
        "field": ["x", "y", "label"], "user": ["ann", "bob", "carol", "dave"],
        "pipelines": [["fraud"], ["fraud", "fraud"]]}.items()},
}


def from_schema(schema: Any, named: dict[str, Any]) -> st.SearchStrategy:
    """Values of an Avro schema (as fastavro parses it), with edge values for each type."""
    if isinstance(schema, str):
        if schema in PRIMITIVES:
            return PRIMITIVES[schema]
        return st.deferred(lambda: from_schema(named[schema], named))
    if isinstance(schema, list):  # a union: fastavro writes (name, record) to pick a branch
        return st.one_of([_branch(s, named) for s in schema])
    kind = schema["type"]
    if schema.get("logicalType") in ("timestamp-millis", "timestamp-micros"):
        return TIME
    if kind in ("record", "enum"):
        named[schema["name"]] = schema
    if kind == "record":
        return st.fixed_dictionaries({f["name"]: _field(f, named) for f in schema["fields"]})
    if kind == "enum":
        return st.sampled_from(schema["symbols"])
    if kind == "array":
        return st.lists(from_schema(schema["items"], named), max_size=3)
    if kind == "map":
        return st.dictionaries(TEXT, from_schema(schema["values"], named), max_size=3)
    return from_schema(kind, named)


def _field(field: dict[str, Any], named: dict[str, Any]) -> st.SearchStrategy:
    values = from_schema(field["type"], named)
    special = FIELDS.get(field["name"])
    if special is None:
        return values
    optional = isinstance(field["type"], list) and "null" in field["type"]
    return weighted((6, special), (2, values), (1 if optional else 0, st.none()))


def _branch(schema: Any, named: dict[str, Any]) -> st.SearchStrategy:
    values = from_schema(schema, named)
    name = schema["name"] if isinstance(schema, dict) and schema["type"] == "record" else (
        schema if isinstance(schema, str) and schema in named else None)
    return values if name is None else values.map(lambda v, n=name: (n, v))


_NAMED: dict[str, Any] = {}
# One strategy per payload type, by short name; records a later one reuses are named.
BY_TYPE = {b["name"].removeprefix(NAMESPACE): _branch(b, _NAMED)
           for b in codec("ControlEvent").schema["fields"][4]["type"]}
PAYLOADS = st.sampled_from(sorted(BY_TYPE)).flatmap(BY_TYPE.__getitem__)
# Mostly new ids; some repeat, as a replayed event would.
EVENT_IDS = weighted((8, st.uuids().map(lambda u: u.hex)),
                     (1, st.sampled_from(["e1", "e2", "", "ü" * 50])))
ENVELOPES = st.builds(
    lambda payload, actor, ws, eid, when: ControlEvent(
        type=payload[0].removeprefix(NAMESPACE), payload=payload[1], actor=actor,
        workspace=ws, event_id=eid, time=when),
    PAYLOADS, weighted((8, st.sampled_from(["ann", "bob", "carol", "mallory"])), (1, TEXT)),
    weighted((8, st.just("ws")), (1, st.just("lab")), (1, st.none()), (1, TEXT)), EVENT_IDS,
    TIME)


def against_the_broker(examples: int) -> settings:
    """Hypothesis settings for a property run against the broker: a few derandomised
    examples, no deadline, and no shrinking (each example costs seconds)."""
    return settings(max_examples=examples, derandomize=True, database=None, deadline=None,
                    phases=[Phase.explicit, Phase.generate],
                    suppress_health_check=list(HealthCheck))
