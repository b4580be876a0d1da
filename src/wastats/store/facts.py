"""Repository: the facts the counting rules need, and the counted units they produce.

Facts are insert-only with natural unique keys, so a duplicate webhook is a no-op
(`ON CONFLICT DO NOTHING`, or a commutative merge of what a copy adds). Units are replaced per
key when the rules recompute them.
Every query is scoped by `phone_number_id` first, which is also the leading column of every key.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Collection, Iterable, Mapping, Sequence
from operator import itemgetter
from typing import Any

import msgspec
from sqlalchemy import Connection, delete, select, union, update

from wastats.counting.model import Bucket, CountedUnit, Era, StatusFact, UnitKind
from wastats.store.schema import (
    business_numbers,
    counted_units,
    inbound_messages,
    message_conversations,
    message_facts,
    user_links,
)
from wastats.store.sql import fetch_by_pairs, insert_for, insert_ignore_sql, pair_statements

InboundRow = dict[str, Any]
Pair = tuple[str, str]
"""(phone_number_id, key): every fact and unit is addressed by its number first, the leading
column of every key, so a batch's lookups are one query per number (`sql.fetch_by_pairs`)."""

INBOUND_COLUMNS = ("phone_number_id", "wamid", "user_key", "wa_key", "bsuid_key", "ts", "country")
STATUS_FIELDS = ("status", "ts", "conversation_id", "conversation_origin", "expiration_ts",
                 "pricing_model", "pricing_type", "pricing_category", "billable", "user_key",
                 "country")  # fmt: skip
"""The order of a status row in `message_facts.statuses` (a JSON array of such rows)."""


_inbound_values = itemgetter(*INBOUND_COLUMNS)


InboundTimes = dict[tuple[str, int], str | None]
"""One customer's inbound messages: {(wamid key, timestamp): country}."""


def merged_country(stored: str | None, new: str | None) -> str | None:
    """The country kept for one inbound row seen with two countries: the larger one known.

    A country derives from the customer's phone number (or BSUID), so two copies of one message
    agree, or one of them lacks it; taking the larger known one is commutative, so the result
    never depends on which copy came first. The database applies the same rule
    (`insert_inbound`)."""
    if new is None or (stored is not None and stored >= new):
        return stored
    return new


def _insert_inbound_sql(conn: Connection) -> str:
    mark = "%s" if conn.dialect.name == "postgresql" else "?"
    keys = ", ".join(c.name for c in inbound_messages.primary_key.columns)
    return (
        f"INSERT INTO inbound_messages ({', '.join(INBOUND_COLUMNS)}) "
        f"VALUES ({', '.join([mark] * len(INBOUND_COLUMNS))}) ON CONFLICT ({keys}) "
        "DO UPDATE SET country = excluded.country WHERE excluded.country IS NOT NULL AND "
        "(inbound_messages.country IS NULL OR excluded.country > inbound_messages.country)"
    )


def insert_inbound(conn: Connection, rows: Sequence[InboundRow]) -> None:
    """Insert inbound-message facts; rows are dicts with at least INBOUND_COLUMNS.

    A row already stored is left as it is, except for its country (`merged_country`)."""
    if rows:
        conn.exec_driver_sql(_insert_inbound_sql(conn), [_inbound_values(r) for r in rows])


# --- a message's statuses, stored together ---------------------------------------------------

_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder().decode


def encode_statuses(facts: Iterable[StatusFact]) -> str:
    """The `message_facts.statuses` value of a set of statuses (distinct, by time then status:
    readable, and one msgspec call per message, which a backfill makes hundreds of thousands
    of times)."""
    rows = sorted({f[1:] for f in facts}, key=itemgetter(1, 0))
    return _encode(rows).decode()


def decode_statuses(message_key: str, stored: str) -> list[StatusFact]:
    return [StatusFact(message_key, *row) for row in _decode(stored)]


