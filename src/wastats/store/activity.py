"""Repository: per-number activity (newest event counted), for `as_of` in statistics."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from sqlalchemy import Connection, func, select

from wastats.store.schema import number_activity
from wastats.store.sql import chunks, insert_for


def record(conn: Connection, newest: Mapping[str, int], now: int) -> None:
    """Raise each number's newest event time to at least the given one."""
    rows = [
        {"phone_number_id": number, "newest_event": ts, "last_received": now}
        for number, ts in sorted(newest.items())
    ]
    if not rows:
        return
    stmt = insert_for(conn, number_activity)
    stmt = stmt.on_conflict_do_update(
        index_elements=[number_activity.c.phone_number_id],
        set_={
            # max() of two values: GREATEST on PostgreSQL, the two-argument max() on SQLite.
            "newest_event": (func.greatest if conn.dialect.name == "postgresql" else func.max)(
                number_activity.c.newest_event, stmt.excluded.newest_event
            ),
            "last_received": stmt.excluded.last_received,
        },
    )
    conn.execute(stmt, rows)


def newest_event(conn: Connection, phone_number_ids: Iterable[str]) -> int | None:
    best: int | None = None
    for part in chunks(sorted(set(phone_number_ids))):
        value = conn.execute(
            select(func.max(number_activity.c.newest_event)).where(
                number_activity.c.phone_number_id.in_(part)
            )
        ).scalar()
        if value is not None and (best is None or int(value) > best):
            best = int(value)
    return best


def newest_events(conn: Connection, phone_number_ids: Iterable[str]) -> dict[str, int]:
    """{phone_number_id: newest_event} of these numbers (those with any)."""
    out: dict[str, int] = {}
    for part in chunks(sorted(set(phone_number_ids))):
        rows = conn.execute(
            select(number_activity.c.phone_number_id, number_activity.c.newest_event).where(
                number_activity.c.phone_number_id.in_(part)
            )
        )
        out.update({number: int(newest) for number, newest in rows})
    return out
