"""CLI commands that run the platform or talk to it as data: up, registrar, worker, infer,
and the Kafka ACLs that lock its topics down."""

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
             "--bootstrap-servers as is")] = BrokerKind.auto,
    demo: Annotated[bool, typer.Option(help="Register and deploy a demo model")] = True,
    once: Annotated[bool, typer.Option(help="Stop after the demo instead of serving")] = False,
) -> None:
    """Start the embedded platform: a local broker, the registrar and a demo."""
    from control.local.demo import run_embedded

    run_embedded(ctx.obj, broker.value, demo=demo, once=once, console=out)


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
