"""Time windows of canary rollouts, with fixed clocks: days, hours, overnight windows, DST, freeze days."""

from __future__ import annotations

import datetime as dt
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from cortex_flows.rollout.canary import NOT_STARTED, Action, next_action, plan_canary
from cortex_flows.rollout.windows import DEFAULT_HORIZON, is_open, local_instant, next_open, window_span
from cortex_flows.spec import Canary, Window

UTC = dt.UTC
BERLIN = ZoneInfo("Europe/Berlin")
NEW_YORK = ZoneInfo("America/New_York")
WEEKDAYS = ["mon", "tue", "wed", "thu", "fri"]


def canary(*windows: dict[str, Any], freeze: list[Any] | None = None, timezone: str = "UTC") -> Canary:
    return Canary(windows=list(windows), freeze=freeze or [], timezone=timezone)


def open_at(c: Canary, now: dt.datetime) -> bool:
    return is_open(c.windows, c.freeze_ranges, now, timezone=c.timezone)


def next_at(c: Canary, now: dt.datetime, **kwargs: Any) -> dt.datetime | None:
    return next_open(c.windows, c.freeze_ranges, now, timezone=c.timezone, **kwargs)


def at(zone: ZoneInfo, *parts: int, fold: int = 0) -> dt.datetime:
    return dt.datetime(*parts, tzinfo=zone, fold=fold)


BUSINESS = canary({"days": WEEKDAYS, "start": "09:00", "end": "17:00", "timezone": "Europe/Berlin"})
OVERNIGHT = canary({"days": ["fri"], "start": "22:00", "end": "06:00"}, timezone="Europe/Berlin")


# --- no windows ---------------------------------------------------------------------------------------------


def test_without_windows_always_open() -> None:
    c = canary()
    for hours in range(0, 24 * 14, 5):
        now = at(UTC, 2024, 3, 1) + dt.timedelta(hours=hours)
        assert open_at(c, now)
        assert next_at(c, now) == now


def test_without_windows_freeze_days_close_in_the_canary_time_zone() -> None:
    c = canary(freeze=["2024-12-24"], timezone="Pacific/Auckland")  # UTC+13 in December
    assert open_at(c, at(UTC, 2024, 12, 23, 10, 59))  # 23:59 on the 23rd in Auckland
    assert not open_at(c, at(UTC, 2024, 12, 23, 11, 0))  # midnight of the 24th in Auckland
    assert not open_at(c, at(UTC, 2024, 12, 24, 10, 59))
    assert open_at(c, at(UTC, 2024, 12, 24, 11, 0))
    assert next_at(c, at(UTC, 2024, 12, 24, 0, 0)) == at(UTC, 2024, 12, 24, 11, 0)


def test_without_windows_a_freeze_range_opens_the_day_after() -> None:
    c = canary(freeze=["2024-12-20/2025-01-02"])
    assert not open_at(c, at(UTC, 2024, 12, 31, 12))
    assert next_at(c, at(UTC, 2024, 12, 20, 0)) == at(UTC, 2025, 1, 3)


# --- business hours -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("local", "expected"),
    [((2024, 6, 3, 8, 59), False), ((2024, 6, 3, 9, 0), True), ((2024, 6, 3, 16, 59, 59), True),
     ((2024, 6, 3, 17, 0), False), ((2024, 6, 7, 12, 0), True), ((2024, 6, 8, 12, 0), False),
     ((2024, 6, 9, 12, 0), False), ((2024, 6, 3, 0, 0), False), ((2024, 6, 3, 23, 59), False)],
)  # fmt: skip
def test_business_hours(local: tuple[int, ...], expected: bool) -> None:
    assert open_at(BUSINESS, at(BERLIN, *local)) is expected


