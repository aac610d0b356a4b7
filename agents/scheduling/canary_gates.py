"""A canary step's verdict from both versions' measures over the step (pure).

- dead-letter rate: a version's dead letters / (its records with a result + its dead letters)
- error rate: a version's inference logs with an error / its inference logs (every step,
  shadows' included)
- p99 time per record: the 99th percentile over a version's non-shadow logs of the wall time
  of the predict call that made the log divided by that call's records (the canary's share is
  served as a smaller micro-batch of its own: batch times would not compare)
Too few records on either side (fewer than min_records, dead letters included) holds the step.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from control.registry.canary import ADVANCE, HOLD, ROLLBACK
from control.registry.state import Canary


@dataclass(frozen=True)
class Side:
    """One version's measures over a step."""

    version: int
    records: int  # with a result
    dead: int  # dead letters
    logs: int
    errors: int
    p99_ms: float

    @property
    def seen(self) -> int:
        return self.records + self.dead

    @property
    def dead_pct(self) -> float:
        return 100 * self.dead / self.seen if self.seen else 0.0

    @property
    def error_pct(self) -> float:
        return 100 * self.errors / self.logs if self.logs else 0.0

    def describe(self) -> str:
        return (f"v{self.version}: {self.seen} records, dead letters {self.dead_pct:.2f}%, "
                f"errors {self.error_pct:.2f}%, p99 {self.p99_ms:.2f} ms a record")


@dataclass(frozen=True)
class Verdict:
    action: str  # ADVANCE, HOLD or ROLLBACK
    text: str  # the evidence (advance, hold) or the reason (rollback)


def judge(canary: Canary, current: Side, candidate: Side,
          assay_breaches: Sequence[str] = ()) -> Verdict:
    """Advance, hold or roll back the canary's current step."""
    g = canary.gates
    if assay_breaches:
        return Verdict(ROLLBACK, "; ".join(assay_breaches))
    few = [s for s in (candidate, current) if s.seen < g.min_records]
    if few:
        return Verdict(HOLD, "too few records to judge: " + ", ".join(
            f"v{s.version} had {s.seen} of the {g.min_records} needed" for s in few)
            + "; the step waits")
    limit = current.dead_pct + g.max_dead_letter_pp
    if candidate.dead_pct > limit:
        return Verdict(ROLLBACK, _breach("dead-letter rate", candidate.dead_pct,
                                         current.dead_pct, limit, g.max_dead_letter_pp, candidate,
                                         current))
    limit = current.error_pct + g.max_error_pp
    if candidate.error_pct > limit:
        return Verdict(ROLLBACK, _breach("error rate", candidate.error_pct, current.error_pct,
                                         limit, g.max_error_pp, candidate, current))
    limit = max(current.p99_ms * g.max_p99_ratio, current.p99_ms + g.p99_slack_ms)
    if candidate.p99_ms > limit:
        return Verdict(ROLLBACK, (
            f"p99 time per record of v{candidate.version} {candidate.p99_ms:.2f} ms is above the "
            f"limit {limit:.2f} ms (v{current.version}'s {current.p99_ms:.2f} ms x "
            f"{g.max_p99_ratio:g}, at least + {g.p99_slack_ms:g} ms)"))
    share = canary.steps[canary.step - 1]
    return Verdict(ADVANCE, f"step {canary.step} at {share}% passed: {candidate.describe()}; "
                            f"{current.describe()}")


def _breach(what: str, mine: float, theirs: float, limit: float, pp: float, candidate: Side,
            current: Side) -> str:
    return (f"{what} of v{candidate.version} {mine:.2f}% is above the limit {limit:.2f}% "
            f"(v{current.version}'s {theirs:.2f}% + {pp:g} pp); {candidate.describe()}; "
            f"{current.describe()}")
