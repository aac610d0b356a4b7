"""Uploads are checked before anything is stored or registered: who uploads, how large, whether
the model loads, and whether a packed directory could write outside its folder."""

from __future__ import annotations

import io
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from control.client import Client
from control.client.models import check_archive
from control.config import Settings
from control.kafka import end_offsets
from control.local.demo_models import build_keras_model, build_onnx_classifier
from control.registrar import Registrar
from schemas.errors import ArtifactError, Rejected

pytestmark = pytest.mark.kafka


@pytest.fixture
def client(settings: Settings) -> Iterator[Client]:
    registrar = Registrar(settings).start()
    with Client(settings, user="ann", workspace="fraud") as c:
        c.create_user("ann")
        c.create_workspace("fraud")
        yield c
    registrar.stop()


def nothing_stored(client: Client) -> bool:
    """No artifact chunk in the artifact topic, and no model in the registry."""
    stored = sum(end_offsets(client.settings, client.settings.topic("artifacts")).values())
    return stored == 0 and not client.registry().models


def test_an_artifact_over_the_size_limit_is_refused(client: Client, tmp_path: Path) -> None:
    path = build_onnx_classifier(tmp_path / "clf.onnx")
    client.settings = client.settings.model_copy(update={"max_artifact_bytes": 100})

    with pytest.raises(ArtifactError, match=r"over the upload limit of 100 bytes.*"
                                            r"INFERSTREAM_MAX_ARTIFACT_BYTES"):
        client.upload_model("clf", path)
    assert nothing_stored(client)


@pytest.mark.parametrize(("name", "content", "reason"), [
    ("broken.onnx", b"not a protobuf at all", "ONNX"),
    ("broken.keras", b"PK\x03\x04 not a zip either", "broken.keras"),
])
def test_a_file_that_is_no_model_is_refused(client: Client, tmp_path: Path, name: str,
                                            content: bytes, reason: str) -> None:
    (tmp_path / name).write_bytes(content)

    with pytest.raises(ArtifactError, match=reason):
        client.upload_model("clf", tmp_path / name)
    assert nothing_stored(client)


def test_a_model_directory_with_a_link_out_of_it_is_refused(client: Client,
                                                            tmp_path: Path) -> None:
    model = build_keras_model(tmp_path / "scorer", "savedmodel")
    secret = tmp_path / "secret.txt"
    secret.write_text("not for the artifact topic")
    (model / "assets").mkdir(exist_ok=True)
    (model / "assets" / "vocab.txt").symlink_to(secret)

    with pytest.raises(ArtifactError, match=r"symbolic link 'assets/vocab\.txt'"):
        client.upload_model("scorer", model)
    assert nothing_stored(client)


def test_a_viewer_cannot_store_artifacts(client: Client, settings: Settings,
                                         tmp_path: Path) -> None:
    client.create_user("vera")
    client.add_member("vera", "viewer")
    vera = Client(settings, user="vera", workspace="fraud")

    with pytest.raises(Rejected, match="may only read"):
        vera.upload_model("clf", build_onnx_classifier(tmp_path / "clf.onnx"))
    assert nothing_stored(client)


def tar_of(*members: tarfile.TarInfo) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for member in members:
            tar.addfile(member, io.BytesIO(b"x" * member.size) if member.isfile() else None)
    return buffer.getvalue()


def member(name: str, kind: bytes = tarfile.REGTYPE, target: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.size = kind, target, 1 if kind == tarfile.REGTYPE else 0
    return info


@pytest.mark.parametrize(("bad", "reason"), [
    (member("../outside.pb"), "would land outside"),
    (member("variables/../../outside.pb"), "would land outside"),
    (member("/etc/cron.d/evil"), "would land outside"),
    (member("assets/link", tarfile.SYMTYPE, "/etc/passwd"), "link or special file"),
    (member("assets/hard", tarfile.LNKTYPE, "../../etc/passwd"), "link or special file"),
    (member("assets/fifo", tarfile.FIFOTYPE), "link or special file"),
])
def test_archives_that_escape_their_folder_are_refused(bad: tarfile.TarInfo,
                                                       reason: str) -> None:
    blob = tar_of(member("saved_model.pb"), bad)

    with pytest.raises(ArtifactError, match=reason):
        check_archive(blob, "scorer")


def test_a_clean_archive_and_a_single_file_pass() -> None:
    check_archive(tar_of(member("saved_model.pb"), member("variables", tarfile.DIRTYPE),
                         member("variables/variables.index")))
    check_archive(b"\x08\x07onnx protobuf bytes")