def test_the_clock_time_zone_does_not_matter_only_the_instant() -> None:
    monday_nine = at(BERLIN, 2024, 6, 3, 9, 0)  # 07:00 UTC, 03:00 in New York
    for zone in (UTC, NEW_YORK, ZoneInfo("Asia/Kolkata"), dt.timezone(dt.timedelta(hours=-3))):
        assert open_at(BUSINESS, monday_nine.astimezone(zone))
        assert not open_at(BUSINESS, (monday_nine - dt.timedelta(seconds=1)).astimezone(zone))


@pytest.mark.parametrize(
    ("local", "opens"),
    [((2024, 6, 3, 8, 0), (2024, 6, 3, 9, 0)),  # Monday morning: at nine
     ((2024, 6, 3, 10, 0), (2024, 6, 3, 10, 0)),  # inside: now
     ((2024, 6, 3, 17, 0), (2024, 6, 4, 9, 0)),  # Monday evening: Tuesday at nine
     ((2024, 6, 7, 17, 0), (2024, 6, 10, 9, 0)),  # Friday evening: Monday
     ((2024, 6, 8, 3, 0), (2024, 6, 10, 9, 0))],  # Saturday: Monday
)  # fmt: skip
def test_next_open_for_business_hours(local: tuple[int, ...], opens: tuple[int, ...]) -> None:
    found = next_at(BUSINESS, at(BERLIN, *local))
    assert found == at(BERLIN, *opens)
    assert found is not None and found.tzinfo is BERLIN  # in the clock's time zone


def test_next_open_answers_in_the_time_zone_of_the_clock() -> None:
    found = next_at(BUSINESS, at(UTC, 2024, 6, 8, 12, 0))
    assert found == at(BERLIN, 2024, 6, 10, 9, 0)
    assert found is not None and (found.tzinfo, found.hour) == (UTC, 7)


def test_windows_in_several_time_zones_are_a_union() -> None:
    c = canary(
        {"days": WEEKDAYS, "start": "09:00", "end": "17:00", "timezone": "Europe/Berlin"},
        {"days": WEEKDAYS, "start": "09:00", "end": "17:00", "timezone": "America/New_York"},
    )
    # Berlin: 07:00-15:00 UTC in June; New York: 13:00-21:00 UTC
    assert not open_at(c, at(UTC, 2024, 6, 3, 6, 59))
    assert open_at(c, at(UTC, 2024, 6, 3, 7, 0))  # Berlin 09:00, New York 03:00
    assert open_at(c, at(UTC, 2024, 6, 3, 15, 30))  # Berlin 17:30 (closed), New York 11:30
    assert not open_at(c, at(UTC, 2024, 6, 3, 21, 0))
    assert next_at(c, at(UTC, 2024, 6, 3, 21, 0)) == at(UTC, 2024, 6, 4, 7, 0)  # Berlin opens first
    assert next_at(c, at(UTC, 2024, 6, 8, 12, 0)) == at(UTC, 2024, 6, 10, 7, 0)  # after the weekend


# --- overnight ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("local", "expected"),
    [((2024, 6, 7, 21, 59), False), ((2024, 6, 7, 22, 0), True), ((2024, 6, 7, 23, 59), True),
     ((2024, 6, 8, 0, 0), True), ((2024, 6, 8, 5, 59), True), ((2024, 6, 8, 6, 0), False),
     ((2024, 6, 8, 22, 30), False),  # Saturday night: the window opens on Fridays only
     ((2024, 6, 7, 3, 0), False)],  # Friday early morning: Thursday's night is not a window
)  # fmt: skip
def test_overnight_window_closes_the_next_morning(local: tuple[int, ...], expected: bool) -> None:
    assert open_at(OVERNIGHT, at(BERLIN, *local)) is expected


def test_next_open_for_an_overnight_window() -> None:
    assert next_at(OVERNIGHT, at(BERLIN, 2024, 6, 8, 6, 0)) == at(BERLIN, 2024, 6, 14, 22, 0)
    assert next_at(OVERNIGHT, at(BERLIN, 2024, 6, 8, 1, 0)) == at(BERLIN, 2024, 6, 8, 1, 0)


