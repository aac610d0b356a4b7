"""A platform for tests of workers: one namespace, its registrar, uploaded models, workers."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar
from uuid import uuid4

import numpy as np

from control.client import Client
from control.config import Settings
from control.kafka import producer
from control.local.demo_models import build_keras_model, build_onnx_classifier, iris_rows
from control.local.worker_process import WorkerProcess
from control.registrar import Registrar
from schemas.codec import codec
from tests.helpers import wait_until


def own_settings(bootstrap: str, prefix: str, data_dir: Path, **overrides: Any) -> Settings:
    """Settings of a namespace of its own: `prefix` and eight random hex digits."""
    return Settings(bootstrap_servers=bootstrap, namespace=f"{prefix}{uuid4().hex[:8]}",
                    data_dir=data_dir, **overrides)


class Namespace:
    """One namespace: its registrar, and ann's client in her workspace lab; the workers in
    `workers` stop when it closes."""

    def __init__(self, settings: Settings, tmp: Path) -> None:
        self.settings, self.tmp = settings, tmp
        self.registrar = Registrar(settings).start()
        self.client = Client(settings, user="ann", workspace="lab")
        self.client.create_user("ann")
        self.client.create_workspace("lab")
        self.workers: list[WorkerProcess] = []

    def close(self) -> None:
        for w in self.workers:
            w.stop()
        self.client.close()
        self.registrar.stop()


class Platform(Namespace):
    """One namespace for the module: registrar, models, a worker; tests add pipelines."""

    def __init__(self, settings: Settings, tmp: Path, keras: bool = True) -> None:
        super().__init__(settings, tmp)
        self.paths = {
            "clf": build_onnx_classifier(tmp / "clf.onnx", seed=0),
            "clf2": build_onnx_classifier(tmp / "clf2.onnx", seed=1, C=0.05),
        }
        if keras:  # two TensorFlow versions too (a few seconds to build)
            self.paths["scorer"] = build_keras_model(tmp / "scorer", "savedmodel", seed=0)
            self.paths["scorer2"] = build_keras_model(tmp / "scorer2", "savedmodel", seed=7)
        for name, path in self.paths.items():
            self.client.upload_model(name.rstrip("2"), path)

    def worker(self, name: str) -> WorkerProcess:
        w = WorkerProcess(self.settings, name, self.tmp)
        self.workers.append(w)
        return w

    def corrupt_model(self, name: str) -> None:
        """Register model `name` (like clf v1) whose stored bytes do not hash to its sha256:
        an artifact corrupted in Kafka, which every worker must refuse to load."""
        claimed = hashlib.sha256(f"bytes of {name}".encode()).hexdigest()
        p = producer(self.settings)
        p.produce(self.settings.topic("artifacts"), key=f"{claimed}:0".encode(),
                  value=codec("ArtifactChunk").encode({"sha256": claimed, "index": 0,
                                                       "count": 1, "size": 9,
                                                       "data": b"corrupted"}))
        p.flush(10)
        self.register_model(name, claimed, 9)

    def register_model(self, name: str, sha256: str, size: int) -> None:
        """Register model `name` (inputs and outputs like clf v1) whose artifact is the one
        chunk of `sha256`, wherever the artifact topic holds it, if it does."""
        good = self.client.model("clf").version(1)
        artifact = {**{f: getattr(good.artifact, f) for f in ("format", "topic", "partition")},
                    "sha256": sha256, "size": size, "offset": 10**12, "chunks": 1}
        spec = lambda s: {"name": s.name, "dtype": s.dtype, "shape": list(s.shape)}  # noqa: E731
        self.client.send("UploadModel", {
            "name": name, "framework": "onnx", "artifact": artifact, "files": [],
            "inputs": [spec(s) for s in good.inputs],
            "outputs": [spec(s) for s in good.outputs], "description": None})

    def pipeline(self, name: str, steps: list) -> None:
        self.client.create_pipeline(name)
        self.client.create_pipeline_version(name, steps)

    def deploy(self, name: str, version: int | None = None, **batching: int) -> None:
        d = self.client.deploy(name, version, worker_wait=30 if self.workers else 0, **batching)
        for w in self.workers:
            w.wait_ready(f"lab/{name}")
            wait_until(lambda w=w: w.health()["serving"][f"lab/{name}"] == d.version, 30,
                       f"{w.name} serves {name} v{d.version}")


P = TypeVar("P", bound=Platform)


@contextmanager
def serving(bootstrap: str, tmp: Path, prefix: str, kind: type[P] = Platform,
            keras: bool = True, **overrides: Any) -> Iterator[P]:
    """A platform of `kind` in a namespace of its own (`own_settings`, with the CLI's data dir
    tmp/cli) whose worker w1 is ready; closed on leaving."""
    platform = kind(own_settings(bootstrap, prefix, tmp / "cli", **overrides), tmp, keras=keras)
    try:
        platform.worker("w1").wait_ready()
        yield platform
    finally:
        platform.close()


def rows(n: int, start: int = 0) -> np.ndarray:
    return np.resize(iris_rows(), (start + n, 4))[start:]


def json_records(n: int, start: int = 0, **fields: object) -> list[dict]:
    return [{"id": f"r{start + i}", "float_input": row.tolist(), **fields}
            for i, row in enumerate(rows(n, start))]
