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
from zoneinfo import ZoneInfo

from sqlalchemy import Connection

from wastats.counting.model import RULES_VERSION
from wastats.domain.accounts import load_zone
from wastats.domain.errors import InvalidInput
from wastats.domain.phone import normalise_whatsapp
from wastats.store import activity as activity_repo
from wastats.store import counts as counts_repo
from wastats.store import numbers as numbers_repo
from wastats.store import reporting as reporting_repo
from wastats.store import units as units_repo
from wastats.store.accounts import AccountRow

BUCKETS = ("marketing", "service", "incoming")
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

    def iso(self, ts: int) -> str:
        return datetime.fromtimestamp(ts, self.zone).isoformat()


@dataclass(frozen=True, slots=True)
class NumberRef:
    phone_number_id: str
    whatsapp: str


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


@dataclass
class Counts:
    marketing: int = 0
    service: int = 0
    incoming: int = 0
    uncounted: int = 0
    customers: dict[str, set[str]] | None = None

    def add(self, bucket: str, units: int, customer: str | None) -> None:
        if bucket == "marketing":
            self.marketing += units
        elif bucket == "service":
            self.service += units
        elif bucket == "incoming":
            self.incoming += units
        else:
            self.uncounted += units
        if self.customers is not None and customer is not None and bucket in BUCKETS:
            self.customers.setdefault(bucket, set()).add(customer)

    def as_dict(self) -> dict[str, object]:
        result: dict[str, object] = {
            "marketing": self.marketing,
            "service": self.service,
            "incoming": self.incoming,
            "total": self.marketing + self.service + self.incoming,
            "uncounted": self.uncounted,
        }
        if self.customers is not None:
            unique = {b: len(self.customers.get(b, ())) for b in BUCKETS}
            unique["total"] = len(set().union(*self.customers.values())) if self.customers else 0
            result["unique_customers"] = unique
        return result


