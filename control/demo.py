"""`inferstream up`: the embedded platform on one machine, and a demo on it."""

from __future__ import annotations

import socket
import tempfile
import threading
from pathlib import Path

from rich.console import Console

from control.brokers import LocalBroker, start_local_broker
from control.client import Client
from control.config import Settings
from control.kafka import ensure_topics, platform_topics
from control.registrar import Registrar
from control.state import Registry

DEMO_USER, DEMO_WORKSPACE, DEMO_PIPELINE = "admin", "demo", "iris"


def run_embedded(settings: Settings, broker_kind: str, *, demo: bool, once: bool,
                 console: Console) -> None:
    """Start a broker (unless external) and the registrar; run the demo; serve until Ctrl-C."""
    broker: LocalBroker | None = None
    if broker_kind != "external":
        port = 9092 if _free(9092) else None
        with console.status("starting the local broker…"):
            broker = start_local_broker(settings.data_dir / "broker", broker_kind, port)
        settings = settings.model_copy(update={"bootstrap_servers": broker.bootstrap})
        console.print(f"[green]broker[/] {broker.kind} {broker.version} at {broker.bootstrap} "
                      f"(log: {broker.log_path})")
        for defect in broker.defects:
            console.print(f"[yellow]warning:[/] Tansu broker: {defect}")
    registrar = Registrar(settings).start()
    try:
        ensure_topics(settings, platform_topics(settings))
        if demo:
            run_demo(settings, console)
        console.print(
            "\nReach it from another shell:\n"
            f"  export INFERSTREAM_BOOTSTRAP_SERVERS={settings.bootstrap_servers}\n"
            f"  export INFERSTREAM_NAMESPACE={settings.namespace}\n"
            f"  export INFERSTREAM_USER={DEMO_USER} INFERSTREAM_WORKSPACE={DEMO_WORKSPACE}\n"
            "  inferstream pipelines list"
        )
        if not once:
            console.print("[bold]serving[/]; Ctrl-C stops the platform")
            threading.Event().wait()
    finally:
        registrar.stop()
        if broker is not None:
            broker.stop()


def run_demo(settings: Settings, console: Console) -> Registry:
    """Register two real models, chain them in a pipeline and deploy it (idempotent)."""
    from agents.demo_models import build_keras_model, build_onnx_classifier

    client = Client(settings, user=DEMO_USER, workspace=DEMO_WORKSPACE)
    registry = client.registry()
    if DEMO_USER not in registry.users:
        client.create_user(DEMO_USER, admin=True)
    if DEMO_WORKSPACE not in registry.workspaces:
        client.create_workspace(DEMO_WORKSPACE)
    with tempfile.TemporaryDirectory() as tmp, console.status("training the demo models…"):
        clf = build_onnx_classifier(Path(tmp) / "iris.onnx")
        scorer = build_keras_model(Path(tmp) / "scorer", kind="savedmodel")
        for name, path in (("iris-classifier", clf), ("risk-scorer", scorer)):
            if (DEMO_WORKSPACE, name) not in registry.models:
                v = client.upload_model(name, path, description="demo model")
                console.print(f"[green]model[/] {v.model} v{v.version} ({v.framework})")
    if (DEMO_WORKSPACE, DEMO_PIPELINE) not in registry.pipelines:
        client.create_pipeline(DEMO_PIPELINE, "iris classes, then a risk score")
        client.create_pipeline_version(
            DEMO_PIPELINE, [{"model": "iris-classifier"}, {"model": "risk-scorer"}]
        )
    deployment = client.deploy(DEMO_PIPELINE)
    console.print(f"[green]deployed[/] pipeline {DEMO_PIPELINE} v{deployment.version}: "
                  "iris-classifier (ONNX) → risk-scorer (TensorFlow)")
    return client.registry()


def _free(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0
