"""Record formats: JSON, V2 and Avro decode into checked tensors; results in kind (no Kafka)."""

from __future__ import annotations

import json
import math

import fastavro
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agents.records.formats import (
    AvroInput,
    BadRecord,
    InputRecord,
    ModelUsed,
    ResultMeta,
    avro_input,
    dead_letter,
    decode_record,
    encode_result,
    input_schema,
    input_schema_name,
)
from agents.records.formats import tensor_records as to_tensors
from agents.runtimes.base import conform
from control.registry.tensors import STRING, TensorSpec
from schemas.codec import MARKER, decode
from schemas.errors import InferstreamError

FLOAT = TensorSpec("float_input", "float32", (-1, 4))
SPECS = (FLOAT,)
MIXED = (
    TensorSpec("amount", "float64", (-1, 1)),
    TensorSpec("count", "int64", (-1,)),
    TensorSpec("country", STRING, (-1, 1)),
)
META = ResultMeta("fraud", 3, "ws", [ModelUsed(1, "scaler", 2, "model"), (2, "clf", 5, "champion")],
                  elapsed_us=2500, worker="worker-1", time_us=1_700_000_000_000_000)
MODELS = [{"step": 1, "model": "scaler", "version": 2, "role": "model"},
          {"step": 2, "model": "clf", "version": 5, "role": "champion"}]
OUTPUTS = {"label": np.array([1, 0]), "probabilities": np.array([[0.25, 0.75], [0.5, 0.5]])}


def decoded(raw: bytes, specs: tuple[TensorSpec, ...] = SPECS, **kw: object) -> InputRecord:
    return decode_record(raw, b"user-7", specs, "in:0:42", **kw)  # type: ignore[arg-type]


def reason(raw: bytes, specs: tuple[TensorSpec, ...] = SPECS, **kw: object) -> str:
    with pytest.raises(BadRecord) as caught:
        decoded(raw, specs, **kw)
    return str(caught.value)


def v2(shape: str, datatype: str, data: str, times: int = 1) -> bytes:
    item = f'{{"name": "float_input", "shape": {shape}, "datatype": "{datatype}", "data": {data}}}'
    return f'{{"inputs": [{", ".join([item] * times)}]}}'.encode()


def test_input_schema_has_an_optional_id_and_one_array_level_per_dimension() -> None:
    specs = (FLOAT, TensorSpec("count", "int64", (-1,)), TensorSpec("input:0", "bool", (-1, 2, 3)),
             TensorSpec("country", STRING, (-1, 1)), TensorSpec("x", "float64", ()))
    schema = input_schema(specs, input_schema_name("ws", "fraud-2"))
    assert (schema["namespace"], schema["name"]) == ("inferstream.input.ws", "fraud_2")
    types = {f["name"]: f["type"] for f in schema["fields"]}
    assert types["id"] == ["null", "string"]

    def levels(t: object) -> list[object]:
        return [*levels(t["items"]), "array"] if isinstance(t, dict) else [t]

    assert levels(types["float_input"]) == ["float", "array", "array"]
    assert levels(types["count"]) == ["long", "array"]
    assert levels(types["input_0"]) == ["boolean", "array", "array", "array"]
    assert levels(types["country"]) == ["string", "array", "array"]
    assert levels(types["x"]) == ["double", "array"]  # a rank-0 input still takes rows
    fastavro.parse_schema(schema)
    assert avro_input(specs, "a.b") is avro_input(specs, "a.b")  # parsed once per version
    with pytest.raises(InferstreamError, match="clashing Avro field names"):
        input_schema((TensorSpec("a-b", "int8", (-1,)), TensorSpec("a_b", "int8", (-1,))), "p")
    with pytest.raises(InferstreamError, match="complex64"):
        input_schema((TensorSpec("z", "complex64", (-1,)),), "p")


