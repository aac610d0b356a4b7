"""Replays against the real broker, a worker process and its chDB: 10,000 records scored again
with another version equal the runtime called directly, survive a kill -9 of the worker and a
stop/resume with each result once in the side topic, leave the live output and offsets alone,
and compare with the live results as numpy does; live log reads leave the replay out."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from confluent_kafka import TopicPartition

from agents.runtimes import load_model
from control import replays as names
from control.cli import main
from control.kafka import consumer, end_offsets, producer, read_until_end
from control.local.demo_models import build_onnx_classifier
from control.local.worker_process import WorkerProcess
from sinks.access import read_owner
from tests.browser import console_at
from tests.helpers import wait_until
from tests.worker_platform import Namespace, json_records, own_settings, rows

pytestmark = [pytest.mark.kafka, pytest.mark.slow]
N = 10_000
# Small replay transactions, so that the kill below lands mid-replay.
WORKER_ENV = {"INFERSTREAM_REPLAY_BATCH_SIZE": "50"}


class Lab(Namespace):
    """ann's workspace lab: clf v1 and v2 (another fit), a worker w1 owning the storage."""

    def __init__(self, settings, tmp: Path) -> None:  # type: ignore[no-untyped-def]
        super().__init__(settings, tmp)
        self.paths = [build_onnx_classifier(tmp / "clf.onnx", seed=0),
                      build_onnx_classifier(tmp / "clf2.onnx", seed=1, C=0.05)]
        for path in self.paths:
            self.client.upload_model("clf", path)
        self.w1 = self.worker("w1")

    def worker(self, name: str) -> WorkerProcess:
        w = WorkerProcess(self.settings, name, self.tmp, data_dir=self.settings.data_dir,
                          env=WORKER_ENV)
        self.workers.append(w)
        w.wait_ready()
        wait_until(lambda: (read_owner(self.settings) or {}).get("pid") == w.process.pid, 60,
                   f"{name} owns the storage")
        return w

    def cli(self, capsys: pytest.CaptureFixture[str], *args: str) -> str:
        s = self.settings
        with pytest.raises(SystemExit) as exit_info:
            main(["--bootstrap-servers", s.bootstrap_servers, "--namespace", s.namespace,
                  "--data-dir", str(s.data_dir), "--user", "ann", "--workspace", "lab", *args])
            raise SystemExit(0)
        out = capsys.readouterr()
        assert exit_info.value.code == 0, out.err + out.out
        return out.out