def test_window_span_of_an_overnight_window() -> None:
    window = OVERNIGHT.windows[0]
    assert window_span(window, dt.date(2024, 6, 7)) == (at(UTC, 2024, 6, 7, 20), at(UTC, 2024, 6, 8, 4))


def test_a_whole_day_window_runs_to_midnight() -> None:
    c = canary({"days": ["sat", "sun"]}, timezone="Europe/Berlin")
    assert not open_at(c, at(BERLIN, 2024, 6, 7, 23, 59, 59))
    assert open_at(c, at(BERLIN, 2024, 6, 8, 0, 0)) and open_at(c, at(BERLIN, 2024, 6, 9, 23, 59, 59))
    assert not open_at(c, at(BERLIN, 2024, 6, 10, 0, 0))


# --- daylight saving time -----------------------------------------------------------------------------------


def test_local_instant_of_ordinary_skipped_and_repeated_times() -> None:
    assert local_instant(dt.date(2024, 6, 3), 9 * 60, BERLIN) == at(UTC, 2024, 6, 3, 7)
    assert local_instant(dt.date(2024, 6, 3), 24 * 60, BERLIN) == at(UTC, 2024, 6, 3, 22)
    # New York springs forward 02:00 EST -> 03:00 EDT (07:00 UTC): 02:30 never happens
    assert local_instant(dt.date(2024, 3, 10), 150, NEW_YORK) == at(UTC, 2024, 3, 10, 7)
    # and falls back 02:00 EDT -> 01:00 EST (06:00 UTC): 01:30 happens twice, first at 05:30 UTC
    assert local_instant(dt.date(2024, 11, 3), 90, NEW_YORK) == at(UTC, 2024, 11, 3, 5, 30)
    # Lord Howe Island shifts by half an hour
    lord_howe = ZoneInfo("Australia/Lord_Howe")
    assert local_instant(dt.date(2024, 10, 6), 2 * 60 + 15, lord_howe) == at(lord_howe, 2024, 10, 6, 2, 30)


def test_a_window_starting_in_the_spring_forward_gap_opens_at_the_change() -> None:
    c = canary({"start": "02:30", "end": "04:00"}, timezone="America/New_York")
    assert not open_at(c, at(UTC, 2024, 3, 10, 6, 59, 59))  # 01:59:59 EST
    assert open_at(c, at(UTC, 2024, 3, 10, 7, 0))  # 03:00 EDT
    assert not open_at(c, at(UTC, 2024, 3, 10, 8, 0))  # 04:00 EDT
    assert next_at(c, at(NEW_YORK, 2024, 3, 10, 0, 0)) == at(UTC, 2024, 3, 10, 7, 0)
    assert next_at(c, at(NEW_YORK, 2024, 3, 11, 0, 0)) == at(NEW_YORK, 2024, 3, 11, 2, 30)


def test_a_window_across_the_fall_back_lasts_the_real_time_between_its_ends() -> None:
    c = canary({"start": "01:30", "end": "02:30"}, timezone="America/New_York")
    start, end = window_span(c.windows[0], dt.date(2024, 11, 3))
    assert (start, end) == (at(UTC, 2024, 11, 3, 5, 30), at(UTC, 2024, 11, 3, 7, 30))  # two real hours
    assert open_at(c, at(NEW_YORK, 2024, 11, 3, 1, 15, fold=1))  # 01:15 EST, the second 01:15
    assert not open_at(c, at(NEW_YORK, 2024, 11, 3, 1, 15, fold=0))  # the first 01:15 is before the start


def test_business_hours_keep_their_local_times_across_dst() -> None:
    c = canary({"days": WEEKDAYS, "start": "09:00", "end": "17:00"}, timezone="America/New_York")
    assert open_at(c, at(UTC, 2024, 3, 8, 14, 0)) and not open_at(c, at(UTC, 2024, 3, 8, 13, 59))  # EST
    assert open_at(c, at(UTC, 2024, 3, 11, 13, 0)) and not open_at(c, at(UTC, 2024, 3, 11, 12, 59))  # EDT
    assert next_at(c, at(UTC, 2024, 3, 9, 0, 0)) == at(NEW_YORK, 2024, 3, 11, 9, 0)


