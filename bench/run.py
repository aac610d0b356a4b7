"""One benchmark run: `python3 -m bench` (see --help). Prints a table, writes bench/results/.

Order: the inference ceiling; a broker (ours, or INFERSTREAM_BOOTSTRAP_SERVERS); the transport
ceiling; then three scenarios, each on a pipeline of its own: the GBT with the log sink on
(first, so its sink stores only the logs of its own run), the GBT with the sink off, and the
three-model chain with the sink off. Each scenario deploys, drains a calibration backlog,
drains a backlog of about --drain-s seconds (saturation), offers a rate unmeasured (warm-up),
then offers the fixed rates.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import curves
from bench.curves.plots import write_all
from bench.inference import ceiling
from bench.models import build
from bench.peers.compare import compare
from bench.peers.report import peers_table
from bench.peers.setup import PEERS
from bench.platform import BenchPlatform, broker
from bench.profile import LOADS as PROFILED
from bench.report import bar, default_out, machine, ratios, sink_rate, table, write
from bench.scenarios import Flow, latency, run_flow, saturation, steady_rate, transport
from control.local.worker_process import WorkerProcess

LOADS = (10, 25, 50, 70, 75, 90)  # % of saturation; the bar names 10 to 70
WARM_UP = (25, 4.0)
# Records a drain at most. The steady window (after the sender is done) of 1M was 4-6 s, and
# five runs of it varied by ±15 %.
MAX_DRAIN = 2_000_000  # % of saturation, seconds: before the measured fixed rates


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m bench", description=__doc__)
    parser.add_argument("--format", choices=("avro", "json"), default="avro",
                        help="input records: Avro (~150 B) or JSON")
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--batch-wait-ms", type=int, default=10)
    parser.add_argument("--drain-s", type=float, default=12.0,
                        help="seconds of backlog for the saturation figure")
    parser.add_argument("--latency-s", type=float, default=8.0,
                        help="seconds of each fixed-rate run")
    parser.add_argument("--repeat", type=int, default=5,
                        help="saturation runs per scenario (the median is reported)")
    parser.add_argument("--relay-records", type=int, default=1_000_000)
    parser.add_argument("--only", choices=("sink", "single", "chain", "curves"), action="append",
                        help="run only these scenarios, or the curves (repeatable); ratios "
                             "need all three scenarios")
    parser.add_argument("--peers", default=",".join(PEERS),
                        help=f"peers to run beside inferstream, comma-separated "
                             f"(default: {','.join(PEERS)})")
    parser.add_argument("--no-peers", dest="peers", action="store_const", const="",
                        help="run no peer")
    parser.add_argument("--out", type=Path, help="JSON file (default bench/results/DATE-HOST)")
    parser.add_argument("--py-spy", action="store_true",
                        help="record the GBT worker (sink off) with py-spy during the 25 and "
                             "50 %% runs: speedscope files beside the JSON (needs py-spy)")
    parser.add_argument("--keep", action="store_true",
                        help="keep the work folder (broker data, worker logs: ~20 GB)")
    curves.add_arguments(parser)
    args = parser.parse_args(argv)
    args.out = args.out or default_out()
    curves.wanted(args)  # an unknown curve is refused before the run, not after the scenarios
    args.peers = [p for p in args.peers.split(",") if p]
    if unknown := set(args.peers) - set(PEERS):
        parser.error(f"unknown peers {sorted(unknown)}; known: {', '.join(PEERS)}")
    folder = Path(tempfile.mkdtemp(prefix="inferstream-bench-"))
    try:
        return run(args, folder)
    finally:
        if args.keep:
            say(f"kept the work folder {folder}")
        else:
            shutil.rmtree(folder, ignore_errors=True)


def run(args: argparse.Namespace, folder: Path) -> int:
    """One bench run in a work folder of its own."""
    started = time.monotonic()
    say(f"work folder {folder}; building models")
    models = build(folder / "models")
    say("inference ceiling")
    inference = ceiling(models)
    result: dict[str, Any] = {
        "time": f"{datetime.now(UTC):%Y-%m-%dT%H:%M:%SZ}", "machine": machine(),
        "settings": {"format": args.format, "batch_size": args.batch_size,
                     "batch_wait_ms": args.batch_wait_ms, "loads_pct": list(LOADS),
                     "drain_s": args.drain_s, "latency_s": args.latency_s},
        "inference": {m: {str(b): v for b, v in r.items()} for m, r in inference.items()},
        "scenarios": {},
    }
    with broker(folder / "broker") as (bootstrap, local):
        result["broker"] = f"apache-kafka {local.version}" if local else f"external {bootstrap}"
        pid = local.pid if local else None
        gc_log = local.gc_log if local else None
        platform = BenchPlatform(bootstrap, folder, models, args.format)
        try:
            pool = platform.payloads("single")
            result["settings"]["record_bytes"] = round(sum(map(len, pool)) / len(pool))
            say("transport ceiling")
            relays = [transport(platform, pool, args.relay_records, pid, n) for n in range(2)]
            # The ceiling is the best the relay did; e2e ratios against it are conservative.
            result["transport"] = max(relays, key=lambda r: r["msgs_per_s"])
            result["transport"]["runs"] = [r["msgs_per_s"] for r in relays]
            wanted = args.only or ["sink", "single", "chain"]
            if "sink" in wanted:
                w = platform.worker("w-sink", sink=True)
                result["scenarios"]["sink"] = scenario(
                    platform, w, "sink", "GBT, log sink on", False, args, pid, gc_log)
                w.stop()
            if {"single", "chain"} & set(wanted):
                w = platform.worker("w", sink=False)
                for name, label, chain in (("single", "GBT, sink off", False),
                                           ("chain", "3-model chain", True)):
                    if name in wanted:
                        result["scenarios"][name] = scenario(
                            platform, w, name, label, chain, args, pid, gc_log)
            if args.peers:
                result["peers"] = compare(platform, args.peers, result, LOADS, args.latency_s,
                                          args.drain_s, args.repeat,
                                          (args.batch_size, args.batch_wait_ms), pid)
            if not args.only or "curves" in args.only:
                result["curves"] = curves.run(platform, args, say)
        finally:
            platform.close()
    if not args.only:
        result["ratios"] = ratios(result)
        result["bar"] = bar(result)
        print(table(result))
    if "peers" in result:
        print(peers_table(result["peers"]))
    result["elapsed_s"] = time.monotonic() - started
    path = write(result, args.out)
    result["plots"] = write_all(result, path)  # PNGs beside the JSON, named after it
    write(result, path)
    say(f"wrote {path} in {result['elapsed_s']:.0f}s")
    return 0


def scenario(platform: BenchPlatform, w: WorkerProcess, pipeline: str, label: str,
             chain: bool, args: argparse.Namespace, broker_pid: int | None,
             broker_gc_log: Path | None = None) -> dict[str, Any]:
    """Deploy, calibrate, saturate, then offer the fixed rates; undeploy."""
    say(f"{label}: deploy")
    platform.pipeline(pipeline, chain)
    platform.deploy(w, pipeline, args.batch_size, args.batch_wait_ms)
    pool = platform.payloads(pipeline)
    flow = Flow(platform.settings.bootstrap_servers, platform.topic(pipeline, "input"),
                platform.topic(pipeline, "output"), pool, platform.folder)
    _, times, _, sent_at, _ = run_flow(flow, platform.ends(flow.sink), 20_000, None, 120)
    guess = steady_rate(times, sent_at)[0]
    count = int(min(max(guess * args.drain_s, 20_000), MAX_DRAIN))
    say(f"{label}: calibrated at {guess:,.0f}/s; saturation: {args.repeat} x {count:,} records")
    runs = [saturation(platform, w, pipeline, pool, count, broker_pid,
                       logs_per_record=3 if chain else 1, sink=pipeline == "sink")
            for _ in range(args.repeat)]
    # The median run: one 2-core machine with the broker on it varies ±10 % run to run.
    sat = sorted(runs, key=sink_rate)[len(runs) // 2]
    say(f"{label}: saturation {', '.join(f'{sink_rate(r):,.0f}' for r in runs)}/s")
    out: dict[str, Any] = {"label": label, "saturation": sat, "latency": {},
                           "saturation_runs": [sink_rate(r) for r in runs]}
    # Not measured: the broker's JIT compiles the paths of small, steady requests, which the
    # drains did not take (the first fixed-rate run after start-up was ten times slower).
    latency(platform, pipeline, pool, sink_rate(sat) * WARM_UP[0] / 100, WARM_UP[1])
    for load in LOADS:
        rate = sink_rate(sat) * load / 100
        say(f"{label}: {load}% = {rate:,.0f}/s for {args.latency_s:g}s")
        profile = (args.out.with_name(f"{args.out.stem}-pyspy-{pipeline}-{load}.speedscope.json")
                   if args.py_spy and pipeline == "single" and str(load) in PROFILED else None)
        out["latency"][str(load)] = latency(platform, pipeline, pool, rate, args.latency_s, w,
                                            broker_gc_log, profile)
    platform.undeploy(w, pipeline)
    return out


def say(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    raise SystemExit(main())
