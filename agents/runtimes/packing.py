"""Model artifacts as single blobs: a SavedModel directory travels as a deterministic tar."""

from __future__ import annotations

import errno
import io
import os
import shutil
import tarfile
import tempfile
from pathlib import Path, PurePosixPath

from agents.runtimes.python_child import ENTRY as PYTHON_STEP_ENTRY
from schemas.errors import ArtifactError

SAVEDMODEL_MARKER = "saved_model.pb"
FRAMEWORK_OF_FORMAT = {"onnx": "onnx", "savedmodel": "tensorflow", "keras": "tensorflow",
                       "python": "python", "pythondir": "python"}
SUFFIX_OF_FORMAT = {"onnx": ".onnx", "keras": ".keras", "savedmodel": "", "python": ".py",
                    "pythondir": ""}
DIRECTORY_FORMATS = ("savedmodel", "pythondir")  # unpacked as a folder, loaded as one


def artifact_format(path: Path) -> str:
    """ "onnx" for a .onnx file, "keras" for a .keras file, "savedmodel" for a SavedModel dir,
    "python" for a .py file, "pythondir" for a folder holding step.py."""
    path = Path(path)
    if path.is_dir() and (path / SAVEDMODEL_MARKER).is_file():
        return "savedmodel"
    if path.is_dir() and (path / PYTHON_STEP_ENTRY).is_file():
        return "pythondir"
    if path.is_file() and path.suffix in (".onnx", ".keras"):
        return path.suffix[1:]
    if path.is_file() and path.suffix == ".py":
        return "python"
    raise ArtifactError(
        f"{str(path)!r} is not a model artifact; give a .onnx file, a .keras file, a "
        f"SavedModel directory (one holding {SAVEDMODEL_MARKER}), a Python step (.py file) "
        f"or a folder holding {PYTHON_STEP_ENTRY}"
    )


def framework_of(path: Path) -> str:
    """The framework that runs the artifact at path: "onnx", "tensorflow" or "python"."""
    return FRAMEWORK_OF_FORMAT[artifact_format(path)]


def artifact_bytes(path: Path) -> bytes:
    """A file's bytes, or a directory as a tar that is the same bytes for the same content."""
    path = Path(path)
    if path.is_file():
        return path.read_bytes()
    if not path.is_dir():
        raise ArtifactError(f"artifact {str(path)!r} does not exist; give a file or a directory")
    buffer = io.BytesIO()
    # Uncompressed on purpose: gzip output may differ between zlib versions, which would
    # give the same model two sha256 digests, and SavedModel weights barely compress.
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for entry in _walk(path):
            info = _member(path, entry)
            if info.isdir():
                tar.addfile(info)
                continue
            with entry.open("rb") as content:
                tar.addfile(info, content)
    return buffer.getvalue()


def unpack(blob: bytes, dest: Path, suffix: str = "") -> Path:
    """Write blob under the new directory dest; the model path: dest for a tar, else a file.

    A file artifact is written as dest/"model{suffix}" (suffix e.g. ".onnx" or ".keras").
    The directory appears whole or not at all, so a crash never leaves half a model. Several
    processes may unpack the same blob into the same dest at once (workers sharing a data
    folder): the first to publish wins, and the others use its copy.
    """
    dest = Path(dest)
    model = dest if _is_tar(blob) else dest / f"model{suffix}"
    if dest.exists():
        return model  # published whole by an earlier unpack (see below)
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}."))
    try:
        if _is_tar(blob):
            _extract(blob, staging)
        else:
            (staging / f"model{suffix}").write_bytes(blob)
        try:
            os.replace(staging, dest)  # atomic: dest appears whole, or not at all
        except OSError as exc:
            if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST) or not dest.is_dir():
                raise
            shutil.rmtree(staging, ignore_errors=True)  # another process published first
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return model


def _walk(root: Path) -> list[Path]:
    entries: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root):
        entries.extend(Path(dirpath) / name for name in dirnames + filenames)
    # os.walk lists in directory order, which differs between file systems and copies.
    return sorted(entries, key=lambda p: p.relative_to(root).as_posix())


def _member(root: Path, entry: Path) -> tarfile.TarInfo:
    name = entry.relative_to(root).as_posix()
    if entry.is_symlink():
        raise ArtifactError(
            f"artifact directory {str(root)!r} holds a symbolic link {name!r}; "
            "copy the file it points to instead"
        )
    info = tarfile.TarInfo(name)
    # Owner, time and permissions are the packer's accidents, not the model's content.
    info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
    if entry.is_dir():
        info.type, info.mode = tarfile.DIRTYPE, 0o755
    else:
        info.mode, info.size = 0o644, entry.stat().st_size
    return info


def _is_tar(blob: bytes) -> bool:
    # The ustar magic sits at byte 257 of the first header; ONNX protobufs and .keras zips
    # never have it there, while tarfile.is_tarfile would also accept other header variants.
    return blob[257:262] == b"ustar"


def _extract(blob: bytes, dest: Path) -> None:
    with tarfile.open(fileobj=io.BytesIO(blob), mode="r:") as tar:
        for member in tar.getmembers():
            parts = PurePosixPath(member.name).parts
            if member.name.startswith("/") or ".." in parts:
                raise ArtifactError(
                    f"artifact tar member {member.name!r} would land outside the model "
                    "directory; re-pack the model with relative paths only"
                )
        try:
            # The "data" filter also refuses links leading outside, devices and setuid bits.
            tar.extractall(dest, filter="data")
        except tarfile.FilterError as e:
            raise ArtifactError(f"artifact tar refused: {e}; re-pack the model") from e
