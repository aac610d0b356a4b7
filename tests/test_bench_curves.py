"""The bench's pure parts: the control log's events, the artifact models, plots, the tail's
stalls and the worker's pause histograms."""

from __future__ import annotations

import gc
import json
from datetime import datetime
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from agents.metrics import GcPauses, StageMetrics, pauses_between
from bench.curves import control_log
from bench.curves.artifacts import EMBEDDING, build
from bench.curves.plots import write_all
from bench.curves.spread import longest_pause_s
from bench.jvm import gc_pauses
from bench.load import stalls
from bench.models import INPUT, N_FEATURES


def test_the_control_log_creates_its_pipelines_then_versions_or_whole_deploy_pairs() -> None:
    first = 2 * control_log.PIPELINES
    versions = list(control_log.events(0, first + 300, "versions"))
    assert [e.type for e in versions[:4]] == ["CreatePipeline", "CreatePipelineVersion"] * 2
    assert {e.type for e in versions[first:]} == {"CreatePipelineVersion"}
    assert versions[first].payload["pipeline"] == "ctl-0"
    assert versions[first + control_log.PIPELINES].payload["pipeline"] == "ctl-0"
    deploys = list(control_log.events(first, 2 * control_log.PIPELINES + 4, "deploys"))
    by_pipeline: dict[str, list[str]] = {}
    for e in deploys:
        by_pipeline.setdefault(e.payload["pipeline"], []).append(e.type)
    # Every pipeline ends undeployed: a starting worker then loads no model.
    assert all(types[-1] == "Undeploy" and types[0] == "Deploy" for types in by_pipeline.values())
    # Filled in two goes, the events are those of one go.
    halves = [*control_log.events(0, 250, "versions"), *control_log.events(250, 50, "versions")]
    assert [e.payload.get("pipeline", e.payload.get("name")) for e in halves] == \
        [e.payload.get("pipeline", e.payload.get("name")) for e in versions[:300]]


def test_an_artifact_model_has_the_size_asked_and_looks_its_table_up(tmp_path: Path) -> None:
    graph = helper.make_graph(
        [helper.make_node("Identity", [INPUT], ["out"])], "tiny",
        [helper.make_tensor_value_info(INPUT, TensorProto.FLOAT, [None, N_FEATURES])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [None, N_FEATURES])])
    base = tmp_path / "base.onnx"
    base.write_bytes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
                     .SerializeToString())
    rows = np.arange(5 * N_FEATURES, dtype=np.float32).reshape(5, N_FEATURES)
    path = build(base, rows, 1024**2, tmp_path / "big.onnx")
    assert 1024**2 <= path.stat().st_size < 1.05 * 1024**2
    onnx.checker.check_model(str(path))
    x = np.zeros((2, N_FEATURES), dtype=np.float32)
    x[0, 3], x[1, 7] = 1.0, 1.0
    got = ort.InferenceSession(str(path)).run([EMBEDDING], {INPUT: x})[0]
    # Row i of the table is rows[i % 5]: the real rows tiled, not zeros.
    np.testing.assert_array_equal(got, rows[[3, 7 % 5]])


def test_plots_are_written_beside_the_json_for_what_the_run_has(tmp_path: Path) -> None:
    latency = {str(pct): {"offered_per_s": 100.0 * pct, "p50_ms": 10.0 + pct,
                          "p99_ms": 50.0 + pct, "p999_ms": 60.0 + pct} for pct in (25, 50)}
    point = {"saturation": {"msgs_per_s": 1000.0},
             "latency": {"p50_ms": 10.0, "p99_ms": 40.0, "longest_pause_s": 0.1}}
    result = {
        "scenarios": {"single": {"label": "GBT", "saturation": {"msgs_per_s": 10_000.0},
                                 "latency": latency}},
        "curves": {
            "pipelines": {"offered_per_s": 500.0, "points": [
                {"pipelines": n, "deploy_last_s": 1.0, "worker_rss_mb": 500.0, **point}
                for n in (1, 3)]},
            "workers": {"offered_per_s": 500.0, "join": {"longest_pause_s": 0.2},
                        "points": [{"workers": n, **point} for n in (1, 2)]},
            "artifacts": {"points": [{"size_mb": 1, "artifact_bytes": 2**20, "upload_s": 1.0,
                                      "first_load_s": 1.0},
                                     {"size_mb": 1024, "error": "BrokerError()"}]},
            "control": {"error": "TimeoutError()"},
        },
    }
    out = tmp_path / "run.json"
    out.write_text(json.dumps(result))
    written = write_all(result, out)
    assert sorted(written) == ["run-artifacts.png", "run-latency-single.png",
                               "run-pipelines.png", "run-workers.png"]
    assert all((tmp_path / name).stat().st_size > 1000 for name in written)


