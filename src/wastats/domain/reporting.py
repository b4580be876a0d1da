"""The modern statistics (docs/api-v1.md): periods in any zone, groupings, unique customers.

Two ways to the same answer:

* **From the monthly rollups** when the question is monthly, in the account's own zone, over whole
  months, without a country breakdown or unique customers: the common case (the dashboard's
  chart, a monthly report), served without touching counted units.
* **From the counted units** otherwise: every unit in the range is read once through the
  `(phone_number_id, ts)` index and placed into its period with the period boundaries computed
  in the requested zone, so days, weeks and months are right across DST changes.

Both produce the same rows for the same question (a test checks it).
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import NamedTuple
from zoneinfo import ZoneInfo

from sqlalchemy import Connection

from wastats.counting.model import RULES_VERSION, Bucket
from wastats.domain import answers
from wastats.domain.accounts import load_zone
from wastats.domain.errors import InvalidInput
from wastats.domain.phone import normalise_whatsapp
from wastats.store import activity as activity_repo
from wastats.store import counts as counts_repo
from wastats.store import numbers as numbers_repo
from wastats.store import reporting as reporting_repo
from wastats.store import units as units_repo
from wastats.store.accounts import AccountRow

BUCKETS = (Bucket.MARKETING, Bucket.SERVICE, Bucket.INCOMING)
"""The three counted buckets; units in `Bucket.NONE` count as `uncounted`."""
_BUCKET_OF = {b.value: b for b in Bucket}  # the stored text → the enum, without Enum.__call__
GROUPS = ("number", "country", "category")
GRANULARITIES = ("day", "week", "month")
MAX_DAYS = {"day": 400, "week": 5 * 366, "month": 5 * 366}
FINAL_AFTER_SECONDS = 48 * 3600
EARLIEST = date(1970, 1, 1)
LATEST = date(9998, 12, 31)


class AnswerTooLarge(InvalidInput):
    """The answer would cost more than a configured cap: rows (WASTATS_MAX_STATS_ROWS) or
    counted units to read (WASTATS_MAX_STATS_UNITS). `what` names which, `amount` how much
    (an upper bound, or where the grouping stopped), `limit` the cap."""

    def __init__(self, what: str, amount: int, limit: int, *, estimated: bool) -> None:
        if what == "rows":
            how = "can have up to" if estimated else "has more than"
            cost = f"this question {how} {amount} rows"
        else:
            cost = f"this question reads about {amount} counted units"
        super().__init__(
            f"{cost}; the limit is {limit}: ask for fewer numbers, a shorter range, a coarser "
            "granularity (week or month) or fewer group_by dimensions, and split the range into "
            "several requests if you need it all"
        )
        self.what = what
        self.amount = amount
        self.limit = limit


class ParameterError(InvalidInput):
    """An invalid query parameter; `parameter` names it."""

    def __init__(self, parameter: str, message: str) -> None:
        super().__init__(message)
        self.parameter = parameter
        self.message = message


@dataclass(frozen=True, slots=True)
class Period:
    label: str
    start: int  # UTC seconds, inclusive
    end: int  # UTC seconds, exclusive
    zone: ZoneInfo

    @property
    def local_start(self) -> datetime:
        return datetime.fromtimestamp(self.start, self.zone)

    @property
    def local_end(self) -> datetime:
        return datetime.fromtimestamp(self.end, self.zone)


@dataclass(frozen=True, slots=True)
class NumberRef:
    phone_number_id: str
    whatsapp: str
    counts_from: int | None = None
    """The registration's start (a number moved from another account); None: all history."""


@dataclass(frozen=True, slots=True)
class Question:
    first: date
    last: date
    granularity: str
    zone: ZoneInfo
    numbers: tuple[NumberRef, ...]
    group_by: tuple[str, ...]
    unique: bool
    all_numbers: bool
    """The question covers every number of the account (so account-wide sums answer it)."""


