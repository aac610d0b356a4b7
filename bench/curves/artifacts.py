"""Artifact size: upload and first-load time of models of 1 MB, 100 MB and 1 GB.

Each model is the bench's GBT with an embedding table beside it: a float32 initializer of
rows x 30 made of the bench's own feature rows (tiled, so the bytes are real data, not zeros
that would compress), looked up by the index of each record's largest feature (Gather on
ArgMax), so ONNX Runtime must load the whole table and the graph really uses it. Upload is
`Client.upload_model` (read, describe, store the chunks in Kafka, register); first load runs
from the Deploy event to a worker that never saw the model reporting that it serves it (fetch
the chunks, check the sha256, create the session).
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from bench.curves.serving import rss_mb
from bench.models import INPUT, N_FEATURES
from bench.platform import WORKSPACE, BenchPlatform
from control.kafka import ensure_topics, pipeline_topics

EMBEDDING = "embedding"


def build(gbt: Path, rows: np.ndarray, size_bytes: int, path: Path) -> Path:
    """The GBT plus a table of about size_bytes from `rows`, written to path."""
    model = onnx.load(str(gbt))
    table_rows = max(size_bytes // (4 * N_FEATURES), N_FEATURES)
    table = np.resize(rows.astype(np.float32), (table_rows, N_FEATURES))
    model.graph.initializer.append(numpy_helper.from_array(table, "embedding_table"))
    del table
    model.graph.node.extend([
        helper.make_node("ArgMax", [INPUT], ["embedding_index"], axis=1, keepdims=0),
        helper.make_node("Gather", ["embedding_table", "embedding_index"], [EMBEDDING], axis=0),
    ])
    model.graph.output.append(helper.make_tensor_value_info(
        EMBEDDING, TensorProto.FLOAT, [None, N_FEATURES]))
    model.graph.name = f"bench_embedding_{size_bytes}"
    path.write_bytes(model.SerializeToString())
    del model
    gc.collect()
    return path


def curve(platform: BenchPlatform, sizes_mb: Sequence[int], batch: tuple[int, int],
          say: Callable[[str], None]) -> dict[str, Any]:
    """A point per size: upload seconds, first-load seconds, the worker's memory after."""
    folder = platform.folder / "artifacts"
    folder.mkdir(exist_ok=True)
    points = []
    for mb in sizes_mb:
        path = folder / f"embedding-{mb}mb.onnx"
        try:
            points.append(_point(platform, build(platform.models.gbt, platform.models.rows,
                                                 mb * 1024**2, path), mb, batch, say))
        except Exception as exc:  # a size that fails (memory, a broker limit) is reported
            say(f"artifacts {mb} MB failed: {exc!r}")
            points.append({"size_mb": mb, "error": repr(exc)})
        finally:
            path.unlink(missing_ok=True)
    return {"what": "the bench GBT with an embedding table of the bench's rows "
                    "(Gather on ArgMax); upload = Client.upload_model, first load = Deploy "
                    "to served on a fresh worker", "points": points}


def _point(platform: BenchPlatform, path: Path, mb: int, batch: tuple[int, int],
           say: Callable[[str], None]) -> dict[str, Any]:
    name = f"curve-a{mb}mb"
    say(f"artifacts {mb} MB: upload {path.stat().st_size / 1024**2:,.0f} MB")
    started = time.monotonic()
    platform.client.upload_model(name, path)
    upload_s = time.monotonic() - started
    platform.client.create_pipeline(name)
    platform.client.create_pipeline_version(name, [{"model": name, "version": 1}])
    ensure_topics(platform.settings, pipeline_topics(platform.settings, WORKSPACE, name))
    # A worker of its own: its model cache is empty, so the load fetches from Kafka.
    w = platform.worker(f"w-{name}", sink=False)
    try:
        started = time.monotonic()
        platform.client.deploy(name, batch_size=batch[0], batch_wait_ms=batch[1])
        w.wait_ready(f"{WORKSPACE}/{name}", timeout=600)
        load_s = time.monotonic() - started
        point = {"size_mb": mb, "artifact_bytes": path.stat().st_size, "upload_s": upload_s,
                 "first_load_s": load_s, "worker_rss_mb": rss_mb(w.process.pid)}
        say(f"artifacts {mb} MB: upload {upload_s:.1f}s, first load {load_s:.1f}s")
        platform.client.undeploy(name)
        return point
    finally:
        w.stop()