def test_whole_days_on_dst_changes_are_23_and_25_hours() -> None:
    c = canary({}, timezone="Europe/Berlin")
    spring = window_span(c.windows[0], dt.date(2024, 3, 31))
    autumn = window_span(c.windows[0], dt.date(2024, 10, 27))
    assert (spring[1] - spring[0], autumn[1] - autumn[0]) == (dt.timedelta(hours=23), dt.timedelta(hours=25))


# --- freeze days --------------------------------------------------------------------------------------------


def test_freeze_days_are_whole_days_in_the_window_time_zone() -> None:
    c = canary({"timezone": "Europe/Berlin"}, freeze=["2024-12-24"])
    assert open_at(c, at(UTC, 2024, 12, 23, 22, 59))  # 23:59 on the 23rd in Berlin
    assert not open_at(c, at(UTC, 2024, 12, 23, 23, 0))  # midnight of the 24th in Berlin
    assert not open_at(c, at(UTC, 2024, 12, 24, 22, 59))
    assert open_at(c, at(UTC, 2024, 12, 24, 23, 0))
    assert next_at(c, at(BERLIN, 2024, 12, 24, 12, 0)) == at(BERLIN, 2024, 12, 25, 0, 0)


def test_freeze_ranges_skip_to_the_first_window_after_them() -> None:
    c = canary(
        {"days": WEEKDAYS, "start": "09:00", "end": "17:00", "timezone": "Europe/Berlin"},
        freeze=["2024-12-20/2025-01-05"],
    )
    assert not open_at(c, at(BERLIN, 2025, 1, 2, 10, 0))
    assert next_at(c, at(BERLIN, 2024, 12, 19, 17, 0)) == at(BERLIN, 2025, 1, 6, 9, 0)


def test_a_freeze_day_inside_an_overnight_window_closes_only_its_part() -> None:
    saturday_frozen = canary({"days": ["fri"], "start": "22:00", "end": "06:00"}, freeze=["2024-06-08"])
    assert open_at(saturday_frozen, at(UTC, 2024, 6, 7, 23, 0))
    assert not open_at(saturday_frozen, at(UTC, 2024, 6, 8, 1, 0))
    assert next_at(saturday_frozen, at(UTC, 2024, 6, 8, 1, 0)) == at(UTC, 2024, 6, 14, 22, 0)
    friday_frozen = canary({"days": ["fri"], "start": "22:00", "end": "06:00"}, freeze=["2024-06-07"])
    assert not open_at(friday_frozen, at(UTC, 2024, 6, 7, 23, 0))
    assert next_at(friday_frozen, at(UTC, 2024, 6, 7, 21, 0)) == at(UTC, 2024, 6, 8, 0, 0)  # freeze ends


def test_never_open_within_the_horizon_is_none() -> None:
    c = canary({"days": ["mon"], "start": "09:00", "end": "10:00"}, freeze=["2024-01-01/2025-12-31"])
    assert next_at(c, at(UTC, 2024, 6, 1)) is None
    assert next_at(canary(freeze=["2024-01-01/2025-12-31"]), at(UTC, 2024, 6, 1)) is None
    assert next_at(canary(freeze=["2024-06-01/2024-06-30"]), at(UTC, 2024, 6, 1)) == at(UTC, 2024, 7, 1)
    short = dt.timedelta(days=3)
    assert next_at(canary(freeze=["2024-06-01/2024-06-30"]), at(UTC, 2024, 6, 1), horizon=short) is None
    assert next_at(c, at(UTC, 2026, 1, 1, 12)) == at(UTC, 2026, 1, 5, 9)  # after the freeze: the next Monday
    assert dt.timedelta(days=366) == DEFAULT_HORIZON


