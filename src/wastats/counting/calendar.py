"""Month and day attribution in an account's IANA time zone.

Units store UTC Unix seconds; which month (or day) they count in depends on the account's zone
(spec: "Month"), so attribution happens here and nowhere else, from the zone `load_zone` gives
for a stored zone name. Months are `int`s `YYYYMM` (202502) everywhere inside wastats; how an API
writes them (the compatible API's `mmyyyy`) is the API's business (`wastats.api.partners`).
"""

from __future__ import annotations

from datetime import date, datetime
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

__all__ = ["UnknownZone", "day_of", "load_zone", "month_bounds", "month_of"]

MIN_YEAR = 1970
MAX_YEAR = 9999


class UnknownZone(ValueError):
    """A name that is not an IANA time zone; the message names it, fit to show a user."""


def load_zone(name: str) -> ZoneInfo:
    """The IANA zone called `name` (`UnknownZone` if there is none).

    Here rather than with accounts: every reader of stored counts (the pipeline, recount,
    the statistics) needs an account's zone to place a unit in its month, and only places
    that take a zone from a user turn the error into their own (`domain.accounts.load_zone`)."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise UnknownZone(
            f"unknown time zone {name!r}: use an IANA name such as UTC or Asia/Jerusalem"
        ) from None


def month_of(ts: int, zone: ZoneInfo) -> int:
    """`YYYYMM` of the Unix time `ts` as a calendar month in `zone`."""
    local = datetime.fromtimestamp(ts, zone)
    return local.year * 100 + local.month


def day_of(ts: int, zone: ZoneInfo) -> date:
    """The calendar day of the Unix time `ts` in `zone`."""
    return datetime.fromtimestamp(ts, zone).date()


def _split(month: int) -> tuple[int, int]:
    year, mm = divmod(month, 100)
    if not (MIN_YEAR <= year <= MAX_YEAR and 1 <= mm <= 12):
        raise ValueError(f"not a month YYYYMM between {MIN_YEAR} and {MAX_YEAR}: {month!r}")
    return year, mm


def _month_start(year: int, mm: int, zone: ZoneInfo) -> int:
    """First Unix second whose local date in `zone` is in month `year`-`mm`.

    Local midnight with fold=0 is right even when a DST change falls on it: in a gap (00:00 does
    not exist, e.g. America/Asuncion on 1 October 2023) it resolves to the instant of the change,
    where the month starts; in an overlap it is the first of the two midnights. Checked against
    every zone of tzdata for 1900-2040 (first second in the month, the second before it not).
    """
    return int(datetime(year, mm, 1, tzinfo=zone).timestamp())


def month_bounds(month: int, zone: ZoneInfo) -> tuple[int, int]:
    """[start, end) Unix seconds of local month `month` (`YYYYMM`) in `zone`.

    Exact across DST: a month in which the clocks go forward is an hour shorter."""
    year, mm = _split(month)
    start = _month_start(year, mm, zone)
    if (year, mm) == (MAX_YEAR, 12):
        # January of year 10000 is outside `datetime`; 31 December has no DST change anywhere.
        end = int(datetime(year, 12, 31, tzinfo=zone).timestamp()) + 86_400
    elif mm == 12:
        end = _month_start(year + 1, 1, zone)
    else:
        end = _month_start(year, mm + 1, zone)
    return start, end
