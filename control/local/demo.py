"""`inferstream up`: the embedded platform on one machine, and a demo on it.

The platform is a local broker, the registrar, one worker process (which also owns the
embedded chDB storage) and the web console's process; SIGTERM or Ctrl-C stops them all.
The demo trains two real models from data that ships with scikit-learn, chains them in a
pipeline, deploys it, and streams records.
"""

from __future__ import annotations

import contextlib
import signal
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from control.client import Client
from control.config import Settings
from control.kafka import ensure_topics, platform_topics
from control.local.brokers import LocalBroker, start_local_broker
from control.local.console_process import ConsoleProcess, console_installed
from control.local.console_process import console_port as console_port_of
from control.local.worker_process import WorkerProcess
from control.registrar import Registrar

DEMO_USER, DEMO_WORKSPACE, DEMO_PIPELINE = "admin", "demo", "iris"
DECISIONS = "iris-decisions"  # raw records -> Python -> converted trees -> Python -> decision
DRIFT_ASSAY, BATCH_TASK = "virginica-drift", "score-iris-every-minute"
WINDOW = timedelta(seconds=5)


def run_embedded(settings: Settings, broker_kind: str, *, demo: bool, once: bool,
                 console: Console, broker_port: int | None = None, bind: str | None = None,
                 web_console: bool = True, console_port: int | None = None) -> None:
    """Start a broker (unless external), the registrar, a worker and the web console; run the
    demo; serve. SIGTERM and SIGINT stop everything it started."""
    if bind is not None:
        settings = settings.model_copy(update={"worker_bind": bind})
    stopping = _Stopping()
    broker: LocalBroker | None = None
    registrar: Registrar | None = None
    worker: WorkerProcess | None = None
    web: ConsoleProcess | None = None
    with stopping.on_signals():
        try:
            if broker_kind != "external":
                port = broker_port or default_broker_port()
                # A signal now would leave a broker we never heard of: act on it once we have it.
                with console.status("starting the local broker…"), stopping.deferred():
                    broker = start_local_broker(settings.data_dir / "broker", broker_kind, port)
                settings = _on_local_broker(settings, broker, console)
            settings.data_dir.mkdir(parents=True, exist_ok=True)  # an external broker made none
            registrar = Registrar(settings).start()
            ensure_topics(settings, platform_topics(settings))
            data = settings.data_dir.resolve()
            with console.status("starting a worker…"):
                with stopping.deferred():
                    # Quick assay ticks, so the demo's drift shows within seconds.
                    worker = WorkerProcess(settings, "worker-1", data, data_dir=data,
                                           env={"INFERSTREAM_ASSAY_TICK_S": "1"})
                worker.wait_ready()
            console.print(f"[green]worker[/] {worker.name} (pid {worker.process.pid}): "
                          f"{worker.url} (log: {worker.log_path})")
            if not (worker.health() or {}).get("secured"):
                console.print("[yellow]open platform[/]: its HTTP needs no credential"
                              + (", so it listens on loopback only"
                                 if settings.worker_bind.startswith("127.") else "")
                              + " (`inferstream bootstrap` secures a new platform)")
            if web_console and console_installed():
                with console.status("starting the console…"):
                    with stopping.deferred():
                        web = ConsoleProcess(
                            worker.settings, settings.worker_bind,
                            console_port_of(settings.worker_bind, console_port), data, data)
                    url = web.wait_ready()
                console.print(f"[green]console[/] {url} (pid {web.process.pid}, log: "
                              f"{web.log_path})")
            if demo:
                run_demo(settings, console)
                run_decisions_demo(settings, console)
                run_drift_demo(settings, console)
                run_batch_demo(settings, console)
            console.print(_hints(settings, worker.url, demo))
            if not once:
                console.print("[bold]serving[/]; Ctrl-C stops the platform")
                threading.Event().wait()
        finally:
            # Whatever stops us (Ctrl-C, SIGTERM, an error): nothing we started outlives us.
            # A second signal must not cut this short (each stop is bounded).
            stopping.ignore()
            for part, stop in (("console", web and web.stop), ("worker", worker and worker.stop),
                               ("registrar", registrar and registrar.stop),
                               ("broker", broker and broker.stop)):
                try:
                    if stop:
                        stop()
                except Exception as exc:  # the others must still stop
                    console.print(f"[red]error:[/] stopping the {part}: {exc}")