def test_avro_round_trip_and_avro_result() -> None:
    avro = AvroInput(MIXED, "inferstream.input.ws.fraud")
    raw = avro.encode({"id": "r-9", "amount": [[12.5], [float("nan")]], "count": [3, 4],
                       "country": [["US"], ["FR"]]})
    record = decoded(raw, MIXED, avro=avro)
    assert (record.format, record.record_id, record.rows, record.raw) == ("avro", "r-9", 2, raw)
    np.testing.assert_array_equal(record.tensors["amount"], [[12.5], [np.nan]])  # NaN kept
    assert record.tensors["count"].dtype == np.int64 and record.tensors["count"].tolist() == [3, 4]
    assert record.tensors["country"].tolist() == [["US"], ["FR"]]
    assert record.fields == {"id": "r-9"}
    for spec in MIXED:
        conform(spec, record.tensors)  # what the runtime will accept, unchanged
    result = decode("InferenceResult", encode_result(record, OUTPUTS, META))
    assert result["record_id"] == "r-9" and result["key"] == b"user-7"
    assert (result["pipeline"], result["pipeline_version"]) == ("fraud", 3)
    assert result["workspace"] == "ws" and result["worker"] == "worker-1"
    assert result["models"] == MODELS and result["elapsed_us"] == 2500
    assert result["outputs"][1] == {"name": "probabilities", "dtype": "float64", "shape": [2, 2],
                                    "values": [0.25, 0.75, 0.5, 0.5], "strings": []}


def test_avro_one_value_inputs_serve_as_routing_fields() -> None:
    avro = AvroInput(MIXED, "p")
    raw = avro.encode({"amount": [[1.0]], "count": [7], "country": [["US"]]})
    record = decoded(raw, MIXED, avro=avro)
    assert record.record_id == "in:0:42"  # no id: topic:partition:offset
    assert record.fields == {"amount": 1.0, "count": 7, "country": "US"}


def test_json_record_is_one_row_and_keeps_its_scalar_fields() -> None:
    raw = b'{"id": "r1", "customer": "c9", "country": "US", "float_input": [0.5, 1, 2, 3]}'
    record = decoded(raw)
    assert (record.format, record.record_id, record.rows) == ("json", "r1", 1)
    assert record.tensors["float_input"].dtype == np.float32
    assert record.tensors["float_input"].tolist() == [[0.5, 1, 2, 3]]
    assert record.fields == {"id": "r1", "customer": "c9", "country": "US"}
    result = json.loads(encode_result(record, OUTPUTS, META))
    assert result == {"id": "r1", "key": "user-7", "workspace": "ws", "pipeline": "fraud",
                      "pipeline_version": 3, "models": MODELS,
                      "outputs": {"label": [1, 0], "probabilities": [[0.25, 0.75], [0.5, 0.5]]},
                      "elapsed_ms": 2.5, "worker": "worker-1"}


def test_json_record_may_hold_its_rows_and_an_int_id() -> None:
    record = decoded(b'{"id": 17, "float_input": [[1, 2, 3, 4], [5, 6, 7, 8]]}')
    assert record.rows == 2 and record.record_id == "17"
    no_key = InputRecord("r", None, "json", record.tensors, {}, b"")
    assert json.loads(encode_result(no_key, OUTPUTS, META))["key"] is None


def test_pandas_records_are_several_rows() -> None:
    pd = pytest.importorskip("pandas")
    frame = pd.DataFrame({"customer": ["a", "b", "c"], "amount": [1.5, 2.0, None],
                          "count": [1, 2, 3], "country": ["US", "FR", "DE"]})
    record = decoded(frame.to_json(orient="records").encode(), MIXED)
    assert record.rows == 3 and record.format == "json"
    np.testing.assert_array_equal(record.tensors["amount"], [[1.5], [2.0], [np.nan]])  # null
    assert record.tensors["count"].tolist() == [1, 2, 3]
    assert record.tensors["country"].tolist() == [["US"], ["FR"], ["DE"]]
    assert record.fields == {"customer": "a", "amount": 1.5, "count": 1, "country": "US"}


