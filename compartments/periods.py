"""FHIR dates and periods as the instants they cover, for every period that decides access.

FHIR R4 (datatypes.html): a `date` or partial `dateTime` (`2026`, `2026-12`, `2026-12-03`)
stands for its whole year, month or day; a `dateTime` with a time MUST carry a time zone and is
then an instant with the precision it is written to (`T14:00:00Z` covers that second); a
Period's `start` is inclusive and its `end` "includes any matching date/time", so an end is
inclusive of its own precision: `end: 2026-12-03` lasts until the end of that day,
`end: 2026-12-03T14:00:00+03:00` until 11:00:01 UTC.

A date without a time has no zone; it is read as a UTC day (the same as the date search index,
search/index.py, so a search and an access decision agree). A text that is no FHIR date or
time, or a time without a zone, covers nothing: a period built from it never applies (the
caller fails closed). Pure: the caller supplies `now`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final

_DATE: Final = re.compile(
    r"([0-9]{4})(?:-([0-9]{2})(?:-([0-9]{2})"
    r"(?:T([0-9]{2}):([0-9]{2}):([0-9]{2})(?:\.([0-9]+))?(Z|[+-][0-9]{2}:[0-9]{2}))?)?)?"
)
_LATEST: Final = datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)


def span(text: Any) -> tuple[datetime, datetime] | None:
    """`[low, high)` in UTC that a FHIR date, dateTime or instant covers, or None for anything
    else (including a time without a zone, which FHIR forbids)."""
    if not isinstance(text, str):
        return None
    match = _DATE.fullmatch(text)
    if match is None:
        return None
    year_s, month_s, day_s, hour, minute, second, fraction, zone = match.groups()
    try:
        year = int(year_s)
        if month_s is None:
            low = datetime(year, 1, 1, tzinfo=UTC)
            return low, _add_months(low, 12)
        month = int(month_s)
        if day_s is None:
            low = datetime(year, month, 1, tzinfo=UTC)
            return low, _add_months(low, 1)
        if hour is None:
            low = datetime(year, month, int(day_s), tzinfo=UTC)
            return low, _plus(low, timedelta(days=1))
        seconds = int(second)
        if seconds > 60:
            return None
        low = datetime(year, month, int(day_s), int(hour), int(minute), tzinfo=UTC)
    except ValueError:  # year 0, month 13, 30 February, hour 24, minute 60
        return None
    micro, width = 0, timedelta(seconds=1)
    if fraction is not None:
        micro = int(fraction[:6].ljust(6, "0"))
        width = timedelta(microseconds=10 ** (6 - min(len(fraction), 6)))
    shift = timedelta(seconds=seconds, microseconds=micro)
    if zone != "Z":
        hours, minutes = int(zone[1:3]), int(zone[4:6])
        if minutes > 59 or hours > 14 or (hours == 14 and minutes):
            return None
        offset = timedelta(hours=hours, minutes=minutes)
        shift = shift + offset if zone[0] == "-" else shift - offset
    start = _plus(low, shift)
    return start, _plus(start, width)


def _plus(moment: datetime, shift: timedelta) -> datetime:
    try:
        return moment + shift
    except OverflowError:
        return _LATEST if shift > timedelta(0) else datetime(1, 1, 1, tzinfo=UTC)


def _add_months(moment: datetime, months: int) -> datetime:
    index = moment.year * 12 + moment.month - 1 + months
    year, month = divmod(index, 12)
    return _LATEST if year > 9999 else moment.replace(year=year, month=month + 1)


@dataclass(frozen=True, slots=True)
class Window:
    """The instants a Period covers: `[start, end)`; None for an open side. `valid` False: a
    bound could not be read, and the window covers nothing."""

    start: datetime | None = None
    end: datetime | None = None
    valid: bool = True

    def covers(self, now: datetime) -> bool:
        return (
            self.valid
            and (self.start is None or self.start <= now)
            and (self.end is None or now < self.end)
        )

    @property
    def bounds(self) -> tuple[datetime, ...]:
        return tuple(b for b in (self.start, self.end) if b is not None)

    @property
    def last_instant(self) -> datetime | None:
        """The last whole second inside the window (for an `expires_at`), if it ends."""
        return None if self.end is None else self.end - timedelta(seconds=1)

    def describe(self) -> str:
        if not self.valid:
            return "an unreadable period (covers nothing)"
        start = self.start.isoformat() if self.start else "-inf"
        end = self.end.isoformat() if self.end else "+inf"
        return f"[{start}, {end})"


ALWAYS: Final = Window()
NEVER: Final = Window(valid=False)


def window(period: Any) -> Window:
    """The Window of a FHIR Period (absent: always). A bound that is not a FHIR date or time
    makes the window cover nothing."""
    if period is None:
        return ALWAYS
    if not isinstance(period, dict):
        return NEVER
    start, end = period.get("start"), period.get("end")
    low = high = None
    if start is not None:
        found = span(start)
        if found is None:
            return NEVER
        low = found[0]
    if end is not None:
        found = span(end)
        if found is None:
            return NEVER
        high = found[1]
    return Window(low, high)


def next_change(windows: Iterable[Window], now: datetime) -> datetime | None:
    """The first instant after `now` at which one of `windows` starts or ends: until then,
    whether each covers the moment does not change."""
    later = [b for w in windows if w.valid for b in w.bounds if b > now]
    return min(later) if later else None


def format_instant(moment: datetime) -> str:
    """An R4 instant in UTC, to the second: `2026-12-03T14:00:00Z`."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