def _on_local_broker(settings: Settings, broker: LocalBroker, console: Console) -> Settings:
    """Settings for the broker just started, after saying what it is."""
    settings = settings.model_copy(update={"bootstrap_servers": broker.bootstrap})
    console.print(f"[green]broker[/] {broker.kind} {broker.version} at {broker.bootstrap} "
                  f"(pid {broker.pid}, log: {broker.log_path})")
    for defect in broker.defects:
        console.print(f"[yellow]warning:[/] Tansu broker: {defect}")
    if broker.kind == "tansu":  # no transactions there: see INFERSTREAM_DELIVERY
        settings = settings.model_copy(update={"delivery": "at-least-once"})
        console.print("[yellow]warning:[/] Tansu broker: the worker serves at least once "
                      "(a crash may serve a batch twice)")
    return settings


def _hints(settings: Settings, worker_url: str, demo: bool) -> str:
    """How to reach the platform from another shell; the demo's commands only with the demo."""
    lines = ["\nReach it from another shell:",
             f"  export INFERSTREAM_BOOTSTRAP_SERVERS={settings.bootstrap_servers}",
             f"  export INFERSTREAM_NAMESPACE={settings.namespace}"]
    if settings.delivery != "exactly-once":
        lines.append(f"  export INFERSTREAM_DELIVERY={settings.delivery}")
    if not demo:
        return "\n".join([
            *lines,
            "  inferstream bootstrap YOU          # the first administrator (a secured platform)",
            "  inferstream --user YOU users create YOU   # or: an open platform, no keys",
            "  inferstream status",
            f"  curl -s {worker_url}/health"])
    return "\n".join([
        *lines,
        f"  export INFERSTREAM_USER={DEMO_USER} INFERSTREAM_WORKSPACE={DEMO_WORKSPACE}",
        "  inferstream pipelines list",
        f"  inferstream infer {DEMO_PIPELINE} --data '{{\"float_input\": [6.3, 3.3, 6.0, 2.5]}}'",
        f"  curl -s -XPOST {worker_url}/pipelines/{DEMO_PIPELINE}/infer "
        "-d '{\"float_input\": [5.1, 3.5, 1.4, 0.2]}'",
        f"  inferstream infer {DECISIONS} --data '{{\"sepal_length\": 63, "
        "\"sepal_width\": 33, \"petal_length\": 60, \"petal_width\": 25, \"unit\": \"mm\"}'",
        "  inferstream assays list",
        f"  inferstream assays results {DRIFT_ASSAY}-HHMMSS --plot drift.png",
        f"  inferstream tasks runs {BATCH_TASK}"])


