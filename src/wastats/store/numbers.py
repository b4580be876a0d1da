"""Repository: registered business numbers."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from sqlalchemy import Connection, delete, func, select

from wastats.store.schema import accounts, business_numbers, released_numbers
from wastats.store.sql import chunks, insert_for


@dataclass(frozen=True, slots=True)
class NumberRow:
    phone_number_id: str
    account_id: int
    whatsapp: str
    waba_id: str | None
    display_name: str | None
    business_name: str | None
    coexistence: bool
    created_at: int
    counts_from: int | None = None
    """Units older than this (Unix seconds) are not this account's: the number came from
    another account then. None: all of the number's history is the account's."""


_COLUMNS = (
    business_numbers.c.phone_number_id,
    business_numbers.c.account_id,
    business_numbers.c.whatsapp,
    business_numbers.c.waba_id,
    business_numbers.c.display_name,
    business_numbers.c.business_name,
    business_numbers.c.coexistence,
    business_numbers.c.created_at,
    business_numbers.c.counts_from,
)


def _number(row: object) -> NumberRow:
    m = row._mapping  # type: ignore[attr-defined]
    return NumberRow(
        phone_number_id=m["phone_number_id"],
        account_id=m["account_id"],
        whatsapp=m["whatsapp"],
        waba_id=m["waba_id"],
        display_name=m["display_name"],
        business_name=m["business_name"],
        coexistence=bool(m["coexistence"]),
        created_at=m["created_at"],
        counts_from=m["counts_from"],
    )


def insert_number(conn: Connection, number: NumberRow) -> None:
    conn.execute(
        business_numbers.insert().values(
            phone_number_id=number.phone_number_id,
            account_id=number.account_id,
            whatsapp=number.whatsapp,
            waba_id=number.waba_id,
            display_name=number.display_name,
            business_name=number.business_name,
            coexistence=number.coexistence,
            created_at=number.created_at,
            counts_from=number.counts_from,
        )
    )


def find_conflicting(conn: Connection, *, phone_number_id: str, whatsapp: str) -> NumberRow | None:
    row = conn.execute(
        select(*_COLUMNS).where(
            (business_numbers.c.phone_number_id == phone_number_id)
            | (business_numbers.c.whatsapp == whatsapp)
        )
    ).first()
    return _number(row) if row else None


def list_numbers(conn: Connection, account_id: int | None = None) -> list[NumberRow]:
    query = select(*_COLUMNS).order_by(
        business_numbers.c.account_id, business_numbers.c.created_at, business_numbers.c.whatsapp
    )
    if account_id is not None:
        query = query.where(business_numbers.c.account_id == account_id)
    return [_number(row) for row in conn.execute(query)]


def count_numbers(conn: Connection, account_id: int) -> int:
    query = select(func.count()).where(business_numbers.c.account_id == account_id)
    return int(conn.execute(query).scalar_one())


def number_refs(conn: Connection, account_id: int) -> list[tuple[str, str, int | None]]:
    """(phone_number_id, whatsapp, counts_from) of the account's numbers, in registration
    order: what most reads need, without building a full row per number (accounts have
    thousands)."""
    b = business_numbers.c
    rows = conn.execute(
        select(b.phone_number_id, b.whatsapp, b.counts_from)
        .where(b.account_id == account_id)
        .order_by(b.created_at, b.whatsapp)
    )
    return [(p, w, None if c is None else int(c)) for p, w, c in rows]


def get_number(conn: Connection, phone_number_id: str) -> NumberRow | None:
    row = conn.execute(
        select(*_COLUMNS).where(business_numbers.c.phone_number_id == phone_number_id)
    ).first()
    return _number(row) if row else None


def get_number_by_whatsapp(conn: Connection, whatsapp: str) -> NumberRow | None:
    row = conn.execute(select(*_COLUMNS).where(business_numbers.c.whatsapp == whatsapp)).first()
    return _number(row) if row else None


def delete_number(conn: Connection, phone_number_id: str) -> None:
    conn.execute(
        delete(business_numbers).where(business_numbers.c.phone_number_id == phone_number_id)
    )


@dataclass(frozen=True, slots=True)
class CountingScope:
    """What counting a registered number's units into rollups needs: its account's time zone
    and where its history starts for that account (`NumberRow.counts_from`)."""

    timezone: str
    counts_from: int | None


def scopes_of(conn: Connection, phone_number_ids: Iterable[str]) -> dict[str, CountingScope]:
    """The counting scope of each registered number among `phone_number_ids`: one query per
    chunk of numbers, so the pipeline looks it up once per batch, never per unit."""
    ids = sorted(set(phone_number_ids))
    scopes: dict[str, CountingScope] = {}
    b = business_numbers.c
    for part in chunks(ids):
        rows = conn.execute(
            select(b.phone_number_id, accounts.c.timezone, b.counts_from)
            .join(accounts, accounts.c.id == b.account_id)
            .where(b.phone_number_id.in_(part))
        )
        scopes.update(
            {
                number: CountingScope(zone, None if since is None else int(since))
                for number, zone, since in rows
            }
        )
    return scopes


def zones_of(conn: Connection, phone_number_ids: Iterable[str]) -> dict[str, str]:
    """The account time zone of each registered number among `phone_number_ids`."""
    return {n: scope.timezone for n, scope in scopes_of(conn, phone_number_ids).items()}


# --- who last released a number ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Release:
    """The last removal of a number: by which account (None if since deleted), when, and the
    `counts_from` its registration had."""

    account_id: int | None
    released_at: int
    counts_from: int | None


def record_release(conn: Connection, number: NumberRow, now: int) -> None:
    values = {"account_id": number.account_id, "released_at": now,
              "counts_from": number.counts_from}  # fmt: skip
    stmt = insert_for(conn, released_numbers).values(
        phone_number_id=number.phone_number_id, **values
    )
    conn.execute(stmt.on_conflict_do_update(index_elements=["phone_number_id"], set_=values))


def last_release(conn: Connection, phone_number_id: str) -> Release | None:
    r = released_numbers.c
    row = conn.execute(
        select(r.account_id, r.released_at, r.counts_from).where(
            r.phone_number_id == phone_number_id
        )
    ).first()
    return Release(row[0], int(row[1]), row[2]) if row else None
