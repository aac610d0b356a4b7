"""The peers' part of the printed table: each peer beside inferstream, and the ratios."""

from __future__ import annotations

import math
from typing import Any


def _n(value: float | None, digits: int = 0) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:,.{digits}f}"


def _lat(run: dict[str, Any] | None) -> str:
    if not run:
        return "-"
    if "skipped" in run:
        return "skipped"
    mark = "" if run.get("sustained", True) else " (not sustained)"
    return f"{_n(run['p50_ms'], 1)}/{_n(run['p99_ms'], 1)}/{_n(run['p999_ms'], 1)}{mark}"


def peers_table(peers: dict[str, Any]) -> str:
    """Saturation, CPU, latency at each offered rate and the ratios, one block per peer."""
    ours = peers["inferstream"]
    lines = ["", "peers, same broker, records and model (ratios: inferstream ÷ peer; msgs/s "
                 "> 1 and CPU, p99 < 1 favour inferstream)",
             f"  inferstream (GBT, sink off, exactly once): {_n(ours['msgs_per_s'])} msgs/s, "
             f"worker CPU {_n(ours['cpu_s_per_10k'], 2)} s/10k"]
    for name, peer in peers["peers"].items():
        if "error" in peer:
            lines.append(f"  {name}: NOT RUN: {peer['error']}")
            continue
        sat = peer.get("saturation") or {}
        lines += [f"  {name}: {peer['delivery']}; {peer['batching']}; payload "
                  f"{peer['payload']}",
                  f"    saturation {_n(sat.get('msgs_per_s'))} msgs/s (runs "
                  + ", ".join(_n(r) for r in peer.get("saturation_runs", []))
                  + f"; lost in drains {peer.get('lost_in_drains', 0):,}), worker CPU "
                  f"{_n(peer.get('cpu_s_per_10k'), 2)} s/10k, best "
                  f"sustained {_n(peer.get('best_sustained_per_s'))}/s"]
        if "saturation_note" in peer:
            lines.append(f"    saturation {peer['saturation_note']}")
        for label, run in peer["latency"].items():
            what = (f"{label} % of its own saturation" if label.startswith("own") else label
                    if label.startswith("ladder") else f"{label} % of inferstream's")
            lines.append(f"    {what:<32} {_n(run.get('offered_per_s')):>9}/s  "
                         f"p50/p99/p99.9 ms {_lat(run)}")
        if "inferstream_at_best" in peer:
            lines.append(f"    inferstream at that best rate        p50/p99/p99.9 ms "
                         f"{_lat(peer['inferstream_at_best'])}")
        lines.append("    ratios: " + ", ".join(f"{k} {_n(v, 3)}"
                                              for k, v in peer["ratios"].items()))
    if peers.get("bar"):
        lines.append("  the bar (peers):")
        for name, b in peers["bar"].items():
            lines.append(f"    {'met    ' if b['met'] else 'NOT MET'} {name}: "
                         f"{b['reached']:.3f} (needed {b['needed']})")
    return "\n".join(lines)