MessageRow = tuple[str, str, str, CountedUnit | None]
"""(phone_number_id, message_key, `encode_statuses` of every status known of the message, its
Rule P unit or None): a `message_facts` row."""

_MESSAGE_UNIT = ("unit_ts", "unit_bucket", "unit_category", "unit_pricing_type", "unit_era",
                 "unit_user_key", "unit_country")  # fmt: skip
_NO_UNIT = (None,) * len(_MESSAGE_UNIT)


def _message_unit_values(unit: CountedUnit | None) -> tuple[Any, ...]:
    if unit is None:
        return _NO_UNIT
    era = unit.era.value if unit.era else None
    return (unit.timestamp, unit.bucket.value, unit.category, unit.pricing_type, era,
            unit.user_key, unit.country)  # fmt: skip


def _message_unit(message_key: str, values: Sequence[Any]) -> CountedUnit | None:
    ts, bucket, category, pricing_type, era, user_key, country = values
    if ts is None:
        return None
    return CountedUnit(
        f"P:{message_key}",
        UnitKind.BILLABLE_MESSAGE,
        int(ts),
        Bucket(bucket),
        category,
        pricing_type,
        Era(era) if era else None,
        user_key,
        country,
    )


def write_messages(conn: Connection, rows: Sequence[MessageRow]) -> None:
    """Store messages with their statuses and unit, replacing what was stored.

    The caller passes the union of the stored statuses and the new ones, so a write never loses
    a status, and the unit the rules give for them."""
    if not rows:
        return
    mark = "%s" if conn.dialect.name == "postgresql" else "?"
    columns = ("phone_number_id", "message_key", "statuses", *_MESSAGE_UNIT)
    updates = ", ".join(f"{c} = excluded.{c}" for c in columns[2:])
    conn.exec_driver_sql(
        f"INSERT INTO message_facts ({', '.join(columns)}) "
        f"VALUES ({', '.join([mark] * len(columns))}) "
        f"ON CONFLICT (phone_number_id, message_key) DO UPDATE SET {updates}",
        [
            (number, key, statuses, *_message_unit_values(unit))
            for number, key, statuses, unit in sorted(rows, key=itemgetter(0, 1))
        ],
    )


def write_conversations(
    conn: Connection, messages: Iterable[tuple[str, str, Collection[StatusFact]]]
) -> None:
    """Index the conversation ids that the statuses of (phone_number_id, message_key, statuses)
    carry, in `message_conversations` (Rule C gathers a conversation's members from it)."""
    conversations = sorted({
        (number, f.conversation_id, key)
        for number, key, facts in messages
        for f in facts
        if f.conversation_id is not None
    })  # fmt: skip
    if conversations:
        sql = insert_ignore_sql(
            conn, message_conversations, ("phone_number_id", "conversation_id", "message_key")
        )
        conn.exec_driver_sql(sql, conversations)


# --- identity links ---------------------------------------------------------------------------


def insert_links(
    conn: Connection, links: Iterable[tuple[str, str, str]]
) -> list[tuple[str, str, str]]:
    """Store (phone_number_id, bsuid_key, wa_key) links; returns the ones that are new."""
    rows = [{"phone_number_id": p, "bsuid_key": b, "wa_key": w} for p, b, w in sorted(set(links))]
    if not rows:
        return []
    stmt = (
        insert_for(conn, user_links)
        .on_conflict_do_nothing(
            index_elements=[user_links.c.phone_number_id, user_links.c.bsuid_key]
        )
        .returning(user_links.c.phone_number_id, user_links.c.bsuid_key, user_links.c.wa_key)
    )
    return [(p, b, w) for p, b, w in conn.execute(stmt, rows)]


def linked_phone_keys(conn: Connection, pairs: Iterable[Pair]) -> dict[Pair, str]:
    """{(phone_number_id, bsuid_key): wa_key} for the linked ones among `pairs`."""
    rows = fetch_by_pairs(
        conn,
        "SELECT phone_number_id, bsuid_key, wa_key FROM user_links",
        ("phone_number_id", "bsuid_key"),
        pairs,
    )
    return {(n, b): w for n, b, w in rows}


