"""Ground truth: label records of the pipelines' labels topics, and where ClickHouse keeps them.

A pipeline's labels topic is `<namespace>.<workspace>.<pipeline>.labels`. Each message is
one label, keyed by the record id of the inference it labels, as JSON
`{"id": "r-17", "label": 1, "time": "2024-03-01T12:00:00Z"}` or as an Avro
inferstream.data.Label (single-object encoding, like every inferstream record).

The label is a number: a class index (0/1 for a binary classifier, true/false read as 1/0)
or a regression target. A text class such as "cat" is refused with a reason (map it to the
index the model predicts): a number is what the model's outputs hold, so labels and
predictions compare without a mapping kept anywhere. `time` is when the label became known
(ISO-8601 with a zone, or epoch milliseconds as Kafka timestamps are); without it, the
message's Kafka timestamp. Of two labels of one record, the one with the later time wins.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from schemas.codec import MARKER, codec
from schemas.errors import DecodeError, InferstreamError
from sinks.storage import Storage

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
MAX_LABEL_BYTES = 64 * 1024  # a label is an id, a number and a time: more is a mistake
_ORIGINAL_KEPT = 64 * 1024  # bytes of a refused message the dead letter keeps
_NAME = r"[a-z0-9][a-z0-9_-]{0,62}"  # workspace and pipeline names (registry.rules.NAME)

# Labels may come days late and in any order: the one with the latest `time` wins (a
# ReplacingMergeTree on time, read with FINAL; on equal times the last stored). A replayed
# batch is not written twice (its offsets make the dedup token) and a re-sent label collapses.
LABELS = """
CREATE TABLE IF NOT EXISTS labels
(
    workspace LowCardinality(String),
    pipeline LowCardinality(String),
    record_id String,
    label Float64,
    time DateTime64(6, 'UTC'),
    kafka_topic LowCardinality(String),
    kafka_partition Int32,
    kafka_offset Int64
)
ENGINE = ReplacingMergeTree(time)
ORDER BY (workspace, pipeline, record_id)
SETTINGS non_replicated_deduplication_window = 10000
"""

# Every inference log that has a label, with it: what performance assays and analysts read.
# Migration 7 keeps it to live traffic (LABELLED_LIVE_LOGS_VIEW).
LABELLED_LOGS_VIEW = """
CREATE OR REPLACE VIEW labelled_logs AS
SELECT logs.time AS time, logs.record_id AS record_id, logs.workspace AS workspace,
       logs.pipeline AS pipeline, logs.pipeline_version AS pipeline_version, logs.step AS step,
       logs.model AS model, logs.model_version AS model_version, logs.shadow AS shadow,
       logs.inputs AS inputs, logs.outputs AS outputs, truth.label AS label,
       truth.time AS label_time
FROM inference_logs AS logs
INNER JOIN (SELECT workspace, pipeline, record_id, label, time FROM labels FINAL) AS truth
    ON logs.workspace = truth.workspace AND logs.pipeline = truth.pipeline
   AND logs.record_id = truth.record_id
"""
LABELLED_LIVE_LOGS_VIEW = LABELLED_LOGS_VIEW + "WHERE logs.replay = ''\n"


class BadLabel(InferstreamError):
    """A label message that cannot be stored; its reason goes to the dead-letter topic."""


@dataclass(frozen=True, slots=True)
class Label:
    """One decoded label."""

    record_id: str
    label: float
    time: datetime


def labels_topic_pattern(namespace: str) -> str:
    """The librdkafka regex subscription that matches every pipeline's labels topic."""
    return rf"^{re.escape(namespace)}\.{_NAME}\.{_NAME}\.labels$"


def pipeline_of_topic(namespace: str, topic: str) -> tuple[str, str]:
    """(workspace, pipeline) of a labels topic; ValueError for any other topic."""
    match = re.fullmatch(rf"{re.escape(namespace)}\.({_NAME})\.({_NAME})\.labels", topic)
    if match is None:
        raise ValueError(f"{topic!r} is not a labels topic of namespace {namespace!r}")
    return match[1], match[2]


def decode_label(raw: bytes | None, key: bytes | None, kafka_ms: int | None) -> Label:
    """The label in one message; BadLabel says what is wrong and how to send it instead."""
    if not raw:
        raise BadLabel("empty message value (a tombstone?); send one JSON or Avro label")
    if len(raw) > MAX_LABEL_BYTES:
        raise BadLabel(f"label message is {len(raw)} bytes, over {MAX_LABEL_BYTES}; send "
                       '{"id": ..., "label": <number>, "time": ...} alone')
    raw = bytes(raw)
    if raw[:2] == MARKER:
        try:
            doc: Any = codec("Label").decode(raw)
        except DecodeError as exc:
            raise BadLabel(f"not an inferstream.data.Label: {exc}") from None
    else:
        try:
            doc = json.loads(raw)
        except (ValueError, RecursionError) as exc:
            raise BadLabel(f"neither JSON nor an Avro Label (C3 01 + fingerprint): "
                           f"{str(exc)[:200]}; it starts {raw[:24]!r}") from None
        if not isinstance(doc, dict):
            raise BadLabel(f'expected a JSON object {{"id", "label", "time"}}, got '
                           f"{type(doc).__name__} {raw[:40]!r}")
    return Label(_record_id(doc.get("id"), key), _number(doc.get("label", _MISSING)),
                 _time(doc.get("time"), kafka_ms))


