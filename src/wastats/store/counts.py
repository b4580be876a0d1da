"""Repository: the monthly rollups that every statistics read is served from.

A rollup row is (number, local month, bucket, category, pricing type) → units. Reads never touch
raw bodies, facts or units; writes are additive deltas produced by the counting pipeline, or a
full rebuild of one number from its counted units (on registration and on `wastats recount`).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from typing import NamedTuple
from zoneinfo import ZoneInfo

from sqlalchemy import Connection, and_, delete, func, select

from wastats.counting.calendar import month_bounds, month_of
from wastats.counting.model import Bucket, CountedUnit
from wastats.store.schema import (
    account_monthly_counts,
    accounts,
    business_numbers,
    monthly_counts,
)
from wastats.store.sql import chunks, placeholder


class RollupKey(NamedTuple):
    """A row of `monthly_counts`: what a counted unit adds one to (`rollup_key`). Sorted as a
    tuple, in this order, when applied (see `apply_deltas`)."""

    phone_number_id: str
    month: int
    """YYYYMM in the account's zone."""
    bucket: Bucket
    category: str
    pricing_type: str


COUNTED_BUCKETS = tuple(b.value for b in (Bucket.MARKETING, Bucket.SERVICE, Bucket.INCOMING))
"""The compatible API's three buckets (`none` is kept for the breakdown only)."""


def monthly_bucket_totals(
    conn: Connection,
    *,
    account_id: int,
    phone_number_id: str | None,
    first_month: int | None,
    last_month: int | None,
) -> dict[int, dict[str, int]]:
    """{month: {bucket: units}} for the account's numbers (or one of them), the three buckets."""
    if phone_number_id is None:
        return _account_bucket_totals(conn, account_id, first_month, last_month)
    query = (
        select(monthly_counts.c.month, monthly_counts.c.bucket, func.sum(monthly_counts.c.units))
        .join(
            business_numbers,
            business_numbers.c.phone_number_id == monthly_counts.c.phone_number_id,
        )
        .where(
            business_numbers.c.account_id == account_id,
            monthly_counts.c.bucket.in_(COUNTED_BUCKETS),
        )
        .group_by(monthly_counts.c.month, monthly_counts.c.bucket)
        .where(monthly_counts.c.phone_number_id == phone_number_id)
    )
    if first_month is not None:
        query = query.where(monthly_counts.c.month >= first_month)
    if last_month is not None:
        query = query.where(monthly_counts.c.month <= last_month)
    totals: dict[int, dict[str, int]] = defaultdict(dict)
    for month, bucket, units in conn.execute(query):
        totals[int(month)][bucket] = int(units)
    return dict(totals)


def _account_bucket_totals(
    conn: Connection, account_id: int, first_month: int | None, last_month: int | None
) -> dict[int, dict[str, int]]:
    table = account_monthly_counts
    query = (
        select(table.c.month, table.c.bucket, func.sum(table.c.units))
        .where(table.c.account_id == account_id, table.c.bucket.in_(COUNTED_BUCKETS))
        .group_by(table.c.month, table.c.bucket)
    )
    if first_month is not None:
        query = query.where(table.c.month >= first_month)
    if last_month is not None:
        query = query.where(table.c.month <= last_month)
    totals: dict[int, dict[str, int]] = defaultdict(dict)
    for month, bucket, units in conn.execute(query):
        totals[int(month)][bucket] = int(units)
    return dict(totals)


def account_rows(
    conn: Connection, account_id: int, first_month: int, last_month: int
) -> list[tuple[int, str, str, str, int]]:
    """(month, bucket, category, pricing_type, units) account rollup rows in the range."""
    table = account_monthly_counts
    rows = conn.execute(
        select(table.c.month, table.c.bucket, table.c.category, table.c.pricing_type,
               table.c.units)
        .where(table.c.account_id == account_id, table.c.month >= first_month,
               table.c.month <= last_month)
    )  # fmt: skip
    return [(int(m), b, c, p, int(u)) for m, b, c, p, u in rows]