def relink(conn: Connection, phone_number_id: str, bsuid_key: str, wa_key: str) -> list[str]:
    """From now on facts keyed by a BSUID belong to the linked phone number's customer.

    Returns the keys of the messages whose statuses changed customer: their units (and their
    conversations') are to be recomputed and written, like any message whose facts changed."""
    # Moved row by row through the same insert: the customer may already have a copy of the
    # message at the same time (Meta sent it once with the phone number, once without).
    of_bsuid = (
        inbound_messages.c.phone_number_id == phone_number_id,
        inbound_messages.c.user_key == bsuid_key,
    )
    moved = conn.execute(
        select(inbound_messages.c.wamid, inbound_messages.c.ts, inbound_messages.c.country).where(
            *of_bsuid
        )
    ).all()
    if moved:
        conn.execute(delete(inbound_messages).where(*of_bsuid))
        insert_inbound(
            conn,
            [
                {"phone_number_id": phone_number_id, "wamid": wamid, "user_key": wa_key,
                 "wa_key": wa_key, "bsuid_key": bsuid_key, "ts": ts, "country": country}
                for wamid, ts, country in moved
            ],
        )  # fmt: skip
    # A status row holds the customer inside the message's JSON: rewrite the rows that mention
    # the BSUID key (a hex digest, so a LIKE match can only be that key).
    rows = conn.execute(
        select(message_facts.c.message_key, message_facts.c.statuses).where(
            message_facts.c.phone_number_id == phone_number_id,
            message_facts.c.statuses.like(f"%{bsuid_key}%"),
        )
    ).all()
    if rows:
        mark = "%s" if conn.dialect.name == "postgresql" else "?"
        conn.exec_driver_sql(
            f"UPDATE message_facts SET statuses = {mark} "
            f"WHERE phone_number_id = {mark} AND message_key = {mark}",
            [
                (
                    encode_statuses(
                        f._replace(user_key=wa_key) if f.user_key == bsuid_key else f
                        for f in decode_statuses(key, stored)
                    ),
                    phone_number_id,
                    key,
                )
                for key, stored in rows
            ],
        )
    return [key for key, _ in rows]


# --- reading facts back -------------------------------------------------------------------------


def inbound_facts(conn: Connection, pairs: Iterable[Pair]) -> dict[Pair, InboundTimes]:
    """{(phone_number_id, user_key): {(wamid, timestamp): country}} of the stored inbound
    messages of these customers."""
    result: dict[Pair, InboundTimes] = {}
    rows = fetch_by_pairs(
        conn,
        "SELECT phone_number_id, user_key, wamid, ts, country FROM inbound_messages",
        ("phone_number_id", "user_key"),
        pairs,
    )
    for number, user_key, wamid, ts, country in rows:
        result.setdefault((number, user_key), {})[(wamid, int(ts))] = country
    return result


def messages_of(
    conn: Connection, pairs: Iterable[Pair]
) -> dict[Pair, tuple[list[StatusFact], CountedUnit | None]]:
    """{(phone_number_id, message_key): (statuses, Rule P unit)} of the stored messages among
    `pairs`."""
    rows = fetch_by_pairs(
        conn,
        f"SELECT phone_number_id, message_key, statuses, {', '.join(_MESSAGE_UNIT)} "
        "FROM message_facts",
        ("phone_number_id", "message_key"),
        pairs,
    )
    return {
        (number, key): (decode_statuses(key, stored), _message_unit(key, unit))
        for number, key, stored, *unit in rows
    }


def statuses_of(conn: Connection, pairs: Iterable[Pair]) -> dict[Pair, list[StatusFact]]:
    """{(phone_number_id, message_key): [StatusFact]} of the stored messages among `pairs`."""
    return {pair: statuses for pair, (statuses, _) in messages_of(conn, pairs).items()}


