"""Model versions loaded once per worker: fetched from the artifact topic, checked, unpacked."""

from __future__ import annotations

import os
import threading
from pathlib import Path

from agents.runtimes import load_model
from agents.runtimes.base import ModelRuntime
from agents.runtimes.packing import DIRECTORY_FORMATS, SUFFIX_OF_FORMAT, unpack
from control.artifacts import ArtifactStore
from control.config import Settings
from control.registry.state import ModelVersion, PipelineVersion, Registry, step_models
from schemas.errors import ArtifactError

ModelKey = tuple[str, int]  # (model, version) within a pipeline's workspace


class ModelCache:
    """Loads each model version at most once; safe to call from executor threads."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.store = ArtifactStore(settings)
        self.root = settings.data_dir / "models"
        self._loaded: dict[tuple[str, str, int], ModelRuntime] = {}
        self._loading: dict[tuple[str, str, int], threading.Lock] = {}  # one per version
        self._lock = threading.Lock()  # guards the two dicts, never held during a load

    def load(self, version: ModelVersion) -> ModelRuntime:
        """The runtime of a model version; ArtifactError if its artifact is missing or corrupt."""
        key = (version.workspace, version.model, version.version)
        with self._lock:
            if key in self._loaded:
                return self._loaded[key]
            gate = self._loading.setdefault(key, threading.Lock())
        # A version loads once; loads of other versions (a Python step's load() may take a
        # minute) and task runs needing loaded ones do not wait for it.
        with gate:
            with self._lock:
                if key in self._loaded:
                    return self._loaded[key]
            try:
                runtime = self._load(version.framework, self._unpacked(version))
            except BaseException:
                with self._lock:
                    self._loading.pop(key, None)
                raise
            with self._lock:  # in one step: a caller arriving now finds it loaded
                self._loaded[key] = runtime
                self._loading.pop(key, None)
            return runtime

    def _load(self, framework: str, path: Path) -> ModelRuntime:
        if framework == "python":  # its limits are this worker's settings, however given
            from agents.runtimes.python import PythonLimits, PythonRuntime

            return PythonRuntime.load(path, PythonLimits.from_settings(self.settings))
        return load_model(framework, path)

    def release(self, keep: set[tuple[str, str, int]]) -> None:
        """Close and forget the loaded versions not in keep (workspace, model, version) that
        hold processes (Python steps); other runtimes stay loaded, as before. A batch (or task
        run) still using a closed one carries on: each of its calls runs in a process started
        for it and stopped after it."""
        with self._lock:
            dropped = [self._loaded.pop(k) for k, r in list(self._loaded.items())
                       if k not in keep and hasattr(r, "close")]
        for runtime in dropped:
            runtime.close()  # type: ignore[attr-defined]

    def close(self) -> None:
        """Close every loaded version that holds processes (the worker is stopping)."""
        self.release(set())

    def _unpacked(self, version: ModelVersion) -> Path:
        ref = version.artifact
        suffix = SUFFIX_OF_FORMAT.get(ref.format, "")
        dest = self.root / ref.sha256
        if not dest.exists():
            # The blob is checked against its sha256 before anything is written; a folder
            # named by the sha256 is only ever published whole (unpack), so one that exists,
            # made by this worker or another on the same data folder, is the right one.
            unpack(self.store.get(ref), dest, suffix)
        model = dest if ref.format in DIRECTORY_FORMATS else dest / f"model{suffix}"
        for name, file_ref in version.files:
            target = dest.parent / f"{ref.sha256}.files" / name
            if not target.exists():
                target.parent.mkdir(parents=True, exist_ok=True)
                staging = target.with_name(f".{target.name}.{os.getpid()}.{threading.get_ident()}")
                staging.write_bytes(self.store.get(file_ref))
                os.replace(staging, target)  # whole or not at all, whoever writes it too
        return model

    def for_pipeline(self, registry: Registry, pipeline: PipelineVersion
                     ) -> dict[ModelKey, ModelRuntime]:
        """Every model a pipeline version may run, loaded; raises on the first that will not."""
        runtimes: dict[ModelKey, ModelRuntime] = {}
        for step in pipeline.steps:
            for m in step_models(step):
                model = registry.models.get((pipeline.workspace, m.model))
                version = model.version(m.version) if model else None
                if version is None:
                    raise ArtifactError(f"model {m.model} v{m.version} is not in the registry")
                try:
                    runtimes[(m.model, m.version)] = self.load(version)
                except ArtifactError as exc:
                    raise ArtifactError(f"model {m.model} v{m.version}: {exc}") from exc
        return runtimes