def test_next_open_finds_a_window_almost_a_year_ahead() -> None:
    c = canary({"days": ["mon"], "start": "09:00", "end": "10:00"}, freeze=["2024-06-01/2025-05-25"])
    assert next_at(c, at(UTC, 2024, 6, 1)) == at(UTC, 2025, 5, 26, 9)


def test_a_naive_clock_is_refused() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        open_at(BUSINESS, dt.datetime(2024, 6, 3, 10))
    with pytest.raises(ValueError, match="timezone-aware"):
        next_at(BUSINESS, dt.datetime(2024, 6, 3, 10))


def test_a_window_outside_a_canary_needs_its_own_time_zone() -> None:
    now = at(UTC, 2024, 6, 3, 10)
    assert is_open([Window(timezone="UTC")], [], now)
    with pytest.raises(ValueError, match="no timezone"):
        is_open([Window()], [], now)


# --- exhaustive: every 5 minutes of a month with two DST changes ----------------------------------------------

MIXED = canary(
    {"days": WEEKDAYS, "start": "09:00", "end": "17:00", "timezone": "America/New_York"},
    {"days": ["fri", "sun"], "start": "22:00", "end": "06:00", "timezone": "Europe/Berlin"},
    {"days": ["wed"], "start": "02:30", "end": "03:30", "timezone": "America/New_York"},
    freeze=["2024-03-15", "2024-03-20/2024-03-21"],
)


def test_next_open_agrees_with_is_open_minute_by_minute() -> None:
    """From 4 March to 4 April 2024 (New York springs forward on 10 March, Berlin on 31 March), on a
    5-minute grid (every boundary lies on it): next_open is the first open grid point at or after now."""
    start, step, count = at(UTC, 2024, 3, 4), dt.timedelta(minutes=5), 31 * 24 * 12
    grid = [start + i * step for i in range(count)]
    opened = [open_at(MIXED, moment) for moment in grid]
    assert 0 < sum(opened) < count
    following: list[dt.datetime | None] = [None] * count
    upcoming = None
    for i in reversed(range(count)):
        upcoming = grid[i] if opened[i] else upcoming
        following[i] = upcoming
    for i in range(0, count, 7):
        if following[i] is not None:
            assert next_at(MIXED, grid[i]) == following[i], grid[i]
        # off the grid: the same answer from a moment between two grid points (unless open there)
        between = grid[i] + dt.timedelta(seconds=150)
        if i + 1 < count and following[i + 1] is not None and not opened[i]:
            assert next_at(MIXED, between) == following[i + 1], between


# --- acceptance: a rollout pauses outside its window and proceeds inside it -------------------------------------


def test_outside_the_window_the_rollout_pauses_and_inside_it_proceeds() -> None:
    c = Canary(windows=[{"days": WEEKDAYS, "start": "09:00", "end": "17:00", "timezone": "Europe/Berlin"}])
    plan = plan_canary(c, stable_replicas=4, candidate_target=4, min_replicas=1, max_replicas=10)
    friday_evening = at(BERLIN, 2024, 6, 7, 18, 0)
    window_open = open_at(c, friday_evening)
    paused = next_action(plan, 1, "pass", window_open=window_open)
    assert (paused.action, paused.step_index, paused.weight) == (Action.PAUSE, 1, 25)
    resume = next_at(c, friday_evening)
    assert resume == at(BERLIN, 2024, 6, 10, 9, 0)
    proceeded = next_action(plan, 1, "pass", window_open=open_at(c, resume))
    assert (proceeded.action, proceeded.step_index, proceeded.weight) == (Action.ADVANCE, 2, 50)
    # outside the window a failure still rolls back at once, and the first step waits too
    assert next_action(plan, 1, "fail", window_open=window_open).action is Action.ROLLBACK
    assert next_action(plan, NOT_STARTED, "pass", window_open=window_open).action is Action.PAUSE
