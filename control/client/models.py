"""The Python client's model uploads: check the artifact, store it, then register a version.

A mixin of control.client.Client. Nothing is stored or registered until the artifact passed
every check: the actor may upload in the workspace, the artifact is no larger than
INFERSTREAM_MAX_ARTIFACT_BYTES, a directory packs into an archive with relative paths and
regular files only, and the model loads with its runtime (which is also how its input and
output schema is read). Scikit-learn, XGBoost and LightGBM models are converted to ONNX first
(control.client.conversion): workers never load a pickle.
"""

from __future__ import annotations

import io
import os
import tarfile
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

import numpy as np

from agents.runtimes import describe_artifact
from agents.runtimes.packing import artifact_bytes, artifact_format, framework_of
from control.artifacts import ArtifactStore, Progress, sha256_of
from control.client.conversion import (
    DEFAULT_TOLERANCE,
    KINDS,
    Conversion,
    convert_model,
    kind_of,
)
from control.registry.events import ControlEvent
from control.registry.security import authorize
from control.registry.state import ArtifactRef, Model, ModelVersion, Registry
from control.registry.tensors import TensorSpec
from schemas.errors import ArtifactError, InferstreamError

if TYPE_CHECKING:
    from control.config import Settings
    from control.registry.events import ControlStatus


class ModelClient:
    """Methods of Client for model artifacts."""

    settings: Settings

    if TYPE_CHECKING:
        def send(self, type: str, payload: Mapping[str, Any], **kw: Any) -> ControlStatus: ...
        def registry(self) -> Registry: ...
        def model(self, name: str, workspace: str | None = None) -> Model: ...
        def _ws(self, workspace: str | None) -> str: ...
        def _actor(self) -> str: ...

    def upload_model(
        self, name: str, path: Path, *, framework: str | None = None,
        files: Iterable[Path] = (), description: str | None = None,
        progress: Callable[[int, int], None] | None = None, workspace: str | None = None,
        sample: Path | np.ndarray | None = None, tolerance: float = DEFAULT_TOLERANCE,
        allow_interface_change: bool = False,
        converted: Callable[[Conversion], None] | None = None,
    ) -> ModelVersion:
        """Upload a model file or directory: a new model, or a new version of one.

        A scikit-learn pickle, XGBoost or LightGBM model (framework "sklearn", "xgboost",
        "lightgbm", or guessed) is converted to ONNX here, checked against the original on
        `sample` rows within `tolerance`, and uploaded as ONNX with the original attached;
        `converted(conversion)` hears how closely they agreed. The input and output schema is
        read from the artifact; `progress(done, total)` is called as bytes are stored.
        ArtifactError (ConversionError) says why an artifact was refused.
        """
        ws, path, files = self._ws(workspace), Path(path), [Path(f) for f in files]
        registry = self.registry()
        # Refused before a byte is stored: the fold would refuse the version anyway.
        authorize(registry, ControlEvent("UploadModel", {}, self._actor(), ws))
        for item in (path, *files):
            self._check_size(item)
        kind = framework if framework in KINDS else None
        if framework is None:
            kind = kind_of(path)
        if kind is not None:
            conversion = convert_model(path, kind, sample=sample, tolerance=tolerance)
            if converted:
                converted(conversion)
            self._check_bytes(len(conversion.onnx), f"the ONNX conversion of {str(path)!r}")
            # Workers load only the ONNX; the original is kept beside it, never loaded.
            framework, blob, fmt = "onnx", conversion.onnx, "onnx"
            inputs, outputs = conversion.inputs, conversion.outputs
            extras = [(conversion.original_name, path.read_bytes())]
        else:
            fmt = _format(path)
            framework = framework or framework_of(path)
            blob = artifact_bytes(path)
            check_archive(blob, path)
            inputs, outputs = _describe(framework, path)
            extras = []
        extras += [(f.name, f.read_bytes()) for f in files]
        blobs = [(blob, fmt), *((b, "file") for _, b in extras)]
        total, done = sum(len(b) for b, _ in blobs), 0

        def advance(n: int) -> None:
            nonlocal done
            done += n
            if progress:
                progress(done, total)

        known = _known_artifacts(registry)
        refs = [self._store(b, f, known, advance) for b, f in blobs]
        status = self.send("UploadModel", {
            "name": name, "framework": framework, "artifact": _ref_record(refs[0]),
            "files": [{"name": n, "artifact": _ref_record(r)}
                      for (n, _), r in zip(extras, refs[1:], strict=True)],
            "inputs": [_spec(s) for s in inputs], "outputs": [_spec(s) for s in outputs],
            "description": description, "allow_interface_change": allow_interface_change,
        }, workspace=ws)
        return self.model(name, ws).versions[int(status.result["version"]) - 1]

    def _check_size(self, path: Path) -> None:
        if not path.exists():
            raise ArtifactError(f"{str(path)!r} does not exist; give a file or a directory")
        self._check_bytes(_size(path), repr(str(path)))

    def _check_bytes(self, size: int, what: str) -> None:
        limit = self.settings.max_artifact_bytes
        if size > limit:
            raise ArtifactError(
                f"{what} is {size} bytes, over the upload limit of {limit} bytes; raise "
                "INFERSTREAM_MAX_ARTIFACT_BYTES if this model is meant to be that large"
            )

    def _store(self, blob: bytes, fmt: str, known: dict[str, ArtifactRef], advance: Progress
               ) -> ArtifactRef:
        # An artifact the registry already holds is not stored twice: same bytes, same chunks.
        ref = known.get(sha256_of(blob))
        if ref is not None and ref.format == fmt:
            advance(len(blob))
            return ref
        return ArtifactStore(self.settings).put(blob, fmt, advance)

    def artifact(self, ref: ArtifactRef) -> bytes:
        """An artifact's bytes, checked against its sha256."""
        return ArtifactStore(self.settings).get(ref)


