"""The inference ceiling: the models called directly through ONNX Runtime on pre-built arrays."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from agents.runtimes.onnx import OnnxRuntime
from bench.models import INPUT, PASSTHROUGH, BenchModels

BATCH_SIZES = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048)


def rows_per_second(paths: tuple[Path, ...], rows: np.ndarray, batch: int,
                    seconds: float = 0.25) -> float:
    """Rows/s of calling the models in turn (a chain feeds each the features) on one batch.

    Sessions are opened exactly as a worker opens them (agents.runtimes.onnx), so the
    ceiling has the worker's threading; the raw session is called, without our checks.
    """
    sessions = [OnnxRuntime.load(p)._session for p in paths]
    # Each call takes the next rows of the held-out set: calling a tree ensemble on the same
    # few rows again and again trains the branch predictor (batch 32 seemed twice as fast).
    pool = np.ascontiguousarray(np.resize(rows, (len(rows) + batch, rows.shape[1])))
    windows = [pool[i:i + batch] for i in range(0, len(rows), batch)]
    for s in sessions:  # warm-up: first runs allocate
        s.run(None, {INPUT: windows[0]})
    passes = [next((i for i, o in enumerate(s.get_outputs()) if o.name == PASSTHROUGH), None)
              for s in sessions]
    calls, started = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - started) < seconds:
        features = windows[calls % len(windows)]
        for s, passed in zip(sessions, passes, strict=True):
            out = s.run(None, {INPUT: features})
            features = features if passed is None else out[passed]
        calls += 1
    return calls * batch / elapsed


def ceiling(models: BenchModels) -> dict[str, dict[int, float]]:
    """Rows/s for each batch size, for the single model (GBT) and for the three-model chain."""
    return {
        "gbt": {b: rows_per_second((models.gbt,), models.rows, b) for b in BATCH_SIZES},
        "chain": {b: rows_per_second(models.chain, models.rows, b) for b in BATCH_SIZES},
    }