def test_the_longest_pause_is_the_widest_gap_between_receipts() -> None:
    assert longest_pause_s(np.array([3.0, 1.0, 1.5, 2.0])) == 1.0
    assert np.isnan(longest_pause_s(np.array([1.0])))


def test_stalls_are_the_gaps_in_the_output_over_50_ms_by_length() -> None:
    steady = np.arange(0, 1, 0.001)  # a result every millisecond ...
    times = np.concatenate([steady, 1.12 + steady, 2.72 + steady])  # ... 121 and 601 ms gaps
    got = stalls(np.random.default_rng(0).permutation(times))  # receipt order does not matter
    assert got["count"] == 2 and got["longest_ms"] == pytest.approx(601, abs=0.5)
    assert got["by_ms"] == {"50-100": 0, "100-200": 1, "200-300": 0, "300-500": 0,
                            "500-1000": 1, ">1000": 0}
    assert got["share_of_time"] == pytest.approx(0.722 / 3.719, abs=1e-3)
    assert stalls(steady)["count"] == 0 and stalls(np.zeros(1))["count"] == 0


def test_the_worker_times_its_pauses_and_the_collectors_into_histograms() -> None:
    m = StageMetrics()
    before = m.snapshot()
    m.paused("cycle", 3_000_000)  # 3 ms: the 2-5 ms bucket
    m.paused("cycle", 250_000_000)  # 250 ms: the 200-300 ms bucket
    m.committed(40_000_000)
    watch = GcPauses(m).install()
    try:
        gc.collect()
    finally:
        watch.remove()
    got = pauses_between(before, m.snapshot())
    assert got["cycle"]["counts"] == [0, 0, 1, 0, 0, 0, 0, 0, 1, 0, 0, 0]
    assert got["cycle"]["total_ms"] == pytest.approx(253) and got["cycle"]["longest_ever_ms"] == 250
    assert sum(got["commit"]["counts"]) == 1 and sum(got["gc"]["counts"]) >= 1
    assert sum(got["settle"]["counts"]) == 0


def test_the_brokers_gc_pauses_in_a_run_come_from_the_jvms_log(tmp_path: Path) -> None:
    log = tmp_path / "gc.log"
    log.write_text(
        "[2026-12-04T20:31:00.123+0000] GC(5) Pause Young (Normal) (G1 Evacuation Pause) "
        "51M->9M(1024M) 3.456ms\n"
        "[2026-12-04T20:31:01.123+0000] GC(6) Pause Remark 60M->60M(1024M) 13.500ms\n"
        "[2026-12-04T20:31:01.200+0000] GC(6) Concurrent Mark Cycle 120.500ms\n"  # no pause
        "[2026-12-04T20:40:00.000+0000] GC(7) Pause Young (Normal) 51M->9M(1024M) 80.0ms\n")
    at = datetime.fromisoformat("2026-12-04T20:31:00+00:00").timestamp()
    assert gc_pauses(log, at, at + 5) == {"count": 2, "total_ms": pytest.approx(16.956),
                                          "longest_ms": 13.5}
    assert gc_pauses(tmp_path / "none.log", at, at + 5) is None


def test_zgcs_pauses_and_allocation_stalls_count_too(tmp_path: Path) -> None:
    log = tmp_path / "gc.log"
    log.write_text(
        "[2026-12-05T03:03:19.404+0000] GC(0) Pause Mark Start 0.008ms\n"
        "[2026-12-05T03:03:19.420+0000] GC(0) Concurrent Mark 15.925ms\n"  # no pause
        "[2026-12-05T03:03:19.444+0000] GC(0) Pause Mark End 0.014ms\n"
        "[2026-12-05T03:03:19.450+0000] Allocation Stall (data-plane-kafka-request-handler-1) "
        "2.500ms\n"
        "[2026-12-05T03:03:19.455+0000] GC(0) Garbage Collection (Warmup) 104M(10%)->38M(4%)\n")
    at = datetime.fromisoformat("2026-12-05T03:03:19+00:00").timestamp()
    assert gc_pauses(log, at, at + 5) == {"count": 3, "total_ms": pytest.approx(2.522),
                                          "longest_ms": 2.5}
