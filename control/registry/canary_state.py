"""A deployment's canary as the registry keeps it: its gates, the step it is at, how it ended
(control/registry/canary.py folds the events that make and move it)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

RUNNING, PROMOTED, ROLLED_BACK, ABORTED = "running", "promoted", "rolled back", "aborted"


@dataclass(frozen=True)
class CanaryGates:
    """How far a canary version may stray from the current one over a step (docs/canary.md)."""

    max_dead_letter_pp: float = 1.0  # percentage points above the current's dead-letter rate
    max_error_pp: float = 1.0  # percentage points above the current's error rate
    max_p99_ratio: float = 1.5  # times the current's p99 time per record ...
    p99_slack_ms: float = 5.0  # ... and at least this much above it
    min_records: int = 100  # each version's records in a step before it is judged
    assays: tuple[str, ...] = ()  # assays that must not be in warning or alert


@dataclass(frozen=True)
class Canary:
    """A ramp of a deployment to another version (canary.py): the step it is at, since when,
    and how it ended. `canary_id` is the pipeline and the start of the creating event."""

    canary_id: str
    version: int
    steps: tuple[int, ...]  # percent of records per step; the last is 100
    every_s: int
    hash_key: str | None
    gates: CanaryGates
    started_by: str
    started_at: datetime
    step: int = 1  # from 1: the share is steps[step - 1]
    step_at: datetime | None = None  # when the current step began
    state: str = RUNNING
    held: int = 0  # the last step a HoldCanary was folded for
    evidence: str | None = None  # the last advance's or hold's measures
    reason: str | None = None  # why it rolled back or was aborted
    ended_at: datetime | None = None

    @property
    def share(self) -> int:
        """Percent of records the canary version serves now."""
        return self.steps[self.step - 1] if self.state == RUNNING else 0

    @property
    def running(self) -> bool:
        return self.state == RUNNING