def messages_in_conversations(conn: Connection, pairs: Iterable[Pair]) -> dict[Pair, set[str]]:
    """{(phone_number_id, conversation_id): {message_key}} of the messages any status of which
    carries the id."""
    result: dict[Pair, set[str]] = defaultdict(set)
    rows = fetch_by_pairs(
        conn,
        "SELECT phone_number_id, conversation_id, message_key FROM message_conversations",
        ("phone_number_id", "conversation_id"),
        pairs,
    )
    for number, conversation_id, message_key in rows:
        result[(number, conversation_id)].add(message_key)
    return result


# --- counted units --------------------------------------------------------------------------------

_UNIT_COLUMNS = (
    counted_units.c.unit_key,
    counted_units.c.kind,
    counted_units.c.ts,
    counted_units.c.bucket,
    counted_units.c.category,
    counted_units.c.pricing_type,
    counted_units.c.era,
    counted_units.c.user_key,
    counted_units.c.country,
)


_SELECT_UNITS = (
    f"SELECT phone_number_id, {', '.join(c.name for c in _UNIT_COLUMNS)} FROM counted_units"
)


def _unit(row: Sequence[Any]) -> CountedUnit:
    return CountedUnit(
        unit_key=row[0],
        kind=UnitKind(row[1]),
        timestamp=int(row[2]),
        bucket=Bucket(row[3]),
        category=row[4],
        pricing_type=row[5],
        era=Era(row[6]) if row[6] else None,
        user_key=row[7],
        country=row[8],
    )


def units_by_key(conn: Connection, pairs: Iterable[Pair]) -> dict[Pair, CountedUnit]:
    """{(phone_number_id, unit_key): unit} of the stored units among `pairs`."""
    rows = fetch_by_pairs(conn, _SELECT_UNITS, ("phone_number_id", "unit_key"), pairs)
    return {(row[0], row[1]): _unit(row[1:]) for row in rows}


def session_units_of(conn: Connection, pairs: Iterable[Pair]) -> dict[Pair, CountedUnit]:
    """{(phone_number_id, unit_key): unit} of every incoming-session unit of these
    (phone_number_id, user_key) customers."""
    rows = fetch_by_pairs(
        conn,
        _SELECT_UNITS,
        ("phone_number_id", "user_key"),
        pairs,
        # A literal, not a bound value: SQLite uses a partial index only when the query spells
        # out its condition.
        condition=f"kind = '{UnitKind.INCOMING_SESSION.value}'",
    )
    return {(row[0], row[1]): _unit(row[1:]) for row in rows}


_UNIT_FIELDS = ("phone_number_id", "unit_key", "kind", "ts", "bucket", "category",
                "pricing_type", "era", "user_key", "country")  # fmt: skip


def _unit_row(phone_number_id: str, unit: CountedUnit) -> dict[str, Any]:
    return {
        "phone_number_id": phone_number_id,
        "unit_key": unit.unit_key,
        "kind": unit.kind.value,
        "ts": unit.timestamp,
        "bucket": unit.bucket.value,
        "category": unit.category,
        "pricing_type": unit.pricing_type,
        "era": unit.era.value if unit.era else None,
        "user_key": unit.user_key,
        "country": unit.country,
    }


def write_units(
    conn: Connection, upserts: Sequence[tuple[str, CountedUnit]], deletes: Sequence[Pair]
) -> None:
    """Delete the (phone_number_id, unit_key) units and insert or replace the given ones."""
    for sql, params in pair_statements(
        conn, "DELETE FROM counted_units", ("phone_number_id", "unit_key"), deletes
    ):
        conn.exec_driver_sql(sql, params)
    if upserts:
        # Driver-level executemany, for the same reason as the fact inserts (hot path).
        mark = "%s" if conn.dialect.name == "postgresql" else "?"
        updates = ", ".join(f"{c} = excluded.{c}" for c in _UNIT_FIELDS[2:])
        sql = (
            f"INSERT INTO counted_units ({', '.join(_UNIT_FIELDS)}) "
            f"VALUES ({', '.join([mark] * len(_UNIT_FIELDS))}) "
            f"ON CONFLICT (phone_number_id, unit_key) DO UPDATE SET {updates}"
        )
        conn.exec_driver_sql(
            sql,
            [
                (
                    number,
                    u.unit_key,
                    u.kind.value,
                    u.timestamp,
                    u.bucket.value,
                    u.category,
                    u.pricing_type,
                    u.era.value if u.era else None,
                    u.user_key,
                    u.country,
                )  # fmt: skip
                for number, u in sorted(upserts, key=lambda item: (item[0], item[1].unit_key))
            ],
        )


