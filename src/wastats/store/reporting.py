"""Repository: the reads behind the modern statistics (rollups and counted units in a range)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from sqlalchemy import Connection, select, union_all

from wastats.store.schema import counted_units, message_facts, monthly_counts
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
    these numbers with start <= ts < end: sessions and conversations from `counted_units`,
    message units from their messages' rows, each read through its (phone_number_id, ts)
    index."""
    units = counted_units.c
    messages = message_facts.c
    for part in chunks(sorted(set(phone_number_ids))):
        query = union_all(
            select(units.phone_number_id, units.ts, units.bucket, units.category,
                   units.pricing_type, units.user_key, units.country).where(
                units.phone_number_id.in_(part), units.ts >= start, units.ts < end
            ),
            select(messages.phone_number_id, messages.unit_ts, messages.unit_bucket,
                   messages.unit_category, messages.unit_pricing_type, messages.unit_user_key,
                   messages.unit_country).where(
                messages.phone_number_id.in_(part),
                messages.unit_ts >= start,
                messages.unit_ts < end,
            ),
        )  # fmt: skip
        for number, ts, bucket, category, pricing, user, country in conn.execute(query):
            yield number, int(ts), bucket, category, pricing, user, country
