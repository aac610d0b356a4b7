"""PNG plots beside a run's JSON: latency against offered rate per scenario, and the curves.

`python3 -m bench.curves.plots RUN.json` draws them again from a run already written.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only: no display on a bench machine
import matplotlib.pyplot as plt  # after use(): the backend is chosen before pyplot loads
from matplotlib.axes import Axes

from bench.report import sink_rate


def write_all(result: dict[str, Any], json_path: Path) -> list[str]:
    """Every plot the run has data for, as PNGs named after json_path; their file names."""
    stem, written = json_path.with_suffix(""), []
    for name, scenario in result.get("scenarios", {}).items():
        if scenario.get("latency"):
            written.append(_save(_latency(scenario), Path(f"{stem}-latency-{name}.png")))
    for name, draw in CURVES.items():
        if (result.get("curves") or {}).get(name, {}).get("points"):
            written.append(_save(draw(result["curves"][name]), Path(f"{stem}-{name}.png")))
    return [Path(p).name for p in written]


def _save(fig: Any, path: Path) -> str:
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return str(path)


def _latency(scenario: dict[str, Any]) -> Any:
    """Offered rate against p50, p99 and p99.9, one point per fixed-rate run."""
    runs = sorted(scenario["latency"].values(), key=lambda r: r["offered_per_s"])
    fig, ax = plt.subplots(figsize=(6, 4))
    x = [r["offered_per_s"] for r in runs]
    for key, label in (("p50_ms", "p50"), ("p99_ms", "p99"), ("p999_ms", "p99.9")):
        ax.plot(x, [r[key] for r in runs], marker="o", label=label)
    sat = sink_rate(scenario["saturation"]) if scenario.get("saturation") else None
    if sat:
        ax.axvline(sat, color="grey", linestyle="--", label="saturation (drain)")
    ax.set(title=f"{scenario['label']}: latency against offered rate",
           xlabel="offered records/s", ylabel="latency from scheduled send, ms", yscale="log")
    ax.legend()
    ax.grid(True, which="both", alpha=0.3)
    return fig


def _panels(title: str, n: int) -> tuple[Any, list[Axes]]:
    fig, axes = plt.subplots(1, n, figsize=(4 * n, 3.6))
    fig.suptitle(title)
    return fig, list(axes) if n > 1 else [axes]


def _ticks(ax: Axes, x: list[float]) -> None:
    """Ticks at the sizes measured: a log axis over two or three points labels them badly."""
    ax.set_xticks(x, [f"{v:,.0f}" for v in x])
    ax.minorticks_off()


def _pipelines(curve: dict[str, Any]) -> Any:
    pts = curve["points"]
    x = [p["pipelines"] for p in pts]
    fig, (a, b, c, d) = _panels("deployed pipelines (one worker, same total rate)", 4)
    a.plot(x, [p["saturation"]["msgs_per_s"] for p in pts], marker="o")
    a.set(ylabel="drain records/s", ylim=(0, None))
    for key, label in (("p50_ms", "p50"), ("p99_ms", "p99")):
        b.plot(x, [p["latency"][key] for p in pts], marker="o", label=label)
    b.set(ylabel=f"ms at {curve['offered_per_s']:,.0f}/s", yscale="log")
    b.legend()
    c.plot(x, [p["worker_rss_mb"] for p in pts], marker="o")
    c.set(ylabel="worker RSS, MB", ylim=(0, None))
    d.plot(x, [p["deploy_last_s"] for p in pts], marker="o")
    d.set(ylabel="deploy of the last one, s", ylim=(0, None))
    for ax in (a, b, c, d):
        ax.set(xlabel="deployed pipelines", xscale="log")
        _ticks(ax, x)
        ax.grid(True, alpha=0.3)
    return fig


def _control(curve: dict[str, Any]) -> Any:
    pts = [p for p in curve["points"] if "error" not in p]
    x = [p["events"] for p in pts]
    fig, (ax,) = _panels("start time against the control log", 1)
    for key, label in (("worker_ready_s", "worker to ready"),
                       ("cli_pipelines_list_s", "inferstream pipelines list"),
                       ("client_replay_s", "client replay (in process)")):
        ax.plot(x, [p[key] for p in pts], marker="o", label=label)
    ax.set(xlabel="events on the control topic", ylabel="seconds", xscale="log",
           yscale="log")
    _ticks(ax, x)
    ax.legend()
    ax.grid(True, which="both", alpha=0.3)
    return fig


def _artifacts(curve: dict[str, Any]) -> Any:
    pts = [p for p in curve["points"] if "error" not in p]
    x = [p["artifact_bytes"] / 1024**2 for p in pts]
    fig, (ax,) = _panels("model artifact size", 1)
    for key, label in (("upload_s", "upload"), ("first_load_s", "first load (deploy to served)")):
        ax.plot(x, [p[key] for p in pts], marker="o", label=label)
    ax.set(xlabel="artifact MB", ylabel="seconds", xscale="log", yscale="log")
    _ticks(ax, x)
    ax.legend()
    ax.grid(True, which="both", alpha=0.3)
    return fig


def _workers(curve: dict[str, Any]) -> Any:
    pts = curve["points"]
    labels = [f"{p['workers']} worker{'s' if p['workers'] > 1 else ''}" for p in pts]
    fig, (a, b) = _panels("workers on one input topic", 2)
    a.bar(labels, [p["saturation"]["msgs_per_s"] for p in pts])
    a.set(ylabel="drain records/s")
    pauses = [p["latency"]["longest_pause_s"] * 1000 for p in pts]
    join = curve.get("join", {}).get("longest_pause_s")
    names = labels + (["second joining"] if join is not None else [])
    b.bar(names, pauses + ([join * 1000] if join is not None else []))
    b.set(ylabel=f"longest pause downstream, ms at {curve['offered_per_s']:,.0f}/s")
    return fig


CURVES = {"pipelines": _pipelines, "control": _control, "artifacts": _artifacts,
          "workers": _workers}


if __name__ == "__main__":
    for arg in sys.argv[1:]:
        for name in write_all(json.loads(Path(arg).read_text()), Path(arg)):
            print(name)