# --- whole-number reads, for recount ------------------------------------------------------------


def known_numbers(conn: Connection) -> list[str]:
    """Every phone_number_id with facts, units or a registration."""
    query = union(
        select(inbound_messages.c.phone_number_id),
        select(message_facts.c.phone_number_id),
        select(counted_units.c.phone_number_id),
        select(business_numbers.c.phone_number_id),
    )
    return sorted(str(p) for p in conn.execute(query).scalars())


def all_inbound(conn: Connection, phone_number_id: str) -> list[tuple[str, int, str | None]]:
    rows = conn.execute(
        select(
            inbound_messages.c.user_key, inbound_messages.c.ts, inbound_messages.c.country
        ).where(inbound_messages.c.phone_number_id == phone_number_id)
    )
    return [(u, int(t), c) for u, t, c in rows]


def all_statuses(conn: Connection, phone_number_id: str) -> list[StatusFact]:
    rows = conn.execute(
        select(message_facts.c.message_key, message_facts.c.statuses).where(
            message_facts.c.phone_number_id == phone_number_id
        )
    )
    return [fact for key, stored in rows for fact in decode_statuses(key, stored)]


def all_units(conn: Connection, phone_number_id: str) -> dict[str, CountedUnit]:
    """{unit_key: unit} of every unit of the number, message units included."""
    rows = conn.execute(
        select(*_UNIT_COLUMNS).where(counted_units.c.phone_number_id == phone_number_id)
    )
    units = {row[0]: _unit(row) for row in rows}
    messages = conn.execute(
        select(message_facts.c.message_key, *(message_facts.c[c] for c in _MESSAGE_UNIT)).where(
            message_facts.c.phone_number_id == phone_number_id,
            message_facts.c.unit_ts.is_not(None),
        )
    )
    for key, *values in messages:
        unit = _message_unit(key, values)
        if unit is not None:
            units[unit.unit_key] = unit
    return units


def replace_all_units(
    conn: Connection, phone_number_id: str, units: Mapping[str, CountedUnit]
) -> None:
    """Make the number's units exactly `units`: message units in their messages' rows (every
    message unit comes from a stored message), the others in `counted_units`."""
    conn.execute(delete(counted_units).where(counted_units.c.phone_number_id == phone_number_id))
    others = [_unit_row(phone_number_id, u) for _, u in sorted(units.items())
              if u.kind is not UnitKind.BILLABLE_MESSAGE]  # fmt: skip
    if others:
        conn.execute(counted_units.insert(), others)
    conn.execute(
        update(message_facts)
        .where(
            message_facts.c.phone_number_id == phone_number_id,
            message_facts.c.unit_ts.is_not(None),
        )
        .values(dict.fromkeys(_MESSAGE_UNIT))
    )
    mark = "%s" if conn.dialect.name == "postgresql" else "?"
    assignments = ", ".join(f"{c} = {mark}" for c in _MESSAGE_UNIT)
    messages = [
        (*_message_unit_values(u), phone_number_id, u.unit_key.removeprefix("P:"))
        for _, u in sorted(units.items())
        if u.kind is UnitKind.BILLABLE_MESSAGE
    ]
    if messages:
        conn.exec_driver_sql(
            f"UPDATE message_facts SET {assignments} "
            f"WHERE phone_number_id = {mark} AND message_key = {mark}",
            messages,
        )
