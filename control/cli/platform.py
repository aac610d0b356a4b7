"""CLI commands that run the platform or talk to it as data: up, broker, registrar, worker,
infer, and the Kafka ACLs that lock its topics down."""

from __future__ import annotations

import json
import sys
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from control.cli.base import JsonFlag, client_of, out, to_json
from control.config import Settings
from schemas.errors import InferstreamError


class BrokerKind(StrEnum):
    auto = "auto"
    kafka = "kafka"
    tansu = "tansu"
    external = "external"


# -- the embedded platform -------------------------------------------------------------------


def up(
    ctx: typer.Context,
    broker: Annotated[BrokerKind, typer.Option(
        help="auto: Apache Kafka from local jars if present, else Tansu; external: use "
             "--bootstrap-servers as is (e.g. one `inferstream broker start` runs)")
    ] = BrokerKind.auto,
    broker_port: Annotated[int | None, typer.Option(
        min=1, max=65535, help="Port of the local broker on 127.0.0.1 (default: 9092 when "
        "free, else any free port); not with --broker external")] = None,
    bind: Annotated[str | None, typer.Option(
        help="Address the worker's and the console's HTTP listen on (env "
        "INFERSTREAM_WORKER_BIND; default 127.0.0.1, loopback only; 0.0.0.0 for every "
        "interface)")] = None,
    console_port: Annotated[int | None, typer.Option(
        min=1, max=65535, help="Port of the web console (default: 8080, or the next free "
        "one)")] = None,
    web_console: Annotated[bool, typer.Option(
        "--console/--no-console", help="Start the web console beside the worker")] = True,
    demo: Annotated[bool, typer.Option(help="Register and deploy a demo model")] = True,
    once: Annotated[bool, typer.Option(help="Stop after the demo instead of serving")] = False,
) -> None:
    """Start the embedded platform: a local broker, the registrar, a worker, the web console
    and a demo.

    Ctrl-C or SIGTERM stops everything it started. Its files (broker, worker log and
    storage) live in --data-dir.
    """
    from control.local.demo import run_embedded

    if broker_port is not None and broker is BrokerKind.external:
        raise typer.BadParameter("--broker-port starts a local broker: not with --broker "
                                 "external (give --bootstrap-servers instead)")
    run_embedded(ctx.obj, broker.value, demo=demo, once=once, console=out,
                 broker_port=broker_port, bind=bind, web_console=web_console,
                 console_port=console_port)


# -- a local broker on its own --------------------------------------------------------------

broker = typer.Typer(
    help="Start or stop a local broker on 127.0.0.1 that outlives the command, for workers "
    "and `up --broker external` started by hand.", no_args_is_help=True)


@broker.command("start")
def broker_start(
    ctx: typer.Context,
    kind: Annotated[BrokerKind, typer.Option(
        help="auto: Apache Kafka from local jars if present, else Tansu (memory only)")
    ] = BrokerKind.auto,
    port: Annotated[int | None, typer.Option(
        min=1, max=65535, help="Port on 127.0.0.1 (default: 9092 when free, else any)")] = None,
    folder: Annotated[Path | None, typer.Option(
        help="The broker's files and pid file (default: <data dir>/broker)")] = None,
) -> None:
    """Start a broker in the background and print its address; `broker stop` stops it."""
    from control.local.brokers import main
    from control.local.demo import default_broker_port

    if kind is BrokerKind.external:
        raise typer.BadParameter("--kind external starts nothing: choose auto, kafka or tansu")
    where = folder or ctx.obj.data_dir / "broker"
    chosen = port or default_broker_port()
    code = main(["start", "--data-dir", str(where), "--kind", kind.value,
                 *(["--port", str(chosen)] if chosen else [])])
    if code == 0:
        facts = json.loads((where.resolve() / "broker.pid").read_text())
        out.print(f"use it: export INFERSTREAM_BOOTSTRAP_SERVERS={facts['bootstrap']}; "
                  "then `inferstream up --broker external` or `inferstream worker`",
                  highlight=False)
    raise typer.Exit(code)


@broker.command("stop")
def broker_stop(
    ctx: typer.Context,
    folder: Annotated[Path | None, typer.Option(
        help="The folder `broker start` used (default: <data dir>/broker)")] = None,
) -> None:
    """Stop the broker `broker start` started in that folder (its topics stay on disk)."""
    from control.local.brokers import main

    raise typer.Exit(main(["stop", "--data-dir", str(folder or ctx.obj.data_dir / "broker")]))