@pytest.mark.parametrize(("shape", "data"), [
    ([2, 4], [1, 2, 3, 4, 5, 6, 7, 8]),
    ([2, 4], [[1, 2, 3, 4], [5, 6, 7, 8]]),
    ([8], None),  # rejected below: a row of 8 is not a row of 4
])
def test_v2_flat_and_nested_data(shape: list[int], data: list | None) -> None:
    request = {"id": "v-1", "parameters": {"country": "US", "nested": {"x": 1}},
               "inputs": [{"name": "float_input", "shape": shape, "datatype": "FP32",
                           "data": data or list(range(8))},
                          {"name": "tag", "shape": [2], "datatype": "BYTES", "data": ["a", "b"]}]}
    specs = (FLOAT, TensorSpec("tag", STRING, (-1,)))
    if data is None:
        assert reason(json.dumps(request).encode(), specs) == (
            "v2 record: field 'float_input': expected float32 [-1, 4], got shape [1, 8]")
        return
    record = decoded(json.dumps(request).encode(), specs)
    assert (record.format, record.record_id, record.rows) == ("v2", "v-1", 2)
    assert record.tensors["float_input"].tolist() == [[1, 2, 3, 4], [5, 6, 7, 8]]
    assert record.tensors["tag"].tolist() == ["a", "b"]
    assert record.fields == {"country": "US", "id": "v-1"}
    response = json.loads(encode_result(record, {**OUTPUTS, "tag": np.array(["x", "y"])}, META))
    assert (response["id"], response["model_name"]) == ("v-1", "fraud")
    assert response["model_version"] == "3"
    assert response["outputs"] == [
        {"name": "label", "shape": [2], "datatype": "INT64", "data": [1, 0]},
        {"name": "probabilities", "shape": [2, 2], "datatype": "FP64",
         "data": [0.25, 0.75, 0.5, 0.5]},
        {"name": "tag", "shape": [2], "datatype": "BYTES", "data": ["x", "y"]}]
    assert response["parameters"] == {"key": "user-7", "workspace": "ws", "models": MODELS,
                                      "elapsed_ms": 2.5, "worker": "worker-1"}


def test_v2_one_row_without_the_batch_axis() -> None:
    record = decoded(v2("[4]", "INT64", "[1, 2, 3, 4]"))
    assert record.tensors["float_input"].shape == (1, 4) and record.record_id == "in:0:42"


@pytest.mark.parametrize(("raw", "expected"), [
    (b"\x00\xffnot a record", "neither JSON nor Avro single-object encoding"),
    (b"", "empty message value"),
    (b"42", "json record: expected an object of model inputs"),
    (b"[]", "json record: expected an object of model inputs"),
    (b'{"id": "r"}', "json record: field 'float_input' (float32 [-1, 4]) is missing; "
                     "the record has ['id']"),
    (b'[{"float_input": [1,2,3,4]}, {"x": 1}]', "is missing from row 1; the record has ['x']"),
    (b'{"float_input": [1, 2, 3]}',
     "json record: field 'float_input': expected float32 [-1, 4], got shape [1, 3]"),
    (b'{"float_input": [1.0, "abc", 3, 4]}', "expected float32 [-1, 4], got text (e.g. 'abc')"),
    (b'{"float_input": [1.0, [2], 3, 4]}', "got ragged or too deeply nested lists"),
    (b'{"float_input": [1.0, {"a": 1}, 3, 4]}', "got objects (e.g. {'a': 1})"),
    (b'{"float_input": [true, false, 1e39, 4]}', "numbers beyond the range of float32"),
    (b'{"float_input": [null, 2, 1e39, 4]}', "numbers beyond the range of float32"),
    (b'{"float_input": ' + b"[" * 500 + b"]" * 500 + b"}", "ragged or too deeply nested"),
    (v2("[1, 4]", "FP99", "[1,2,3,4]"),
     "v2 record: inputs[0] needs a name, a shape"),
    (v2("[2, 4]", "FP32", "[1,2,3,4]"),
     "v2 record: field 'float_input': expected float32 [-1, 4], got shape [2, 4] with 4 values"),
    (v2("[1, 4]", "FP64", '[1,2,"x",4]'),
     "got text (e.g. 'x')"),
    (v2("[1, 4]", "FP32", "[1,2,3,4]", times=2),
     "input 'float_input' is given twice"),
])
def test_bad_records_say_what_is_wrong(raw: bytes, expected: str) -> None:
    assert expected in reason(raw)


