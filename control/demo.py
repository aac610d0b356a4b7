"""`inferstream up`: the embedded platform on one machine, and a demo on it.

The platform is a local broker, the registrar, and one worker process (which also
owns the embedded chDB storage). The demo trains two real models from data that
ships with scikit-learn, chains them in a pipeline, deploys it, and streams records.
"""

from __future__ import annotations

import socket
import tempfile
import threading
from pathlib import Path

from rich.console import Console
from rich.table import Table

from agents.worker_process import WorkerProcess
from control.brokers import LocalBroker, start_local_broker
from control.client import Client
from control.config import Settings
from control.kafka import ensure_topics, platform_topics
from control.registrar import Registrar

DEMO_USER, DEMO_WORKSPACE, DEMO_PIPELINE = "admin", "demo", "iris"


def run_embedded(settings: Settings, broker_kind: str, *, demo: bool, once: bool,
                 console: Console) -> None:
    """Start a broker (unless external), the registrar and a worker; run the demo; serve."""
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
    worker: WorkerProcess | None = None
    try:
        ensure_topics(settings, platform_topics(settings))
        with console.status("starting a worker…"):
            worker = WorkerProcess(settings, "worker-1", settings.data_dir.resolve(),
                                   data_dir=settings.data_dir.resolve())
            worker.wait_ready()
        console.print(f"[green]worker[/] {worker.name}: http://127.0.0.1:{worker.port} "
                      f"(log: {worker.log_path})")
        if demo:
            run_demo(settings, console)
        console.print(
            "\nReach it from another shell:\n"
            f"  export INFERSTREAM_BOOTSTRAP_SERVERS={settings.bootstrap_servers}\n"
            f"  export INFERSTREAM_NAMESPACE={settings.namespace}\n"
            f"  export INFERSTREAM_USER={DEMO_USER} INFERSTREAM_WORKSPACE={DEMO_WORKSPACE}\n"
            "  inferstream pipelines list\n"
            f"  inferstream infer {DEMO_PIPELINE} --data "
            "'{\"float_input\": [6.3, 3.3, 6.0, 2.5]}'\n"
            f"  curl -s -XPOST http://127.0.0.1:{worker.port}/pipelines/{DEMO_PIPELINE}/infer "
            "-d '{\"float_input\": [5.1, 3.5, 1.4, 0.2]}'"
        )
        if not once:
            console.print("[bold]serving[/]; Ctrl-C stops the platform")
            threading.Event().wait()
    finally:
        if worker is not None:
            worker.stop()
        registrar.stop()
        if broker is not None:
            broker.stop()


def run_demo(settings: Settings, console: Console) -> None:
    """Register two real models, chain them, deploy, and stream iris records through."""
    from agents.demo_models import build_onnx_classifier, build_trained_scorer, iris_rows

    client = Client(settings, user=DEMO_USER, workspace=DEMO_WORKSPACE)
    registry = client.registry()
    if DEMO_USER not in registry.users:
        client.create_user(DEMO_USER, admin=True)
    if DEMO_WORKSPACE not in registry.workspaces:
        client.create_workspace(DEMO_WORKSPACE)
    if (DEMO_WORKSPACE, DEMO_PIPELINE) not in registry.pipelines:
        with tempfile.TemporaryDirectory() as tmp, console.status("training the demo models…"):
            clf = build_onnx_classifier(Path(tmp) / "iris.onnx")
            scorer = build_trained_scorer(Path(tmp) / "scorer", clf)
            for name, path in (("iris-classifier", clf), ("virginica-scorer", scorer)):
                v = client.upload_model(name, path, description="demo model")
                console.print(f"[green]model[/] {v.model} v{v.version} ({v.framework}): "
                              f"{', '.join(s.name for s in v.inputs)} → "
                              f"{', '.join(s.name for s in v.outputs)}")
        client.create_pipeline(DEMO_PIPELINE, "iris classes, then a virginica score")
        client.create_pipeline_version(
            DEMO_PIPELINE, [{"model": "iris-classifier"}, {"model": "virginica-scorer"}])
    deployment = client.deploy(DEMO_PIPELINE, worker_wait=60)
    console.print(f"[green]deployed[/] pipeline {DEMO_PIPELINE} v{deployment.version}: "
                  "iris-classifier (ONNX) → virginica-scorer (TensorFlow)")
    rows = iris_rows()[::15]
    replies = client.infer(DEMO_PIPELINE, [
        {"id": f"iris-{i}", "float_input": row.tolist()} for i, row in enumerate(rows)])
    table = Table(title=f"{len(replies)} records through {DEMO_PIPELINE}")
    for column in ("id", "float_input", "virginica score", "served by", "ms"):
        table.add_column(column)
    for row, reply in zip(rows, replies, strict=True):
        body = reply.body
        table.add_row(body["id"], ", ".join(f"{v:.1f}" for v in row),
                      f"{body['outputs']['score'][0][0]:.3f}",
                      " → ".join(f"{m['model']} v{m['version']}" for m in body["models"]),
                      f"{body['elapsed_ms']:.1f}")
    console.print(table)


def _free(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0
