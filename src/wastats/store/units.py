"""Repository: the counted units, wherever each is kept.

A unit has two homes, a measured choice (docs/benchmarks.md, "Import"): a message's own unit
(Rule P, key `P:<message_key>`) lives in its `message_facts` row (the `unit_*` columns), written
with the message's statuses, which saves a second random-key index write per message; incoming
sessions and CBP conversations are rows of `counted_units`. Every reader and writer of units
goes through this module, so no caller needs to know which home a unit has.

Both homes store a unit's values in the same order (`VALUE_COLUMNS`, prefixed `unit_` in a
message's row), and one pair of functions converts them (`_values`, `_unit`).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, NamedTuple

from sqlalchemy import Connection, delete, select, union_all, update

from wastats.counting.model import Bucket, CountedUnit, Era, UnitKind
from wastats.store.schema import counted_units, message_facts
from wastats.store.sql import Pair, chunks, fetch_by_pairs, pair_statements, placeholder

VALUE_COLUMNS = ("ts", "bucket", "category", "pricing_type", "era", "user_key", "country")
"""A unit's values after its key and kind, in `CountedUnit`'s order: the columns of
`counted_units`, and, prefixed `unit_`, of a message's row (whose key and kind are implied)."""
MESSAGE_UNIT_COLUMNS = tuple(f"unit_{column}" for column in VALUE_COLUMNS)
_NO_UNIT = (None,) * len(VALUE_COLUMNS)
_UNIT_COLUMNS = ("unit_key", "kind", *VALUE_COLUMNS)
_ROW_COLUMNS = ("phone_number_id", *_UNIT_COLUMNS)
_SELECT = f"SELECT {', '.join(_ROW_COLUMNS)} FROM counted_units"
MESSAGE_PREFIX = "P:"
"""The key of a message's unit is this and the message's key (`rules.message_unit`)."""


def _values(unit: CountedUnit) -> tuple[Any, ...]:
    """The stored values of a unit, in `VALUE_COLUMNS` order.

    Runs for every changed unit: `str()` of the enumerations, not `.value`, which is a
    Python-level property (measured: this function 3.1 µs with `.value`, 1.2 µs now; a
    `StrEnum`'s `str` is its value)."""
    _, _, ts, bucket, category, pricing_type, era, user_key, country = unit
    return (ts, str(bucket), category, pricing_type, None if era is None else str(era), user_key,
            country)  # fmt: skip


_KINDS = {kind.value: kind for kind in UnitKind}
_BUCKETS = {bucket.value: bucket for bucket in Bucket}
_ERAS = {era.value: era for era in Era}


def _unit(unit_key: str, kind: str, values: Sequence[Any]) -> CountedUnit:
    """A unit from its key, kind and stored values (`VALUE_COLUMNS` order).

    The enumerations by dictionary, not by calling them (a Python-level look-up each, for
    every stored unit read); a value none of them has still raises `ValueError`."""
    ts, bucket, category, pricing_type, era, user_key, country = values
    return CountedUnit(unit_key, _KINDS.get(kind) or UnitKind(kind), int(ts),
                       _BUCKETS.get(bucket) or Bucket(bucket), category, pricing_type,
                       (_ERAS.get(era) or Era(era)) if era else None, user_key,
                       country)  # fmt: skip


# --- a message's unit, in its message's row ---------------------------------------------------


def message_unit_values(unit: CountedUnit | None) -> tuple[Any, ...]:
    """The `MESSAGE_UNIT_COLUMNS` values of a message row whose unit is `unit` (all NULL for
    none): `facts.write_messages` writes them with the message's statuses."""
    return _NO_UNIT if unit is None else _values(unit)


def message_unit(message_key: str, values: Sequence[Any]) -> CountedUnit | None:
    """The unit of a message row from its `MESSAGE_UNIT_COLUMNS` values; None if it has none."""
    if values[0] is None:
        return None
    return _unit(MESSAGE_PREFIX + message_key, UnitKind.BILLABLE_MESSAGE, values)


# --- sessions and conversations, in counted_units ---------------------------------------------


def by_key(conn: Connection, pairs: Iterable[Pair]) -> dict[Pair, CountedUnit]:
    """{(phone_number_id, unit_key): unit} of the stored session and conversation units among
    `pairs`."""
    rows = fetch_by_pairs(conn, _SELECT, ("phone_number_id", "unit_key"), pairs)
    return {(row[0], row[1]): _unit(row[1], row[2], row[3:]) for row in rows}


def sessions_of(conn: Connection, customers: Iterable[Pair]) -> dict[Pair, CountedUnit]:
    """{(phone_number_id, unit_key): unit} of every incoming-session unit of these
    (phone_number_id, user_key) customers."""
    rows = fetch_by_pairs(
        conn,
        _SELECT,
        ("phone_number_id", "user_key"),
        customers,
        # A literal, not a bound value: SQLite uses a partial index only when the query spells
        # out its condition.
        condition=f"kind = '{UnitKind.INCOMING_SESSION.value}'",
    )
    return {(row[0], row[1]): _unit(row[1], row[2], row[3:]) for row in rows}


