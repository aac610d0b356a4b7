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
        self.store = ArtifactStore(settings)
        self.root = settings.data_dir / "models"
        self._loaded: dict[tuple[str, str, int], ModelRuntime] = {}
        self._lock = threading.Lock()

    def load(self, version: ModelVersion) -> ModelRuntime:
        """The runtime of a model version; ArtifactError if its artifact is missing or corrupt."""
        key = (version.workspace, version.model, version.version)
        with self._lock:
            if key not in self._loaded:
                self._loaded[key] = load_model(version.framework, self._unpacked(version))
            return self._loaded[key]

    def release(self, keep: set[tuple[str, str, int]]) -> None:
        """Close and forget the loaded versions not in keep (workspace, model, version) that
        hold processes (Python steps); other runtimes stay loaded, as before. A batch (or task
        run) still using a closed one carries on: its next call starts a process again."""
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
