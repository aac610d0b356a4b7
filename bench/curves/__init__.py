"""How cost grows with the work: deployed pipelines, the control log, artifact size, workers.

Each curve is a dict in the run's JSON under "curves" and a PNG beside it (bench.curves.plots).
They run after the scenarios on the same broker and platform, each with workers of its own
(every worker serves every deployed pipeline, so the scenarios' workers are stopped first),
and the control log last: it makes every later replay of the control topic longer.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from bench.curves import artifacts, control_log, pipelines, workers
from bench.platform import BenchPlatform

NAMES = ("workers", "pipelines", "artifacts", "control")  # the order they run in
SIZES = {  # full (the issue's) and quick (a smoke run's)
    "full": {"pipelines": (1, 10, 100), "control": (1_000, 10_000, 100_000),
             "artifacts_mb": (1, 100, 1024)},
    "quick": {"pipelines": (1, 3), "control": (1_000,), "artifacts_mb": (1, 10)},
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The curves' options of `python3 -m bench`."""
    parser.add_argument("--curves", default=",".join(NAMES),
                        help=f"curves to run, comma-separated from {','.join(NAMES)}")
    parser.add_argument("--no-curves", action="store_true", help="run no curve")
    parser.add_argument("--curve-sizes", choices=tuple(SIZES), default="full",
                        help="full: 1/10/100 pipelines, 1k/10k/100k events, 1 MB/100 MB/1 GB; "
                             "quick: 1/3 pipelines, 1k events, 1/10 MB")
    parser.add_argument("--control-mix", choices=("versions", "deploys"), default="versions",
                        help="events the control log is filled with: new pipeline versions, "
                             "or Deploy/Undeploy pairs (a worker reconciles after each)")
    parser.add_argument("--curve-load-pct", type=float, default=50.0,
                        help="fixed rate of the pipelines and workers curves, %% of the drain "
                             "of their first point")


def wanted(args: argparse.Namespace) -> list[str]:
    """The curves selected, in the order they run; refuses an unknown name."""
    if args.no_curves:
        return []
    names = [n.strip() for n in args.curves.split(",") if n.strip()]
    unknown = sorted(set(names) - set(NAMES))
    if unknown:
        raise SystemExit(f"--curves: unknown {', '.join(unknown)}; choose from {','.join(NAMES)}")
    return [n for n in NAMES if n in names]


def run(platform: BenchPlatform, args: argparse.Namespace, say: Callable[[str], None]
        ) -> dict[str, Any]:
    """The selected curves, each a dict of points (a curve that fails is reported, not lost)."""
    for w in platform.workers:
        w.stop()
    sizes, batch = SIZES[args.curve_sizes], (args.batch_size, args.batch_wait_ms)
    out: dict[str, Any] = {}
    for name in wanted(args):
        say(f"curve: {name}")
        try:
            if name == "workers":
                out[name] = workers.curve(platform, args.drain_s, args.curve_load_pct,
                                          args.latency_s, batch, say)
            elif name == "pipelines":
                out[name] = pipelines.curve(platform, sizes["pipelines"], args.drain_s,
                                            args.curve_load_pct, args.latency_s, batch, say)
            elif name == "artifacts":
                out[name] = artifacts.curve(platform, sizes["artifacts_mb"], batch, say)
            else:
                out[name] = control_log.curve(platform, sizes["control"], args.control_mix,
                                              say)
        except Exception as exc:
            say(f"curve {name} failed: {exc!r}")
            out[name] = {"error": repr(exc)}
    return out