class _Stopping:
    """SIGTERM and SIGINT as exceptions in the main thread, so `finally` stops what `up`
    started; held back while a child process is being started, until we hold its handle."""

    def __init__(self) -> None:
        self._defer, self._pending = False, 0

    @contextlib.contextmanager
    def on_signals(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield  # only the main thread may handle signals (e.g. `up` called from a test)
            return
        before = {sig: signal.signal(sig, self._handle) for sig in (signal.SIGTERM,
                                                                    signal.SIGINT)}
        try:
            yield
        finally:
            for sig, handler in before.items():
                signal.signal(sig, handler)

    @contextlib.contextmanager
    def deferred(self) -> Iterator[None]:
        self._defer = True
        try:
            yield
        finally:
            self._defer = False
        if self._pending:
            self._raise(self._pending)

    def ignore(self) -> None:
        """From now on a signal changes nothing: we are stopping already."""
        self._defer, self._pending = True, 0

    def _handle(self, signum: int, frame: object) -> None:
        if self._defer:
            self._pending = signum
        else:
            self._raise(signum)

    @staticmethod
    def _raise(signum: int) -> None:
        if signum == signal.SIGINT:
            raise KeyboardInterrupt
        raise SystemExit(128 + signum)  # the shell's code for "stopped by SIGTERM"


def run_demo(settings: Settings, console: Console) -> None:
    """Register two real models, chain them, deploy, and stream iris records through."""
    from control.local.demo_models import build_onnx_classifier, build_trained_scorer, iris_rows

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


def run_decisions_demo(settings: Settings, console: Console) -> None:
    """A realistic chain: raw measurements -> a Python pre-processing step -> gradient-boosted
    trees trained in scikit-learn, converted to ONNX on upload -> a Python step that turns the
    probabilities into a decision. Results carry the trees' label and probabilities too."""
    from control.local.demo_models import build_sklearn_trees, demo_step, iris_rows

    client = Client(settings, user=DEMO_USER, workspace=DEMO_WORKSPACE)
    if (DEMO_WORKSPACE, DECISIONS) not in client.registry().pipelines:
        with tempfile.TemporaryDirectory() as tmp, console.status("training the trees…"):
            trees = build_sklearn_trees(Path(tmp) / "iris-trees.joblib")
            uploads = (("iris-features", demo_step("iris_features")), ("iris-trees", trees),
                       ("iris-decision", demo_step("iris_decision")))
            for name, path in uploads:
                v = client.upload_model(name, path, description="demo model", converted=lambda
                                        c: console.print(f"[green]model[/] {c.summary()}"))
                console.print(f"[green]model[/] {v.model} v{v.version} ({v.framework}): "
                              f"{', '.join(s.name for s in v.inputs)} → "
                              f"{', '.join(s.name for s in v.outputs)}")
        client.create_pipeline(DECISIONS, "raw measurements to a decision")
        client.create_pipeline_version(
            DECISIONS, [{"model": name} for name, _ in uploads], result_steps=[2, 3])
    deployment = client.deploy(DECISIONS, worker_wait=60)
    console.print(f"[green]deployed[/] pipeline {DECISIONS} v{deployment.version}: "
                  "iris-features (Python) → iris-trees (scikit-learn, as ONNX) → "
                  "iris-decision (Python)")
    columns = ("sepal_length", "sepal_width", "petal_length", "petal_width")
    records = [{"id": f"raw-{i}", "unit": "cm", **dict(zip(columns, row.tolist(), strict=True))}
               for i, row in enumerate(iris_rows()[::30])]
    records[1] = {**records[1], "unit": "mm", **{c: records[1][c] * 10 for c in columns}}
    records.append({**records[0], "id": "raw-inches", "unit": "in"})  # dead-lettered
    table = Table(title=f"{len(records)} raw records through {DECISIONS}")
    for column in ("id", "unit", "species", "confidence", "decision", "trees' label"):
        table.add_column(column)
    dead = []
    for record, reply in zip(records, client.infer(DECISIONS, records), strict=True):
        out = reply.body.get("outputs", {})
        if reply.ok:
            table.add_row(record["id"], record["unit"], out["species"][0],
                          f"{out['confidence'][0]:.2f}", out["decision"][0],
                          str(out["step2.label"][0]))
        else:
            table.add_row(record["id"], record["unit"], "[red]dead letter[/]", "", "", "")
            dead.append(f"[red]dead letter[/] {record['id']}: {reply.body.get('reason')}")
    console.print(table, *dead)


def run_drift_demo(settings: Settings, console: Console) -> None:
    """Normal traffic as the baseline, one window of it, then one of drifted traffic."""
    from control.client.assay_plot import plot_results
    from control.local.demo_models import iris_rows

    client = Client(settings, user=DEMO_USER, workspace=DEMO_WORKSPACE)
    rows = iris_rows()
    baseline_start = datetime.now(UTC)
    with console.status("streaming normal traffic for the baseline…"):
        _stream(client, rows, baseline_start + 2 * WINDOW)
    first = _next_second() + timedelta(seconds=1)
    name = f"{DRIFT_ASSAY}-{first:%H%M%S}"  # one per run of the demo
    client.create_assay(
        name, pipeline=DEMO_PIPELINE, model="virginica-scorer", io="output", field="score",
        index=0, baseline_start=baseline_start, baseline_end=first, width=WINDOW,
        first_window_start=first, warning_threshold=0.1, alert_threshold=0.25)
    with console.status(f"assay {name}: a window of normal traffic, then one of drift…"):
        _stream(client, rows, first + WINDOW)
        drifted = rows[100:] * np.float32(1.15)  # larger flowers: more "virginica"
        _stream(client, drifted, first + 2 * WINDOW)
        deadline = time.monotonic() + 60
        while len(results := client.assay_results(name)) < 2 and time.monotonic() < deadline:
            time.sleep(0.5)
    table = Table(title=f"assay {name}: PSI of the virginica score, {WINDOW.seconds}s windows")
    for column in ("window", "count", "psi", "status"):
        table.add_column(column)
    for r in results:
        table.add_row(f"{r.window_start:%H:%M:%S}", str(r.window.count), f"{r.score:.3f}",
                      r.status)
    console.print(table)
    if results:
        plot = settings.data_dir.resolve() / "drift.png"
        plot_results(results, plot, f"{DEMO_PIPELINE}: {name}", None)
        console.print(f"[green]plot[/] {plot}")


def run_batch_demo(settings: Settings, console: Console) -> None:
    """A file of flowers scored into a ClickHouse table: now, and then every minute."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from control.local.demo_models import iris_rows

    client = Client(settings, user=DEMO_USER, workspace=DEMO_WORKSPACE)
    registry = client.registry()
    if (DEMO_WORKSPACE, "score-iris") not in registry.orchestrations:
        source = settings.data_dir.resolve() / "demo" / "iris.parquet"
        source.parent.mkdir(parents=True, exist_ok=True)
        rows = iris_rows()
        pq.write_table(pa.table({"id": [f"flower-{i}" for i in range(len(rows))],
                                 "float_input": rows.tolist()}), source)
        client.create_connection("iris-file", "file", {"path": str(source)})
        client.create_connection("iris-scores", "clickhouse", {"table": "iris_scores"})
        client.create_orchestration("score-iris", source="iris-file", pipelines=[DEMO_PIPELINE],
                                    destination="iris-scores", carry=["id"], batch_size=50)
    if (DEMO_WORKSPACE, BATCH_TASK) not in registry.tasks:
        client.create_task(BATCH_TASK, "score-iris", schedule="* * * * *")
        console.print(f"[green]task[/] {BATCH_TASK}: score-iris every minute, into the "
                      "ClickHouse table iris_scores")
    task = client.create_task(f"score-iris-now-{_next_second():%H%M%S}", "score-iris")
    run = client.wait_for_run(task.event_id, 120)
    console.print(f"[green]run[/] {task.name}: {run.status}, {run.records_in} in, "
                  f"{run.records_out} out, {run.records_bad} bad "
                  f"({', '.join(f'{p} v{v}' for p, v in run.pipeline_versions.items())})")


def _stream(client: Client, rows: np.ndarray, until: datetime) -> None:
    """Send rows drawn at random (so every window sees the same mix) until `until`."""
    rng = np.random.default_rng(0)
    while datetime.now(UTC) < until:
        chunk = rows[rng.integers(0, len(rows), 10)]
        client.infer(DEMO_PIPELINE, [{"float_input": r.tolist()} for r in chunk])


def _next_second() -> datetime:
    return datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=1)


def default_broker_port() -> int | None:
    """Kafka's usual 9092 when nothing listens there on 127.0.0.1, else None (any free port)."""
    with socket.socket() as s:
        return None if s.connect_ex(("127.0.0.1", 9092)) == 0 else 9092