@pytest.fixture(scope="module")
def lab(broker, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    if not broker.supports_transactions:
        pytest.skip("replays are exactly once: they need a broker with transactions")
    tmp = tmp_path_factory.mktemp("replay")
    platform = Lab(own_settings(broker.bootstrap, "replay", tmp / "data"), tmp)
    try:
        yield platform
    finally:
        platform.close()


def committed(lab: Lab, group: str, topic: str) -> dict[int, int]:
    c = consumer(lab.settings, group=group)
    try:
        parts = [TopicPartition(topic, p) for p in range(lab.settings.pipeline_partitions)]
        return {tp.partition: tp.offset for tp in c.committed(parts, timeout=10)}
    finally:
        c.close()


def test_a_replay_rescored_exactly_once_through_a_kill_and_a_stop(
        lab: Lab, capsys: pytest.CaptureFixture[str]) -> None:
    client, s = lab.client, lab.settings
    client.create_pipeline("scoring")
    client.create_pipeline_version("scoring", [{"model": "clf", "version": 1}])
    client.create_pipeline_version("scoring", [{"model": "clf", "version": 2}])
    client.deploy("scoring", 1, batch_size=500, worker_wait=30)
    lab.w1.wait_ready("lab/scoring")
    records = json_records(N)
    before = datetime.now(UTC) - timedelta(seconds=1)
    p = producer(s)
    input_topic = s.pipeline_topic("lab", "scoring", "input")
    for r in records:
        p.produce(input_topic, json.dumps(r).encode(), r["id"].encode())
    assert p.flush(30) == 0
    live_group, output = f"{s.namespace}-workers-serving", s.pipeline_topic("lab", "scoring",
                                                                           "output")
    wait_until(lambda: sum(committed(lab, live_group, input_topic).values()) == N, 90,
               "the live traffic is served")
    wait_until(lambda: client.count_logs("scoring") == N, 60, "its logs are stored")
    live_offsets, live_output = committed(lab, live_group, input_topic), end_offsets(s, output)

    # Times become offsets once, with offsets_for_times: the whole topic, or nothing yet.
    ends = end_offsets(s, input_topic)
    assert names.ranges_of(s, input_topic, before, None) == [(x, 0, e) for x, e in
                                                             sorted(ends.items())]
    later = datetime.now(UTC) + timedelta(hours=1)
    assert names.ranges_of(s, input_topic, later, None) == [(x, e, e) for x, e in
                                                            sorted(ends.items())]

    replay = client.start_replay("scoring", 2, replay_id="r1")
    assert replay.records == N and replay.running
    wait_until(lambda: names.progress(s, replay).done > 0, 60, "the replay begins")
    lab.w1.kill()  # kill -9, mid-replay
    assert 0 < names.progress(s, replay).done < N
    client.stop_replay("r1")
    w2 = lab.worker("w2")  # the same data folder: it takes over the storage, schedules and replays
    stopped_at = names.progress(s, replay).done
    assert client.replay_status("r1").state == "stopped"
    assert names.progress(s, replay).done == stopped_at  # a stopped replay stays where it was
    client.resume_replay("r1")
    assert client.wait_replay("r1", timeout=90).state == "done"

    # Every result once in the side topic (read_committed), equal to clf v2 called directly.
    results = [json.loads(m.value()) for m in read_until_end(s, names.side_topic(s, replay))]
    assert sorted(r["id"] for r in results) == sorted(r["id"] for r in records)
    assert {r["pipeline_version"] for r in results} == {2}
    by_id = {r["id"]: r for r in results}
    x = rows(N)
    want = load_model("onnx", lab.paths[1]).predict({"float_input": x})
    got_label = np.array([by_id[f"r{i}"]["outputs"]["label"] for i in range(N)]).ravel()
    np.testing.assert_array_equal(got_label, want["label"])
    got_p = np.array([by_id[f"r{i}"]["outputs"]["probabilities"] for i in range(N)])
    np.testing.assert_allclose(got_p.reshape(want["probabilities"].shape),
                               want["probabilities"], rtol=1e-6)
    assert list(read_until_end(s, names.dead_topic(s, replay))) == []
    # The live output, the live group's offsets and the live metrics are untouched: w2
    # served no live record, and the 9,950 or so replayed ones are not counted as such.
    assert end_offsets(s, output) == live_output
    assert committed(lab, live_group, input_topic) == live_offsets
    with urllib.request.urlopen(f"{w2.url}/metrics", timeout=10) as answer:
        series = [line for line in answer.read().decode().splitlines() if line.startswith((
            "inferstream_records_in_total{", "inferstream_records_out_total{",
            "inferstream_batch_seconds_count{")) and 'pipeline="scoring"' in line]
    assert all(float(line.rsplit(" ", 1)[1]) == 0 for line in series), series

    # Compare, from ClickHouse, against numpy over the same rows (v1 live, v2 replayed).
    found = wait_until(lambda: (c := client.compare_replay("scoring", "r1"))[
        "records_compared"] == N and c, 90, "the replay's logs are stored and compared")
    live = load_model("onnx", lab.paths[0]).predict({"float_input": x})
    outputs = {o["output"]: o for o in found["outputs"]}
    label, changed = outputs["label"], int((live["label"] != want["label"]).sum())
    assert label["labels"] and [e["changed"] for e in label["elements"]] == [changed]
    diff = np.abs(live["probabilities"].astype(np.float64)
                  - want["probabilities"].astype(np.float64)).reshape(N, -1)
    probabilities = outputs["probabilities"]["elements"]
    assert [e["compared"] for e in probabilities] == [N] * diff.shape[1]
    np.testing.assert_allclose([e["mean_abs_diff"] for e in probabilities], diff.mean(axis=0),
                               rtol=1e-4)
    np.testing.assert_allclose([e["max_abs_diff"] for e in probabilities], diff.max(axis=0),
                               rtol=1e-4)
    histogram = outputs["probabilities"]["histogram"]
    want_counts, _ = np.histogram(diff, bins=10, range=(0, diff.max()))
    assert sum(histogram["counts"]) == diff.size
    # The same bins, up to a difference that rounding may put on the other side of an edge.
    np.testing.assert_allclose(histogram["counts"], want_counts, atol=2)
    # Live reads leave the replay's logs out; they are there for the asking.
    assert client.count_logs("scoring") == N
    # The CLI: a replay of offsets 0..10 of every partition, waited for; then the list.
    shown = json.loads(lab.cli(capsys, "pipelines", "replay", "scoring", "--version", "1",
                               "--from-offset", "0", "--to-offset", "10", "--id", "r2",
                               "--json"))
    assert (shown["state"], shown["done"], shown["records"]) == ("done", 40, 40)
    assert len(list(read_until_end(s, shown["side_topic"]))) == 40
    listed = json.loads(lab.cli(capsys, "replays", "list", "--json"))
    assert [(r["replay"], r["state"], r["done"]) for r in listed] == [
        ("r1", "done", N), ("r2", "done", 40)]
    shown = json.loads(lab.cli(capsys, "pipelines", "compare", "scoring", "--replay", "r1",
                               "--json"))
    assert shown["records_compared"] == N

    # The pipeline's console page lists the replay and shows the same comparison.
    with console_at(s, lab.tmp / "console") as url:
        def page() -> str:
            with urllib.request.urlopen(f"{url}/pipelines?workspace=lab&pipeline=scoring"
                                        "&replay=r1", timeout=30) as answer:
                return answer.read().decode()
        html = wait_until(lambda: 'data-replay="r1"' in (h := page()) and h, 60,
                          "the console shows the replay")
    assert f"{N} records compared" in html
    assert f'<td class="changed">{changed}</td>' in html
