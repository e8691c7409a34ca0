"""Time windows of a canary rollout: whether traffic may move forward now, and when it next may.

A window (`spec.Window`) opens on each of its `days` at `start` and closes at `end`, both read on the
local calendar of its time zone; when `end` is before `start` it runs overnight and closes the next day.
A freeze day closes every window for that whole local day, in the time zone of the window being checked.
With no windows at all the rollout may always move, except on freeze days in `timezone` (the canary's).

Daylight saving time: a window spans the real time from its start to its end, so a DST change inside it
lengthens or shortens it by the shift. A start or end time that a change skips (02:30 on a spring-forward
night) is taken as the moment of the change; a time that it repeats (01:30 on a fall-back night) as its
first occurrence.

Pure: the clock is an argument, and `now` must be timezone-aware (a naive time is ambiguous).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from zoneinfo import ZoneInfo

from cortex_flows.spec.models import WEEKDAYS, Window

DEFAULT_HORIZON = dt.timedelta(days=366)  # how far `next_open` looks: a year, leap day included
_ONE_DAY = dt.timedelta(days=1)
_UTC = dt.UTC

FreezeRanges = Sequence[tuple[dt.date, dt.date]]  # (first day, last day), both included


def is_open(
    windows: Sequence[Window], freeze: FreezeRanges, now: dt.datetime, *, timezone: str = "UTC"
) -> bool:
    """Whether a rollout may move traffic forward at `now`."""
    _check_aware(now)
    if not windows:
        return not _frozen(now.astimezone(ZoneInfo(timezone)).date(), freeze)
    return any(_in_window(window, freeze, now) for window in windows)


def next_open(
    windows: Sequence[Window],
    freeze: FreezeRanges,
    now: dt.datetime,
    *,
    timezone: str = "UTC",
    horizon: dt.timedelta = DEFAULT_HORIZON,
) -> dt.datetime | None:
    """The first moment at or after `now` at which `is_open` holds, in `now`'s time zone; `now` itself
    when open. None when nothing opens within `horizon` (every window frozen, or no day a window names
    comes up in time)."""
    _check_aware(now)
    limit = now + horizon
    if not windows:
        found = _next_unfrozen(ZoneInfo(timezone), freeze, now, limit)
    else:
        candidates = [_next_in_window(window, freeze, now, limit) for window in windows]
        found = min((c for c in candidates if c is not None), default=None)
    return None if found is None else found.astimezone(now.tzinfo)


def local_instant(day: dt.date, minutes: int, zone: ZoneInfo) -> dt.datetime:
    """The moment (UTC) the wall clock in `zone` reads `minutes` after the midnight that starts `day`
    (1440 is the next midnight): a repeated time's first occurrence, a skipped time's DST change."""
    wall = dt.datetime.combine(day, dt.time()) + dt.timedelta(minutes=minutes)
    first = wall.replace(tzinfo=zone, fold=0).astimezone(_UTC)
    if first.astimezone(zone).replace(tzinfo=None) == wall:
        return first
    # Skipped: the two folds bracket the change; find the first second whose wall clock is past `wall`.
    low, high = sorted((first, wall.replace(tzinfo=zone, fold=1).astimezone(_UTC)))
    while high - low > dt.timedelta(seconds=1):
        middle = low + (high - low) / 2
        middle = middle.replace(microsecond=0)
        if middle.astimezone(zone).replace(tzinfo=None) >= wall:
            high = middle
        else:
            low = middle
    return high


def window_span(window: Window, day: dt.date) -> tuple[dt.datetime, dt.datetime]:
    """[start, end) in UTC of `window` opening on local `day` (whether or not it opens on that weekday)."""
    zone = ZoneInfo(_timezone(window))
    end_day = day + _ONE_DAY if window.overnight else day
    return local_instant(day, window.start_minutes, zone), local_instant(end_day, window.end_minutes, zone)


def _check_aware(now: dt.datetime) -> None:
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError(f"now must be a timezone-aware datetime, got {now.isoformat()}")


def _timezone(window: Window) -> str:
    if window.timezone is None:  # only a window built outside a Canary, which fills it in
        raise ValueError("the window has no timezone; validate it as part of a canary block")
    return window.timezone


def _frozen(day: dt.date, freeze: FreezeRanges) -> bool:
    return any(first <= day <= last for first, last in freeze)


def _opens_on(window: Window, day: dt.date) -> bool:
    return WEEKDAYS[day.weekday()] in window.days


def _in_window(window: Window, freeze: FreezeRanges, now: dt.datetime) -> bool:
    today = now.astimezone(ZoneInfo(_timezone(window))).date()
    if _frozen(today, freeze):
        return False
    for day in (today - _ONE_DAY, today):  # a window that contains now opened today or, overnight, yesterday
        if _opens_on(window, day):
            start, end = window_span(window, day)
            if start <= now < end:
                return True
    return False


def _next_in_window(
    window: Window, freeze: FreezeRanges, now: dt.datetime, limit: dt.datetime
) -> dt.datetime | None:
    zone = ZoneInfo(_timezone(window))
    day = now.astimezone(zone).date() - _ONE_DAY
    while True:
        start, end = window_span(window, day)
        if start > limit:
            return None
        if _opens_on(window, day):
            moment = max(start, now)
            while moment < end:  # skip frozen local days inside the window (at most two midnights)
                local_day = moment.astimezone(zone).date()
                if not _frozen(local_day, freeze):
                    return moment if moment <= limit else None
                moment = local_instant(local_day + _ONE_DAY, 0, zone)
        day += _ONE_DAY


def _next_unfrozen(
    zone: ZoneInfo, freeze: FreezeRanges, now: dt.datetime, limit: dt.datetime
) -> dt.datetime | None:
    day = now.astimezone(zone).date()
    moment = now
    while moment <= limit:
        if not _frozen(day, freeze):
            return moment
        day += _ONE_DAY
        moment = local_instant(day, 0, zone)
    return None