def check_archive(blob: bytes, source: Path | str = "artifact") -> None:
    """Refuse a packed model directory that would write outside its folder when unpacked.

    Workers refuse such archives too (agents.runtimes.packing.unpack); checking here keeps
    them from being stored at all. Only relative paths without '..', and only regular files
    and directories: no links, devices or fifos.
    """
    if blob[257:262] != b"ustar":  # a single file (.onnx, .keras): nothing to unpack
        return
    try:
        with tarfile.open(fileobj=io.BytesIO(blob), mode="r:") as tar:
            members = tar.getmembers()
    except tarfile.TarError as exc:
        raise ArtifactError(f"{source}: the packed model is not a readable tar: {exc}") from None
    for member in members:
        parts = PurePosixPath(member.name).parts
        if member.name.startswith("/") or ".." in parts:
            raise ArtifactError(
                f"{source}: archive member {member.name!r} would land outside the model "
                "directory; re-pack the model with relative paths only"
            )
        if not (member.isfile() or member.isdir()):
            raise ArtifactError(
                f"{source}: archive member {member.name!r} is a link or special file; a model "
                "directory holds only regular files and directories"
            )


def _format(path: Path) -> str:
    """The artifact format of path, or an error that also names the files converted to ONNX."""
    try:
        return artifact_format(path)
    except ArtifactError as exc:
        raise ArtifactError(
            f"{str(exc).rstrip('.')}; or a model converted to ONNX on upload: a scikit-learn "
            "pickle or joblib file (.pkl, .joblib), an XGBoost model (.json, .ubj) or a LightGBM "
            "text model (.txt), with --framework sklearn|xgboost|lightgbm if the name does not say"
        ) from None


def _describe(framework: str, path: Path) -> tuple[tuple[TensorSpec, ...], ...]:
    """The model's inputs and outputs, read by loading it: a model that does not load is
    refused here, with the runtime's reason, instead of on every worker later."""
    try:
        return describe_artifact(framework, path)
    except InferstreamError:
        raise
    except Exception as exc:  # runtimes raise their own types on broken files
        first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ""
        raise ArtifactError(
            f"{str(path)!r} is not a valid {framework} model: {type(exc).__name__}: {first}"
        ) from exc


def _size(path: Path) -> int:
    if path.is_dir():
        return sum(os.lstat(os.path.join(d, f)).st_size
                   for d, _, names in os.walk(path) for f in names)
    return path.stat().st_size


def _spec(s: TensorSpec) -> dict[str, Any]:
    return {"name": s.name, "dtype": s.dtype, "shape": list(s.shape)}


def _known_artifacts(registry: Registry) -> dict[str, ArtifactRef]:
    refs: dict[str, ArtifactRef] = {}
    for model in registry.models.values():
        for version in model.versions:
            refs[version.artifact.sha256] = version.artifact
            refs.update((r.sha256, r) for _, r in version.files)
    return refs


def _ref_record(ref: ArtifactRef) -> dict[str, Any]:
    return {f: getattr(ref, f) for f in ArtifactRef.__dataclass_fields__}
