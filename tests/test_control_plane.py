"""The control plane against the real broker: registrar, client, artifact store, replay."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from agents.runtimes import load_model
from agents.runtimes.packing import unpack
from control import artifacts
from control.artifacts import ArtifactStore
from control.client import Client
from control.config import Settings
from control.kafka import producer, read_until_end
from control.local.demo_models import build_keras_model, build_onnx_classifier, iris_rows
from control.registrar import Registrar
from control.registry.events import ControlEvent
from control.registry.state import ArtifactRef, ModelStep, Registry
from schemas.codec import codec
from schemas.errors import ArtifactError, Rejected, StatusTimeout
from tests.helpers import wait_until

pytestmark = pytest.mark.kafka


@pytest.fixture
def registrar(settings: Settings) -> Iterator[Registrar]:
    r = Registrar(settings).start()
    yield r
    r.stop()


@pytest.fixture
def client(settings: Settings, registrar: Registrar) -> Iterator[Client]:
    with Client(settings, user="ann", workspace="fraud") as c:
        c.create_user("ann", email="ann@example.com")
        c.create_workspace("fraud")
        yield c


def digest(registry: Registry) -> str:
    return hashlib.sha256(repr(registry).encode()).hexdigest()


def test_model_pipeline_lifecycle_and_replay(client: Client, registrar: Registrar,
                                            settings: Settings, tmp_path: Path) -> None:
    v1 = client.upload_model("clf", build_onnx_classifier(tmp_path / "a.onnx", seed=0))
    v2 = client.upload_model("clf", build_onnx_classifier(tmp_path / "b.onnx", seed=1))
    assert (v1.version, v2.version) == (1, 2)
    assert v1.artifact.sha256 != v2.artifact.sha256
    assert [s.name for s in v1.outputs] == ["label", "probabilities"]

    tf = client.upload_model("scorer", build_keras_model(tmp_path / "scorer", "savedmodel"))
    assert (tf.framework, tf.artifact.format, tf.version) == ("tensorflow", "savedmodel", 1)
    assert [s.name for s in tf.inputs] == ["probabilities"]

    client.create_pipeline("scoring", "iris, then a score")
    p1 = client.create_pipeline_version("scoring", [{"model": "clf", "version": 1},
                                                    {"model": "scorer"}])
    p2 = client.create_pipeline_version("scoring", [ModelStep("clf", 2), ModelStep("scorer", 1)])
    assert (p1.version, p2.version) == (1, 2)
    assert client.deploy("scoring", 1).version == 1
    assert client.deploy("scoring").version == 2
    rolled = client.rollback("scoring")
    assert (rolled.version, rolled.history) == (1, (1, 2, 1))

    before = client.registry()
    # Bytes that are not a control event at all, and an event acting on an unknown model.
    garbage = client.publish(b"\x00not avro at all", "garbage-1")
    assert not garbage.accepted and "not a control event" in garbage.reason
    with pytest.raises(Rejected, match="unknown model 'nope'"):
        client.create_pipeline_version("scoring", [ModelStep("nope", 1)])
    with pytest.raises(Rejected, match="no version 7"):
        client.deploy("scoring", 7)
    assert client.registry() == before
    wait_until(lambda: registrar.registry == before, 10, "registrar caught up")

    # A second process replaying the control topic rebuilds the very same registry.
    script = (
        "import hashlib; from control.client import Client; from control.config import Settings\n"
        f"s = Settings(bootstrap_servers={settings.bootstrap_servers!r}, "
        f"namespace={settings.namespace!r})\n"
        "print(hashlib.sha256(repr(Client(s).registry()).encode()).hexdigest())\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         check=True, timeout=120)
    assert out.stdout.strip() == digest(before) == digest(registrar.registry)


def test_garbage_on_the_control_topic_gets_a_rejected_status(client: Client) -> None:
    status = client.publish(b"\xc3\x01" + b"\xff" * 12, "whatever")
    assert not status.accepted
    assert "not a control event" in status.reason
    assert any(s.reason == status.reason for s in client.statuses())


def test_artifacts_round_trip_and_are_checked(settings: Settings, tmp_path: Path, broker) -> None:
    if broker.kind == "tansu":
        pytest.skip("Tansu broker: records of multi-record produce batches go missing "
                    "(chunks 3 and 5 of 6 were never fetched); runs on Apache Kafka")
    settings = settings.model_copy(update={"artifact_chunk_bytes": 100})
    store = ArtifactStore(settings)
    blob = build_onnx_classifier(tmp_path / "m.onnx").read_bytes()
    ref = store.put(blob, "onnx")
    assert ref.chunks == -(-len(blob) // 100) > 1
    # A worker elsewhere: empty cache, only Kafka.
    fresh = ArtifactStore(settings.model_copy(update={"data_dir": tmp_path / "elsewhere"}))
    assert fresh.get(ref) == blob
    runtime = load_model("onnx", unpack(fresh.get(ref), tmp_path / "unpacked", ".onnx"))
    assert runtime.predict({"float_input": iris_rows(3)})["probabilities"].shape == (3, 3)

    # Chunks whose bytes do not hash to the sha256 they claim are refused.
    claimed = hashlib.sha256(b"the real bytes").hexdigest()
    p = producer(settings)
    value = codec("ArtifactChunk").encode(
        {"sha256": claimed, "index": 0, "count": 1, "size": 14, "data": b"forged bytes!!"})
    p.produce(settings.topic("artifacts"), key=f"{claimed}:0".encode(), value=value)
    p.flush(10)
    forged = ArtifactRef(claimed, 14, "file", settings.topic("artifacts"), 0, 10**9, 1)
    other = ArtifactStore(settings.model_copy(update={"data_dir": tmp_path / "third"}))
    with pytest.raises(ArtifactError, match="corrupt"):
        other.get(forged)


def test_an_artifact_larger_than_the_upload_queue_waits_for_room_and_arrives_whole(
        settings: Settings, tmp_path: Path, broker, monkeypatch: pytest.MonkeyPatch) -> None:
    # The queue shrunk to 1 MB stands in for a 1 GB model against the 64 MB queue: librdkafka
    # refused the chunks past its queue's size (BufferError) and the upload failed.
    if broker.kind == "tansu":
        pytest.skip("Tansu broker: records of multi-record produce batches go missing")
    monkeypatch.setattr(artifacts, "UPLOAD_QUEUE_KB", 1024)
    settings = settings.model_copy(update={"artifact_chunk_bytes": 256 * 1024})
    blob = np.random.default_rng(7).bytes(12 * 1024 * 1024)
    sent: list[int] = []
    ref = ArtifactStore(settings).put(blob, "file", progress=sent.append)
    assert ref.chunks == 48 and sum(sent) == len(blob)
    fresh = ArtifactStore(settings.model_copy(update={"data_dir": tmp_path / "elsewhere"}))
    assert fresh.get(ref) == blob


def test_savedmodel_artifact_loads_on_another_worker(client: Client, settings: Settings,
                                                     tmp_path: Path) -> None:
    path = build_keras_model(tmp_path / "scorer", "savedmodel")
    version = client.upload_model("scorer", path)
    elsewhere = ArtifactStore(settings.model_copy(update={"data_dir": tmp_path / "w2"}))
    model_dir = unpack(elsewhere.get(version.artifact), tmp_path / "w2" / "model")
    x = np.random.default_rng(0).random((5, 3), dtype=np.float32)
    got = load_model("tensorflow", model_dir).predict({"probabilities": x})["score"]
    want = load_model("tensorflow", path).predict({"probabilities": x})["score"]
    np.testing.assert_allclose(got, want, rtol=1e-6)


def test_same_bytes_are_stored_once(client: Client, tmp_path: Path, settings: Settings) -> None:
    path = build_onnx_classifier(tmp_path / "m.onnx")
    client.upload_model("a", path)
    client.upload_model("b", path)
    models = {m.name: m.latest.artifact for m in client.models()}
    assert models["a"] == models["b"]
    assert len(list(read_until_end(settings, settings.topic("artifacts")))) == 1


def test_registrar_restart_judges_each_event_once(settings: Settings) -> None:
    first = Registrar(settings).start()
    with Client(settings, user="ann") as c:
        c.create_user("ann")
        first.stop()
        second = Registrar(settings).start()
        try:
            c.create_workspace("ws")
            wait_until(lambda: second.applied == 2, 20, "second registrar replayed")
        finally:
            second.stop()
        statuses = c.statuses()
    assert [s.type for s in statuses] == ["CreateUser", "CreateWorkspace"]
    assert all(s.accepted for s in statuses)


def test_no_registrar_means_a_clear_timeout(settings: Settings) -> None:
    with pytest.raises(StatusTimeout, match="is a registrar running"):
        Client(settings, user="ann").send("CreateUser", {"name": "ann", "email": None,
                                                         "admin": False}, scoped=False,
                                          timeout=2)


def test_old_events_still_replay(client: Client) -> None:
    event = ControlEvent("CreateWorkspace", {"name": "second"}, actor="ann")
    status = client.publish(event.to_bytes(), event.event_id)
    assert status.accepted and "second" in client.registry().workspaces
