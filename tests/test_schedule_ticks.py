"""domain/schedules.py and domain/unique.py as pure functions: cron and interval ticks, daylight
saving in a non-UTC zone, the missed-tick policies, validation naming fields, unique keys."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from jobqueue_grpc.domain import schedules as s
from jobqueue_grpc.domain.jobs import NewJob
from jobqueue_grpc.domain.states import JobState
from jobqueue_grpc.domain.unique import Unique, check_unique, derived_key, refusing_states

BERLIN = ZoneInfo("Europe/Berlin")


def ticks(timing: s.Timing, start: datetime, n: int) -> list[datetime]:
    """n ticks, each computed from the previous one (as the loop does across passes)."""
    out, t = [], start
    for _ in range(n):
        t = s.next_tick(timing, t)
        out.append(t)
    return out


def local(ts: list[datetime]) -> list[str]:
    return [t.astimezone(BERLIN).strftime("%m-%d %H:%M%z") for t in ts]


def test_a_wall_time_in_the_spring_gap_fires_once_right_after_it() -> None:
    daily = s.Timing("30 2 * * *", None, "Europe/Berlin")
    got = ticks(daily, datetime(2026, 3, 28, 12, tzinfo=UTC), 3)
    # 2026-03-29 02:00 CET jumps to 03:00 CEST: 02:30 never happens that day
    assert local(got) == ["03-29 03:00+0200", "03-30 02:30+0200", "03-31 02:30+0200"]


def test_a_wall_time_that_occurs_twice_in_the_fall_fires_once() -> None:
    daily = s.Timing("30 2 * * *", None, "Europe/Berlin")
    got = ticks(daily, datetime(2026, 10, 24, 12, tzinfo=UTC), 3)
    # 2026-10-25 03:00 CEST falls back to 02:00 CET: 02:30 occurs twice, fires at the first
    assert local(got) == ["10-25 02:30+0200", "10-26 02:30+0100", "10-27 02:30+0100"]
    assert got[1] - got[0] == timedelta(hours=25)


def test_hourly_ticks_are_real_hours_across_both_changes() -> None:
    hourly = s.Timing("@hourly", None, "Europe/Berlin")
    spring = ticks(hourly, datetime(2026, 3, 28, 23, 30, tzinfo=UTC), 3)
    assert local(spring) == ["03-29 01:00+0100", "03-29 03:00+0200", "03-29 04:00+0200"]
    fall = ticks(hourly, datetime(2026, 10, 24, 23, 30, tzinfo=UTC), 3)
    assert local(fall) == ["10-25 02:00+0200", "10-25 02:00+0100", "10-25 03:00+0100"]
    assert all(b - a == timedelta(hours=1) for a, b in itertools.pairwise(spring))


def test_every_and_seconds_cron() -> None:
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    assert ticks(s.Timing(None, 90.0), t0, 2) == [
        t0 + timedelta(seconds=90),
        t0 + timedelta(seconds=180),
    ]
    assert ticks(s.Timing("*/20 * * * * *", None), t0, 2) == [
        t0 + timedelta(seconds=20),
        t0 + timedelta(seconds=40),
    ]


def test_cron_macros() -> None:
    t0 = datetime(2026, 5, 5, 10, 30, tzinfo=UTC)
    assert s.next_tick(s.Timing("@daily", None), t0) == datetime(2026, 5, 6, tzinfo=UTC)
    assert s.next_tick(s.Timing("@hourly", None), t0) == datetime(2026, 5, 5, 11, tzinfo=UTC)


NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
HOURLY = s.Timing(None, 3600.0)


@pytest.mark.parametrize(
    ("policy", "catch_up_max", "fired_hours_ago", "missed"),
    [
        (s.Missed.SKIP, 0, [], 4),
        (s.Missed.RUN_ONCE, 0, [0.5], 3),
        (s.Missed.CATCH_UP, 2, [1.5, 0.5], 2),
        (s.Missed.CATCH_UP, 10, [3.5, 2.5, 1.5, 0.5], 0),
    ],
)
def test_missed_tick_policies(
    policy: s.Missed, catch_up_max: int, fired_hours_ago: list[float], missed: int
) -> None:
    # down for 3.5 hours: ticks at -3.5, -2.5, -1.5, -0.5 h are all later than the grace
    p = s.plan(HOURLY, policy, catch_up_max, NOW - timedelta(hours=3.5), NOW, grace=60)
    assert p.fire == [NOW - timedelta(hours=h) for h in fired_hours_ago]
    assert p.missed == missed
    assert p.next_run_at == NOW + timedelta(hours=0.5)


@pytest.mark.parametrize("policy", list(s.Missed))
def test_a_tick_within_the_grace_fires_whatever_the_policy(policy: s.Missed) -> None:
    every_second = s.Timing(None, 1.0)
    p = s.plan(every_second, policy, 1, NOW - timedelta(seconds=2.5), NOW, grace=60)
    assert p.fire == [NOW - timedelta(seconds=x) for x in (2.5, 1.5, 0.5)]
    assert (p.missed, p.next_run_at) == (0, NOW + timedelta(seconds=0.5))


def test_not_due_yet_does_nothing() -> None:
    p = s.plan(HOURLY, s.Missed.SKIP, 0, NOW + timedelta(seconds=1), NOW, grace=60)
    assert (p.fire, p.missed, p.next_run_at) == ([], 0, NOW + timedelta(seconds=1))


def test_far_behind_cron_is_bounded() -> None:
    every_second = s.Timing("* * * * * *", None)
    p = s.plan(every_second, s.Missed.CATCH_UP, 3, NOW - timedelta(days=2), NOW, grace=60)
    assert p.fire[:3] == [NOW - timedelta(seconds=x) for x in (63, 62, 61)]
    assert len(p.fire) == 3 + 61  # three missed ones, and the minute within the grace
    assert p.missed >= s.SCAN_MAX
    assert p.next_run_at == NOW + timedelta(seconds=1)


def test_tick_keys_name_the_schedule_and_the_instant() -> None:
    t = datetime(2026, 3, 29, 1, 0, tzinfo=UTC)
    assert s.tick_key("nightly", t) == "schedule:nightly:2026-03-29T01:00:00Z"
    assert s.tick_key("nightly", t.astimezone(BERLIN)) == s.tick_key("nightly", t)


@pytest.mark.parametrize(
    ("timing", "field"),
    [
        (s.Timing("61 * * * *", None), "schedule.cron"),
        (s.Timing("* * *", None), "schedule.cron"),
        (s.Timing("@reboot", None), "schedule.cron"),
        (s.Timing(None, None), "schedule.cron"),
        (s.Timing("* * * * *", 60.0), "schedule.cron"),
        (s.Timing("* * * * *", None, "Mars/Olympus"), "schedule.timezone"),
        (s.Timing("* * * * *", None, "../../etc/passwd"), "schedule.timezone"),
        (s.Timing(None, 0.5), "schedule.every"),
    ],
)
def test_bad_timing_names_the_field(timing: s.Timing, field: str) -> None:
    assert [v.field for v in s.check_timing("schedule.", timing)] == [field]


def test_good_timing_passes() -> None:
    for t in (s.Timing("*/5 * * * *", None, "America/New_York"), s.Timing(None, 1.0)):
        assert s.check_timing("schedule.", t) == []


def test_the_template_round_trips() -> None:
    job = NewJob(
        "mail", "digest", '{"a":[1,2]}', 3, 4, None, None, 30.0, 1.0, None,
        unique=Unique("k", ("queued", "scheduled", "running", "retrying"), None),
    )  # fmt: skip
    at = datetime(2026, 1, 1, tzinfo=UTC)
    back = s.template_job(s.template_json(job), run_at=at, key="schedule:x:1")
    assert (back.queue, back.kind, back.payload_json, back.priority) == (
        "mail",
        "digest",
        '{"a":[1,2]}',
        3,
    )
    assert (back.run_at, back.idempotency_key, back.unique) == (at, "schedule:x:1", job.unique)


def test_unique_rules() -> None:
    assert refusing_states([], None) == ("queued", "scheduled", "running", "retrying")
    assert len(refusing_states([], 60.0)) == 7  # a period: one job per window, finished or not
    assert [
        v.field for v in check_unique("unique.", key="", states=[JobState.SUCCEEDED], period=None)
    ] == ["unique.states"]
    assert [v.field for v in check_unique("unique.", key="k", states=[], period=0.5)] == [
        "unique.period"
    ]
    # the same object in another key order is the same job; another queue is not
    assert derived_key("q", "k", '{"a":1,"b":2}') == derived_key("q", "k", '{"b":2,"a":1}')
    assert derived_key("q", "k", "{}") != derived_key("r", "k", "{}")
