"""Repository: the facts the counting rules need.

Facts are insert-only with natural unique keys, so a duplicate webhook is a no-op
(`ON CONFLICT DO NOTHING`, or a commutative merge of what a copy adds). The units the rules count
from them are kept by `wastats.store.units`.
Every query is scoped by `phone_number_id` first, which is also the leading column of every key.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Collection, Iterable, Sequence
from operator import itemgetter
from typing import NamedTuple

import msgspec
from sqlalchemy import Connection, delete, select, union

from wastats.counting.model import CountedUnit, StatusFact
from wastats.store import units as units_repo
from wastats.store.schema import (
    business_numbers,
    counted_units,
    inbound_messages,
    message_conversations,
    message_facts,
    user_links,
)
from wastats.store.sql import Pair as Pair  # re-exported: the pipeline's keys, without store.sql
from wastats.store.sql import fetch_by_pairs, insert_for, insert_ignore_sql, placeholder


class InboundFact(NamedTuple):
    """One inbound message (customer to business) as stored: a row of `inbound_messages`.

    A named tuple, stored as it is (its fields are the table's columns, in order): ingestion
    builds one per inbound message."""

    phone_number_id: str
    wamid: str
    """Keyed hash of Meta's message id."""
    user_key: str | None
    """The customer: `wa_key`, else `bsuid_key` (or the phone key a BSUID is linked to)."""
    wa_key: str | None
    """Keyed hash of the customer's phone number, if it came with one."""
    bsuid_key: str | None
    """Keyed hash of the customer's business-scoped user id, if it came with one."""
    timestamp: int
    country: str | None


INBOUND_COLUMNS = tuple("ts" if f == "timestamp" else f for f in InboundFact._fields)
"""The columns of `inbound_messages` an `InboundFact` fills, in its fields' order (the table
names the time `ts`)."""

STATUS_FIELDS = StatusFact._fields[1:]
"""A status as stored: `message_facts.statuses` is a JSON array of rows, each these fields of a
`StatusFact` in this order (the message key is the row's own). Positional, so a new field of
`StatusFact` goes at its end, with a default (rows stored before it decode with the default);
`tests/test_store_units.py` pins the stored layout."""

_row_order = itemgetter(STATUS_FIELDS.index("timestamp"), STATUS_FIELDS.index("status"))


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
    mark = placeholder(conn)
    keys = ", ".join(c.name for c in inbound_messages.primary_key.columns)
    return (
        f"INSERT INTO inbound_messages ({', '.join(INBOUND_COLUMNS)}) "
        f"VALUES ({', '.join([mark] * len(INBOUND_COLUMNS))}) ON CONFLICT ({keys}) "
        "DO UPDATE SET country = excluded.country WHERE excluded.country IS NOT NULL AND "
        "(inbound_messages.country IS NULL OR excluded.country > inbound_messages.country)"
    )


def insert_inbound(conn: Connection, facts: Sequence[InboundFact]) -> None:
    """Insert inbound-message facts. A fact already stored is left as it is, except for its
    country (`merged_country`)."""
    if facts:
        conn.exec_driver_sql(_insert_inbound_sql(conn), list(facts))


# --- a message's statuses, stored together ---------------------------------------------------

_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder().decode


def encode_statuses(facts: Iterable[StatusFact]) -> str:
    """The `message_facts.statuses` value of a set of statuses (distinct, by time then status:
    readable, and one msgspec call per message, which a backfill makes hundreds of thousands
    of times)."""
    rows = sorted({f[1:] for f in facts}, key=_row_order)
    return _encode(rows).decode()


def decode_statuses(message_key: str, stored: str) -> list[StatusFact]:
    return [StatusFact(message_key, *row) for row in _decode(stored)]


MessageRow = tuple[str, str, str, CountedUnit | None]
"""(phone_number_id, message_key, `encode_statuses` of every status known of the message, its
Rule P unit or None): a `message_facts` row."""


def write_messages(conn: Connection, rows: Sequence[MessageRow]) -> None:
    """Store messages with their statuses and unit, replacing what was stored.

    The caller passes the union of the stored statuses and the new ones, so a write never loses
    a status, and the unit the rules give for them."""
    if not rows:
        return
    columns = ("phone_number_id", "message_key", "statuses", *units_repo.MESSAGE_UNIT_COLUMNS)
    updates = ", ".join(f"{c} = excluded.{c}" for c in columns[2:])
    conn.exec_driver_sql(
        f"INSERT INTO message_facts ({', '.join(columns)}) "
        f"VALUES ({', '.join([placeholder(conn)] * len(columns))}) "
        f"ON CONFLICT (phone_number_id, message_key) DO UPDATE SET {updates}",
        [
            (number, key, statuses, *units_repo.message_unit_values(unit))
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
                InboundFact(phone_number_id, wamid, wa_key, wa_key, bsuid_key, ts, country)
                for wamid, ts, country in moved
            ],
        )
    # A status row holds the customer inside the message's JSON: rewrite the rows that mention
    # the BSUID key (a hex digest, so a LIKE match can only be that key).
    rows = conn.execute(
        select(message_facts.c.message_key, message_facts.c.statuses).where(
            message_facts.c.phone_number_id == phone_number_id,
            message_facts.c.statuses.like(f"%{bsuid_key}%"),
        )
    ).all()
    if rows:
        mark = placeholder(conn)
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
        "SELECT phone_number_id, message_key, statuses, "
        f"{', '.join(units_repo.MESSAGE_UNIT_COLUMNS)} "
        "FROM message_facts",
        ("phone_number_id", "message_key"),
        pairs,
    )
    return {
        (number, key): (decode_statuses(key, stored), units_repo.message_unit(key, unit))
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
