"""The inference log's layout is declared once (sinks/log_layout.py): the tables migrations made,
the block rows, the reads and the writer's bytes all agree with it."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from agents.records.avro_logs import LogWriter
from schemas.codec import codec
from sinks import log_layout
from sinks.log_blocks import SCHEMA
from sinks.log_queries import LOG_COLUMNS
from sinks.storage import ChdbStorage
from sinks.tables import LOG_BLOCKS, LOG_ROWS, migrate


def columns(storage: ChdbStorage, table: str) -> tuple[str, ...]:
    return tuple(r["name"] for r in storage.query(f"DESCRIBE TABLE {table}"))


def test_the_tables_have_the_layouts_columns(tmp_path: Path) -> None:
    with ChdbStorage(tmp_path / "chdb") as storage:
        migrate(storage)
        assert columns(storage, "inference_logs") == log_layout.COLUMNS == LOG_COLUMNS
        assert columns(storage, LOG_ROWS) == log_layout.COLUMNS
        assert columns(storage, LOG_BLOCKS) == tuple(SCHEMA.names)
    assert tuple(SCHEMA.names[:len(log_layout.SHARED)]) == log_layout.SHARED


def test_the_writer_writes_the_schemas_fields_in_order() -> None:
    value = LogWriter("lab", "p", 3, "w1").encode(
        1_700_000_000_000_000, "r1", 1, "clf", 2, False,
        {"x": np.ones((1, 2), np.float32)}, {"y": np.zeros((1,), np.float64)}, 250, None)
    decoded = codec("InferenceLog").decode(value)
    assert tuple(decoded) == log_layout.FIELDS
    assert (decoded["workspace"], decoded["pipeline_version"], decoded["worker"]) == (
        "lab", 3, "w1")
