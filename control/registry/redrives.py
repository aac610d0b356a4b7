"""Dead-letter redrives (pure, like the fold): which dead letters a redrive sends back.

A Redrive event names offset ranges of a pipeline's dead-letter topic, fixed by its writer (the
CLI) from the times asked for and the end offsets as of then. The fold checks it and records
which earlier redrives of the pipeline overlap it. Whether a redrive sends one dead letter back
is then a function of the registry and the letter only (`decide`): every worker, every restart
and the CLI's dry run judge it alike, and a letter an earlier redrive took is not sent twice.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace
from typing import Any

from control.registry.events import ControlEvent
from control.registry.rules import member, pipeline_of
from control.registry.state import Redrive, Registry
from schemas.errors import Rejected

REDRIVE, ALREADY, FILTERED, LIMITED = "redrive", "already", "filtered", "limit"
NOT_INPUT, CUT = "not_input", "truncated"
OUTCOMES = (REDRIVE, ALREADY, FILTERED, LIMITED, NOT_INPUT, CUT)
# What the data plane appends to the reason of a letter whose original was cut to fit.
CUT_NOTE = "(this letter keeps the first"
# Matching costs up to len(pattern) * len(reason) steps per letter: keep patterns short.
MAX_PATTERN = 200


def reason_matches(pattern: str | None, reason: str) -> bool:
    """Whether a dead letter's reason fits --reason-like: a plain substring, or, when the text
    holds a %, a LIKE pattern of the whole reason (% any text, _ one character)."""
    if pattern is None:
        return True
    if "%" not in pattern:
        return pattern in reason
    return like(pattern, reason)


def check_pattern(pattern: str | None) -> None:
    """Refuse a --reason-like pattern that is empty or too long to judge every letter with."""
    if pattern is not None and not 0 < len(pattern) <= MAX_PATTERN:
        raise Rejected(f"--reason-like takes 1..{MAX_PATTERN} characters, not {len(pattern)}; "
                       "shorten the pattern (a substring of the reason is enough)")


def like(pattern: str, text: str) -> bool:
    """Whether the whole of `text` fits the LIKE `pattern` (% any text, _ one character, every
    other character itself). Greedy with one backtrack point, the last %: at most
    len(pattern) * len(text) steps whatever the pattern (a regex could take exponential time),
    and nothing of the pattern ever reaches SQL or `re`."""
    p = t = 0
    star, mark = -1, 0  # the last % seen, and where in text it began to match
    while t < len(text):
        if p < len(pattern) and pattern[p] == "%":
            star, mark = p, t
            p += 1
        elif p < len(pattern) and pattern[p] in ("_", text[t]):
            p += 1
            t += 1
        elif star >= 0:  # let the last % take one more character, match the rest again
            mark += 1
            p, t = star + 1, mark
        else:
            return False
    return all(c == "%" for c in pattern[p:])


def covers(redrive: Redrive, partition: int, offset: int) -> bool:
    return any(p == partition and start <= offset < end for p, start, end in redrive.ranges)


def takes(redrive: Redrive, partition: int, offset: int, reason: str, count: int) -> bool:
    """Whether `redrive` sends this dead letter back, earlier redrives aside."""
    return (covers(redrive, partition, offset) and reason_matches(redrive.reason_like, reason)
            and (redrive.limit is None or count < redrive.limit))


def decide(redrive: Redrive, earlier: Sequence[Redrive], partition: int, offset: int,
           reason: str, count: int) -> str:
    """What `redrive` does with the dead letter at `partition`/`offset` (in its ranges): one of
    OUTCOMES. `earlier`: the redrives its `earlier` names (see `earlier_of`)."""
    if not reason_matches(redrive.reason_like, reason):
        return FILTERED
    if any(takes(e, partition, offset, reason, count) for e in earlier):
        return ALREADY
    if redrive.limit is not None and count >= redrive.limit:
        return LIMITED
    return REDRIVE


def classify(redrive: Redrive, earlier: Sequence[Redrive], partition: int, offset: int,
             letter: Mapping[str, Any], input_topic: str) -> str:
    """What `redrive` does with a DeadLetter record read at `partition`/`offset`: a letter of
    another topic (a refused label) or whose original was cut to fit is never sent back."""
    if letter["topic"] != input_topic:
        return NOT_INPUT
    if CUT_NOTE in letter["reason"]:
        return CUT
    return decide(redrive, earlier, partition, offset, letter["reason"],
                  letter.get("redrive_count", 0))


def earlier_of(registry: Registry, redrive: Redrive) -> list[Redrive]:
    """The redrives that `redrive.earlier` names, as the registry holds them."""
    return [registry.redrives[i] for i in redrive.earlier if i in registry.redrives]


def overlapping(registry: Registry, workspace: str, pipeline: str,
                ranges: Iterable[tuple[int, int, int]]) -> tuple[str, ...]:
    """The ids of the pipeline's redrives, oldest first, whose ranges meet `ranges`."""
    wanted = list(ranges)
    return tuple(
        r.redrive_id for r in registry.redrives.values()
        if r.workspace == workspace and r.pipeline == pipeline and any(
            p == q and s < f and t < e for p, s, e in r.ranges for q, t, f in wanted))