@pytest.mark.parametrize(("raw", "expected"), [
    (b'{"count": [1.5], "amount": 1, "country": "US"}',
     "field 'count': expected int64 [-1], got non-integer numbers (e.g. 1.5)"),
    (b'{"count": [1, null], "amount": 1, "country": "US"}', "got null (e.g. None)"),
    (b'{"count": [NaN], "amount": 1, "country": "US"}', "got non-integer numbers (e.g. nan)"),
    (b'{"count": [1e30], "amount": 1, "country": "US"}', "numbers beyond the range of int64"),
    (b'{"count": [%d], "amount": 1, "country": "US"}' % 2**70, "beyond the range of int64"),
    (b'{"count": [1.5, %d], "amount": 1, "country": "US"}' % 2**70, "non-integer numbers"),
    (b'{"count": 2, "amount": 1, "country": 7}', "field 'country': expected string [-1, 1], "
                                                  "got integers (e.g. 7)"),
    (b'{"count": [1, 2], "amount": 1, "country": "US"}', "differ in their number of rows"),
    (b'{"count": [1, 2], "amount": [[1], [2]], "country": [["US"], [0]]}',
     "field 'country': expected string [-1, 1], got integers (e.g. 0)"),  # not quietly "0"
])
def test_bad_values_for_int_and_string_inputs(raw: bytes, expected: str) -> None:
    assert expected in reason(raw, MIXED)


def test_integral_floats_fill_int_inputs_and_scalars_fill_single_value_rows() -> None:
    record = decoded(b'{"count": 2.0, "amount": 1, "country": "US"}', MIXED)
    assert record.tensors["count"].tolist() == [2] and record.tensors["count"].dtype == np.int64
    assert record.tensors["amount"].tolist() == [[1.0]]


def test_floats_may_be_nan_or_infinite() -> None:
    record = decoded(b'{"float_input": [NaN, Infinity, -Infinity, null]}')
    values = record.tensors["float_input"][0]
    assert math.isnan(values[0]) and values[1] == math.inf and values[2] == -math.inf
    assert math.isnan(values[3])
    out = json.loads(encode_result(record, {"y": record.tensors["float_input"]}, META))
    assert out["outputs"]["y"] == [[None, None, None, None]]  # standard JSON has no NaN


def test_bad_avro_records() -> None:
    avro = AvroInput(SPECS, "inferstream.input.ws.fraud")
    raw = avro.encode({"float_input": [[1, 2, 3, 4]]})
    assert "truncated" in reason(raw[:-3], avro=avro)
    assert "1 bytes after it" in reason(raw + b"\x00", avro=avro)
    other = AvroInput(MIXED, "inferstream.input.ws.fraud")
    wrong_schema = other.encode({"amount": [[1.0]], "count": [1], "country": [["US"]]})
    assert f"input schema inferstream.input.ws.fraud is {avro.fingerprint.hex()}; fetch" in (
        reason(wrong_schema, avro=avro))
    assert "no Avro input schema" in reason(raw)
    assert "expected float32 [-1, 4], got shape [1, 3]" in reason(
        avro.encode({"float_input": [[1, 2, 3]]}), avro=avro)
    with pytest.raises(InferstreamError, match="cannot encode"):
        avro.encode({"float_input": [["x"]]})


def test_records_over_the_size_limit_are_refused_before_parsing() -> None:
    raw = b'{"float_input": [1, 2, 3, 4], "pad": "' + b"x" * 200 + b'"}'
    assert f"is {len(raw)} bytes, over the limit of 100 bytes" in reason(raw, max_bytes=100)
    assert decoded(raw, max_bytes=len(raw)).rows == 1


@pytest.mark.parametrize("raw", [
    b"[" * 100_000 + b"]" * 100_000,
    b'{"a": ' * 100_000 + b"1" + b"}" * 100_000,
    b"[NaN, " + b"[" * 100_000 + b"]" * 100_001,  # NaN sends it to the stdlib parser
])
def test_deeply_nested_json_is_a_bad_record_not_a_crash(raw: bytes) -> None:
    assert "neither JSON nor Avro" in reason(raw)


def test_dead_letter_keeps_the_original_bytes_and_the_reason() -> None:
    raw = b'{"float_input": [1, 2, 3]}'
    with pytest.raises(BadRecord) as caught:
        decoded(raw)
    letter = decode("DeadLetter", dead_letter(raw, b"k", caught.value, "fraud", 3, "t.in", 2, 99,
                                              workspace="ws", time_us=1_000_000))
    assert letter["original"] == raw and letter["key"] == b"k"
    assert letter["reason"] == str(caught.value) and "got shape [1, 3]" in letter["reason"]
    assert (letter["pipeline"], letter["pipeline_version"]) == ("fraud", 3)
    assert letter["workspace"] == "ws" and letter["time"].year == 1970
    assert (letter["topic"], letter["partition"], letter["offset"]) == ("t.in", 2, 99)
    tombstone = decode("DeadLetter", dead_letter(None, None, "empty", "fraud", None, "t", 0, 1))
    assert tombstone["original"] == b"" and tombstone["pipeline_version"] is None


