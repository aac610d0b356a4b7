"""The project's ClickHouse tables: numbered migrations, applied once, and log rows.

Every statement of a migration must be safe to run twice (`IF NOT EXISTS`): two processes
may migrate at once on a server, or a process may stop between a statement and the
`schema_version` row that records it.

Inference logs live in two tables behind one view, `inference_logs` (a row per log, FINAL
applied): what readers and analysts query.
- `inference_log_blocks`: a row per InferenceLogBlock message, i.e. per predict call of a
  micro-batch, its record ids and each record's tensors in arrays; nearly every log is here.
  A row per log cost ClickHouse 4 µs of CPU a log to insert (eight maps a row, sorted by
  record id), a row per block 1.6. Keyed by the message's Kafka position.
- `inference_log_rows`: a row per log, for the rest (text tensors, errors, records of
  uneven rows, older workers), keyed by the inference (record id, step, model, shadow
  within a pipeline).
Idempotent writes: both are ReplacingMergeTrees, so a row written twice collapses, and the
view reads them with FINAL, so it shows it once before the background merge. A replayed
batch with the same `insert_deduplication_token` is not even written twice
(`non_replicated_deduplication_window`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from itertools import repeat
from typing import Any, NamedTuple

from sinks.labels import LABELLED_LIVE_LOGS_VIEW, LABELLED_LOGS_VIEW, LABELS
from sinks.runs import TASK_RUN_LOGS, TASK_RUNS
from sinks.storage import Storage

SCHEMA_VERSION = """
CREATE TABLE IF NOT EXISTS schema_version
(
    version UInt32,
    name String,
    applied_at DateTime64(6, 'UTC')
)
ENGINE = ReplacingMergeTree
ORDER BY version
"""

# inputs/outputs hold each tensor flattened row-major, so `outputs['score'][1]` (1-based)
# is one element of one field; shapes, dtypes and string tensors sit beside them. Migration 1
# made it as `inference_logs`; migration 4 renames it, and `inference_logs` is the view.
INFERENCE_LOGS = """
CREATE TABLE IF NOT EXISTS inference_logs
(
    time DateTime64(6, 'UTC') CODEC(Delta, ZSTD),
    record_id String,
    workspace LowCardinality(String),
    pipeline LowCardinality(String),
    pipeline_version UInt32,
    step UInt16,
    model LowCardinality(String),
    model_version UInt32,
    shadow Bool,
    inputs Map(LowCardinality(String), Array(Float64)),
    input_shapes Map(LowCardinality(String), Array(Int64)),
    input_dtypes Map(LowCardinality(String), LowCardinality(String)),
    input_strings Map(LowCardinality(String), Array(String)),
    outputs Map(LowCardinality(String), Array(Float64)),
    output_shapes Map(LowCardinality(String), Array(Int64)),
    output_dtypes Map(LowCardinality(String), LowCardinality(String)),
    output_strings Map(LowCardinality(String), Array(String)),
    elapsed_us Int64,
    worker LowCardinality(String),
    error Nullable(String),
    kafka_topic LowCardinality(String),
    kafka_partition Int32,
    kafka_offset Int64,
    INDEX time_minmax time TYPE minmax GRANULARITY 1
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(time)
ORDER BY (workspace, pipeline, model, record_id, step, shadow)
SETTINGS non_replicated_deduplication_window = 10000
"""

LOG_ROWS = "inference_log_rows"
LOG_BLOCKS = "inference_log_blocks"

# A row per InferenceLogBlock: what the block's logs share, and per log (record) its id and,
# for inputs and outputs, its values of each tensor (record-major: [log][tensor][value]) as
# Float32 when that holds every value exactly (float32 models, labels, small integers), else
# as Float64 (the other column empty). Float32 halves what is written and merged: the
# sink's CPU a log, merges included, went from 4.0 to 2.4 µs. Merging at least ten parts at a
# time (instead of as few as two) took another third off: merges cost more than inserts.
INFERENCE_LOG_BLOCKS = f"""
CREATE TABLE IF NOT EXISTS {LOG_BLOCKS}
(
    time DateTime64(6, 'UTC') CODEC(Delta, ZSTD),
    workspace LowCardinality(String),
    pipeline LowCardinality(String),
    pipeline_version UInt32,
    step UInt16,
    model LowCardinality(String),
    model_version UInt32,
    shadow Bool,
    elapsed_us Int64,
    worker LowCardinality(String),
    record_ids Array(String),
    input_names Array(LowCardinality(String)),
    input_dtypes Array(LowCardinality(String)),
    input_shapes Array(Array(Int64)),
    input_values Array(Array(Array(Float32))),
    input_values64 Array(Array(Array(Float64))),
    output_names Array(LowCardinality(String)),
    output_dtypes Array(LowCardinality(String)),
    output_shapes Array(Array(Int64)),
    output_values Array(Array(Array(Float32))),
    output_values64 Array(Array(Array(Float64))),
    kafka_topic LowCardinality(String),
    kafka_partition Int32,
    kafka_offset Int64,
    INDEX time_minmax time TYPE minmax GRANULARITY 1
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(time)
ORDER BY (workspace, pipeline, kafka_topic, kafka_partition, kafka_offset)
SETTINGS non_replicated_deduplication_window = 10000, min_parts_to_merge_at_once = 10
"""

_NO_TEXTS = "CAST(map(), 'Map(LowCardinality(String), Array(String))')"


def _values(io: str) -> str:
    """A block's values of inputs or outputs as doubles, from whichever column holds them."""
    return (f"if(empty({io}_values64), CAST({io}_values, 'Array(Array(Array(Float64)))'), "
            f"{io}_values64)")
# Every log, a row each, with the columns of inference_log_rows in its order.
INFERENCE_LOGS_VIEW = f"""
CREATE OR REPLACE VIEW inference_logs AS
SELECT time, record_id, workspace, pipeline, pipeline_version, step, model, model_version,
       shadow, mapFromArrays(input_names, record_inputs) AS inputs,
       mapFromArrays(input_names, input_shapes) AS input_shapes,
       mapFromArrays(input_names, input_dtypes) AS input_dtypes, {_NO_TEXTS} AS input_strings,
       mapFromArrays(output_names, record_outputs) AS outputs,
       mapFromArrays(output_names, output_shapes) AS output_shapes,
       mapFromArrays(output_names, output_dtypes) AS output_dtypes,
       {_NO_TEXTS} AS output_strings, elapsed_us, worker, CAST(NULL, 'Nullable(String)') AS error,
       kafka_topic, kafka_partition, kafka_offset
FROM {LOG_BLOCKS} FINAL
ARRAY JOIN record_ids AS record_id, {_values("input")} AS record_inputs,
           {_values("output")} AS record_outputs
UNION ALL
SELECT time, record_id, workspace, pipeline, pipeline_version, step, model, model_version,
       shadow, inputs, input_shapes, input_dtypes, input_strings, outputs, output_shapes,
       output_dtypes, output_strings, elapsed_us, worker, error, kafka_topic, kafka_partition,
       kafka_offset
FROM {LOG_ROWS} FINAL
"""


# Migration 6: the view of migration 4 with each log's failed validations (the block's
# record_anomalies is empty when none of its records failed one, or from before: padded).
INFERENCE_LOGS_VIEW_ANOMALIES = (
    INFERENCE_LOGS_VIEW
    .replace("AS error,\n", "AS error,\n       record_anomaly AS anomalies,\n")
    .replace("AS record_outputs\n", "AS record_outputs,\n           arrayResize("
             "record_anomalies, length(record_ids)) AS record_anomaly\n")
    .replace("output_strings, elapsed_us, worker, error, kafka_topic",
             "output_strings, elapsed_us, worker, error, anomalies, kafka_topic"))


# Migration 7: the view of migration 6 with the replay that made each log ('' for live
# traffic): live reads and assays keep to replay = ''.
INFERENCE_LOGS_VIEW_REPLAYS = (
    INFERENCE_LOGS_VIEW_ANOMALIES
    .replace("record_anomaly AS anomalies,\n", "record_anomaly AS anomalies, replay,\n")
    .replace("error, anomalies, kafka_topic", "error, anomalies, replay, kafka_topic"))
LIVE = "replay = ''"  # the condition every live read of inference_logs carries


def _rename_log_rows(storage: Storage) -> None:
    """Migration 1's `inference_logs` table becomes `inference_log_rows`, once: after that,
    `inference_logs` is the view."""
    found = storage.query("SELECT engine FROM system.tables WHERE database = currentDatabase() "
                          "AND name = 'inference_logs'")
    if found and found[0]["engine"] != "View":
        storage.command(f"RENAME TABLE inference_logs TO {LOG_ROWS}")


# One row per assay window; re-running a window replaces its row (latest computed_at wins).
ASSAY_RESULTS = """
CREATE TABLE IF NOT EXISTS assay_results
(
    assay_id LowCardinality(String),
    workspace LowCardinality(String),
    pipeline LowCardinality(String),
    model LowCardinality(String),
    io LowCardinality(String),
    field LowCardinality(String),
    field_index UInt32,
    window_start DateTime64(6, 'UTC'),
    window_end DateTime64(6, 'UTC'),
    binning LowCardinality(String),
    aggregation LowCardinality(String),
    metric LowCardinality(String),
    score Nullable(Float64),
    status LowCardinality(String),
    warning_threshold Nullable(Float64),
    alert_threshold Nullable(Float64),
    psi Nullable(Float64),
    sumdiff Nullable(Float64),
    maxdiff Nullable(Float64),
    maxdiff_bin Nullable(UInt16),
    cumulative Nullable(Float64),
    edges Array(Float64),
    baseline_counts Array(UInt64),
    baseline_densities Array(Float64),
    window_counts Array(UInt64),
    window_densities Array(Float64),
    window_count UInt64,
    window_min Nullable(Float64),
    window_max Nullable(Float64),
    window_mean Nullable(Float64),
    window_median Nullable(Float64),
    window_std Nullable(Float64),
    baseline_count UInt64,
    baseline_min Nullable(Float64),
    baseline_max Nullable(Float64),
    baseline_mean Nullable(Float64),
    baseline_median Nullable(Float64),
    baseline_std Nullable(Float64),
    computed_at DateTime64(6, 'UTC')
)
ENGINE = ReplacingMergeTree(computed_at)
ORDER BY (workspace, assay_id, window_start)
SETTINGS non_replicated_deduplication_window = 1000
"""


# Performance assays: how many labelled records a result is over (null for drift), and the
# statuses already published for its window, so a re-scored window alerts once per status.
ASSAY_RESULTS_LABELLED = (
    "ALTER TABLE assay_results ADD COLUMN IF NOT EXISTS labelled Nullable(UInt64)",
    "ALTER TABLE assay_results ADD COLUMN IF NOT EXISTS alerted Array(LowCardinality(String))",
)


@dataclass(frozen=True)
class Migration:
    """One numbered step of the schema; its statements must be idempotent."""

    version: int
    name: str
    statements: tuple[str | Callable[[Storage], None], ...]  # SQL, or a step that checks first


MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "inference logs", (INFERENCE_LOGS,)),
    Migration(2, "assay results", (ASSAY_RESULTS,)),
    Migration(3, "task runs", (TASK_RUNS, TASK_RUN_LOGS)),
    Migration(4, "inference logs in blocks", (
        INFERENCE_LOG_BLOCKS, _rename_log_rows,
        INFERENCE_LOGS.replace("inference_logs", LOG_ROWS), INFERENCE_LOGS_VIEW)),
    Migration(5, "labels and performance assays", (
        LABELS, LABELLED_LOGS_VIEW, *ASSAY_RESULTS_LABELLED)),
    Migration(6, "validations: anomalies of inference logs", (
        f"ALTER TABLE {LOG_ROWS} ADD COLUMN IF NOT EXISTS anomalies Array(String) AFTER error",
        f"ALTER TABLE {LOG_BLOCKS} ADD COLUMN IF NOT EXISTS record_anomalies "
        "Array(Array(String)) AFTER output_values64",
        INFERENCE_LOGS_VIEW_ANOMALIES)),
    Migration(7, "replays: the replay that made an inference log", (
        # A replay's log of a record must not replace the live one: the rows table is keyed
        # by the inference, so the replay joins the key (allowed in the ALTER adding it,
        # without a default expression: a String's own default is '').
        f"ALTER TABLE {LOG_ROWS} ADD COLUMN IF NOT EXISTS replay LowCardinality(String) "
        "AFTER anomalies, MODIFY ORDER BY "
        "(workspace, pipeline, model, record_id, step, shadow, replay)",
        f"ALTER TABLE {LOG_BLOCKS} ADD COLUMN IF NOT EXISTS replay LowCardinality(String) "
        "DEFAULT '' AFTER worker",
        INFERENCE_LOGS_VIEW_REPLAYS, LABELLED_LIVE_LOGS_VIEW)),
)