def number_bucket_totals(
    conn: Connection, *, account_id: int, month: int
) -> dict[str, dict[str, int]]:
    """{phone_number_id: {bucket: units}} of one month, for every number of the account.

    Filtered by the account's numbers themselves, not through a join: `phone_number_id` is
    the distribution column on Citus, so only those numbers' shards are read (a join on the
    account reads every shard)."""
    numbers = sorted(
        conn.execute(
            select(business_numbers.c.phone_number_id).where(
                business_numbers.c.account_id == account_id
            )
        ).scalars()
    )
    totals: dict[str, dict[str, int]] = defaultdict(dict)
    for part in chunks(numbers):
        query = (
            select(
                monthly_counts.c.phone_number_id,
                monthly_counts.c.bucket,
                func.sum(monthly_counts.c.units),
            )
            .where(
                monthly_counts.c.phone_number_id.in_(part),
                monthly_counts.c.month == month,
                monthly_counts.c.bucket.in_(COUNTED_BUCKETS),
            )
            .group_by(monthly_counts.c.phone_number_id, monthly_counts.c.bucket)
        )
        for number, bucket, units in conn.execute(query):
            totals[number][bucket] = int(units)
    return dict(totals)


def _add_units_sql(conn: Connection, table: str, owner: str) -> str:
    """Driver SQL adding `units` to one rollup row of `table` (creating it), for executemany:
    SQLAlchemy's construct and per-row dictionaries cost more than the statement (measured:
    half of the time the pipeline spent writing rollups)."""
    mark = placeholder(conn)
    columns = (owner, "month", "bucket", "category", "pricing_type", "units")
    return (
        f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join([mark] * 6)}) "
        f"ON CONFLICT ({', '.join(columns[:5])}) DO UPDATE SET units = {table}.units + "
        "excluded.units"
    )


def apply_deltas(conn: Connection, deltas: Mapping[RollupKey, int]) -> None:
    """Add each delta to its rollup row (creating it), then drop rows that reached zero.

    Keys are applied in sorted order so two PostgreSQL transactions touching the same rows lock
    them in the same order and cannot deadlock.
    """
    changes = sorted((key, delta) for key, delta in deltas.items() if delta)
    if not changes:
        return
    conn.exec_driver_sql(
        _add_units_sql(conn, "monthly_counts", "phone_number_id"),
        [(n, m, str(b), c, p, delta) for (n, m, b, c, p), delta in changes],
    )
    numbers = sorted({key.phone_number_id for key, _ in changes})
    for part in chunks(numbers):
        conn.execute(
            delete(monthly_counts).where(
                and_(monthly_counts.c.phone_number_id.in_(part), monthly_counts.c.units == 0)
            )
        )
    _apply_account_deltas(conn, changes)


def _apply_account_deltas(conn: Connection, changes: Sequence[tuple[RollupKey, int]]) -> None:
    """Mirror number-level deltas into the account rollup (registered numbers only)."""
    owners: dict[str, int] = {}
    numbers = sorted({key.phone_number_id for key, _ in changes})
    for part in chunks(numbers):
        rows = conn.execute(
            select(business_numbers.c.phone_number_id, business_numbers.c.account_id).where(
                business_numbers.c.phone_number_id.in_(part)
            )
        )
        owners.update({n: int(a) for n, a in rows})
    summed: Counter[tuple[int, int, str, str, str]] = Counter()
    for (number, month, bucket, category, pricing), delta in changes:
        if number in owners:
            summed[(owners[number], month, bucket.value, category, pricing)] += delta
    rows_ = sorted((k, v) for k, v in summed.items() if v)
    if not rows_:
        return
    conn.exec_driver_sql(
        _add_units_sql(conn, "account_monthly_counts", "account_id"),
        [(*key, delta) for key, delta in rows_],
    )
    table = account_monthly_counts
    accounts = sorted({k[0] for k, _ in rows_})
    conn.execute(delete(table).where(table.c.account_id.in_(accounts), table.c.units == 0))


def rollup_rows(conn: Connection, phone_number_id: str) -> dict[RollupKey, int]:
    rows = conn.execute(
        select(
            monthly_counts.c.phone_number_id,
            monthly_counts.c.month,
            monthly_counts.c.bucket,
            monthly_counts.c.category,
            monthly_counts.c.pricing_type,
            monthly_counts.c.units,
        ).where(monthly_counts.c.phone_number_id == phone_number_id)
    )
    return {RollupKey(r[0], int(r[1]), Bucket(r[2]), r[3], r[4]): int(r[5]) for r in rows}


def _rollup_values(key: RollupKey, units: int) -> dict[str, object]:
    """A `monthly_counts` row's values: the key's fields are its columns (the bucket as text)."""
    return {**key._asdict(), "bucket": key.bucket.value, "units": units}


def rollup_key(phone_number_id: str, unit: CountedUnit, zone: ZoneInfo) -> RollupKey:
    """The rollup row a counted unit adds to: its number, its month in the account's zone,
    its bucket, category and pricing type. The one definition used by the pipeline's deltas,
    by registration and by recount."""
    month = month_of(unit.timestamp, zone)
    return RollupKey(phone_number_id, month, unit.bucket, unit.category, unit.pricing_type)


