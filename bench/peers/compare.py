"""The peers in the same run as inferstream: `python3 -m bench --peers quix,faust,mlserver`.

For each peer, on the run's broker with the GBT and the run's records: a drain (saturation)
as for inferstream, then fixed offered rates: the peer's own 25/50/70 % of its saturation
and inferstream's fixed rates (of the GBT, sink off), in one order from the lowest up,
stopping at the first the peer does not sustain. A peer whose drain loses records (MLServer)
is drained once and offered a ladder of rates instead. Then inferstream itself, on a pipeline of
its own, at the peer's best sustained rate, so the p99s compare at one rate. Ratios are
inferstream ÷ peer.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import numpy as np

from agents.records.formats import avro_input, input_schema_name
from bench.models import INPUT
from bench.peers.driver import PeerProcess, drain, offer, run
from bench.peers.setup import PEERS
from bench.platform import WORKSPACE, BenchPlatform
from bench.report import sink_rate
from bench.scenarios import Flow, latency, run_flow, saturation, steady_rate
from control.kafka import TopicSpec, ensure_topics

OWN_LOADS = (25, 50, 70)  # % of the peer's own saturation
LADDER = (250, 500, 1000, 2000, 4000, 8000, 16000)  # msgs/s offered to a peer that is lossy
LOSSY = 0.01  # a drain that loses more than this share of its records measures the loss
PIPELINE = "peers"  # inferstream's reference pipeline: the GBT, sink off
BAR_SATURATION, BAR_P99 = 3.0, 0.5


def compare(platform: BenchPlatform, names: list[str], result: dict[str, Any],
            loads: tuple[int, ...], seconds: float, drain_s: float, repeat: int,
            batch: tuple[int, int], broker_pid: int | None) -> dict[str, Any]:
    """Run each named peer, then inferstream at each peer's best rate; ratios and the bar."""
    for w in platform.workers:  # the scenarios are done: their workers leave the cores
        w.stop()
    w = platform.worker("w-peers", sink=False)
    platform.pipeline(PIPELINE)
    platform.deploy(w, PIPELINE, *batch)
    pool = platform.payloads(PIPELINE)
    ours = result["scenarios"].get("single") or _ours(platform, w, pool, loads, seconds,
                                                      drain_s, broker_pid)
    our_rates = sorted((sink_rate(ours["saturation"]) * load / 100, load) for load in loads)
    out: dict[str, Any] = {"inferstream": {"msgs_per_s": sink_rate(ours["saturation"]),
                                           "cpu_s_per_10k": ours["saturation"]["cpu_s_per_10k"]
                                           .get("worker")},
                           "peers": {}}
    for name in names:
        _say(f"peer {name}")
        try:
            peer = _measure(platform, name, pool, our_rates, seconds, drain_s, repeat)
        except Exception as exc:  # any failure of a peer is reported, with why, not dropped
            peer = {"error": f"{type(exc).__name__}: {exc}"}
            _say(f"peer {name} could not be run: {peer['error']}")
        if "best_sustained_per_s" in peer:
            rate = peer["best_sustained_per_s"]
            _say(f"inferstream at {name}'s best sustained rate {rate:,.0f}/s")
            peer["inferstream_at_best"] = latency(platform, PIPELINE, pool, rate, seconds)
        peer["ratios"] = _ratios(out["inferstream"], ours, peer)
        out["peers"][name] = peer
    platform.undeploy(w, PIPELINE)
    out["bar"] = _bar(out)
    return out


