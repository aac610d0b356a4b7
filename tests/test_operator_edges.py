"""What a new operator meets first (issue 17): `deploy && status` agree, a deploy no worker
confirms exits non-zero, `up` stops all it started on SIGTERM (and makes its data folder, and
gives only the hints that exist), `broker start|stop`, each row's id in a JSON list's answer,
and help texts that say so."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from agents.heartbeat import Heartbeat
from agents.records.formats import ResultMeta, decode_record, encode_result
from control.cli import app, main
from control.cli.pipelines import UNCONFIRMED
from control.cli.platform import broker as broker_commands
from control.client.health import ServingReport, serving_reports, summarise, with_reports
from control.config import Settings
from control.local.brokers import free_port
from control.local.demo import _hints
from control.local.demo_models import build_onnx_classifier
from control.registry.events import ControlEvent, ControlStatus
from control.registry.state import Deployment
from control.registry.tensors import TensorSpec
from tests.helpers import wait_until
from tests.worker_platform import Namespace, Platform, json_records, own_settings, serving

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
HEARTBEAT_S = 30.0  # far longer than a deploy takes: status must not need a fresh heartbeat


def beat(worker: str, age_s: float, serving: dict[str, int]) -> Heartbeat:
    return Heartbeat(worker, NOW - timedelta(seconds=age_s), 5.0, True, True, serving)


def deployed(version: int) -> Deployment:
    return Deployment("lab", "a", version, True, 64, 20, (version,), "ann", NOW)


# -- status agrees with deploy (no broker) ------------------------------------------------------


def test_a_workers_answer_newer_than_its_heartbeat_counts() -> None:
    deploy = ControlEvent("Deploy", {"pipeline": "a"}, "ann", "lab")
    answers = [  # the registrar's verdict (no worker), then w1's answer, then w2's refusal
        ControlStatus(deploy.event_id, 0, "Deploy", "ann", "lab", True, time=NOW),
        ControlStatus(deploy.event_id, 0, "Deploy", "ann", "lab", True,
                      result={"worker": "w1", "serving": "2"}, time=NOW - timedelta(seconds=1)),
        ControlStatus(deploy.event_id, 0, "Deploy", "ann", "lab", False, "cannot load",
                      {"worker": "w2"}, NOW),
    ]
    reports = serving_reports([deploy], answers)
    assert reports == [ServingReport("w1", "lab/a", 2, NOW - timedelta(seconds=1)),
                       ServingReport("w2", "lab/a", None, NOW, "cannot load")]
    beats = [beat("w1", 4, {"lab/a": 1}), beat("w2", 4, {"lab/a": 1})]
    # The heartbeats alone lag: version 2 has no worker yet.
    assert summarise([deployed(2)], beats, NOW).deployments[0].serving == []
    health = summarise([deployed(2)], with_reports(beats, reports, 5.0), NOW)
    row = health.deployments[0]
    assert (row.serving, row.other_versions, row.refused) == (
        ["w1"], {"w2": 1}, {"w2": "cannot load"})
    # An answer older than the heartbeat is old news; a worker that stopped is gone.
    assert with_reports([beat("w1", 0, {"lab/a": 1})], reports[:1], 5.0)[0].serving == {
        "lab/a": 1}
    assert with_reports([], reports[:1], 5.0, stopped=["w1"]) == []
    # A worker that answered before its first heartbeat serves, fresh for 3 intervals.
    only = with_reports([], reports[:1], 5.0)
    assert summarise([deployed(2)], only, NOW).deployments[0].serving == ["w1"]
    assert summarise([deployed(2)], only, NOW + timedelta(seconds=20)).workers[0].stale


# -- a JSON list of rows: each row's id in the answer (no broker) -------------------------------


def test_a_list_of_rows_answers_with_each_rows_id() -> None:
    specs = (TensorSpec("x", "float32", (-1, 2)),)
    meta = ResultMeta("p", 1, "lab", [(1, "m", 1, "primary")], 1000, "w1")

    def answer(doc: object) -> dict:
        record = decode_record(json.dumps(doc).encode(), None, specs, "default")
        return json.loads(encode_result(record, {"y": np.ones((record.rows, 1))}, meta))

    rows = answer([{"id": "a", "x": [1, 2]}, {"x": [3, 4]}, {"id": 7, "x": [5, 6]}])
    assert (rows["id"], rows["ids"], len(rows["outputs"]["y"])) == ("a", ["a", None, "7"], 3)
    one = answer({"id": "r1", "x": [1, 2]})  # one object: the answer is as before
    assert one["id"] == "r1" and "ids" not in one


# -- hints and help (no broker) -----------------------------------------------------------------


def test_up_without_the_demo_hints_only_what_exists() -> None:
    settings = Settings(bootstrap_servers="127.0.0.1:9", namespace="n")
    bare, demo = _hints(settings, "http://w", False), _hints(settings, "http://w", True)
    for demo_only in ("INFERSTREAM_WORKSPACE=demo", "infer iris", "assays", "tasks runs"):
        assert demo_only not in bare and demo_only in demo
    assert "INFERSTREAM_BOOTSTRAP_SERVERS=127.0.0.1:9" in bare and "bootstrap YOU" in bare


@pytest.mark.parametrize(("command", "said"), [
    (["up"], ["--broker-port", "--bind", "--console-port", "SIGTERM"]),
    (["pipelines", "deploy"], ["exit code is 3", "3 when deployed but no worker"]),
    (["pipelines", "rollback"], ["exit code is 3"]),
    (["users", "create"], ["bootstrap NAME", "users create NAME"]),
    (["bootstrap"], ["users create NAME"]),
])
def test_help_says_it(command: list[str], said: list[str]) -> None:
    text = " ".join(CliRunner().invoke(app, [*command, "--help"],
                                       env={"COLUMNS": "200"}).output.split())
    for words in said:
        assert words in text, text


def test_broker_commands_have_help() -> None:
    for command in ("start", "stop"):
        result = CliRunner().invoke(broker_commands, [command, "--help"])
        assert result.exit_code == 0 and "broker" in result.output


# -- against the broker -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def platform(broker, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    with pytest.MonkeyPatch.context() as env:  # worker processes inherit the environment
        env.setenv("INFERSTREAM_HEARTBEAT_S", str(HEARTBEAT_S))
        with serving(broker.bootstrap, tmp_path_factory.mktemp("edges"), "e",
                     keras=False) as p:
            yield p


def run(settings: Settings, capsys: pytest.CaptureFixture[str], *args: str
        ) -> tuple[int, str, str]:
    """`inferstream ... *args` as ann in workspace lab: exit code, stdout, stderr."""
    with pytest.raises(SystemExit) as exit_info:
        main(["--bootstrap-servers", settings.bootstrap_servers, "--namespace",
              settings.namespace, "--data-dir", str(settings.data_dir), "--user", "ann",
              "--workspace", "lab", *args])
        raise SystemExit(0)
    captured = capsys.readouterr()
    return exit_info.value.code, captured.out, captured.err


@pytest.mark.kafka
@pytest.mark.slow
def test_deploy_then_status_at_once_agree(platform: Platform,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    platform.pipeline("agreed", [{"model": "clf", "version": 1}])
    platform.client.create_pipeline_version("agreed", [{"model": "clf", "version": 2}])
    for version in (1, 2):  # the first deploy, then a switch the heartbeat has not seen
        code, out, err = run(platform.settings, capsys, "pipelines", "deploy", "agreed",
                             "--version", str(version), "--wait-workers", "30")
        assert code == 0 and "worker w1 serves it" in out, err
        code, out, err = run(platform.settings, capsys, "status", "--json")
        assert code == 0, out + err
        row = next(d for d in json.loads(out)["deployments"] if d["pipeline"] == "agreed")
        assert (row["version"], row["serving"]) == (version, ["w1"])


@pytest.mark.kafka
@pytest.mark.slow
def test_http_answer_to_a_list_of_rows_carries_each_rows_id(platform: Platform) -> None:
    platform.pipeline("listed", [{"model": "clf", "version": 1}])
    platform.deploy("listed")
    rows = json_records(3)
    code, body = platform.workers[0].post("/pipelines/listed/infer", json.dumps(rows).encode())
    answer = json.loads(body)
    assert code == 200 and answer["ids"] == ["r0", "r1", "r2"], answer
    assert len(answer["outputs"]["label"]) == 3


@pytest.mark.kafka
def test_a_deploy_no_worker_confirms_exits_3(broker, tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    ns = Namespace(own_settings(broker.bootstrap, "nw", tmp_path / "cli"), tmp_path)
    try:
        ns.client.upload_model("clf", build_onnx_classifier(tmp_path / "clf.onnx"))
        ns.client.create_pipeline("lonely")
        ns.client.create_pipeline_version("lonely", [{"model": "clf"}])
        code, out, err = run(ns.settings, capsys, "pipelines", "deploy", "lonely",
                             "--wait-workers", "1")
        assert code == UNCONFIRMED == 3 and "no worker confirmed within 1s" in err, out + err
        assert ns.client.deployments()[0].active  # deployed all the same
    finally:
        ns.close()


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    stat = Path(f"/proc/{pid}/stat")  # a zombie is gone too (nobody left to reap it)
    return stat.exists() and stat.read_text().rsplit(")", 1)[-1].split()[0] == "Z"


@pytest.mark.kafka
@pytest.mark.slow
def test_sigterm_to_up_stops_its_worker_and_console(broker, tmp_path: Path) -> None:
    data = tmp_path / "not" / "yet" / "there"  # up --broker external makes it
    up = subprocess.Popen(
        [sys.executable, "-m", "control.cli", "--bootstrap-servers", broker.bootstrap,
         "--namespace", f"up{os.getpid()}{free_port()}", "--data-dir", str(data), "up",
         "--broker", "external", "--no-demo", "--console-port", str(free_port())],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "COLUMNS": "200"})
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(up.stdout), daemon=True)
    reader.start()
    try:
        wait_until(lambda: any("serving; Ctrl-C" in line for line in lines) or up.poll(), 180,
                   "up serves")
        text = "".join(lines)
        assert up.poll() is None, text
        pids = [int(p) for p in re.findall(r"\(pid (\d+)", text)]
        assert re.search(r"worker worker-1 \(pid \d+\)", text) and pids, text
        assert data.is_dir() and (data / "worker-1.log").exists()
        assert "INFERSTREAM_WORKSPACE=demo" not in text and "infer iris" not in text
        up.send_signal(signal.SIGTERM)
        assert up.wait(90) == 128 + signal.SIGTERM
        reader.join(10)
        assert all(_gone(pid) for pid in pids), "".join(lines)
    finally:
        if up.poll() is None:
            up.kill()
            up.wait(10)


@pytest.mark.kafka
@pytest.mark.slow
def test_broker_start_and_stop(tmp_path: Path) -> None:
    folder, port = tmp_path / "broker", free_port()
    obj = Settings(data_dir=tmp_path)
    started = CliRunner().invoke(broker_commands, ["start", "--port", str(port),
                                                   "--folder", str(folder)], obj=obj)
    try:
        assert started.exit_code == 0, started.output
        assert f"INFERSTREAM_BOOTSTRAP_SERVERS=127.0.0.1:{port}" in started.output
        pid = json.loads((folder / "broker.pid").read_text())["pid"]
        assert not _gone(pid)
    finally:
        stopped = CliRunner().invoke(broker_commands, ["stop", "--folder", str(folder)],
                                     obj=obj)
    assert stopped.exit_code == 0, stopped.output
    wait_until(lambda: _gone(pid), 30, "the broker stopped")
    assert not (folder / "broker.pid").exists()