_MISSING = object()


def _record_id(value: Any, key: bytes | None) -> str:
    if value is None:  # the key is the record id, so the value may leave it out
        if not key:
            raise BadLabel('no record id: give "id" in the label, or the record id as the key')
        try:
            return key.decode()
        except UnicodeDecodeError:
            raise BadLabel(f"the key {key[:40]!r} is not UTF-8 text; key labels by record id"
                           ) from None
    if isinstance(value, bool) or not isinstance(value, str | int) or value == "":
        raise BadLabel(f"id {str(value)[:40]!r} must be the record id as text (or an integer)")
    return str(value)


def _number(value: Any) -> float:
    if value is _MISSING or value is None:
        raise BadLabel('no "label": give the class index or the regression target as a number')
    if isinstance(value, str):
        raise BadLabel(f"label {value[:40]!r} is text; labels are numbers: send the class "
                       "index the model predicts (0, 1, ...) or the regression target")
    if isinstance(value, bool):
        return float(value)
    if not isinstance(value, int | float) or not math.isfinite(float(value)):
        raise BadLabel(f"label {str(value)[:40]} is not a finite number")
    return float(value)


def _time(value: Any, kafka_ms: int | None) -> datetime:
    if value is None:
        if kafka_ms is None or kafka_ms < 0:
            return datetime.now(UTC)
        return EPOCH + timedelta(milliseconds=kafka_ms)
    if isinstance(value, datetime):  # Avro's timestamp-micros
        return value.astimezone(UTC)
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        try:
            return EPOCH + timedelta(milliseconds=value)
        except OverflowError:
            pass
    elif isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value)
        except ValueError:
            moment = None
        if moment is not None and moment.utcoffset() is not None:
            return moment.astimezone(UTC)
    raise BadLabel(f"time {str(value)[:40]!r} is neither ISO-8601 with a zone (e.g. "
                   "2024-03-01T12:00:00Z) nor epoch milliseconds; or leave it out")


def label_row(label: Label, workspace: str, pipeline: str, topic: str, partition: int,
              offset: int) -> dict[str, Any]:
    """A row of the `labels` table."""
    return {"workspace": workspace, "pipeline": pipeline, "record_id": label.record_id,
            "label": label.label, "time": label.time, "kafka_topic": topic,
            "kafka_partition": partition, "kafka_offset": offset}


def dead_letter(reason: str, workspace: str, pipeline: str, raw: bytes | None,
                key: bytes | None, topic: str, partition: int, offset: int) -> bytes:
    """An Avro DeadLetter of a refused label, as the pipeline's refused inputs get."""
    original = bytes(raw or b"")
    if len(original) > _ORIGINAL_KEPT:
        reason += f" (this letter keeps the first {_ORIGINAL_KEPT} of its {len(original)} bytes)"
        original = original[:_ORIGINAL_KEPT]
    return codec("DeadLetter").encode({
        "time": datetime.now(UTC), "reason": f"label refused: {reason}", "workspace": workspace,
        "pipeline": pipeline, "pipeline_version": None, "topic": topic,
        "partition": partition, "offset": offset,
        "key": None if key is None else bytes(key[:_ORIGINAL_KEPT]), "original": original})


def labelled_logs(storage: Storage, workspace: str, pipeline: str, limit: int,
                  timeout_s: float | None = None) -> list[dict[str, Any]]:
    """The newest `limit` labelled inference logs of a pipeline (the `labelled_logs` view),
    oldest first: time, record id, step, model and version, outputs, label and label time."""
    rows = storage.query(
        "SELECT time, record_id, pipeline_version, step, model, model_version, shadow, "
        "outputs, label, label_time FROM labelled_logs "
        "WHERE workspace = {workspace:String} AND pipeline = {pipeline:String} "
        "ORDER BY time DESC, record_id, step LIMIT {limit:UInt64}",
        {"workspace": workspace, "pipeline": pipeline, "limit": limit}, timeout_s)
    return rows[::-1]


def labels_stored(storage: Storage, workspace: str, pipeline: str) -> int:
    """Label rows stored for a pipeline so far (before merges collapse re-sent ones): when it
    has not changed, no label arrived, and re-scoring a performance assay would find nothing."""
    rows = storage.query("SELECT count() AS n FROM labels WHERE workspace = {ws:String} "
                         "AND pipeline = {p:String}", {"ws": workspace, "p": pipeline})
    return int(rows[0]["n"]) if rows else 0