def applied_versions(storage: Storage) -> list[int]:
    """Migration versions recorded in `schema_version`, ascending."""
    storage.command(SCHEMA_VERSION)
    rows = storage.query("SELECT version FROM schema_version FINAL ORDER BY version")
    return [row["version"] for row in rows]


def migrate(storage: Storage) -> list[int]:
    """Apply the migrations not yet recorded, in order; returns the versions applied now."""
    done = set(applied_versions(storage))
    applied = []
    for migration in MIGRATIONS:
        if migration.version in done:
            continue
        for statement in migration.statements:
            if callable(statement):
                statement(storage)
            else:
                storage.command(statement)
        row = {
            "version": migration.version,
            "name": migration.name,
            "applied_at": datetime.now(UTC),
        }
        storage.insert("schema_version", [row])
        applied.append(migration.version)
    return applied


class KafkaPosition(NamedTuple):
    """Where a log record was read from."""

    topic: str
    partition: int
    offset: int


def log_rows(
    records: Sequence[Mapping[str, Any]],
    positions: Sequence[KafkaPosition] | None = None,
) -> list[dict[str, Any]]:
    """Rows of `inference_logs` from decoded InferenceLog records (and where each was read)."""
    if positions is not None and len(positions) != len(records):
        raise ValueError(f"{len(records)} records but {len(positions)} positions")
    rows = []
    for record, position in zip(records, positions or repeat(None), strict=False):
        inputs, input_shapes, input_dtypes, input_strings = _tensors(record["inputs"])
        outputs, output_shapes, output_dtypes, output_strings = _tensors(record["outputs"])
        rows.append(
            {
                "time": _utc(record["time"]),
                "record_id": record["record_id"],
                "workspace": record["workspace"],
                "pipeline": record["pipeline"],
                "pipeline_version": record["pipeline_version"],
                "step": record["step"],
                "model": record["model"],
                "model_version": record["model_version"],
                "shadow": bool(record.get("shadow", False)),
                "inputs": inputs,
                "input_shapes": input_shapes,
                "input_dtypes": input_dtypes,
                "input_strings": input_strings,
                "outputs": outputs,
                "output_shapes": output_shapes,
                "output_dtypes": output_dtypes,
                "output_strings": output_strings,
                "elapsed_us": record["elapsed_us"],
                "worker": record["worker"],
                "error": record.get("error"),
                "anomalies": list(record.get("anomalies") or ()),  # none before validations
                "replay": record.get("replay") or "",  # live traffic, and logs before replays
                "kafka_topic": position.topic if position else "",
                "kafka_partition": position.partition if position else -1,
                "kafka_offset": position.offset if position else -1,
            }
        )
    return rows


