"""The peers' virtual environments: one each, pinned, created by the bench when missing.

Their dependencies clash with ours (MLServer pins pydantic and uvloop, Faust its own aiokafka)
and with each other, so none of them is installed beside inferstream.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).parent
# The folder of the venvs: INFERSTREAM_BENCH_VENVS, else .venvs/ in the checkout (ignored).
VENVS = Path(os.environ.get("INFERSTREAM_BENCH_VENVS", HERE.parent.parent / ".venvs"))
COMMON = ("onnxruntime==1.32.0", "fastavro==1.13.1")  # our onnxruntime: the same inference


@dataclass(frozen=True)
class Peer:
    """A peer: what it installs, how it runs, and what delivery and batching it really has."""

    name: str
    packages: tuple[str, ...]
    delivery: str
    batching: str

    def venv(self) -> Path:
        return VENVS / f"peers-{self.name}"

    def python(self) -> Path:
        return self.venv() / "bin" / "python"


PEERS = {
    "quix": Peer("quix", ("quixstreams==3.28.1", *COMMON),
                 "exactly once (processing_guarantee='exactly-once': transactional output, "
                 "results visible at each 0.5 s checkpoint)",
                 "none: the dataframe API calls ONNX Runtime once per record"),
    "faust": Peer("faust", ("faust-streaming[fast,uvloop,orjson]==0.15.3", *COMMON),
                  "at least once (processing_guarantee='exactly_once' is set, but results go "
                  "out without transaction markers: faust-streaming#177, #517)",
                  "stream.take_events(512, within=10 ms), one ONNX call per batch"),
    "mlserver": Peer("mlserver", ("mlserver==1.7.1", "uvloop<0.22", *COMMON),
                     "at most once (Kafka mode: a consumer without a group, no committed "
                     "offsets, a task per record; a backlog loses records)",
                     "adaptive batching (max_batch_size 512, max_batch_time 10 ms), ONNX "
                     "through a custom runtime (MLServer has no official ONNX runtime)"),
}


def ensure_venv(peer: Peer) -> Path:
    """The peer's interpreter; creates its venv and installs the pins when they changed."""
    stamp = peer.venv() / "bench-packages.txt"
    wanted = "\n".join(peer.packages) + "\n"
    if stamp.exists() and stamp.read_text() == wanted and peer.python().exists():
        return peer.python()
    print(f"[bench] creating the {peer.name} venv in {peer.venv()} (a few minutes)",
          file=sys.stderr, flush=True)
    subprocess.run([sys.executable, "-m", "venv", str(peer.venv())], check=True)
    subprocess.run([str(peer.python()), "-m", "pip", "install", "-q", *peer.packages],
                   check=True)
    stamp.write_text(wanted)
    return peer.python()
