"""Dead-letter redrives without Kafka: refusals, overlapping redrives that skip what an earlier
one took, the reason filter, the redrive limit, old events folding alike, and the headers that
carry a redriven record's origin."""

from __future__ import annotations

import re
import time
from dataclasses import replace
from datetime import timedelta

import pytest
from registry_events import (
    SCALER,
    T0,
    create_pipeline,
    create_pipeline_version,
    deploy,
    event,
    given,
    model_step,
    redrive,
    reject,
    undeploy,
    ws_members,
)

from agents.scheduling.redrive import unreachable
from agents.serving.redriven import (
    COUNT_HEADER,
    ORIGIN_HEADER,
    Origin,
    any_redriven,
    origin_of,
)
from control.registry.fold import apply, fold, result_of
from control.registry.redrives import (
    ALREADY,
    CUT,
    FILTERED,
    LIMITED,
    NOT_INPUT,
    REDRIVE,
    classify,
    decide,
    earlier_of,
    reason_matches,
    redrive_id,
)
from control.registry.state import Redrive, Registry


@pytest.fixture
def platform() -> Registry:
    """ws: fraud v1 deployed; idle has a version, never deployed."""
    return given(Registry(), *ws_members(), *(event(a) for a in (
        SCALER, create_pipeline("fraud"), create_pipeline_version("fraud", model_step("scaler")),
        deploy("fraud"), create_pipeline("idle"),
        create_pipeline_version("idle", model_step("scaler")))))


def redrives(state: Registry) -> list[Redrive]:
    return list(state.redrives.values())


def test_a_redrive_is_recorded_with_its_ranges_and_id(platform: Registry) -> None:
    e = event(redrive("fraud", (0, 10, 20), reason_like="missing", limit=3), actor="bob")
    after = apply(platform, e)

    (r,) = redrives(after)
    assert (r.workspace, r.pipeline, r.ranges, r.reason_like, r.limit, r.created_by) == (
        "ws", "fraud", ((0, 10, 20),), "missing", 3, "bob")
    assert r.redrive_id == redrive_id("fraud", e.event_id) and r.earlier == ()
    assert re.fullmatch(r"fraud-[0-9a-f]{32}", r.redrive_id)
    assert result_of(platform, after, e) == {"pipeline": "fraud", "redrive_id": r.redrive_id}


def test_redrive_ids_never_collide_and_are_never_overwritten(platform: Registry) -> None:
    # Ids were the pipeline and the event id's first 12 characters: an event id that began
    # alike (anyone's, in any workspace) replaced the first redrive, whose letters went twice.
    first = event(redrive("fraud", (0, 0, 10)))
    alike = replace(event(redrive("fraud", (1, 0, 10))),
                    event_id=first.event_id[:12] + "forged")
    state = given(platform, first, alike)
    assert {r.ranges for r in redrives(state)} == {((0, 0, 10),), ((1, 0, 10),)}
    # An id already there is refused, not overwritten.
    taken = event(redrive("fraud", (0, 0, 10)))
    squatted = replace(state, redrives={**state.redrives, redrive_id("fraud", taken.event_id):
                                        redrives(state)[0]})
    reject(squatted, taken, "already exists")


@pytest.mark.parametrize(("action", "actor", "mentions"), [
    (redrive("nope", (0, 0, 1)), "ann", ["unknown pipeline", "nope"]),
    (redrive("idle", (0, 0, 1)), "ann", ["'idle' is not deployed", "deploy"]),
    (redrive("fraud", (0, 5, 4)), "ann", ["bad offset range 5..4 of partition 0"]),
    (redrive("fraud", (0, -1, 4)), "ann", ["bad offset range -1..4"]),
    (redrive("fraud", (0, 0, 4), (0, 5, 9)), "ann", ["each partition once", "[0, 0]"]),
    (redrive("fraud", (0, 0, 4), from_time=T0, to_time=T0), "ann", ["is empty", "--to"]),
    (redrive("fraud", (0, 0, 4), limit=0), "ann", ["limit 0 must be 1 or more"]),
    (redrive("fraud", (0, 0, 4)), "carol", ["carol"]),  # no member of ws
])
def test_a_redrive_is_refused_with_a_reason(platform: Registry, action: tuple, actor: str,
                                            mentions: list[str]) -> None:
    reject(platform, event(action, actor=actor), *mentions)