def batch_token(positions: Iterable[KafkaPosition]) -> str:
    """A deduplication token that is the same whenever the same offsets are written again."""
    text = "".join(f"{topic}\0{partition}\0{offset}\n"
                   for topic, partition, offset in sorted(positions))
    return f"logs-{hashlib.sha256(text.encode()).hexdigest()}"  # one update: the same digest


def _tensors(
    tensors: Iterable[Mapping[str, Any]],
) -> tuple[dict[str, list[float]], dict[str, list[int]], dict[str, str], dict[str, list[str]]]:
    values: dict[str, list[float]] = {}
    shapes: dict[str, list[int]] = {}
    dtypes: dict[str, str] = {}
    strings: dict[str, list[str]] = {}
    for tensor in tensors:
        name = tensor["name"]
        values[name] = [float(v) for v in tensor.get("values", ())]
        shapes[name] = [int(d) for d in tensor["shape"]]
        dtypes[name] = tensor["dtype"]
        if tensor.get("strings"):
            strings[name] = list(tensor["strings"])
    return values, shapes, dtypes, strings


def _utc(value: datetime | int) -> datetime:
    """fastavro gives timestamp-micros as an aware datetime; raw longs are micros since epoch."""
    if isinstance(value, int):
        return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=value)
    if value.tzinfo is None:
        raise ValueError(f"inference log time {value} has no timezone; give it in UTC")
    return value.astimezone(UTC)