class GroupKey(NamedTuple):
    """What a row is grouped by; the groups not asked for are None."""

    number: str | None = None
    country: str | None = None
    category: tuple[str, str] | None = None
    """(category, pricing_type)"""

    def order(self) -> tuple[object, ...]:
        """Rows sort by these values, an unknown country (None) last."""
        return (self.number or "", self.country is None, self.country or "", self.category or ())


@dataclass
class Counts:
    marketing: int = 0
    service: int = 0
    incoming: int = 0
    uncounted: int = 0
    customers: dict[Bucket, set[str]] | None = None

    def add(self, bucket: Bucket, units: int, customer: str | None) -> None:
        if bucket is Bucket.MARKETING:
            self.marketing += units
        elif bucket is Bucket.SERVICE:
            self.service += units
        elif bucket is Bucket.INCOMING:
            self.incoming += units
        else:
            self.uncounted += units
        if self.customers is not None and customer is not None and bucket in BUCKETS:
            self.customers.setdefault(bucket, set()).add(customer)

    def unique(self) -> dict[str, int]:
        customers = self.customers or {}
        every = set().union(*customers.values()) if customers else set()
        return {
            "marketing": len(customers.get(Bucket.MARKETING, ())),
            "service": len(customers.get(Bucket.SERVICE, ())),
            "incoming": len(customers.get(Bucket.INCOMING, ())),
            "total": len(every),
        }

    def fields(self) -> dict[str, object]:
        """The fields of `answers.Counts`; `unique_customers` only when counted."""
        result: dict[str, object] = {
            "marketing": self.marketing,
            "service": self.service,
            "incoming": self.incoming,
            "total": self.marketing + self.service + self.incoming,
            "uncounted": self.uncounted,
        }
        if self.customers is not None:
            result["unique_customers"] = self.unique()
        return result


@dataclass
class Answer:
    question: Question
    periods: list[Period]
    as_of: int | None
    now: int
    totals: Counts
    rows: list[tuple[Period, GroupKey, Counts]] = field(default_factory=list)

    def _row(self, bounds: dict[str, object], key: GroupKey, counts: Counts) -> dict[str, object]:
        row = bounds.copy()
        if "number" in self.question.group_by:
            row["number"] = key.number
        if "country" in self.question.group_by:
            row["country"] = key.country
        if key.category is not None:
            row["category"], row["pricing"] = key.category
        row.update(counts.fields())
        return row

    def model(self) -> answers.Stats:
        """The answer as `/v1/stats` sends it (and `wastats stats` prints it).

        Validated in one call from plain values: pydantic builds the rows' models itself,
        which is about a fifth faster than constructing each row's model from Python
        (docs/benchmarks.md, "Answer models")."""
        q = self.question
        # Each period's own fields once, not once per row of it (24,000 rows by number).
        bounds = {
            p.label: {"period": p.label, "start": p.local_start, "end": p.local_end,
                      "final": p.end <= self.now - FINAL_AFTER_SECONDS}
            for p in self.periods
        }  # fmt: skip
        return answers.Stats.model_validate(
            {
                "tz": q.zone.key,
                "from": q.first,
                "to": q.last,
                "granularity": q.granularity,
                "group_by": q.group_by,
                "numbers": [n.whatsapp for n in q.numbers],
                "as_of": None if self.as_of is None else datetime.fromtimestamp(self.as_of, UTC),
                "rules_version": RULES_VERSION,
                "totals": self.totals.fields(),
                "rows": [
                    self._row(bounds[period.label], key, counts)
                    for period, key, counts in self.rows
                ],
            }
        )


# --- parsing the question ---------------------------------------------------------------------


def _parse_day(parameter: str, text: str, *, end_of_month: bool) -> date:
    try:
        if len(text) == 7:
            first = datetime.strptime(text, "%Y-%m").date()
            if not end_of_month:
                return first
            following = (first.replace(day=28) + timedelta(days=4)).replace(day=1)
            return following - timedelta(days=1)
        if len(text) == 10:
            return datetime.strptime(text, "%Y-%m-%d").date()
    except ValueError:
        pass
    except OverflowError:
        # The end of month 9999-12 is past `date.max`: out of range, not a crash.
        raise ParameterError(
            parameter, f"{parameter} must be between 1970-01-01 and 9998-12-31"
        ) from None
    raise ParameterError(parameter, f"{parameter} must be a month YYYY-MM or a day YYYY-MM-DD")


