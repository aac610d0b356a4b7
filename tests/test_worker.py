"""Workers against the real broker: chained ONNX → TensorFlow inference, formats, dead letters,
deploys while records flow, routing, shadows, two workers, the HTTP endpoint."""

from __future__ import annotations

import json
import threading
from collections import Counter
from collections.abc import Iterator

import numpy as np
import pytest

from agents.records.formats import avro_input
from agents.runtimes import load_model
from control.kafka import producer, read_until_end
from schemas.codec import codec
from schemas.errors import Rejected
from sinks.access import RemoteReader
from sinks.log_batches import decode_logs
from sinks.reads import LabelledLogs
from tests.helpers import wait_until
from tests.worker_platform import Platform, json_records, rows, serving

pytestmark = [pytest.mark.kafka, pytest.mark.slow]


@pytest.fixture(scope="module")
def platform(broker, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    delivery = "exactly-once" if broker.supports_transactions else "at-least-once"
    with serving(broker.bootstrap, tmp_path_factory.mktemp("platform"), "w",
                 pipeline_partitions=4, delivery=delivery) as p:
        yield p


def test_two_step_chain_equals_the_runtimes_called_directly(platform: Platform) -> None:
    platform.pipeline("chain", [{"model": "clf", "version": 1}, {"model": "scorer", "version": 1}])
    platform.deploy("chain")
    replies = platform.client.infer("chain", json_records(40))
    clf = load_model("onnx", platform.paths["clf"])
    scorer = load_model("tensorflow", platform.paths["scorer"])
    want = scorer.predict(clf.predict({"float_input": rows(40)}))["score"]
    got = np.array([r.body["outputs"]["score"] for r in replies]).reshape(want.shape)
    np.testing.assert_allclose(got, want, rtol=1e-5)
    first = replies[0].body
    assert first["id"] == "r0" and first["pipeline"] == "chain" and first["pipeline_version"] == 1
    assert [(m["model"], m["version"]) for m in first["models"]] == [("clf", 1), ("scorer", 1)]
    # One log record per inference per model, on the logs topic.
    logs = [log for m in read_until_end(platform.settings, platform.settings.topic("logs"))
            for log in decode_logs(m.value())]
    ours = [entry for entry in logs if entry["pipeline"] == "chain"]
    assert Counter(e["model"] for e in ours) == {"clf": 40, "scorer": 40}


def test_results_carry_the_classifiers_label_and_probabilities_when_asked(
        platform: Platform) -> None:
    platform.client.create_pipeline("explained")
    platform.client.create_pipeline_version(
        "explained", [{"model": "clf", "version": 1}, {"model": "scorer", "version": 1}],
        result_steps=[1, 2])
    platform.deploy("explained")
    x = rows(2)
    specs = platform.client.model("clf").version(1).inputs
    avro = avro_input(specs, "inferstream.input.lab.explained").encode(
        {"id": "avro-1", "float_input": x.tolist()})
    v2 = {"id": "v2-1", "inputs": [{"name": "float_input", "shape": [2, 4], "datatype": "FP32",
                                    "data": x.ravel().tolist()}]}
    json_reply, v2_reply, avro_reply = platform.client.infer(
        "explained", [{"id": "json-1", "float_input": x.tolist()}, json.dumps(v2).encode(), avro])
    clf = load_model("onnx", platform.paths["clf"]).predict({"float_input": x})
    score = load_model("tensorflow", platform.paths["scorer"]).predict(clf)["score"]
    outputs = json_reply.body["outputs"]
    assert list(outputs) == ["score", "step1.label", "step1.probabilities"]
    assert outputs["step1.label"] == clf["label"].tolist()
    np.testing.assert_allclose(outputs["step1.probabilities"], clf["probabilities"], rtol=1e-6)
    np.testing.assert_allclose(outputs["score"], score, rtol=1e-5)
    v2_out = {o["name"]: o for o in v2_reply.body["outputs"]}
    assert v2_out["step1.label"]["data"] == clf["label"].tolist()
    assert v2_out["step1.label"]["datatype"] == "INT64"
    avro_out = {t["name"]: t for t in avro_reply.body["outputs"]}
    np.testing.assert_allclose(np.reshape(avro_out["step1.probabilities"]["values"], (2, 3)),
                               clf["probabilities"], rtol=1e-6)
    assert avro_out["step1.label"]["values"] == clf["label"].tolist()


def test_all_three_input_formats(platform: Platform) -> None:
    platform.pipeline("formats", [{"model": "clf", "version": 1}])
    platform.deploy("formats")
    x = rows(3)
    v2 = {"id": "v2-1", "inputs": [{"name": "float_input", "shape": [3, 4], "datatype": "FP32",
                                    "data": x.ravel().tolist()}]}
    specs = platform.client.model("clf").version(1).inputs
    avro = avro_input(specs, "inferstream.input.lab.formats").encode(
        {"id": "avro-1", "float_input": x.tolist()})
    json_reply, v2_reply, avro_reply = platform.client.infer(
        "formats", [{"id": "json-1", "float_input": x.tolist()}, json.dumps(v2).encode(), avro])
    want = load_model("onnx", platform.paths["clf"]).predict({"float_input": x})["probabilities"]
    np.testing.assert_allclose(json_reply.body["outputs"]["probabilities"], want, rtol=1e-6)
    v2_out = {o["name"]: o for o in v2_reply.body["outputs"]}["probabilities"]
    assert v2_reply.body["id"] == "v2-1" and v2_out["shape"] == [3, 3]
    np.testing.assert_allclose(np.reshape(v2_out["data"], (3, 3)), want, rtol=1e-6)
    assert avro_reply.body["record_id"] == "avro-1"
    avro_out = {t["name"]: t for t in avro_reply.body["outputs"]}["probabilities"]
    np.testing.assert_allclose(np.reshape(avro_out["values"], (3, 3)), want, rtol=1e-6)


def test_bad_record_mid_batch_goes_to_dead_letters_alone(platform: Platform) -> None:
    platform.pipeline("bad", [{"model": "clf", "version": 1}])
    platform.deploy("bad", batch_size=50, batch_wait_ms=200)
    good = json_records(5)
    records = [*good[:2], {"id": "short", "float_input": [1.0, 2.0, 3.0]}, b"\x00garbage",
               *good[2:]]
    replies = platform.client.infer("bad", records)
    assert [r.ok for r in replies] == [True, True, False, False, True, True, True]
    assert "float_input" in replies[2].body["reason"] and "[1, 3]" in replies[2].body["reason"]
    assert replies[3].body["original"] == "\x00garbage"
    assert replies[3].body["pipeline_version"] == 1


def test_redeploy_while_records_flow_and_rollback(platform: Platform) -> None:
    platform.pipeline("live", [{"model": "clf", "version": 1}])
    platform.client.create_pipeline_version("live", [{"model": "clf", "version": 2}])
    platform.deploy("live", 1, batch_size=16, batch_wait_ms=10)
    replies: list = []

    def stream() -> None:
        for chunk in range(8):
            replies.extend(platform.client.infer("live", json_records(50, chunk * 50)))

    flowing = threading.Thread(target=stream)
    flowing.start()
    wait_until(lambda: len(replies) >= 100, 60, "records flowing")
    platform.deploy("live", 2)
    flowing.join(120)
    ids = [r.body["id"] for r in replies]
    assert len(ids) == len(set(ids)) == 400  # each record served once
    versions = [r.body["pipeline_version"] for r in replies]
    assert set(versions) == {1, 2}
    # Every record was served by exactly one version, and says which model made it.
    for r in replies:
        v = r.body["pipeline_version"]
        assert [(m["model"], m["version"]) for m in r.body["models"]] == [("clf", v)]
    platform.client.rollback("live")
    platform.deploy("live", 1)  # waits until the worker serves v1 again
    assert platform.client.infer("live", json_records(1))[0].body["pipeline_version"] == 1


def test_random_split_shares_and_sticky_keys(platform: Platform) -> None:
    platform.pipeline("split", [{"random_split": {"hash_key": "customer", "routes": [
        {"weight": 0.8, "model": "clf", "version": 1},
        {"weight": 0.2, "model": "clf", "version": 2}]}}])
    platform.deploy("split", batch_size=64)
    replies = platform.client.infer("split", json_records(1000))
    shares = Counter(r.body["models"][0]["version"] for r in replies)
    # Binomial(1000, 0.2): sd ≈ 12.6; 5 sd either side cannot flake in practice.
    assert abs(shares[2] - 200) < 65, shares
    sticky = [{**r, "customer": f"c{i % 10}"} for i, r in enumerate(json_records(200))]
    routed = {}
    for r in platform.client.infer("split", sticky):
        customer = f"c{int(r.body['id'][1:]) % 10}"
        routed.setdefault(customer, set()).add(r.body["models"][0]["version"])
    assert all(len(v) == 1 for v in routed.values()), routed


def test_key_split_routes_by_field(platform: Platform) -> None:
    platform.pipeline("bycountry", [{"key_split": {"field": "country", "routes": [
        {"value": "de", "model": "clf", "version": 2}], "default": {"model": "clf",
                                                                    "version": 1}}}])
    platform.deploy("bycountry")
    replies = platform.client.infer("bycountry", [
        *json_records(3, country="de"), *json_records(3, country="fr"), *json_records(2)])
    assert [r.body["models"][0]["version"] for r in replies] == [2, 2, 2, 1, 1, 1, 1, 1]


def test_shadow_outputs_only_in_logs(platform: Platform) -> None:
    platform.pipeline("shadowed", [{"shadow": {"champion": {"model": "clf", "version": 1},
                                               "challengers": [{"model": "clf", "version": 2}]}}])
    platform.deploy("shadowed")
    replies = platform.client.infer("shadowed", json_records(10))
    clf1 = load_model("onnx", platform.paths["clf"]).predict({"float_input": rows(10)})
    got = np.array([r.body["outputs"]["probabilities"] for r in replies]).reshape(10, 3)
    np.testing.assert_allclose(got, clf1["probabilities"], rtol=1e-6)
    logs = [log for m in read_until_end(platform.settings, platform.settings.topic("logs"))
            for log in decode_logs(m.value())]
    shadow = [e for e in logs if e["pipeline"] == "shadowed" and e["shadow"]]
    assert len(shadow) == 10 and {e["model_version"] for e in shadow} == {2}
    assert all(not e["shadow"] for e in logs if e["pipeline"] == "shadowed"
               and e["model_version"] == 1)


def test_http_endpoint(platform: Platform) -> None:
    platform.pipeline("http", [{"model": "clf", "version": 1}, {"model": "scorer", "version": 1}])
    platform.deploy("http")
    w = platform.workers[0]
    status, body = w.post("/pipelines/http/infer", json.dumps(json_records(1)[0]).encode())
    assert status == 200, body
    assert json.loads(body)["pipeline_version"] == 1 and "score" in json.loads(body)["outputs"]
    v2 = {"inputs": [{"name": "float_input", "shape": [2, 4], "datatype": "FP32",
                      "data": rows(2).ravel().tolist()}]}
    status, body = w.post("/v2/models/http/infer", json.dumps(v2).encode())
    assert status == 200 and {o["name"] for o in json.loads(body)["outputs"]} == {"score"}
    status, body = w.post("/pipelines/http/infer", b'{"float_input": [1, 2]}')
    assert status == 400 and "float_input" in json.loads(body)["error"]
    status, body = w.post("/pipelines/nope/infer", b"{}")
    assert status == 404
    # An open platform (its first user has no key) asks no credential, and says so.
    assert w.health()["secured"] is False


def test_two_workers_share_the_partitions(platform: Platform) -> None:
    platform.pipeline("shared", [{"model": "clf", "version": 1}])
    platform.deploy("shared")
    second = platform.worker("w2")
    second.wait_ready("lab/shared")
    workers: Counter[str] = Counter()

    def both_served() -> bool:
        # Rounds of records until the group has rebalanced and both workers have served.
        replies = platform.client.infer("shared", json_records(100), timeout=120)
        assert len({r.body["id"] for r in replies}) == 100
        workers.update(r.body["worker"] for r in replies)
        return set(workers) == {"w1", "w2"}

    try:
        wait_until(both_served, 120, "records served by both workers")
    finally:  # w2 has a chDB folder of its own: the module's later tests read w1's
        second.stop()
        platform.workers.remove(second)


def test_a_version_that_cannot_load_is_refused_and_the_old_one_serves(
        platform: Platform) -> None:
    platform.corrupt_model("broken")
    platform.pipeline("guarded", [{"model": "clf", "version": 1}])
    platform.client.create_pipeline_version("guarded", [{"model": "broken", "version": 1}])
    platform.deploy("guarded", 1)
    with pytest.raises(Rejected, match=r"cannot load guarded version 2.*corrupt.*keeps serving "
                                       r"version 1"):
        platform.client.deploy("guarded", 2, worker_wait=30)
    assert platform.workers[0].health()["serving"]["lab/guarded"] == 1
    assert platform.client.infer("guarded", json_records(2))[0].body["pipeline_version"] == 1


def test_records_for_an_undeployed_pipeline_wait_for_the_next_deploy(
        platform: Platform) -> None:
    platform.pipeline("paused", [{"model": "clf", "version": 1}])
    platform.deploy("paused")
    platform.client.undeploy("paused")
    wait_until(lambda: "lab/paused" not in platform.workers[0].health()["serving"], 30,
               "worker stopped serving")
    topic = platform.settings.pipeline_topic("lab", "paused", "input")
    p = producer(platform.settings)
    for record in json_records(5):
        p.produce(topic, key=record["id"].encode(), value=json.dumps(record).encode())
    p.flush(10)
    output = platform.settings.pipeline_topic("lab", "paused", "output")
    before = len(list(read_until_end(platform.settings, output)))
    platform.deploy("paused")
    # Counted records, not end offsets: a transaction's commit marker takes an offset too.
    wait_until(lambda: len(list(read_until_end(platform.settings, output))) - before == 5, 60,
               "the waiting records served")


def test_labels_reach_clickhouse_and_join_the_logs(platform: Platform) -> None:
    """Labels published to a pipeline's labels topic, as JSON and as Avro, are stored by the
    worker's label sink and joined to the inference logs; a text label is dead-lettered."""
    platform.pipeline("truth", [{"model": "clf", "version": 1}])
    platform.deploy("truth")
    records = json_records(5, start=100)
    assert all(r.ok for r in platform.client.infer("truth", records))
    s = platform.settings
    topic = s.pipeline_topic("lab", "truth", "labels")
    p = producer(s)
    for i in range(3):  # JSON, the id in the value and the key
        p.produce(topic, key=f"r{100 + i}".encode(),
                  value=json.dumps({"id": f"r{100 + i}", "label": i % 2}).encode())
    p.produce(topic, key=b"r100", value=b'{"id": "r100", "label": "setosa"}')
    p.flush(10)
    assert platform.client.send_labels("truth", {"r103": 2, "r104": 2}) == 2  # as Avro Labels

    reader = RemoteReader(platform.workers[0].url)  # the worker owns the chDB folder
    args = LabelledLogs(workspace="lab", pipeline="truth")
    joined = wait_until(lambda: len(rows := reader.read("labelled_logs", args)) == 5 and rows,
                        60, "five labelled logs")
    assert sorted((r["record_id"], r["label"]) for r in joined) == [
        ("r100", 0.0), ("r101", 1.0), ("r102", 0.0), ("r103", 2.0), ("r104", 2.0)]
    assert all(r["model"] == "clf" and r["outputs"] for r in joined)
    letters = wait_until(lambda: [codec("DeadLetter").decode(m.value()) for m in read_until_end(
        s, s.pipeline_topic("lab", "truth", "dead"))], 30, "a dead-lettered label")
    assert letters[0]["original"] == b'{"id": "r100", "label": "setosa"}'
    assert "label 'setosa' is text" in letters[0]["reason"] and letters[0]["topic"] == topic
