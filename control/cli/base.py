"""What every command group of the CLI shares: the client, output, times and durations."""

from __future__ import annotations

import base64
import dataclasses
import json
import re
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from control.client import Client
from control.registry.state import Canary, Pipeline, PipelineVersion
from control.registry.steps import step_to_json

out = Console()
err = Console(stderr=True)
JsonFlag = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


def client_of(ctx: typer.Context) -> Client:
    """The client of the global options (settings in ctx.obj)."""
    return Client(ctx.obj)


# -- output ------------------------------------------------------------------------------------


def to_json(value: Any) -> Any:
    """Registry entities as plain JSON values (steps in their --steps-file form)."""
    if isinstance(value, PipelineVersion):
        return {**to_json({k: v for k, v in vars(value).items() if k != "steps"}),
                "steps": [step_to_json(s) for s in value.steps]}
    if isinstance(value, Pipeline):
        return {**to_json({k: v for k, v in vars(value).items() if k != "versions"}),
                "versions": [to_json(v) for v in value.versions]}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_json(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(k): to_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_json(v) for v in value]
    if isinstance(value, set | frozenset):  # paused routes, alerts that fired a rule
        return [to_json(v) for v in sorted(value)]
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, bytes):  # public keys: standard base64, as PEM bodies are
        return base64.b64encode(value).decode()
    return value


def show(value: Any, as_json: bool, table: Callable[[], Table] | None = None,
         message: str | None = None) -> None:
    if as_json:
        print(json.dumps(to_json(value), indent=2))
    elif table is not None:
        out.print(table())
    elif message is not None:
        out.print(message)


def rows_table(title: str, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> Table:
    t = Table(title=title)
    for c in columns:
        t.add_column(c)
    for row in rows:
        t.add_row(*("" if v is None else str(v) for v in row))
    return t


def when(t: datetime) -> str:
    return t.strftime("%Y-%m-%d %H:%M:%S")


# -- times and durations -----------------------------------------------------------------------

_DURATION = re.compile(r"(\d+)([smhdw])")
_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_time(text: str) -> datetime:
    """An ISO-8601 time ('2024-05-01T12:00', '2024-05-01 12:00+02:00', ...) or 'now'; UTC
    when it names no zone."""
    if text.strip().lower() == "now":
        return datetime.now(UTC)
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(
            f"{text!r} is not an ISO-8601 time; write e.g. 2024-05-01T12:00 (UTC) or "
            "2024-05-01T12:00+02:00"
        ) from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def parse_duration(text: str) -> timedelta:
    """A duration like 30s, 5m, 1h, 1d, 2w or 1h30m."""
    compact = text.strip().lower()
    if not compact or _DURATION.sub("", compact):
        raise ValueError(f"{text!r} is not a duration; write e.g. 30s, 5m, 1h, 1d or 1h30m")
    return timedelta(seconds=sum(int(n) * _UNIT[u] for n, u in _DURATION.findall(compact)))


def format_duration(span: timedelta) -> str:
    """1h, 90s, 1d2h: the shortest way parse_duration reads back."""
    seconds, parts = int(span.total_seconds()), []
    if seconds != span.total_seconds():
        return str(span)
    for unit in "dhms":
        n, seconds = divmod(seconds, _UNIT[unit])
        if n:
            parts.append(f"{n}{unit}")
    return "".join(parts) or "0s"



def routes_text(paused: Iterable[tuple[int, int]]) -> str:
    """Paused split routes as `step:route`, in order (pipelines get, status)."""
    return ", ".join(f"{step}:{route}" for step, route in sorted(paused))


# -- canaries ----------------------------------------------------------------------------------


def canary_line(canary: Canary) -> str:
    """Where a canary stands, in a line: version, step, share, next decision, last word."""
    head = f"canary {canary.canary_id} → v{canary.version}"
    if canary.running:
        assert canary.step_at is not None
        due = canary.step_at + timedelta(seconds=canary.every_s)
        line = (f"{head}: step {canary.step}/{len(canary.steps)} at {canary.share}% "
                f"(steps {','.join(map(str, canary.steps))}), next decision {when(due)} UTC")
        waiting = canary.held == canary.step and canary.evidence
        return line + (f"; waiting: {canary.evidence}" if waiting else
                       f"; last evidence: {canary.evidence}" if canary.evidence else "")
    ended = f" at {when(canary.ended_at)} UTC" if canary.ended_at else ""
    why = canary.reason if canary.state != "promoted" else canary.evidence
    return f"{head}: {canary.state}{ended}" + (f": {why}" if why else "")
