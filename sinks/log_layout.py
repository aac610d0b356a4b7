"""The inference log's layout, declared once: the InferenceLog schema names the fields and their
order (schemas/avro); this module says how ClickHouse reads each one and which columns a
reader of `inference_logs` sees. The log sink's Avro input (log_batches.py), the block rows
(log_blocks.py), the reads (log_queries.py) and the export derive from it, and a test holds
the tables that migrations made (tables.py, history that never changes) against it.
"""

from __future__ import annotations

from schemas.codec import codec
from schemas.errors import InferstreamError

TENSOR = ("Tuple(name String, dtype String, shape Array(Int64), values Array(Float64), "
          "strings Array(String))")
TENSORS = ("inputs", "outputs")
# How ClickHouse's Avro input reads each InferenceLog field.
_READ_AS = {
    "time": "DateTime64(6, 'UTC')", "record_id": "String", "workspace": "String",
    "pipeline": "String", "pipeline_version": "Int32", "step": "Int32", "model": "String",
    "model_version": "Int32", "shadow": "Bool", "inputs": f"Array({TENSOR})",
    "outputs": f"Array({TENSOR})", "elapsed_us": "Int64", "worker": "String",
    "error": "Nullable(String)", "anomalies": "Array(String)", "replay": "String",
}
# Where a log was read from: the sink's idempotence rests on it.
POSITION = (("kafka_topic", "String"), ("kafka_partition", "Int32"), ("kafka_offset", "Int64"))
# A tensor field becomes four map columns, by tensor name: values, shapes, dtypes, strings.
TENSOR_PARTS = (("s", "values"), ("_shapes", "shape"), ("_dtypes", "dtype"),
                ("_strings", "strings"))


def _fields() -> tuple[str, ...]:
    names = tuple(f["name"] for f in codec("InferenceLog").schema["fields"])
    if set(names) != set(_READ_AS):
        raise InferstreamError(
            f"sinks/log_layout.py does not describe the InferenceLog fields "
            f"{sorted(set(names) ^ set(_READ_AS))}: give each new field its ClickHouse type")
    return names


FIELDS = _fields()  # in the schema's order
READ_AS = tuple((name, _READ_AS[name]) for name in FIELDS)
# What an InferenceLogBlock writes once for all its logs (the rest is per record, or a column).
SHARED = tuple(f for f in FIELDS if f not in ("record_id", "error", "anomalies", *TENSORS))
# The columns of `inference_logs`, a row per log, in reading order: what readers see.
COLUMNS = tuple(
    column
    for name in FIELDS
    for column in ((f"{name[:-1]}{suffix}" for suffix, _ in TENSOR_PARTS)
                   if name in TENSORS else (name,))
) + tuple(name for name, _ in POSITION)
