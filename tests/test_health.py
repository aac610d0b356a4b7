"""Health, metrics and status: the Prometheus series, the heartbeat record and the status verdict
(pure), then a worker against the real broker: /health/live and /health/ready, /metrics counts,
`inferstream status`, a refused deploy, and heartbeats of a worker that stops or dies."""

from __future__ import annotations

import json
import signal
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from prometheus_client.parser import text_string_to_metric_families

from agents.heartbeat import Heartbeat
from agents.metrics import PipelineMetrics, StageMetrics, worker_exposition
from agents.runtimes.packing import artifact_bytes
from control.artifacts import ArtifactStore, sha256_of
from control.cli import main
from control.cli.status import print_health
from control.client.health import summarise
from control.local.demo_models import build_onnx_classifier
from control.local.worker_process import WorkerProcess
from control.registry.state import Deployment
from schemas.errors import Rejected
from tests.helpers import wait_until
from tests.worker_platform import Platform, json_records, serving

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


def samples(exposition: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a Prometheus text exposition by (name, sorted labels)."""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(exposition.decode())
            for s in family.samples}


def of(pipeline: str, workspace: str = "lab", **more: str) -> tuple[tuple[str, str], ...]:
    return tuple(sorted({"workspace": workspace, "pipeline": pipeline, **more}.items()))


def counted(records_in: tuple[int, ...], out: int, dead: int, batches_s: tuple[float, ...],
            lag: int, version: int, load_failure: tuple[str, str]) -> PipelineMetrics:
    """PipelineMetrics after pipeline lab/a counted these (records in by batch, batch times),
    set its lag and version, and one model load failure of (workspace, pipeline)."""
    m = PipelineMetrics()
    for n in records_in:
        m.records_in("lab", "a", n)
    m.records_out("lab", "a", out)
    m.dead_lettered("lab", "a", dead)
    for seconds in batches_s:
        m.batch_seconds("lab", "a", seconds)
    m.model_load_failure(*load_failure)
    m.set_lag("lab", "a", lag)
    m.set_version("lab", "a", version)
    return m


# -- PipelineMetrics, the worker's series, the heartbeat record (no broker) -----------------------


def test_pipeline_metrics_render_counts_per_pipeline() -> None:
    m = counted(records_in=(7, 3), out=5, dead=2, batches_s=(0.004, 0.2), lag=42, version=3,
                load_failure=("ops", "b"))
    got = samples(m.render())
    assert got[("inferstream_records_in_total", of("a"))] == 10
    assert got[("inferstream_records_out_total", of("a"))] == 5
    assert got[("inferstream_records_dead_lettered_total", of("a"))] == 2
    assert got[("inferstream_model_load_failures_total", of("b", "ops"))] == 1
    assert got[("inferstream_consumer_lag_records", of("a"))] == 42
    assert got[("inferstream_deployed_version", of("a"))] == 3
    assert got[("inferstream_batch_seconds_count", of("a"))] == 2
    assert got[("inferstream_batch_seconds_sum", of("a"))] == pytest.approx(0.204)
    # Buckets from a millisecond to ten seconds: 4 ms falls in le=0.005, 200 ms in le=0.25.
    assert got[("inferstream_batch_seconds_bucket", of("a", le="0.001"))] == 0
    assert got[("inferstream_batch_seconds_bucket", of("a", le="0.005"))] == 1
    assert got[("inferstream_batch_seconds_bucket", of("a", le="0.25"))] == 2
    assert ("inferstream_batch_seconds_bucket", of("a", le="10.0")) in got
    # A second worker in the same process counts apart.
    assert ("inferstream_records_in_total", of("a")) not in samples(PipelineMetrics().render())


def test_snapshot_totals_and_forget_drops_only_the_gauges() -> None:
    m = counted(records_in=(4,), out=3, dead=1, batches_s=(0.010, 0.030), lag=9, version=2,
                load_failure=("lab", "b"))
    snap = m.snapshot()
    assert snap["lab/a"] == {"in": 4, "out": 3, "dead": 1, "load_failures": 0, "lag": 9,
                             "version": 2, "batches": 2, "mean_batch_ms": pytest.approx(20.0)}
    assert snap["lab/b"] == {"in": 0, "out": 0, "dead": 0, "load_failures": 1, "lag": None,
                             "version": None, "batches": 0, "mean_batch_ms": 0.0}
    m.forget("lab", "a")
    m.forget("lab", "never-set")
    after = m.snapshot()["lab/a"]
    assert (after["lag"], after["version"], after["in"], after["batches"]) == (None, None, 4, 2)
    assert ("inferstream_deployed_version", of("a")) not in samples(m.render())


def test_worker_series_per_stage_and_health() -> None:
    stages = StageMetrics()
    stages.ns["infer"] = 1_500_000_000
    stages.sunk(120, 2_000_000)
    got = samples(worker_exposition(stages, live=True, ready=False, refused=2))
    assert got[("inferstream_stage_seconds_total", (("stage", "infer"),))] == 1.5
    assert got[("inferstream_stage_seconds_total", (("stage", "sink"),))] == 0.002
    assert got[("inferstream_sink_rows_total", ())] == 120
    assert got[("inferstream_worker_live", ())] == 1
    assert got[("inferstream_worker_ready", ())] == 0
    assert got[("inferstream_deployments_refused", ())] == 2


def test_heartbeat_record_round_trip_and_garbage() -> None:
    beat = Heartbeat("w1", NOW, 5.0, True, True, {"lab/a": 2}, {"lab/b": "corrupt"},
                     {"lab/a": {"in": 3, "out": 3, "dead": 0}})
    assert Heartbeat.from_bytes(beat.to_bytes()) == beat
    assert json.loads(beat.to_bytes())["time"] == "2026-01-01T12:00:00+00:00"
    for bad in (b"not json", b"{}", b'{"worker": "w1", "time": "yesterday", "interval_s": 5, '
                                     b'"ready": true, "alive": true}'):
        with pytest.raises(ValueError, match="not a worker heartbeat"):
            Heartbeat.from_bytes(bad)


# -- the status verdict (no broker) -------------------------------------------------------------


def deployment(pipeline: str, version: int, active: bool = True) -> Deployment:
    return Deployment("lab", pipeline, version, active, 64, 20, (version,), "ann", NOW)


def beat(worker: str, age_s: float = 1.0, alive: bool = True, interval_s: float = 5.0,
         **fields: dict) -> Heartbeat:
    return Heartbeat(worker, NOW - timedelta(seconds=age_s), interval_s, True, alive,
                     fields.get("serving", {}), fields.get("refused", {}),
                     fields.get("metrics", {}))


def test_status_healthy_when_a_fresh_worker_serves_each_deployed_version() -> None:
    health = summarise(
        [deployment("a", 2), deployment("old", 1, active=False)],
        [beat("w1", serving={"lab/a": 2}, metrics={"lab/a": {"in": 10, "out": 8, "dead": 2,
                                                             "lag": 5}}),
         beat("w2", serving={"lab/a": 2}, metrics={"lab/a": {"in": 1, "out": 1, "dead": 0,
                                                             "lag": None}}),
         beat("w3", age_s=16.0, serving={"lab/a": 2}, metrics={"lab/a": {"in": 99}})],
        NOW)
    assert health.healthy
    [a] = health.deployments  # the undeployed pipeline is not listed
    assert (a.serving, a.records_in, a.records_out, a.dead_lettered, a.lag) == (
        ["w1", "w2"], 11, 9, 2, 5)  # the stale w3 counts for nothing
    assert [(w.worker, w.stale) for w in health.workers] == [
        ("w1", False), ("w2", False), ("w3", True)]


@pytest.mark.parametrize(("beats", "problem"), [
    ([], "no fresh, live worker serves version 2"),
    ([beat("w1", age_s=20.0, serving={"lab/a": 2})], "no fresh, live worker serves version 2"),
    ([beat("w1", alive=False, serving={"lab/a": 2})], "no fresh, live worker serves version 2"),
    ([beat("w1", serving={"lab/a": 1})], "no fresh, live worker serves version 2"),
    ([beat("w1", serving={"lab/a": 2}), beat("w2", serving={"lab/a": 1},
                                              refused={"lab/a": "corrupt artifact"})],
     "refused by w2"),
])
def test_status_unhealthy(beats: list[Heartbeat], problem: str) -> None:
    health = summarise([deployment("a", 2)], beats, NOW)
    assert not health.healthy
    assert problem in health.deployments[0].problems


def test_stale_after_three_of_the_workers_own_beats_unless_told() -> None:
    quick = beat("w1", age_s=4.0, interval_s=1.0, serving={"lab/a": 2})
    assert not summarise([deployment("a", 2)], [quick], NOW).healthy
    assert summarise([deployment("a", 2)], [quick], NOW, stale_s=10.0).healthy
    other = summarise([deployment("a", 2)], [beat("w1", serving={"lab/a": 1})], NOW)
    assert other.deployments[0].other_versions == {"w1": 1}


def test_status_table_prints_reasons_and_stale_workers_verbatim(
        capsys: pytest.CaptureFixture[str]) -> None:
    reason = "worker w2 cannot load a version 2: shape [1, 3] is not [1, 4]"
    paused = replace(deployment("a", 2), paused_routes=frozenset({(1, 0), (0, 1)}))
    print_health(summarise([paused], [
        beat("w1", serving={"lab/a": 2}, metrics={"lab/a": {"in": 12, "out": 11, "dead": 1}}),
        beat("w2", serving={"lab/a": 1}, refused={"lab/a": reason}),
        beat("w3", age_s=60.0)], NOW))
    printed = " ".join(capsys.readouterr().out.split())  # undo the console's wrapping
    assert f"lab/a: refused by w2: {reason}" in printed  # brackets are not rich markup
    assert "lab/a: paused routes (step:route) 0:1, 1:0" in printed
    assert "stale: worker w3 last seen 2026-01-01 11:59:00 UTC (60s ago)" in printed
    assert "unhealthy: 2 fresh worker(s), 1 stale" in printed


# -- a worker against the real broker --------------------------------------------------------

HEARTBEAT_S = 0.5  # the workers' heartbeat interval here: stale after 1.5 s


@pytest.fixture(scope="module")
def platform(broker, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    with pytest.MonkeyPatch.context() as env:  # worker processes inherit the environment
        env.setenv("INFERSTREAM_HEARTBEAT_S", str(HEARTBEAT_S))
        with serving(broker.bootstrap, tmp_path_factory.mktemp("health"), "h",
                     keras=False) as p:
            yield p


def get(w: WorkerProcess, path: str) -> tuple[int, str, bytes]:
    """Status, content type and body of GET path on the worker (4xx/5xx included)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{w.port}{path}", timeout=10) as r:
            return r.status, r.headers.get("Content-Type", ""), r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers.get("Content-Type", ""), exc.read()


def status(platform: Platform, capsys: pytest.CaptureFixture[str]) -> tuple[int, dict]:
    """`inferstream status --json` as ann: its exit code and output."""
    s = platform.settings
    with pytest.raises(SystemExit) as exit_info:
        main(["--bootstrap-servers", s.bootstrap_servers, "--namespace", s.namespace,
              "--data-dir", str(s.data_dir), "--user", "ann", "status", "--json"])
        raise SystemExit(0)
    captured = capsys.readouterr()
    assert captured.out, captured.err  # an error, not a verdict
    return exit_info.value.code, json.loads(captured.out)


def row(report: dict, pipeline: str) -> dict:
    return next(d for d in report["deployments"] if d["pipeline"] == pipeline)


def records(good: int, bad: int) -> list[dict]:
    """`good` records and `bad` ones of the wrong shape (dead-lettered)."""
    return [*json_records(good), *({"id": f"bad{i}", "float_input": [1.0, 2.0]}
                                   for i in range(bad))]


@pytest.mark.kafka
@pytest.mark.slow
def test_live_ready_and_prometheus_counts(platform: Platform) -> None:
    platform.pipeline("counted", [{"model": "clf", "version": 1}])
    platform.deploy("counted")
    w1 = platform.workers[0]
    code, _, body = get(w1, "/health/live")
    assert (code, json.loads(body)) == (200, {"live": True})
    code, _, body = get(w1, "/health/ready")
    assert (code, json.loads(body)) == (200, {"ready": True})
    replies = platform.client.infer("counted", records(good=6, bad=3))
    assert sum(r.ok for r in replies) == 6

    def counted() -> dict | None:
        got = samples(get(w1, "/metrics")[2])
        wanted = {name: got.get((f"inferstream_{name}_total", of("counted")))
                  for name in ("records_in", "records_out", "records_dead_lettered")}
        return got if wanted == {"records_in": 9, "records_out": 6,
                                 "records_dead_lettered": 3} else None

    got = wait_until(counted, 30, "/metrics counts 9 in, 6 out, 3 dead-lettered")
    assert got[("inferstream_batch_seconds_count", of("counted"))] >= 1
    assert got[("inferstream_deployed_version", of("counted"))] == 1
    assert got[("inferstream_worker_ready", ())] == 1
    assert got[("inferstream_stage_seconds_total", (("stage", "infer"),))] > 0
    code, content_type, _ = get(w1, "/metrics")
    assert code == 200 and content_type.startswith("text/plain; version=0.0.4")
    stages = json.loads(get(w1, "/metrics/stages")[2])
    assert set(stages) >= {"stages_ns", "records", "batches", "sink_rows", "pauses"}
    # Each cycle that served a batch was timed, and so was the wait for the last commit.
    cycles = stages["pauses"]["cycle"]
    assert sum(cycles["counts"]) >= 1 and cycles["total_ns"] > 0
    assert set(stages["pauses"]) == {"cycle", "settle", "commit", "gc"}


@pytest.mark.kafka
@pytest.mark.slow
def test_status_lists_the_deployment_and_the_workers_serving_it(
        platform: Platform, capsys: pytest.CaptureFixture[str]) -> None:
    platform.pipeline("listed", [{"model": "clf", "version": 1}])
    platform.deploy("listed")
    platform.client.infer("listed", records(good=4, bad=1))

    def reported() -> tuple[int, dict] | None:
        code, report = status(platform, capsys)
        listed = row(report, "listed")
        return (code, report) if listed["serving"] == ["w1"] and listed["records_in"] == 5 \
            else None

    code, report = wait_until(reported, 30, "status: w1 serves listed, 5 records in")
    listed = row(report, "listed")
    assert code == 0 and report["healthy"] and listed["healthy"]
    assert (listed["workspace"], listed["version"], listed["records_out"],
            listed["dead_lettered"], listed["refused"]) == ("lab", 1, 4, 1, {})
    assert [(w["worker"], w["stale"], w["alive"]) for w in report["workers"]] == [
        ("w1", False, True)]


@pytest.mark.kafka
@pytest.mark.slow
def test_a_refused_deploy_makes_the_worker_unready_and_status_fail(
        platform: Platform, capsys: pytest.CaptureFixture[str]) -> None:
    platform.corrupt_model("broken")
    platform.pipeline("guarded", [{"model": "clf", "version": 1}])
    platform.client.create_pipeline_version("guarded", [{"model": "broken", "version": 1}])
    platform.deploy("guarded", 1)
    with pytest.raises(Rejected, match="cannot load guarded version 2"):
        platform.client.deploy("guarded", 2, worker_wait=30)
    w1 = platform.workers[0]
    code, _, body = get(w1, "/health/ready")
    answer = json.loads(body)
    assert code == 503 and not answer["ready"]
    assert "lab/guarded: worker w1 cannot load guarded version 2" in answer["reason"]
    assert "keeps serving version 1" in answer["refused"]["lab/guarded"]
    assert get(w1, "/health/live")[0] == 200  # not ready, yet nothing to restart
    # One truth: /health, the ready gauge and the heartbeat say what /health/ready says.
    health = json.loads(get(w1, "/health")[2])
    assert (health["ready"], health["reason"], health["replayed"]) == (
        False, answer["reason"], True)
    metrics = samples(get(w1, "/metrics")[2])
    assert metrics[("inferstream_worker_ready", ())] == 0
    assert metrics[("inferstream_model_load_failures_total", of("guarded"))] == 1

    def refused() -> tuple[int, dict] | None:
        code, report = status(platform, capsys)
        return (code, report) if row(report, "guarded")["refused"] else None

    code, report = wait_until(refused, 30, "status reports the refusal")
    guarded = row(report, "guarded")
    assert code == 1 and not report["healthy"] and not guarded["healthy"]
    assert guarded["version"] == 2 and guarded["other_versions"] == {"w1": 1}
    assert "cannot load guarded version 2" in guarded["refused"]["w1"]
    assert "no fresh, live worker serves version 2" in guarded["problems"]
    # Rolling back serves what the registry deploys again: ready, and status passes.
    platform.deploy("guarded", 1)
    wait_until(lambda: get(w1, "/health/ready")[0] == 200, 30, "w1 ready again")
    wait_until(lambda: status(platform, capsys)[0] == 0, 30, "status healthy again")


@pytest.mark.kafka
@pytest.mark.slow
def test_a_refused_version_is_tried_again_until_it_loads(platform: Platform) -> None:
    """A version whose artifact is not there yet is refused, then served once it arrives,
    without another deploy: the worker tries again after 5 s, 10 s, 20 s ..."""
    blob = artifact_bytes(build_onnx_classifier(platform.tmp / "late.onnx", seed=5))
    platform.register_model("late", sha256_of(blob), len(blob))
    platform.pipeline("late", [{"model": "late", "version": 1}])
    with pytest.raises(Rejected, match="cannot load late version 1"):
        platform.client.deploy("late", worker_wait=30)
    w1 = platform.workers[0]
    assert "lab/late" in w1.health()["refused"]
    ArtifactStore(platform.settings).put(blob, "onnx")  # the artifact arrives after all
    health = wait_until(lambda: (h := w1.health()) and "lab/late" in h["serving"] and h, 60,
                        "the refused version served after all")
    assert "lab/late" not in health["refused"]
    assert w1.post("/pipelines/late/infer", json.dumps(json_records(1)[0]).encode())[0] == 200


@pytest.mark.kafka
@pytest.mark.slow
def test_a_stopped_worker_leaves_status_and_a_killed_one_goes_stale(
        platform: Platform, capsys: pytest.CaptureFixture[str]) -> None:
    def workers() -> dict[str, bool]:
        return {w["worker"]: w["stale"] for w in status(platform, capsys)[1]["workers"]}

    # Not platform.worker(): later deploys must not wait for these two.
    stopped, killed = (WorkerProcess(platform.settings, name, platform.tmp)
                       for name in ("w2", "w3"))
    try:
        stopped.wait_ready()
        killed.wait_ready()
        wait_until(lambda: workers() == {"w1": False, "w2": False, "w3": False}, 30,
                   "status lists the three workers, fresh")
        stopped.stop()  # a clean stop deletes its heartbeat
        killed.kill(signal.SIGKILL)  # a crash leaves its last one, which grows stale
        wait_until(lambda: workers() == {"w1": False, "w3": True}, 30,
                   "w2 forgotten, w3 stale")
        assert status(platform, capsys)[0] == 0  # w1 still serves everything
    finally:
        stopped.stop()
        killed.stop()
