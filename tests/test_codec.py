"""The Avro codec: round trips, errors that say what is wrong, and schema evolution (no Kafka)."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import fastavro
import pytest
from registry_events import T0, every_action

import schemas.codec as codec_module
from control.registry.events import EVENT_TYPES, ControlEvent, ControlStatus
from schemas.codec import MARKER, codec, decode, encode, schema_fingerprint, schema_names
from schemas.errors import DecodeError, InferstreamError

AVRO_DIR = codec_module.AVRO_DIR
HISTORY_DIR = codec_module.HISTORY_DIR
T_MICROS = datetime(2024, 5, 1, 12, 0, 0, 123456, tzinfo=UTC)


def tensor(name: str, values: list[float], shape: list[int]) -> dict:
    return {"name": name, "dtype": "float32", "shape": shape, "values": values, "strings": []}


def inference_result(**fields: object) -> dict:
    return {
        "record_id": "r-1", "key": b"user-7", "workspace": "ws", "pipeline": "fraud",
        "pipeline_version": 2,
        "models": [
            {"step": 1, "model": "scaler", "version": 1, "role": "model"},
            {"step": 2, "model": "clf", "version": 3, "role": "champion"},
        ],
        "outputs": [
            tensor("score", [0.25, 0.75], [2, 1]),
            {"name": "label", "dtype": "string", "shape": [2], "values": [], "strings": ["a", "b"]},
        ],
        "elapsed_us": 1234, "time": T_MICROS, "worker": "worker-1", "anomalies": ["high-risk"],
    } | fields


def inference_log(**fields: object) -> dict:
    return {
        "time": T_MICROS, "record_id": "r-1", "workspace": "ws", "pipeline": "fraud",
        "pipeline_version": 2, "step": 1, "model": "clf", "model_version": 3, "shadow": True,
        "inputs": [tensor("x", [1.0, 2.0, 3.0, 4.0], [1, 4])],
        "outputs": [tensor("score", [0.5], [1, 1])],
        "elapsed_us": 99, "worker": "worker-1", "error": None, "anomalies": [], "replay": "",
    } | fields


def artifact_chunk(**fields: object) -> dict:
    return {
        "sha256": "ab" * 32, "index": 2, "count": 3, "size": 1_000_000, "data": b"\x00\xff" * 8,
    } | fields


def clear_codec_caches() -> None:
    codec_module.codec.cache_clear()
    codec_module.writer_schemas.cache_clear()


@pytest.fixture
def schema_dirs(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    """Lets a test point the codec at other schema folders; leaves no cached codec behind."""
    clear_codec_caches()
    yield monkeypatch
    clear_codec_caches()


# -- round trips -----------------------------------------------------------------------------


@pytest.mark.parametrize("action", every_action(), ids=lambda a: a[0])
def test_control_event_round_trips_with_every_payload_type(action: tuple[str, dict]) -> None:
    type_, payload = action
    written = ControlEvent(type_, payload, actor="ann", workspace="ws", event_id="e-1", time=T0)

    data = written.to_bytes()

    assert data[:2] == MARKER and data[2:10] == codec("ControlEvent").fingerprint
    assert ControlEvent.from_bytes(data, offset=41) == replace(written, offset=41)


def test_every_payload_type_is_covered() -> None:
    assert sorted(t for t, _ in every_action()) == sorted(EVENT_TYPES)


def test_control_event_without_workspace_round_trips() -> None:
    written = ControlEvent("CreateWorkspace", {"name": "ws"}, actor="ann", time=T0)

    assert ControlEvent.from_bytes(written.to_bytes()).workspace is None


@pytest.mark.parametrize(
    "status",
    [
        ControlStatus("e-1", 7, "Deploy", "ann", "ws", True, result={"version": "2"}, time=T0),
        ControlStatus(
            "e-2", 8, "CreateUser", "bob", None, False, reason="user 'x' exists", time=T0
        ),
    ],
    ids=["accepted", "rejected"],
)
def test_control_status_round_trips(status: ControlStatus) -> None:
    assert ControlStatus.from_bytes(status.to_bytes()) == status


@pytest.mark.parametrize(
    ("name", "record"),
    [
        ("ArtifactChunk", artifact_chunk()),
        ("InferenceResult", inference_result()),
        ("InferenceResult", inference_result(key=None)),
        ("InferenceLog", inference_log()),
        ("InferenceLog", inference_log(error="input 'x' is missing", outputs=[])),
    ],
    ids=["ArtifactChunk", "InferenceResult", "InferenceResult-no-key", "InferenceLog",
         "InferenceLog-error"],
)
def test_data_records_round_trip(name: str, record: dict) -> None:
    assert decode(name, encode(name, record)) == record


def test_encode_names_the_schema_and_the_missing_field() -> None:
    record = artifact_chunk()
    del record["size"]

    with pytest.raises(InferstreamError, match=r"(?s)cannot encode ArtifactChunk.*size"):
        encode("ArtifactChunk", record)


@pytest.mark.parametrize("index", [1.5, 2**40])
def test_encode_refuses_a_value_that_does_not_fit_its_field(index: float) -> None:
    with pytest.raises(InferstreamError, match="index"):
        encode("ArtifactChunk", artifact_chunk() | {"index": index})


def test_unknown_schema_name_lists_the_known_ones() -> None:
    with pytest.raises(InferstreamError, match=r"no schema named 'Nope'; known: .*ControlEvent"):
        codec("Nope")


# -- bytes that are not a record -------------------------------------------------------------


def _event_bytes() -> bytes:
    return ControlEvent("CreateWorkspace", {"name": "ws"}, actor="ann", time=T0).to_bytes()


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda good: b"", r"not an inferstream ControlEvent: 0 bytes.*marker C3 01"),
        (lambda good: b"hello, this is json", r"not an inferstream ControlEvent.*b'hello, thi'"),
        (lambda good: good[:6], r"not an inferstream ControlEvent: 6 bytes"),
        (lambda good: b"\x00\x01" + good[2:], r"starting b'\\x00\\x01.*marker C3 01"),
        (lambda good: good[:-3], r"corrupt ControlEvent.*EOFError"),
        (lambda good: good + b"\x00\x02", r"corrupt ControlEvent: 2 trailing bytes"),
        (
            lambda good: MARKER + bytes.fromhex("0123456789abcdef") + good[10:],
            r"unknown writer schema 0123456789abcdef.*`python -m schemas freeze`",
        ),
        (lambda good: good.decode("latin-1"), r"expected bytes for a ControlEvent, got str"),
    ],
    ids=["empty", "garbage", "truncated-header", "wrong-marker", "truncated-body", "trailing",
         "unknown-fingerprint", "not-bytes"],
)
def test_decode_says_what_is_wrong(make: Callable[[bytes], bytes], message: str) -> None:
    with pytest.raises(DecodeError, match=message):
        ControlEvent.from_bytes(make(_event_bytes()))


def test_every_truncation_of_a_record_is_a_decode_error() -> None:
    good = encode("ArtifactChunk", artifact_chunk())
    for end in range(len(good)):
        with pytest.raises(DecodeError):
            decode("ArtifactChunk", good[:end])


def test_decode_of_another_record_type_names_both_types() -> None:
    status = ControlStatus("e-1", 1, "Deploy", "ann", "ws", True, time=T0).to_bytes()

    with pytest.raises(DecodeError) as caught:
        ControlEvent.from_bytes(status)

    assert "ControlStatus" in str(caught.value)
    assert len(str(caught.value)) < 300, str(caught.value)[:300]


# -- one parse per schema --------------------------------------------------------------------


def test_a_codec_is_parsed_once_and_reused() -> None:
    assert codec("ControlEvent") is codec("ControlEvent")
    assert codec_module.writer_schemas() is codec_module.writer_schemas()


def test_each_schema_file_is_parsed_once(schema_dirs: pytest.MonkeyPatch) -> None:
    parsed: list[str] = []

    def counting_load_schema(path: str, *args: object, **kwargs: object) -> dict:
        parsed.append(Path(path).stem)
        return fastavro.schema.load_schema(path, *args, **kwargs)

    schema_dirs.setattr(codec_module, "load_schema", counting_load_schema)
    for _ in range(3):
        ControlEvent.from_bytes(_event_bytes())

    assert parsed.count("inferstream.control.ControlEvent") == 1, parsed


# -- frozen history --------------------------------------------------------------------------


def test_every_current_schema_is_frozen_in_history() -> None:
    missing = []
    for path in sorted(AVRO_DIR.glob("*.avsc")):
        current = codec(path.stem)
        if not (HISTORY_DIR / f"{path.stem}.{current.fingerprint.hex()}.avsc").exists():
            missing.append(path.name)
    assert not missing, (
        f"schemas changed but not frozen: {missing}. Run `python -m schemas freeze` and commit "
        "the new files in schemas/history/, or records written now will not decode after the "
        "next change"
    )


def test_history_file_names_match_their_content() -> None:
    for path in sorted(HISTORY_DIR.glob("*.avsc")):
        schema = fastavro.parse_schema(json.loads(path.read_text()), _write_hint=False)
        name, _, fingerprint = path.stem.rpartition(".")
        assert schema["name"] == name, f"{path.name} holds {schema['name']}"
        assert schema_fingerprint(schema).hex() == fingerprint, (
            f"{path.name} was edited after it was frozen; history files are immutable"
        )


def test_freeze_writes_each_schema_version_once(
    schema_dirs: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    schema_dirs.setattr(codec_module, "HISTORY_DIR", tmp_path)

    first = codec_module.freeze()

    assert sorted(p.stem.split(".")[2] for p in first) == schema_names()
    assert codec_module.freeze() == []


# -- schema evolution ------------------------------------------------------------------------


def write_with_old_schema(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, record: str, drop: list[str],
    top: str, write: Callable[[], bytes],
) -> bytes:
    """Bytes written by a release whose `record` schema lacked the `drop` fields.

    That release froze its schemas (as `python -m schemas freeze` does) into a history folder
    that the current codec then reads, as it would after an upgrade.
    """
    old_avro = tmp_path / "old-avro"
    shutil.copytree(AVRO_DIR, old_avro)
    (path,) = old_avro.glob(f"*.{record}.avsc")
    schema = json.loads(path.read_text())
    fields = [f for f in schema["fields"] if f["name"] not in drop]
    assert len(fields) == len(schema["fields"]) - len(drop), f"{record} has no field in {drop}"
    path.write_text(json.dumps(schema | {"fields": fields}))

    monkeypatch.setattr(codec_module, "AVRO_DIR", old_avro)
    monkeypatch.setattr(codec_module, "HISTORY_DIR", tmp_path / "history")
    clear_codec_caches()
    assert codec_module.freeze(), "the old release froze nothing"
    data = write()
    old_fingerprint = codec(top).fingerprint

    monkeypatch.setattr(codec_module, "AVRO_DIR", AVRO_DIR)  # the upgrade: the schema grew
    clear_codec_caches()
    assert data[2:10] == old_fingerprint != codec(top).fingerprint
    return data


def _old_create_user() -> bytes:
    return ControlEvent(
        "CreateUser", {"name": "ann", "email": None}, actor="ann", event_id="e-1", time=T0
    ).to_bytes()


def test_old_control_event_decodes_with_the_new_field_at_its_default(
    schema_dirs: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    data = write_with_old_schema(
        schema_dirs, tmp_path, "CreateUser", ["admin"], "ControlEvent", _old_create_user
    )

    event = ControlEvent.from_bytes(data)

    assert (event.type, event.payload) == (
        "CreateUser", {"name": "ann", "email": None, "admin": False, "public_key": None}
    )
    assert (event.actor, event.event_id) == ("ann", "e-1")


def test_old_deploy_gets_the_default_batch_settings(
    schema_dirs: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    def old_deploy() -> bytes:
        payload = {"pipeline": "fraud", "version": 2}
        return ControlEvent("Deploy", payload, actor="ann", workspace="ws", time=T0).to_bytes()

    data = write_with_old_schema(
        schema_dirs, tmp_path, "Deploy", ["batch_size", "batch_wait_ms"], "ControlEvent",
        old_deploy,
    )

    assert ControlEvent.from_bytes(data).payload == {
        "pipeline": "fraud", "version": 2, "batch_size": 64, "batch_wait_ms": 20, "rules": 1,
    }


@pytest.mark.parametrize(
    ("record", "drop", "top", "old", "grown"),
    [
        ("InferenceLog", "shadow", "InferenceLog", inference_log(), {"shadow": False}),
        ("ControlStatus", "result", "ControlStatus",
         {"event_id": "e", "offset": 1, "type": "Deploy", "actor": "ann", "workspace": None,
          "status": "accepted", "reason": None, "time": T0},
         {"result": {}}),
    ],
    ids=["InferenceLog.shadow", "ControlStatus.result"],
)
def test_old_data_record_decodes_with_the_new_field_at_its_default(
    schema_dirs: pytest.MonkeyPatch, tmp_path: Path, record: str, drop: str, top: str,
    old: dict, grown: dict,
) -> None:
    old = {k: v for k, v in old.items() if k != drop}
    data = write_with_old_schema(
        schema_dirs, tmp_path, record, [drop], top, lambda: encode(top, old)
    )

    decoded = decode(top, data)

    assert {k: v for k, v in decoded.items() if k != "time"} == (
        {k: v for k, v in old.items() if k != "time"} | grown
    )


@pytest.mark.parametrize("top", ["ControlEvent", "InferenceLog"])
def test_old_record_keeps_its_timestamp_as_a_datetime(
    schema_dirs: pytest.MonkeyPatch, tmp_path: Path, top: str
) -> None:
    if top == "ControlEvent":
        data = write_with_old_schema(
            schema_dirs, tmp_path, "CreateUser", ["admin"], top, _old_create_user
        )
        assert ControlEvent.from_bytes(data).time == T0
    else:
        old = {k: v for k, v in inference_log().items() if k != "shadow"}
        data = write_with_old_schema(
            schema_dirs, tmp_path, "InferenceLog", ["shadow"], top, lambda: encode(top, old)
        )
        assert decode(top, data)["time"] == T_MICROS


def test_old_record_without_its_frozen_schema_says_how_to_fix_it(
    schema_dirs: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    data = write_with_old_schema(
        schema_dirs, tmp_path, "CreateUser", ["admin"], "ControlEvent", _old_create_user
    )
    schema_dirs.setattr(codec_module, "HISTORY_DIR", tmp_path / "lost-history")
    clear_codec_caches()

    with pytest.raises(DecodeError, match=rf"unknown writer schema {data[2:10].hex()}.*freeze"):
        ControlEvent.from_bytes(data)