@dataclass
class Answer:
    question: Question
    periods: list[Period]
    as_of: int | None
    now: int
    totals: Counts
    rows: list[tuple[Period, tuple[str | None, ...], Counts]] = field(default_factory=list)

    def row_dicts(self) -> list[dict[str, object]]:
        out = []
        for period, key, counts in self.rows:
            row: dict[str, object] = {
                "period": period.label,
                "start": period.iso(period.start),
                "end": period.iso(period.end),
                "final": period.end <= self.now - FINAL_AFTER_SECONDS,
            }
            values = dict(zip(self.question.group_by, key, strict=True))
            if "number" in values:
                row["number"] = values["number"]
            if "country" in values:
                row["country"] = values["country"]
            if "category" in values:
                category, _, pricing = (values["category"] or "").partition("|")
                row["category"] = category
                row["pricing"] = pricing
            row.update(counts.as_dict())
            out.append(row)
        return out

    def as_dict(self) -> dict[str, object]:
        q = self.question
        return {
            "tz": q.zone.key,
            "from": q.first.isoformat(),
            "to": q.last.isoformat(),
            "granularity": q.granularity,
            "group_by": list(q.group_by),
            "numbers": [n.whatsapp for n in q.numbers],
            "as_of": None
            if self.as_of is None
            else datetime.fromtimestamp(self.as_of, UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "rules_version": RULES_VERSION,
            "totals": self.totals.as_dict(),
            "rows": self.row_dicts(),
        }


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
    today = datetime.fromtimestamp(now, zone).date()
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
    groups = _split(group_by)
    for g in groups:
        if g not in GROUPS:
            raise ParameterError("group_by", f"group_by takes number, category, country; not {g!r}")
    own = [NumberRef(p, w) for p, w in numbers_repo.number_refs(conn, account.id)]
    chosen = own
    wanted = _split(numbers)
    if wanted:
        by_digits = {n.whatsapp: n for n in own}
        chosen = []
        for text in wanted:
            digits = normalise_whatsapp(text)
            if digits is None:
                raise ParameterError("numbers", f"{text[:40]!r} is not a phone number")
            if digits not in by_digits:
                raise ParameterError("numbers", f"{digits} is not one of this account's numbers")
            if by_digits[digits] not in chosen:
                chosen.append(by_digits[digits])
    ordered_groups = tuple(g for g in GROUPS if g in groups)
    return Question(
        first, last, grain, zone, tuple(chosen), ordered_groups, unique, len(chosen) == len(own)
    )


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


def answer(
    conn: Connection, account: AccountRow, q: Question, now: int, *, max_rows: int | None = None
) -> Answer:
    """The answer to `q`; with `max_rows`, AnswerTooLarge as soon as the grouping passes it, so
    a question with many countries or categories stops early instead of growing in memory."""
    periods = periods_of(q.first, q.last, q.granularity, q.zone)
    numbers = {n.phone_number_id: n.whatsapp for n in q.numbers}
    result = Answer(
        question=q,
        periods=periods,
        as_of=activity_repo.newest_event(conn, numbers),
        now=now,
        totals=Counts(customers={} if q.unique else None),
    )
    grouped: dict[tuple[int, tuple[str | None, ...]], Counts] = {}

    def add(
        index: int, key: tuple[str | None, ...], bucket: str, units: int, user: str | None
    ) -> None:
        counts = grouped.get((index, key))
        if counts is None:
            if max_rows is not None and len(grouped) >= max_rows:
                raise AnswerTooLarge("rows", max_rows, max_rows, estimated=False)
            counts = grouped[(index, key)] = Counts(customers={} if q.unique else None)
        counts.add(bucket, units, user)
        result.totals.add(bucket, units, user)

    def key_of(
        number: str, country: str | None, category: str, pricing: str
    ) -> tuple[str | None, ...]:
        values = {
            "number": numbers[number],
            "country": country,
            "category": f"{category}|{pricing}",
        }
        return tuple(values[g] for g in q.group_by)

    if not numbers:
        pass
    elif _uses_rollups(q, account) and "number" not in q.group_by and q.all_numbers:
        # Account-wide: the account rollup, a few dozen rows whatever the account's size.
        month_index = {int(p.label.replace("-", "")): i for i, p in enumerate(periods)}
        for month, bucket, category, pricing, units in counts_repo.account_rows(
            conn, account.id, min(month_index), max(month_index)
        ):
            key = tuple(f"{category}|{pricing}" if g == "category" else None for g in q.group_by)
            add(month_index[month], key, bucket, units, None)
    elif _uses_rollups(q, account):
        month_index = {int(p.label.replace("-", "")): i for i, p in enumerate(periods)}
        first_month, last_month = min(month_index), max(month_index)
        for number, month, bucket, category, pricing, units in reporting_repo.monthly_rows(
            conn, numbers, first_month, last_month
        ):
            add(month_index[month], key_of(number, None, category, pricing), bucket, units, None)
    else:
        starts = [p.start for p in periods]
        for number, ts, bucket, category, pricing, user, country in units_repo.between(
            conn, numbers, periods[0].start, periods[-1].end
        ):
            index = bisect.bisect_right(starts, ts) - 1
            add(index, key_of(number, country, category, pricing), bucket, 1, user)

    if q.group_by:
        result.rows = [
            (periods[index], key, counts)
            for (index, key), counts in sorted(grouped.items(), key=_row_order)
        ]
    else:
        result.rows = [
            (period, (), grouped.get((i, ()), Counts(customers={} if q.unique else None)))
            for i, period in enumerate(periods)
        ]
    return result


def _row_order(item: tuple[tuple[int, tuple[str | None, ...]], Counts]) -> tuple[object, ...]:
    (index, key), _ = item
    return (index, tuple((v is None, v or "") for v in key))


def csv_header(q: Question) -> list[str]:
    columns = ["period", "start", "end", "final"]
    if "number" in q.group_by:
        columns.append("number")
    if "country" in q.group_by:
        columns.append("country")
    if "category" in q.group_by:
        columns += ["category", "pricing"]
    columns += ["marketing", "service", "incoming", "total", "uncounted"]
    if q.unique:
        columns += ["unique_marketing", "unique_service", "unique_incoming", "unique_total"]
    return columns


def csv_rows(answer_: Answer) -> Iterable[list[object]]:
    for row in answer_.row_dicts():
        values: list[object] = [row["period"], row["start"], row["end"], str(row["final"]).lower()]
        for column in ("number", "country"):
            if column in row:
                values.append(row[column] or "")
        if "category" in row:
            values += [row["category"], row["pricing"]]
        values += [row[k] for k in ("marketing", "service", "incoming", "total", "uncounted")]
        if "unique_customers" in row:
            unique = row["unique_customers"]
            assert isinstance(unique, dict)
            values += [unique[k] for k in ("marketing", "service", "incoming", "total")]
        yield values