def test_an_undeployed_pipeline_is_not_redriven(platform: Registry) -> None:
    state = given(platform, event(undeploy("fraud")))
    reject(state, event(redrive("fraud", (0, 0, 4))), "'fraud' is not deployed")


def test_a_later_overlapping_redrive_skips_what_an_earlier_one_took(platform: Registry) -> None:
    events = [event(redrive("fraud", (0, 0, 100))), event(redrive("fraud", (0, 200, 300))),
              event(redrive("fraud", (0, 50, 250)))]
    state = given(platform, *events)
    first, second, third = redrives(state)
    assert third.earlier == (first.redrive_id, second.redrive_id)
    assert first.earlier == second.earlier == ()
    earlier = earlier_of(state, third)
    assert decide(third, earlier, 0, 99, "boom", 0) == ALREADY
    assert decide(third, earlier, 0, 100, "boom", 0) == REDRIVE  # neither took 100..199
    assert decide(third, earlier, 0, 200, "boom", 0) == ALREADY
    # A replay of the topic, and a second copy of an event, fold to the same redrives.
    assert fold([*events, events[0]], platform).redrives == state.redrives


def test_an_earlier_redrive_with_a_filter_took_only_what_it_matched(platform: Registry) -> None:
    state = given(platform, event(redrive("fraud", (0, 0, 100), reason_like="missing")),
                  event(redrive("fraud", (0, 0, 100))))
    _, later = redrives(state)
    earlier = earlier_of(state, later)
    assert decide(later, earlier, 0, 5, "missing field x", 0) == ALREADY
    assert decide(later, earlier, 0, 5, "ValueError: boom", 0) == REDRIVE


def test_other_pipelines_and_partitions_do_not_overlap(platform: Registry) -> None:
    state = given(platform, event(redrive("fraud", (0, 0, 100))),
                  event(redrive("fraud", (1, 0, 100))), event(redrive("fraud", (0, 100, 200))))
    assert [r.earlier for r in redrives(state)] == [(), (), ()]


def test_the_limit_holds_back_letters_redriven_often_unless_forced(platform: Registry) -> None:
    state = given(platform, event(redrive("fraud", (0, 0, 10), limit=3)),
                  event(redrive("fraud", (0, 10, 20), limit=None)))
    limited, forced = redrives(state)
    assert decide(limited, [], 0, 1, "boom", 2) == REDRIVE
    assert decide(limited, [], 0, 1, "boom", 3) == LIMITED
    assert decide(forced, [], 0, 11, "boom", 30) == REDRIVE


def test_a_letter_held_back_by_the_limit_is_free_for_a_forced_redrive(
        platform: Registry) -> None:
    state = given(platform, event(redrive("fraud", (0, 0, 10), limit=3)),
                  event(redrive("fraud", (0, 0, 10), limit=None)))
    _, forced = redrives(state)
    assert decide(forced, earlier_of(state, forced), 0, 1, "boom", 3) == REDRIVE
    assert decide(forced, earlier_of(state, forced), 0, 1, "boom", 2) == ALREADY


@pytest.mark.parametrize(("pattern", "reason", "matches"), [
    (None, "anything", True),
    ("missing", "record lacks field: missing x", True),
    ("Missing", "missing x", False),  # case counts
    ("x_1", "field x_1 is absent", True),  # no %: _ is itself
    ("x_1", "field xy1 is absent", False),
    ("%lacks _ield%", "record lacks field x", True),
    ("%lacks _ield", "record lacks field x", False),  # a LIKE pattern is the whole reason
    ("step 1 (prep v1): %", "step 1 (prep v1): ValueError", True),
    ("a.b%", "axb c", False),  # regex characters are themselves
    ("%", "", True),
    ("%", "anything", True),
    ("", "", True),
    ("_", "", False),
    ("a%%b", "ab", True),
    ("%a_c%", "xxabcabd", True),
    ("%a_c", "xxabcabd", False),
    ("%ab%ab%", "abab", True),
    ("%ab%ab%", "aba", False),
    ("100%", "100% done", True),
    ("100%", "10", False),
    ("100%", "100", True),
    ("a\\%", "a\\xyz", True),  # a backslash escapes nothing
])
def test_the_reason_filter(pattern: str | None, reason: str, matches: bool) -> None:
    assert reason_matches(pattern, reason) is matches


