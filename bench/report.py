"""The run's figures: ratios and the bar, a printed table, and the JSON file."""

from __future__ import annotations

import json
import math
import os
import platform
import re
import socket
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from agents.metrics import PAUSE_BUCKETS_MS

RESULTS = Path(__file__).parent / "results"
BAR = {"e2e_over_transport": 0.5, "chain_over_single": 0.9, "sink_on_over_off": 0.9}
P99_BAR_MS = {25: 50.0, 50: 100.0, 70: 100.0}  # % of saturation: p99 ms, one worker


def machine() -> dict[str, Any]:
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"host": socket.gethostname(), "cpus": os.cpu_count(), "cpu": model,
            "python": platform.python_version(), "system": platform.platform()}


def ratios(result: dict[str, Any]) -> dict[str, float]:
    """The figures the bar is about, and the others the issue asks for."""
    e2e = result["scenarios"]["single"]["saturation"]["msgs_per_s"]
    batch = result["settings"]["batch_size"]
    ceiling = result["inference"]["gbt"]
    at_batch = ceiling[min(ceiling, key=lambda b: abs(int(b) - batch))]
    return {
        "e2e_over_transport": e2e / result["transport"]["msgs_per_s"],
        "e2e_over_inference": e2e / at_batch,
        "e2e_over_inference_best": e2e / max(ceiling.values()),
        "chain_over_single": result["scenarios"]["chain"]["saturation"]["msgs_per_s"] / e2e,
        # Served and stored: a sink that falls behind would only show later, when it must
        # catch up; results alone would flatter it.
        "sink_on_over_off": sink_rate(result["scenarios"]["sink"]["saturation"]) / e2e,
        "chain_inference_over_single_inference": (
            result["inference"]["chain"][str(batch) if str(batch) in result["inference"]["chain"]
                                         else max(result["inference"]["chain"])] / at_batch),
    }


def sink_rate(saturation: dict[str, Any]) -> float:
    """Records per second served with their logs stored (results alone without a sink)."""
    return float(saturation.get("served_and_stored_per_s", saturation["msgs_per_s"]))


def bar(result: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Each line of the bar: the figure reached, what it must be, and whether it is met."""
    out = {name: {"reached": result["ratios"][name], "needed": f">= {need}",
                  "met": result["ratios"][name] >= need} for name, need in BAR.items()}
    for load, most in P99_BAR_MS.items():
        p99 = result["scenarios"]["single"]["latency"][str(load)]["p99_ms"]
        out[f"p99_ms_at_{load}pct"] = {"reached": p99, "needed": f"<= {most:g}",
                                       "met": p99 <= most}
    return out


def tail_table(scenario: dict[str, Any]) -> list[str]:
    """Per offered load: p99, p99.9, the output's stalls (gaps over 50 ms) by length, the
    worker's pauses over 50 ms (serving cycle, wait for the last commit, commit, collector),
    and the generator's own lag and CPU."""
    lines = [f"the tail, {scenario['label']}: stalls = gaps in the output over 50 ms "
             "(count by ms: 50-100/100-200/200-300/300-500/500-1000/>1000, longest); worker "
             "pauses over 50 ms: cycle/settle/commit/gc; the broker's GC pauses: count, "
             "longest ms; generator lag p99/max ms, cores",
             "  load   offered/s    p99 ms  p99.9 ms   stalls               longest ms"
             "   pauses>50ms  broker GC    generator"]
    for load, run in scenario["latency"].items():
        s = run.get("stalls") or {}
        by = "/".join(str(n) for n in (s.get("by_ms") or {}).values()) or "-"
        pauses = run.get("worker_pauses") or {}
        over = "/".join(str(_over(pauses[k]["counts"], 50)) if k in pauses else "-"
                        for k in ("cycle", "settle", "commit", "gc"))
        g, jvm = run.get("generator") or {}, run.get("broker_gc") or {}
        broker = f"{jvm['count']}, {_n(jvm['longest_ms'], 0)}" if jvm else "-"
        lines.append(f"  {load:>3}% {_n(run['offered_per_s']):>11} {_n(run['p99_ms'], 1):>9}"
                     f" {_n(run['p999_ms'], 1):>9}   {by:<20} {_n(s.get('longest_ms'), 0):>10}"
                     f"   {over:<12} {broker:<12} {_n(g.get('lag_p99_ms'), 1)}/"
                     f"{_n(g.get('lag_max_ms'), 1)}"
                     f" {_n(g.get('cpu_cores'), 2)}")
    return lines


def _over(counts: list[int], ms: float) -> int:
    """Pauses longer than ms, from a histogram over PAUSE_BUCKETS_MS (ms one of its bounds)."""
    return sum(counts[PAUSE_BUCKETS_MS.index(ms) + 1:])


def default_out() -> Path:
    """bench/results/<date>-<machine>.json"""
    host = re.sub(r"[^A-Za-z0-9_.-]", "-", socket.gethostname()) or "machine"
    return RESULTS / f"{datetime.now(UTC):%Y-%m-%d}-{host}.json"


def write(result: dict[str, Any], out: Path | None = None) -> Path:
    """The JSON file of the run: bench/results/<date>-<machine>.json unless out is given."""
    out = out or default_out()
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, default=_plain) + "\n")
    return out