def _split(values: Sequence[str] | None) -> list[str]:
    return [part.strip() for v in values or () for part in v.split(",") if part.strip()]


def parse_question(
    conn: Connection,
    account: AccountRow,
    *,
    from_: str | None,
    to: str | None,
    granularity: str | None,
    tz: str | None,
    numbers: Sequence[str] | None,
    group_by: Sequence[str] | None,
    unique: bool,
    now: int,
) -> Question:
    """Validate every parameter, naming the first bad one."""
    grain = granularity or "month"
    if grain not in GRANULARITIES:
        raise ParameterError("granularity", "granularity must be day, week or month")
    try:
        zone = load_zone(tz) if tz else load_zone(account.timezone)
    except InvalidInput as exc:
        raise ParameterError("tz", str(exc)) from None
    first, last = _parse_range(from_, to, grain, datetime.fromtimestamp(now, zone).date())
    groups = _split(group_by)
    for g in groups:
        if g not in GROUPS:
            raise ParameterError("group_by", f"group_by takes number, category, country; not {g!r}")
    own = [NumberRef(p, w, c) for p, w, c in numbers_repo.number_refs(conn, account.id)]
    chosen = _chosen_numbers(own, _split(numbers)) if numbers else own
    ordered_groups = tuple(g for g in GROUPS if g in groups)
    return Question(
        first, last, grain, zone, tuple(chosen), ordered_groups, unique, len(chosen) == len(own)
    )