@pytest.mark.parametrize("pairs", [6, 8, 30])
def test_a_hostile_reason_pattern_is_judged_quickly(pairs: int) -> None:
    # With a regex, 6 pairs took 1.7 s on 60 characters and 8 over 20 s (backtracking).
    started = time.perf_counter()
    assert not reason_matches("%a" * pairs + "%b", "a" * 60)
    assert not reason_matches("%a" * pairs + "%b", "a" * 5_000)
    assert reason_matches("%a" * pairs + "%b", "a" * 5_000 + "b")
    assert time.perf_counter() - started < 0.5


def test_a_long_reason_pattern_is_refused(platform: Registry) -> None:
    reject(platform, event(redrive("fraud", (0, 0, 10), reason_like="%a" * 101)),
           "--reason-like takes 1..200 characters, not 202")
    given(platform, event(redrive("fraud", (0, 0, 10), reason_like="%a" * 100)))


def test_decide_puts_the_filter_first(platform: Registry) -> None:
    state = given(platform, event(redrive("fraud", (0, 0, 10))),
                  event(redrive("fraud", (0, 0, 10), reason_like="nope")))
    _, later = redrives(state)
    assert decide(later, earlier_of(state, later), 0, 1, "boom", 0) == FILTERED


def test_labels_and_cut_letters_are_never_sent_back(platform: Registry) -> None:
    state = given(platform, event(redrive("fraud", (0, 0, 10))))
    (r,) = redrives(state)
    letter = {"topic": "in", "reason": "boom", "redrive_count": 0}
    assert classify(r, [], 0, 1, letter, "in") == REDRIVE
    assert classify(r, [], 0, 1, {**letter, "topic": "labels"}, "in") == NOT_INPUT
    cut = {**letter, "reason": "boom (this letter keeps the first 10 of its 99 bytes)"}
    assert classify(r, [], 0, 1, cut, "in") == CUT
    old = {"topic": "in", "reason": "boom"}  # a letter written before redrive counts
    assert classify(r, [], 0, 1, old, "in") == REDRIVE


def test_events_before_redrives_fold_as_before(platform: Registry) -> None:
    """A registry without redrives is what it was: redrives add a field, empty by default."""
    assert platform.redrives == {}
    later = replace(event(redrive("fraud", (0, 0, 1))), time=T0 + timedelta(hours=1))
    assert apply(platform, later).deployments == platform.deployments


class Headed:
    """What origin_of reads of a confluent_kafka.Message."""

    def __init__(self, headers: list[tuple[str, bytes]] | None) -> None:
        self._headers = headers

    def headers(self) -> list[tuple[str, bytes]] | None:
        return self._headers


def test_a_redriven_record_tells_its_origin_through_headers() -> None:
    origin = Origin("ns.ws.fraud.input", 2, 41, "fraud-0123456789ab", 1)
    assert origin_of(Headed([("other", b"x"), *origin.headers()])) == origin
    assert origin.record_id == "ns.ws.fraud.input:2:41"
    assert origin_of(Headed(None)) is None and origin_of(Headed([])) is None
    broken = [(k, b"not a number" if k == COUNT_HEADER else v) for k, v in origin.headers()]
    assert origin_of(Headed(broken)) is None  # then served as the new record it looks like
    assert origin_of(Headed([(ORIGIN_HEADER, b"a:b")])) is None
    # Only a redriven record leaves the column-wise path; a producer's own headers do not.
    assert any_redriven([Headed(None), Headed(origin.headers())])
    assert not any_redriven([Headed(None), Headed([("traceparent", b"00-1-2-01")])])


def test_a_range_past_the_end_of_its_partition_is_unreachable(platform: Registry) -> None:
    # A range that ends past the topic's end (recreated) never finishes: the worker used to
    # loop on it forever, and every later redrive waited behind it.
    (r,) = redrives(given(platform, event(redrive("fraud", (0, 0, 10), (1, 5, 20)))))
    assert unreachable(r, {0: 3, 1: 5}, {0: 10, 1: 20}) is None
    assert unreachable(r, {0: 10, 1: 5}, {0: 2, 1: 20}) is None  # partition 0 is done
    assert "partition 1 ends at offset 20 but the dead-letter topic ends at 7" in (
        unreachable(r, {0: 3, 1: 5}, {0: 10, 1: 7}) or "")
    assert "has no such partition" in (unreachable(r, {0: 3, 1: 5}, {0: 10}) or "")