def registrar(ctx: typer.Context) -> None:
    """Judge control events and publish their statuses, against the configured broker.

    Workers will run it too; one is active at a time, others stand by in its consumer group.
    """
    import threading

    from control.registrar import Registrar

    Registrar(ctx.obj).start()
    out.print(f"registrar on {ctx.obj.bootstrap_servers} namespace {ctx.obj.namespace}; "
              "Ctrl-C stops it")
    threading.Event().wait()


def worker(
    ctx: typer.Context,
    web_port: Annotated[int | None, typer.Option(
        help="HTTP port for inference and health (env INFERSTREAM_WORKER_WEB_PORT)")] = None,
    bind: Annotated[str | None, typer.Option(
        help="Address the HTTP server listens on (env INFERSTREAM_WORKER_BIND; default "
        "127.0.0.1, loopback only; 0.0.0.0 for every interface)")] = None,
    loglevel: Annotated[str, typer.Option(help="crit, error, warn, info or debug")] = "warn",
) -> None:
    """Run a worker: serve every deployed pipeline. Start more, anywhere, to scale out."""
    from agents.app import create_app

    settings: Settings = ctx.obj
    if web_port is not None:
        settings = settings.model_copy(update={"worker_web_port": web_port})
    if bind is not None:
        settings = settings.model_copy(update={"worker_bind": bind})
    faust_app = create_app(settings)
    # Faust's own command line would otherwise set its defaults over the app's settings.
    sys.argv = ["inferstream worker", "worker", "--loglevel", loglevel,
                "--web-port", str(settings.worker_web_port),
                "--web-bind", settings.worker_bind,
                "--web-host", faust_app.conf.web_host]
    faust_app.main()


def infer(
    ctx: typer.Context, pipeline: str,
    file: Annotated[Path | None, typer.Option(
        exists=True, help="Records: a .jsonl file (one per line) or a .json list or object")
    ] = None,
    data: Annotated[str | None, typer.Option(help="One record, inline (JSON or V2 JSON)")] = None,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for all results")] = 60.0,
    json_out: JsonFlag = False,
) -> None:
    """Send records to a deployed pipeline and print their results (or dead-letter reasons)."""
    if bool(file) == bool(data):
        raise typer.BadParameter("give either --file or --data")
    records = _records(file) if file else [data.encode()]
    replies = client_of(ctx).infer(pipeline, records, timeout=timeout)
    failed = [r for r in replies if not r.ok]
    if json_out:
        print(json.dumps([{"key": r.key, "ok": r.ok, **to_json(r.body)} for r in replies],
                         indent=2, default=str))
    else:
        for r in replies:
            out.print(json.dumps(r.body, default=str) if r.ok
                      else f"[red]dead letter[/] {r.key}: {r.body['reason']}", highlight=False)
    if failed:
        raise typer.Exit(1)


def _records(path: Path) -> list[bytes]:
    text = path.read_text()
    if path.suffix == ".jsonl":
        return [line.encode() for line in text.splitlines() if line.strip()]
    try:
        parsed = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InferstreamError(f"{path} is not JSON: {exc}") from exc
    items = parsed if isinstance(parsed, list) else [parsed]
    return [json.dumps(item).encode() for item in items]


def acls(
    ctx: typer.Context,
    operator: Annotated[str, typer.Option(help="SASL user of operators (CLI, CI/CD)")
                        ] = "inferstream-operator",
    worker: Annotated[str, typer.Option(help="SASL user of the workers")] = "inferstream-worker",
    pipeline: Annotated[str | None, typer.Option(
        metavar="WORKSPACE/PIPELINE", help="Also who may feed and read this pipeline")] = None,
    producer: Annotated[str, typer.Option(help="SASL user that writes its input")] = "producer",
    consumer: Annotated[str, typer.Option(help="SASL user that reads its results")
                        ] = "consumer",
    consumer_group: Annotated[str, typer.Option(help="The consumer's group id")] = "consumer",
    bootstrap: Annotated[str, typer.Option(help="Broker address to print")] = "BROKER:9092",
) -> None:
    """Print the kafka-acls commands that lock this namespace's topics down (docs/security.md).

    Only workers write results, statuses, logs and alerts; only operators write control events.
    """
    from control.local.acls import as_shell, pipeline_acls, platform_acls

    commands = platform_acls(ctx.obj.namespace, operator, worker)
    if pipeline:
        workspace, sep, name = pipeline.partition("/")
        if not sep or not workspace or not name:
            raise typer.BadParameter(f"--pipeline {pipeline!r} is not WORKSPACE/PIPELINE")
        commands += pipeline_acls(ctx.obj.namespace, workspace, name, producer, consumer,
                                  consumer_group)
    print(as_shell(commands, bootstrap))