def _parse_range(from_: str | None, to: str | None, grain: str, today: date) -> tuple[date, date]:
    """[first, last] days: by default the eleven months before this one and this one, to
    today; never more days than `MAX_DAYS` allows for the granularity."""
    last = _parse_day("to", to, end_of_month=True) if to else today
    if from_:
        first = _parse_day("from", from_, end_of_month=False)
    else:
        month = today.year * 12 + today.month - 1 - 11
        first = date(month // 12, month % 12 + 1, 1)
    for name, day in (("from", first), ("to", last)):
        if not EARLIEST <= day <= LATEST:
            raise ParameterError(name, f"{name} must be between 1970-01-01 and 9998-12-31")
    if first > last:
        raise ParameterError("from", f"from {first} is after to {last}")
    if (last - first).days + 1 > MAX_DAYS[grain]:
        raise ParameterError(
            "to",
            f"the range is {(last - first).days + 1} days; at most {MAX_DAYS[grain]} days "
            f"with granularity={grain}",
        )
    return first, last


def _chosen_numbers(own: list[NumberRef], wanted: list[str]) -> list[NumberRef]:
    """The account's numbers named in `wanted` (any punctuation), each once; all if none is."""
    if not wanted:
        return own
    by_digits = {n.whatsapp: n for n in own}
    chosen: list[NumberRef] = []
    for text in wanted:
        digits = normalise_whatsapp(text)
        if digits is None:
            raise ParameterError("numbers", f"{text[:40]!r} is not a phone number")
        if digits not in by_digits:
            raise ParameterError("numbers", f"{digits} is not one of this account's numbers")
        if by_digits[digits] not in chosen:
            chosen.append(by_digits[digits])
    return chosen


# --- periods ------------------------------------------------------------------------------------


def _midnight(day: date, zone: ZoneInfo) -> int:
    return int(datetime(day.year, day.month, day.day, tzinfo=zone).timestamp())


def periods_of(first: date, last: date, granularity: str, zone: ZoneInfo) -> list[Period]:
    """The buckets covering [first, last] in `zone`; the first and last are clipped."""
    result: list[Period] = []
    day = first
    end_day = last + timedelta(days=1)
    while day < end_day:
        if granularity == "day":
            following = day + timedelta(days=1)
            label = day.isoformat()
        elif granularity == "week":
            following = day + timedelta(days=7 - day.weekday())
            year, week, _ = day.isocalendar()
            label = f"{year}-W{week:02d}"
        else:
            following = (day.replace(day=28) + timedelta(days=4)).replace(day=1)
            label = f"{day.year}-{day.month:02d}"
        following = min(following, end_day)
        result.append(Period(label, _midnight(day, zone), _midnight(following, zone), zone))
        day = following
    return result


# --- answering ------------------------------------------------------------------------------------


def _uses_rollups(q: Question, account: AccountRow) -> bool:
    return (
        q.granularity == "month"
        and q.zone.key == account.timezone
        and q.first.day == 1
        and (q.last + timedelta(days=1)).day == 1
        and "country" not in q.group_by
        and not q.unique
    )


def most_rows(q: Question) -> int:
    """An upper bound of the answer's rows known before reading anything: every period, times
    every chosen number when grouped by number. (Countries and categories multiply it by what
    the data holds, which only the scan finds out: `answer` checks that part as it goes.)"""
    periods = len(periods_of(q.first, q.last, q.granularity, q.zone))
    return periods * (len(q.numbers) if "number" in q.group_by else 1)


def units_to_read(conn: Connection, account: AccountRow, q: Question) -> int:
    """How many counted units answering `q` reads, from the monthly rollups (a few rows per
    number and month, so cheap): 0 when the rollups answer it; else the units of the chosen
    numbers over the months of the range, widened by a month on each side because the
    question's zone may shift its edges across a month boundary of the account's zone."""
    if not q.numbers or _uses_rollups(q, account):
        return 0
    first = q.first.year * 12 + q.first.month - 1 - 1
    last = q.last.year * 12 + q.last.month - 1 + 1
    rows = reporting_repo.monthly_rows(
        conn,
        [n.phone_number_id for n in q.numbers],
        (first // 12) * 100 + first % 12 + 1,
        (last // 12) * 100 + last % 12 + 1,
    )
    return sum(units for *_, units in rows)


def check_size(
    conn: Connection, account: AccountRow, q: Question, *, max_rows: int, max_units: int
) -> None:
    """Refuse, before any unit is read, a question whose answer can exceed `max_rows` or which
    would read more than `max_units` counted units."""
    bound = most_rows(q)
    if bound > max_rows:
        raise AnswerTooLarge("rows", bound, max_rows, estimated=True)
    units = units_to_read(conn, account, q)
    if units > max_units:
        raise AnswerTooLarge("units", units, max_units, estimated=True)


class _Grouped:
    """Counts per (period index, group key), and the totals, as units are added."""

    def __init__(self, q: Question, totals: Counts, max_rows: int | None) -> None:
        self.q = q
        self.totals = totals
        self.max_rows = max_rows
        self.cells: dict[tuple[int, GroupKey], Counts] = {}
        self._numbers = {n.phone_number_id: n.whatsapp for n in q.numbers}
        by = q.group_by
        self._by_number, self._by_country = "number" in by, "country" in by
        self._by_category = "category" in by

    def new_counts(self) -> Counts:
        return Counts(customers={} if self.q.unique else None)

    def key(self, number: str | None, country: str | None, category: str, pricing: str) -> GroupKey:
        return GroupKey(
            self._numbers[number] if self._by_number and number is not None else None,
            country if self._by_country else None,
            (category, pricing) if self._by_category else None,
        )

    def add(self, index: int, key: GroupKey, bucket: str, units: int, user: str | None) -> None:
        counts = self.cells.get((index, key))
        if counts is None:
            if self.max_rows is not None and len(self.cells) >= self.max_rows:
                # Stop as soon as the grouping passes the cap, instead of growing in memory.
                raise AnswerTooLarge("rows", self.max_rows, self.max_rows, estimated=False)
            counts = self.cells[(index, key)] = self.new_counts()
        member = _BUCKET_OF[bucket]
        counts.add(member, units, user)
        self.totals.add(member, units, user)


def answer(
    conn: Connection, account: AccountRow, q: Question, now: int, *, max_rows: int | None = None
) -> Answer:
    """The answer to `q`; with `max_rows`, AnswerTooLarge as soon as the grouping passes it, so
    a question with many countries or categories stops early instead of growing in memory."""
    periods = periods_of(q.first, q.last, q.granularity, q.zone)
    numbers = [n.phone_number_id for n in q.numbers]
    result = Answer(
        question=q,
        periods=periods,
        as_of=_as_of(conn, q.numbers),
        now=now,
        totals=Counts(customers={} if q.unique else None),
    )
    grouped = _Grouped(q, result.totals, max_rows)
    if _uses_rollups(q, account) and "number" not in q.group_by and q.all_numbers:
        _from_account_rollup(conn, account, periods, grouped)
    elif _uses_rollups(q, account):
        _from_number_rollups(conn, numbers, periods, grouped)
    else:
        since = {n.phone_number_id: n.counts_from for n in q.numbers if n.counts_from is not None}
        _from_units(conn, numbers, periods, grouped, since)

    if q.group_by:
        cells = sorted(grouped.cells.items(), key=lambda item: (item[0][0], item[0][1].order()))
        result.rows = [(periods[index], key, counts) for (index, key), counts in cells]
    else:
        empty = GroupKey()
        result.rows = [
            (period, empty, grouped.cells.get((i, empty)) or grouped.new_counts())
            for i, period in enumerate(periods)
        ]
    return result


def _as_of(conn: Connection, numbers: Sequence[NumberRef]) -> int | None:
    """The newest event counted for these numbers, not counting a moved number's events from
    before its move (they are its former owner's)."""
    moved = {n.phone_number_id: n.counts_from for n in numbers if n.counts_from is not None}
    best = activity_repo.newest_event(conn, [n.phone_number_id for n in numbers
                                             if n.counts_from is None])  # fmt: skip
    for number, newest in activity_repo.newest_events(conn, moved).items():
        if newest >= moved[number] and (best is None or newest > best):
            best = newest
    return best


def _month_index(periods: Sequence[Period]) -> dict[int, int]:
    """{YYYYMM: index} of monthly periods."""
    return {int(p.label.replace("-", "")): i for i, p in enumerate(periods)}


def _from_account_rollup(
    conn: Connection, account: AccountRow, periods: Sequence[Period], grouped: _Grouped
) -> None:
    """Account-wide: the account rollup, a few dozen rows whatever the account's size."""
    month_index = _month_index(periods)
    for month, bucket, category, pricing, units in counts_repo.account_rows(
        conn, account.id, min(month_index), max(month_index)
    ):
        key = grouped.key(None, None, category, pricing)
        grouped.add(month_index[month], key, bucket, units, None)


def _from_number_rollups(
    conn: Connection, numbers: Iterable[str], periods: Sequence[Period], grouped: _Grouped
) -> None:
    month_index = _month_index(periods)
    for number, month, bucket, category, pricing, units in reporting_repo.monthly_rows(
        conn, numbers, min(month_index), max(month_index)
    ):
        key = grouped.key(number, None, category, pricing)
        grouped.add(month_index[month], key, bucket, units, None)


def _from_units(
    conn: Connection,
    numbers: Iterable[str],
    periods: Sequence[Period],
    grouped: _Grouped,
    since: dict[str, int],
) -> None:
    """Every unit in the range (from `since` for a moved number), placed into its period by
    its UTC time."""
    starts = [p.start for p in periods]
    for number, ts, bucket, category, pricing, user, country in units_repo.between(
        conn, numbers, periods[0].start, periods[-1].end, since
    ):
        index = bisect.bisect_right(starts, ts) - 1
        grouped.add(index, grouped.key(number, country, category, pricing), bucket, 1, user)
