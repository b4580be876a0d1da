"""Repository: registered business numbers."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from sqlalchemy import Connection, delete, func, select

from wastats.store.schema import accounts, business_numbers
from wastats.store.sql import chunks


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


_COLUMNS = (
    business_numbers.c.phone_number_id,
    business_numbers.c.account_id,
    business_numbers.c.whatsapp,
    business_numbers.c.waba_id,
    business_numbers.c.display_name,
    business_numbers.c.business_name,
    business_numbers.c.coexistence,
    business_numbers.c.created_at,
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


def number_refs(conn: Connection, account_id: int) -> list[tuple[str, str]]:
    """(phone_number_id, whatsapp) of the account's numbers, in registration order: what most
    reads need, without building a full row per number (accounts have thousands)."""
    rows = conn.execute(
        select(business_numbers.c.phone_number_id, business_numbers.c.whatsapp)
        .where(business_numbers.c.account_id == account_id)
        .order_by(business_numbers.c.created_at, business_numbers.c.whatsapp)
    )
    return [(p, w) for p, w in rows]


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


def zones_of(conn: Connection, phone_number_ids: Iterable[str]) -> dict[str, str]:
    """The account time zone of each registered number among `phone_number_ids`."""
    ids = sorted(set(phone_number_ids))
    zones: dict[str, str] = {}
    for part in chunks(ids):
        rows = conn.execute(
            select(business_numbers.c.phone_number_id, accounts.c.timezone)
            .join(accounts, accounts.c.id == business_numbers.c.account_id)
            .where(business_numbers.c.phone_number_id.in_(part))
        )
        zones.update({row.phone_number_id: row.timezone for row in rows})
    return zones
