"""The Faust app of a worker: wires the intake, the registry, schedules and the web server.

Every worker of a platform joins the same Faust app `<namespace>-workers` (its group elects
the leader that runs schedules when storage is a server) and the intake's consumer group
`<namespace>-workers-serving`, which splits the input topics' partitions among them.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import sys
from datetime import timedelta
from pathlib import Path
from urllib.parse import urlsplit

import faust

from agents import heartbeat, web
from agents.http_guard import Guard
from agents.scheduling.assay_scheduler import AssayScheduler, alerts_topic
from agents.scheduling.canary_controller import CanaryController
from agents.scheduling.orchestration import RunExecutor
from agents.scheduling.redrive import Redriver
from agents.scheduling.rule_executor import RuleExecutor
from agents.scheduling.task_scheduler import TaskScheduler
from agents.serving.dataplane import DataPlane
from agents.serving.deployments import DeploymentManager
from agents.serving.replay import ReplayRunner
from control.config import Settings
from control.follower import RegistryFollower
from control.kafka import (
    end_offsets,
    ensure_topics,
    faust_broker_options,
    platform_topics,
    replication_factor,
)
from control.registrar import Registrar
from control.registry.events import ControlStatus
from control.registry.state import Registry
from sinks import label_sink
from sinks.log_sink import LogSink, LogSinkThread
from sinks.storage import StorageError

log = logging.getLogger(__name__)

DEPLOYMENT_EVENTS = {"Deploy", "Undeploy", "Rollback", "UploadModel", "PauseRoute", "ResumeRoute",
                     "StartCanary", "AdvanceCanary", "RollbackCanary", "AbortCanary"}


SWITCH_INTERVAL_S = 0.001
RETRY_TICK_S = 2.5  # how often refused versions are looked at (each has its own delay)


def worker_name(settings: Settings) -> str:
    return settings.worker_name or f"{socket.gethostname()}:{os.getpid()}"


def create_app(settings: Settings) -> faust.App:
    """A worker app for the platform `settings` names; run it with app.main()."""
    # The intake serves records in a thread of its own, beside the event loop, the commit
    # thread and the log sink's: a thread that wants the GIL waits up to the switch interval
    # for the one running Python to let go (5 ms by default), at every hand-over.
    sys.setswitchinterval(SWITCH_INTERVAL_S)
    guard = Guard(settings)
    datadir = Path(settings.data_dir).resolve() / "faust"
    datadir.mkdir(parents=True, exist_ok=True)
    # Faust makes topics of its own (the leader's): as many replicas as the platform's.
    replicas = replication_factor(settings)
    if replicas is None:
        log.warning("Faust's own topics get Faust's default of 1 replica: the cluster does not "
                    "say its default.replication.factor; set INFERSTREAM_REPLICATION_FACTOR")
    app = faust.App(
        f"{settings.namespace}-workers",
        **({"topic_replication_factor": replicas} if replicas else {}),
        **faust_broker_options(settings),  # the brokers, and SASL/TLS credentials
        datadir=str(datadir),
        key_serializer="raw",
        value_serializer="raw",
        store="memory://",  # no correctness-critical state lives in Faust tables
        topic_disable_leader=False,  # the leader runs the assays when storage is a server
        topic_partitions=settings.pipeline_partitions,
        consumer_auto_offset_reset="earliest",
        # Quick group joins when a worker comes or goes.
        broker_session_timeout=6.0,
        broker_heartbeat_interval=1.0,
        broker_rebalance_timeout=8.0,
        web_port=settings.worker_web_port,
        # Faust binds web_bind (every interface unless told) and only names web_host in URLs.
        web_bind=settings.worker_bind,
        web_host=urlsplit(settings.worker_url).hostname,
        web_ssl_context=settings.http_server_tls(),
        web_application_options=guard.application_options(),
        # Faust's own pages (partition router, tables, graph, stats) would answer anyone:
        # a worker serves only the pages of agents/web.py.
        web_router_enabled=False, web_tables_enabled=False, web_graph_enabled=False,
        web_stats_enabled=False, web_metrics_enabled=False,
        producer_acks=-1,
    )
    name = worker_name(settings)
    plane = DataPlane(settings, name)
    manager = DeploymentManager(settings, plane)
    app.inferstream = manager  # type: ignore[attr-defined] - the web views reach it here
    ensure_topics(settings, platform_topics(settings))

    sink = LogSink(settings, settings.worker_url)
    app.inferstream_sink = sink  # type: ignore[attr-defined]
    if settings.log_sink:

        @app.task
        async def sink_logs() -> None:
            LogSinkThread(settings, sink, plane.metrics.sunk).start()
            # Ground truth from every pipeline's labels topic, by the same storage owner.
            label_sink.start(settings, sink)

    scheduler = AssayScheduler(alerts_topic(settings), timedelta(seconds=settings.assay_rescore_s))

    def scheduling() -> RegistryFollower | None:
        """The registry follower when this worker runs schedules: with chDB the worker whose
        sink owns the folder, with a server the group leader."""
        owns = sink.storage is not None if not settings.clickhouse_url else app.is_leader()
        return getattr(app, "inferstream_follower", None) if owns else None

    @app.timer(settings.assay_tick_s)
    async def run_assays() -> None:
        follower = scheduling()
        if follower is None:
            return
        loop = asyncio.get_running_loop()
        storage = await loop.run_in_executor(None, sink.open)
        await loop.run_in_executor(None, scheduler.tick, storage, follower.registry)

    tasks: list[TaskScheduler] = []  # made on first use: it needs the broker's claims topic

    @app.timer(settings.task_tick_s)
    async def run_tasks() -> None:
        follower = scheduling()
        if follower is None:
            return
        loop = asyncio.get_running_loop()
        if not tasks:
            executor = RunExecutor(settings, manager.cache, plane)
            tasks.append(await loop.run_in_executor(None, TaskScheduler, settings, executor, name))
        storage = await loop.run_in_executor(None, sink.open)
        await loop.run_in_executor(None, tasks[0].tick, storage, lambda: follower.registry)

    replays: list[ReplayRunner] = []  # running while this worker runs the schedules

    @app.timer(settings.replay_tick_s)
    async def run_replays() -> None:
        # One worker at a time runs replays: the one that runs schedules. A hand-over is safe:
        # the next one's transactional id is the replay's, which fences the last one's writes.
        follower = scheduling()
        if follower is not None and not replays:
            replays.append(ReplayRunner(settings, name, manager.cache,
                                        lambda: follower.registry).start())
        elif follower is None and replays:
            runner = replays.pop()
            await asyncio.get_running_loop().run_in_executor(None, runner.stop)

    redriver = Redriver(settings)

    @app.timer(settings.redrive_tick_s)
    async def run_redrives() -> None:
        # One worker at a time (the one that runs schedules): each redrive has one producer.
        follower = scheduling()
        if follower is not None:
            await asyncio.get_running_loop().run_in_executor(None, redriver.tick,
                                                             follower.registry)

    canaries: list[CanaryController] = []  # made on first use, by the schedules' owner

    @app.timer(settings.canary_tick_s)
    async def judge_canaries() -> None:
        follower = scheduling()
        if follower is None:
            return
        loop = asyncio.get_running_loop()
        if not canaries:
            canaries.append(await loop.run_in_executor(
                None, CanaryController, settings, lambda: follower.registry,
                follower.wait_caught_up))
        await loop.run_in_executor(None, canaries[0].tick, sink.open)

    @app.timer(RETRY_TICK_S)
    async def retry_refused() -> None:
        follower = getattr(app, "inferstream_follower", None)
        if follower is not None and manager.refused:
            await manager.retry_refused(follower.registry)

    @app.task
    async def own_storage() -> None:
        # Open (and, with chDB, own) the storage from the start, so that a CLI started later
        # reads through this worker instead of taking the folder for itself. While another
        # worker owns the folder, try again every few seconds: when it goes, one of the others
        # takes the folder, and with it the log sink and the schedules.
        delay, said = 0.5, False
        while sink.storage is None:
            try:
                await asyncio.get_running_loop().run_in_executor(None, sink.open)
            except StorageError as exc:
                (log.debug if said else log.warning)(
                    "storage not available yet; retrying every few seconds: %s", exc)
                said = True
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    @app.task
    async def follow_registry() -> None:
        loop = asyncio.get_running_loop()
        live_from = end_offsets(settings, settings.topic("control")).get(0, 0)

        def changed(registry: Registry, status: ControlStatus) -> None:
            # Events before live_from are history being replayed: the reconcile after catching
            # up serves their end state once (reconciling at each of them loaded every version
            # ever deployed in turn: minutes of start-up on a long control log).
            if status.type in DEPLOYMENT_EVENTS and status.offset >= live_from:
                asyncio.run_coroutine_threadsafe(manager.reconcile(registry, status), loop)

        follower = RegistryFollower(settings, changed).start()
        registry = await loop.run_in_executor(None, follower.wait_caught_up)
        # The registrar starts from what the follower folded: one replay of the control log
        # at start-up, not two at once on the same cores.
        registrar = Registrar(settings, seed=follower.snapshot).start()
        await manager.reconcile(registry)
        manager.intake.start()
        guard.registry = lambda: follower.registry
        if not follower.registry.secured:
            log.warning("open platform: HTTP inference and reads at %s need no credential "
                        "(`inferstream bootstrap` secures a platform)", settings.worker_url)
        manager.replayed = True
        app.inferstream_follower = follower  # type: ignore[attr-defined]
        app.inferstream_registrar = registrar  # type: ignore[attr-defined]
        if settings.rules:  # rules that act on alerts: once the registry says which rules there are
            app.inferstream_rules = RuleExecutor(  # type: ignore[attr-defined]
                settings, lambda: follower.registry, follower.wait_caught_up,
                plane.pipeline_metrics.registry).start()

    web.register(app, manager, sink, guard)
    heartbeat.register(app, manager, settings)

    @app.on_before_shutdown.connect
    def leave(app: faust.App, **_: object) -> None:
        manager.close()  # leaves the serving group at once: the others take its partitions
        for runner in replays:
            runner.stop()
        redriver.stop.set()  # a redrive stops between transactions; the next owner resumes it
        rules = getattr(app, "inferstream_rules", None)
        if rules is not None:
            rules.stop()  # leaves the rules group: another worker reads the alerts
        for controller in canaries:
            controller.close()
    return app
