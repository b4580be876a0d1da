"""Repository: the rollup reads behind the modern statistics (`/v1`); the counted units in a
range, for breakdowns the rollups cannot answer, are `wastats.store.units.between`."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from sqlalchemy import Connection, select

from wastats.store.schema import monthly_counts
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
