"""`python3 -m bench.python_hop`: what a Python step's process hop costs per batch.

An identity step (float32 rows of 16 values) called through PythonRuntime, against the same
predict() called in-process, at batch sizes 1, 64 and 512; prints µs per batch (median).
"""

from __future__ import annotations

import importlib.util
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from agents.runtimes.python import PythonRuntime
from agents.runtimes.python_pool import PythonLimits

STEP = """
INPUTS = {"x": ("float32", (-1, 16))}
OUTPUTS = {"y": ("float32", (-1, 16))}

def predict(batch):
    return {"y": batch["x"]}
"""
SIZES = (1, 64, 512)


def per_batch_us(call, batch: dict[str, np.ndarray], repeat: int) -> float:
    """Median µs of call(batch) over repeat calls, after a few unmeasured ones."""
    for _ in range(20):
        call(batch)
    times = []
    for _ in range(repeat):
        started = time.perf_counter_ns()
        call(batch)
        times.append((time.perf_counter_ns() - started) / 1000)
    return statistics.median(times)


def main(repeat: int = 2000) -> int:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "identity.py"
        path.write_text(STEP)
        spec = importlib.util.spec_from_file_location("identity", path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        runtime = PythonRuntime.load(path, PythonLimits(workers=1, timeout_s=10, memory_mb=0))
        try:
            print("batch  in-process µs  child µs  hop µs/batch  hop µs/row")
            for size in SIZES:
                batch = {"x": np.random.default_rng(0).random((size, 16), np.float32)}
                direct = per_batch_us(module.predict, batch, repeat)
                hop = per_batch_us(runtime.predict, batch, repeat)
                print(f"{size:5d}  {direct:13.1f}  {hop:8.1f}  {hop - direct:12.1f}  "
                      f"{(hop - direct) / size:10.2f}")
        finally:
            runtime.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main(int(sys.argv[1]) if len(sys.argv) > 1 else 2000))