def redrive_id(pipeline: str, event_id: str) -> str:
    """A redrive's id: its pipeline and a digest of its event's whole id (Kafka-safe whatever
    the id holds). The registry applies an event id once, so no two redrives of any workspace
    share an id, however alike their event ids begin."""
    return f"{pipeline}-{hashlib.sha256(event_id.encode()).hexdigest()[:32]}"


def _ranges(given: Sequence[Mapping[str, Any]]) -> tuple[tuple[int, int, int], ...]:
    ranges = tuple((r["partition"], r["start"], r["end"]) for r in given)
    partitions = [p for p, _, _ in ranges]
    if len(set(partitions)) != len(partitions):
        raise Rejected(f"a redrive names each partition once, not {sorted(partitions)}")
    for p, start, end in ranges:
        if p < 0 or start < 0 or end < start:
            raise Rejected(f"bad offset range {start}..{end} of partition {p}: offsets are "
                           "0 or more and the end is not before the start")
    return tuple(sorted(ranges))


def _redrive(state: Registry, event: ControlEvent, p: Mapping[str, Any]) -> Registry:
    ws = member(state, event)
    pipeline = pipeline_of(state, ws, p["pipeline"])
    deployment = state.deployments.get((ws.name, pipeline.name))
    if deployment is None or not deployment.active:
        raise Rejected(f"pipeline {pipeline.name!r} is not deployed: a redrive sends dead "
                       "letters through the deployed version; deploy the fixed version first")
    if p["from_time"] is not None and p["to_time"] is not None \
            and p["to_time"] <= p["from_time"]:
        raise Rejected(f"the time range {p['from_time'].isoformat()} to "
                       f"{p['to_time'].isoformat()} is empty; --to must be after --from")
    if p["limit"] is not None and p["limit"] < 1:
        raise Rejected(f"redrive limit {p['limit']} must be 1 or more (or none: forced)")
    check_pattern(p["reason_like"])
    ranges = _ranges(p["ranges"])
    made_id = redrive_id(pipeline.name, event.event_id)
    if made_id in state.redrives:  # never overwrite one: its letters would go twice
        raise Rejected(f"redrive {made_id!r} already exists; send the redrive again (a new "
                       "event id gives it a new id)")
    made = Redrive(
        workspace=ws.name, pipeline=pipeline.name, redrive_id=made_id, ranges=ranges,
        reason_like=p["reason_like"], limit=p["limit"], from_time=p["from_time"],
        to_time=p["to_time"], created_by=event.actor, created_at=event.time,
        earlier=overlapping(state, ws.name, pipeline.name, ranges))
    return replace(state, redrives={**state.redrives, made.redrive_id: made})


REDRIVE_HANDLERS = {"Redrive": _redrive}