class ZoneMonths:
    """`month_of` for one zone, remembered per UTC day: a batch's units fall on a few days, so
    most units find their month with one dictionary look-up instead of a `datetime` in the zone
    (the pipeline finds one or two months per changed unit). Only days wholly inside one local
    month are remembered (by `month_bounds`, exact across DST), so a day on which a month
    starts is computed every time and the answer is always `month_of`'s."""

    __slots__ = ("_days", "_zone")
    LIMIT = 4096

    def __init__(self, zone: ZoneInfo) -> None:
        self._zone = zone
        self._days: dict[int, int] = {}

    def __call__(self, ts: int) -> int:
        day = ts // 86_400
        month = self._days.get(day)
        if month is not None:
            return month
        month = month_of(ts, self._zone)
        try:
            start, end = month_bounds(month, self._zone)
        except ValueError:  # a month `month_bounds` does not cover (before 1970): not kept
            return month
        if start <= day * 86_400 and (day + 1) * 86_400 <= end and len(self._days) < self.LIMIT:
            self._days[day] = month
        return month


def rollups_of(
    phone_number_id: str,
    units: Iterable[CountedUnit],
    zone: ZoneInfo,
    counts_from: int | None = None,
) -> dict[RollupKey, int]:
    """What the rollups of one number must be, given all its counted units: those from
    `counts_from` on (the number's registration's; None for all), as the pipeline counts."""
    return dict(
        Counter(
            rollup_key(phone_number_id, unit, zone)
            for unit in units
            if counts_from is None or unit.timestamp >= counts_from
        )
    )


def replace_rollups(conn: Connection, phone_number_id: str, rows: Mapping[RollupKey, int]) -> None:
    """Make the number's rollups exactly `rows` (and its account's follow); `{}` removes them."""
    before = rollup_rows(conn, phone_number_id)
    difference = Counter(rows)
    difference.subtract(before)
    _apply_account_deltas(conn, sorted((k, v) for k, v in difference.items() if v))
    conn.execute(delete(monthly_counts).where(monthly_counts.c.phone_number_id == phone_number_id))
    values = [_rollup_values(key, units) for key, units in sorted(rows.items()) if units]
    if values:
        conn.execute(monthly_counts.insert(), values)


def account_ids(conn: Connection) -> list[int]:
    return sorted(int(a) for a in conn.execute(select(accounts.c.id)).scalars())


def account_numbers(conn: Connection, account_id: int) -> list[str]:
    rows = conn.execute(
        select(business_numbers.c.phone_number_id).where(
            business_numbers.c.account_id == account_id
        )
    )
    return sorted(rows.scalars())


def rebuild_account_rollups(conn: Connection, account_id: int, *, repair: bool = True) -> int:
    """Compare one account's rollup with the sum of its numbers' rollups, repairing it unless
    `repair` is false; returns how many rows differed.

    Reads only that account's rows and its numbers' rows (by `phone_number_id`, the distribution
    column on Citus: only their shards are read) and rewrites only that account's rows."""
    table = account_monthly_counts
    should: Counter[tuple[int, int, str, str, str]] = Counter()
    for part in chunks(account_numbers(conn, account_id)):
        rows = conn.execute(
            select(monthly_counts.c.month, monthly_counts.c.bucket, monthly_counts.c.category,
                   monthly_counts.c.pricing_type, monthly_counts.c.units)
            .where(monthly_counts.c.phone_number_id.in_(part))
        )  # fmt: skip
        for month, bucket, category, pricing, units in rows:
            should[(account_id, int(month), bucket, category, pricing)] += int(units)
    have = {
        (int(a), int(m), b, c, p): int(u)
        for a, m, b, c, p, u in conn.execute(
            select(table.c.account_id, table.c.month, table.c.bucket, table.c.category,
                   table.c.pricing_type, table.c.units)
            .where(table.c.account_id == account_id)
        )
    }  # fmt: skip
    differing = sum(1 for k in should.keys() | have.keys() if should.get(k, 0) != have.get(k, 0))
    if differing and repair:
        conn.execute(delete(table).where(table.c.account_id == account_id))
        values = [
            {
                "account_id": k[0],
                "month": k[1],
                "bucket": k[2],
                "category": k[3],
                "pricing_type": k[4],
                "units": v,
            }  # fmt: skip
            for k, v in sorted(should.items())
            if v
        ]
        if values:
            conn.execute(table.insert(), values)
    return differing
