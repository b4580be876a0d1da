"""Repository: the reads behind the modern statistics (rollups and counted units in a range)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from sqlalchemy import Connection, select

from wastats.store.schema import counted_units, monthly_counts
from wastats.store.sql import chunks


def monthly_rows(
    conn: Connection, phone_number_ids: Iterable[str], first_month: int, last_month: int
) -> Iterator[tuple[str, int, str, str, str, int]]:
    """(number, month, bucket, category, pricing_type, units) rollup rows of these numbers."""
    for part in chunks(sorted(set(phone_number_ids))):
        rows = conn.execute(
            select(
                monthly_counts.c.phone_number_id,
                monthly_counts.c.month,
                monthly_counts.c.bucket,
                monthly_counts.c.category,
                monthly_counts.c.pricing_type,
                monthly_counts.c.units,
            ).where(
                monthly_counts.c.phone_number_id.in_(part),
                monthly_counts.c.month >= first_month,
                monthly_counts.c.month <= last_month,
            )
        )
        for number, month, bucket, category, pricing, units in rows:
            yield number, int(month), bucket, category, pricing, int(units)


def units_between(
    conn: Connection, phone_number_ids: Iterable[str], start: int, end: int
) -> Iterator[tuple[str, int, str, str, str, str | None, str | None]]:
    """(number, ts, bucket, category, pricing_type, user_key, country) of the counted units of
    these numbers with start <= ts < end, read through the (phone_number_id, ts) index."""
    for part in chunks(sorted(set(phone_number_ids))):
        rows = conn.execute(
            select(
                counted_units.c.phone_number_id,
                counted_units.c.ts,
                counted_units.c.bucket,
                counted_units.c.category,
                counted_units.c.pricing_type,
                counted_units.c.user_key,
                counted_units.c.country,
            ).where(
                counted_units.c.phone_number_id.in_(part),
                counted_units.c.ts >= start,
                counted_units.c.ts < end,
            )
        )
        for number, ts, bucket, category, pricing, user, country in rows:
            yield number, int(ts), bucket, category, pricing, user, country