def _measure(platform: BenchPlatform, name: str, pool: list[bytes],
             our_rates: list[tuple[float, int]], seconds: float, drain_s: float,
             repeat: int) -> dict[str, Any]:
    peer = PEERS[name]
    topics = {platform.settings.topic(f"peer-{name}.{kind}"): TopicSpec(
        platform.settings.pipeline_partitions) for kind in ("input", "output")}
    ensure_topics(platform.settings, topics)
    source, sink = topics
    mlserver = name == "mlserver"
    flow = Flow(platform.settings.bootstrap_servers, source, sink,
                _v2(platform) if mlserver else pool, platform.folder,
                (("mlserver-model", b"gbt"),) if mlserver else ())
    schema = None
    if platform.record_format == "avro" and not mlserver:
        specs = platform.client.model("gbt").version(1).inputs
        schema = platform.folder / "peers" / "input-schema.json"
        schema.parent.mkdir(parents=True, exist_ok=True)
        schema.write_text(json.dumps(
            avro_input(specs, input_schema_name(WORKSPACE, PIPELINE)).schema))
    def started() -> PeerProcess:
        return PeerProcess(peer, flow, platform.models.gbt, schema, platform.folder / "peers",
                           f"{platform.settings.namespace}.peer-{name}")

    process = started()
    out: dict[str, Any] = {"delivery": peer.delivery, "batching": peer.batching,
                           "packages": list(peer.packages),
                           "payload": "V2 inference request (JSON)" if mlserver
                           else platform.record_format, "latency": {}}
    try:
        process.wait_serving()
        keys, times, start_at, _ = run(flow, 20_000, None, 120)
        # From the first send to the last result: a peer whose results come in bursts (Quix's
        # checkpoints) would look many times faster over a window inside a burst, and its
        # drain, sized and timed by that, cut short and counted as lost.
        span = float(times.max()) - start_at if len(keys) > 1 else 0.0
        guess = len(keys) / span if span > 0 else 1000.0
        # At least 20k: Quix's results come out a checkpoint (0.5 s) at a time, and a drain
        # of a few checkpoints would time their bursts, not the peer.
        count = int(min(max(guess * drain_s, 20_000), 2_000_000))
        _say(f"peer {name}: calibrated at {guess:,.0f}/s ({len(keys):,} of 20,000 came out); "
             f"saturation: {repeat} x {count:,} records")
        runs = [drain(process, count, deadline_s=min(60.0, 20 + 3 * count / guess))]
        lost = runs[0]["records"] - runs[0]["received"]
        lossy = lost > LOSSY * count
        if not lossy:  # a peer that loses a backlog is drained once: its loss is the figure
            runs += [drain(process, count, deadline_s=min(60.0, 20 + 3 * count / guess))
                     for _ in range(repeat - 1)]
        sat = sorted(runs, key=lambda r: r["msgs_per_s"])[len(runs) // 2]
        out |= {"saturation": sat, "saturation_runs": [r["msgs_per_s"] for r in runs],
                "lost_in_drains": sum(r["records"] - r["received"] for r in runs)}
        if lossy:
            out["saturation_note"] = (
                f"not a throughput: {lost:,} of {count:,} records of a backlog were lost; "
                "its rates are a ladder instead, and its best sustained rate stands for it")
            own = [(float(r), f"ladder {r}") for r in LADDER]
            # Started anew: after a lost backlog, MLServer still works off stale tasks (here it
            # served nothing for the next 250/s); a new consumer starts at the end.
            process.stop()
            process = started()
            process.wait_serving()
        else:
            own = [(sat["msgs_per_s"] * load / 100, f"own {load}") for load in OWN_LOADS]
        ours = [(rate, str(load)) for rate, load in our_rates]
        stopped: str | None = None
        for rate, label in sorted([*own, *ours]):
            if stopped or not np.isfinite(rate):
                out["latency"][label] = {"offered_per_s": rate, "skipped": stopped}
                continue
            _say(f"peer {name}: {label} ({rate:,.0f}/s) for {seconds:g}s")
            fixed = offer(process, rate, seconds)
            out["latency"][label] = fixed
            if not fixed["sustained"]:  # what is queued now would spoil every rate above
                stopped = f"not run: {rate:,.0f}/s was not sustained"
        sustained = [r for r in out["latency"].values() if r.get("sustained")]
        if sustained:
            best = max(sustained, key=lambda r: r["offered_per_s"])
            out["best_sustained_per_s"] = best["offered_per_s"]
        out["cpu_s_per_10k"] = (
            (sat.get("cpu_s_per_10k") or {}).get("worker") if not lossy
            else best["cpu_s_per_10k"] if sustained else None)
    finally:
        process.stop()
        out["log_tail"] = process.tail()
    return out


def _ours(platform: BenchPlatform, w: Any, pool: list[bytes], loads: tuple[int, ...],
          seconds: float, drain_s: float, broker_pid: int | None) -> dict[str, Any]:
    """inferstream's GBT figures when the run did not measure them (--only without single)."""
    flow = Flow(platform.settings.bootstrap_servers, platform.topic(PIPELINE, "input"),
                platform.topic(PIPELINE, "output"), pool, platform.folder)
    _, times, _, sent_at, _ = run_flow(flow, platform.ends(flow.sink), 20_000, None, 120)
    count = int(min(max(steady_rate(times, sent_at)[0] * drain_s, 20_000), 2_000_000))
    sat = saturation(platform, w, PIPELINE, pool, count, broker_pid)
    return {"saturation": sat, "latency": {
        str(load): latency(platform, PIPELINE, pool, sink_rate(sat) * load / 100, seconds)
        for load in loads}}


def _v2(platform: BenchPlatform, n: int = 1000) -> list[bytes]:
    """The same rows as V2 inference requests, MLServer's only Kafka payload (3 decimals, as
    the bench's JSON records)."""
    rows = np.resize(platform.models.rows, (n, platform.models.rows.shape[1]))
    return [json.dumps({"inputs": [{"name": INPUT, "shape": [1, len(row)], "datatype": "FP32",
                                    "data": np.round(row, 3).tolist()}]},
                       separators=(",", ":")).encode() for row in rows]


def _ratios(ours_summary: dict[str, Any], ours: dict[str, Any], peer: dict[str, Any]
            ) -> dict[str, float | None]:
    """inferstream ÷ peer: msgs/s (> 1: ours faster), CPU and p99 (< 1: ours cheaper, faster)."""
    sat = peer.get("saturation") or {}
    out: dict[str, float | None] = {
        "saturation": None if "saturation_note" in peer else _div(ours_summary["msgs_per_s"],
                                                                  sat.get("msgs_per_s")),
        "over_best_sustained": _div(ours_summary["msgs_per_s"], peer.get("best_sustained_per_s")),
        "cpu_s_per_10k": _div(ours_summary["cpu_s_per_10k"], peer.get("cpu_s_per_10k")),
    }
    if "inferstream_at_best" in peer:
        best = next(r for r in peer["latency"].values()
                    if r.get("offered_per_s") == peer["best_sustained_per_s"])
        out["p99_at_peer_best"] = _div(peer["inferstream_at_best"]["p99_ms"], best["p99_ms"])
    for load, ours_run in ours["latency"].items():
        run = peer.get("latency", {}).get(load) or {}
        if run.get("sustained"):
            out[f"p99_at_{load}pct"] = _div(ours_run["p99_ms"], run["p99_ms"])
    return out


def _bar(out: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Saturation ≥ 3 x the best peer's; p99 at each peer's best rate ≤ ½ of the peer's."""
    bar: dict[str, dict[str, Any]] = {}
    sats = {n: p["saturation"]["msgs_per_s"] for n, p in out["peers"].items()
            if "saturation" in p and "saturation_note" not in p
            and np.isfinite(p["saturation"]["msgs_per_s"])}
    sats |= {n: p["best_sustained_per_s"] for n, p in out["peers"].items()
             if "saturation_note" in p and "best_sustained_per_s" in p}
    if sats:
        best = max(sats, key=lambda n: sats[n])
        reached = out["inferstream"]["msgs_per_s"] / sats[best]
        bar[f"saturation_over_best_peer ({best})"] = {
            "reached": reached, "needed": f">= {BAR_SATURATION:g}",
            "met": reached >= BAR_SATURATION}
    for name, peer in out["peers"].items():
        reached = peer.get("ratios", {}).get("p99_at_peer_best")
        if reached is not None:
            bar[f"p99_at_{name}_best_rate_over_{name}"] = {
                "reached": reached, "needed": f"<= {BAR_P99:g}", "met": reached <= BAR_P99}
    return bar


def _div(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or not b or not np.isfinite(a) or not np.isfinite(b):
        return None
    return float(a / b)


def _say(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)