def test_tensor_records_flatten_row_major() -> None:
    tensors = to_tensors({"x": np.array([[1, 2], [3, 4]], dtype=np.int32),
                          "ok": np.array([True, False]), "label": np.array([["a"], ["b"]])})
    assert tensors == [
        {"name": "x", "dtype": "int32", "shape": [2, 2], "values": [1.0, 2.0, 3.0, 4.0],
         "strings": []},
        {"name": "ok", "dtype": "bool", "shape": [2], "values": [1.0, 0.0], "strings": []},
        {"name": "label", "dtype": "string", "shape": [2, 1], "values": [], "strings": ["a", "b"]},
    ]


AVRO = AvroInput(MIXED, "inferstream.input.ws.fuzz")
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
        st.sampled_from(["amount", "count", "country", "id", "inputs", "name", "shape", "data",
                         "datatype"]) | st.text(max_size=3), inner, max_size=5),
    max_leaves=20)


FIELD_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.sampled_from(["US", "1.5", ""]),
    lambda inner: st.lists(inner, max_size=3), max_leaves=6)
RECORDS = st.fixed_dictionaries({  # mostly well-formed, so that both outcomes are exercised
    "amount": st.floats() | st.none() | st.lists(st.floats(), min_size=1, max_size=2)
    | FIELD_VALUES,
    "count": st.integers(-(2**70), 2**70) | st.lists(st.integers(), max_size=2) | FIELD_VALUES,
    "country": st.text(max_size=3) | st.lists(st.text(max_size=3), max_size=2) | FIELD_VALUES,
}, optional={"id": JSON_VALUES})
V2_REQUESTS = st.lists(st.fixed_dictionaries({
    "name": st.sampled_from(["amount", "count", "country"]),
    "shape": st.lists(st.integers(-1, 3), max_size=3),
    "datatype": st.sampled_from(["FP32", "FP64", "INT64", "INT8", "BOOL", "BYTES", "FP8"]),
    "data": FIELD_VALUES}), max_size=4).map(lambda inputs: {"inputs": inputs})
AVRO_RECORDS = st.builds(
    lambda rows, cut, flip: _mutate(AVRO.encode(
        {"amount": [[a] for a, _, _ in rows], "count": [c for _, c, _ in rows],
         "country": [[t] for _, _, t in rows]}), cut, flip),
    st.lists(st.tuples(st.floats(), st.integers(-(2**63), 2**63 - 1), st.text(max_size=3)),
             min_size=1, max_size=3),
    st.integers(0, 40), st.integers(0, 255))


def _mutate(raw: bytes, cut: int, flip: int) -> bytes:
    """A valid Avro record, cut short or with one byte of its body changed."""
    if cut % 3 == 0:
        return raw[: 10 + cut]
    at = 10 + cut % (len(raw) - 10)
    return raw[:at] + bytes([flip]) + raw[at + 1:]


@settings(max_examples=600, deadline=None)
@given(st.one_of(
    st.binary(max_size=200),
    st.binary(max_size=200).map(lambda body: MARKER + AVRO.fingerprint + body),
    AVRO_RECORDS,
    JSON_VALUES.map(lambda v: json.dumps(v).encode()),
    RECORDS.map(lambda v: json.dumps(v).encode()),
    st.lists(RECORDS, min_size=1, max_size=3).map(lambda v: json.dumps(v).encode()),
    V2_REQUESTS.map(lambda v: json.dumps(v).encode()),
))
def test_any_bytes_give_a_valid_record_or_a_bad_record(raw: bytes) -> None:
    try:
        record = decode_record(raw, None, MIXED, "d", avro=AVRO)
    except BadRecord as exc:
        assert str(exc)
        return
    assert record.rows >= 1 and set(record.tensors) == {spec.name for spec in MIXED}
    for spec in MIXED:
        assert conform(spec, record.tensors) is record.tensors[spec.name]  # no cast left to do