def _plain(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    raise TypeError(f"cannot write {type(value).__name__} as JSON")


def _n(value: float | None, digits: int = 0) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:,.{digits}f}"


def table(result: dict[str, Any]) -> str:
    """The run as text: ceilings, scenarios, latency, stages, ratios and the bar."""
    lines = [f"inferstream bench {result['time']} on {result['machine']['cpus']} CPUs "
             f"({result['machine']['cpu']}), broker {result['broker']}, "
             f"records {result['settings']['format']} ~{result['settings']['record_bytes']} B, "
             f"batch {result['settings']['batch_size']}/{result['settings']['batch_wait_ms']} ms",
             "", "inference ceiling (ONNX Runtime, rows/s)",
             "  batch      " + "".join(f"{b:>10}" for b in result["inference"]["gbt"])]
    for model, by_batch in result["inference"].items():
        lines.append(f"  {model:<10} " + "".join(f"{_n(v):>10}" for v in by_batch.values()))
    t = result["transport"]
    lines += ["", f"transport ceiling (confluent-kafka relay, best of "
                  f"{len(t.get('runs', [1]))}): {_n(t['msgs_per_s'])} msgs/s, "
                  f"CPU s/10k: " + ", ".join(f"{k} {_n(v, 2)}" for k, v in
                                             t["cpu_s_per_10k"].items()), "",
              "end to end, one worker     msgs/s   worker s/10k  broker s/10k"
              "    p50/p99/p99.9 ms at " + ", ".join(
                  f"{load}%" for load in result["settings"]["loads_pct"]) + " of saturation"]
    for s in result["scenarios"].values():
        sat = s["saturation"]
        cpu = sat["cpu_s_per_10k"]
        lat = "  ".join(f"{_n(v['p50_ms'], 1)}/{_n(v['p99_ms'], 1)}/{_n(v['p999_ms'], 1)}"
                        for v in s["latency"].values())
        lines.append(f"  {s['label']:<22}{_n(sink_rate(sat)):>10}{_n(cpu.get('worker'), 2):>15}"
                     f"{_n(cpu.get('broker'), 2):>14}    {lat}")
        if "stored_per_s" in sat:
            lines.append(f"  {'':<22}(results {_n(sat['msgs_per_s'])}/s, logs stored "
                         f"{_n(sat['stored_per_s'])}/s: the slower sets the pace)")
    lines += ["", "worker stages, µs per record at saturation (commit: in a thread beside the "
                  "others; sink/log: per log row; batch, txn: records per micro-batch, per "
                  "transaction)"]
    stages = [k for k in next(iter(result["scenarios"].values()))["saturation"]["stages_us"] or {}]
    names = {"sink_per_log_row": "sink/log", "batch_size": "batch", "transaction_size": "txn"}
    lines.append("  " + " " * 22 + "".join(f"{names.get(k, k):>10}" for k in stages))
    for s in result["scenarios"].values():
        st = s["saturation"]["stages_us"] or {}
        lines.append(f"  {s['label']:<22}" + "".join(f"{_n(st.get(k), 1):>10}" for k in stages))
    if "single" in result["scenarios"]:
        lines += ["", *tail_table(result["scenarios"]["single"])]
    lines += ["", "ratios: " + ", ".join(f"{k} {v:.3f}" for k, v in result["ratios"].items()),
              "", "the bar:"]
    for name, b in result["bar"].items():
        lines.append(f"  {'met    ' if b['met'] else 'NOT MET'} {name}: {b['reached']:.3f} "
                     f"(needed {b['needed']})")
    return "\n".join(lines)