def write(
    conn: Connection, upserts: Sequence[tuple[str, CountedUnit]], deletes: Sequence[Pair]
) -> None:
    """Delete the (phone_number_id, unit_key) session and conversation units `deletes`, and
    insert or replace the (phone_number_id, unit) `upserts`. (A message's unit is written with
    its message's row: `message_unit_values`.)"""
    for sql, params in pair_statements(
        conn, "DELETE FROM counted_units", ("phone_number_id", "unit_key"), deletes
    ):
        conn.exec_driver_sql(sql, params)
    if not upserts:
        return
    # Driver-level executemany, for the same reason as the fact inserts (hot path).
    updates = ", ".join(f"{c} = excluded.{c}" for c in _UNIT_COLUMNS[1:])
    conn.exec_driver_sql(
        f"INSERT INTO counted_units ({', '.join(_ROW_COLUMNS)}) "
        f"VALUES ({', '.join([placeholder(conn)] * len(_ROW_COLUMNS))}) "
        f"ON CONFLICT (phone_number_id, unit_key) DO UPDATE SET {updates}",
        [
            (number, unit.unit_key, unit.kind.value, *_values(unit))
            for number, unit in sorted(upserts, key=lambda item: (item[0], item[1].unit_key))
        ],
    )


# --- every unit of a number, both homes -----------------------------------------------------------


def all_of(conn: Connection, phone_number_id: str) -> dict[str, CountedUnit]:
    """{unit_key: unit} of every unit of the number, message units included."""
    units = {
        row[0]: _unit(row[0], row[1], row[2:])
        for row in conn.execute(
            select(*(counted_units.c[c] for c in _UNIT_COLUMNS)).where(
                counted_units.c.phone_number_id == phone_number_id
            )
        )
    }
    messages = conn.execute(
        select(
            message_facts.c.message_key, *(message_facts.c[c] for c in MESSAGE_UNIT_COLUMNS)
        ).where(
            message_facts.c.phone_number_id == phone_number_id,
            message_facts.c.unit_ts.is_not(None),
        )
    )
    for key, *values in messages:
        unit = message_unit(key, values)
        if unit is not None:
            units[unit.unit_key] = unit
    return units


def replace_all(conn: Connection, phone_number_id: str, units: Mapping[str, CountedUnit]) -> None:
    """Make the number's units exactly `units`: message units in their messages' rows (every
    message unit comes from a stored message), the others in `counted_units`."""
    conn.execute(delete(counted_units).where(counted_units.c.phone_number_id == phone_number_id))
    ordered = [unit for _, unit in sorted(units.items())]
    others = [(phone_number_id, u) for u in ordered if u.kind is not UnitKind.BILLABLE_MESSAGE]
    write(conn, others, [])
    conn.execute(
        update(message_facts)
        .where(
            message_facts.c.phone_number_id == phone_number_id,
            message_facts.c.unit_ts.is_not(None),
        )
        .values(dict.fromkeys(MESSAGE_UNIT_COLUMNS))
    )
    mark = placeholder(conn)
    messages = [
        (*_values(u), phone_number_id, u.unit_key.removeprefix(MESSAGE_PREFIX))
        for u in ordered
        if u.kind is UnitKind.BILLABLE_MESSAGE
    ]
    if messages:
        conn.exec_driver_sql(
            f"UPDATE message_facts SET {', '.join(f'{c} = {mark}' for c in MESSAGE_UNIT_COLUMNS)} "
            f"WHERE phone_number_id = {mark} AND message_key = {mark}",
            messages,
        )


class UnitInRange(NamedTuple):
    """What a breakdown needs of one counted unit (`between`): its number and the unit's
    values, named as in `CountedUnit`."""

    phone_number_id: str
    timestamp: int
    bucket: str
    category: str
    pricing_type: str
    user_key: str | None
    country: str | None


def between(
    conn: Connection,
    phone_number_ids: Iterable[str],
    start: int,
    end: int,
    since: Mapping[str, int] | None = None,
) -> Iterator[UnitInRange]:
    """The counted units of these numbers with start <= timestamp < end, from both homes, each
    read through its (phone_number_id, ts) index; for a number in `since` (one moved from
    another account: its registration's `counts_from`), only those from that time on."""
    # Numbers sharing a start are read together: usually all of them, with moved numbers a few
    # more queries, never one per unit.
    starts: dict[int, list[str]] = {}
    for number in sorted(set(phone_number_ids)):
        starts.setdefault(max(start, (since or {}).get(number, start)), []).append(number)
    for first, numbers in sorted(starts.items()):
        yield from _between(conn, numbers, first, end)


def _between(conn: Connection, numbers: list[str], start: int, end: int) -> Iterator[UnitInRange]:
    units = counted_units.c
    messages = message_facts.c
    for part in chunks(numbers):
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
            yield UnitInRange(number, int(ts), bucket, category, pricing, user, country)
