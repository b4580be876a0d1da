"""The statistics the compatible API answers, read from the monthly rollups."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Connection

from wastats.counting.calendar import load_zone, month_of
from wastats.counting.model import Bucket
from wastats.store import counts as counts_repo
from wastats.store import numbers as numbers_repo
from wastats.store.accounts import AccountRow
from wastats.store.numbers import NumberRow


@dataclass(frozen=True, slots=True)
class MonthCounts:
    month: int  # YYYYMM
    marketing: int
    service: int
    incoming: int

    @property
    def total(self) -> int:
        return self.marketing + self.service + self.incoming


def _counts(month: int, buckets: dict[str, int]) -> MonthCounts:
    return MonthCounts(
        month=month,
        marketing=buckets.get(Bucket.MARKETING, 0),
        service=buckets.get(Bucket.SERVICE, 0),
        incoming=buckets.get(Bucket.INCOMING, 0),
    )


def monthly_statistics(
    conn: Connection,
    account: AccountRow,
    *,
    number: NumberRow | None,
    first_month: int | None,
    last_month: int | None,
) -> list[MonthCounts]:
    """Months with at least one counted unit, newest first."""
    totals = counts_repo.monthly_bucket_totals(
        conn,
        account_id=account.id,
        phone_number_id=number.phone_number_id if number else None,
        first_month=first_month,
        last_month=last_month,
    )
    months = [_counts(month, buckets) for month, buckets in totals.items()]
    return sorted((m for m in months if m.total), key=lambda m: m.month, reverse=True)


def account_numbers(conn: Connection, account: AccountRow) -> list[NumberRow]:
    """The account's numbers, in registration order."""
    return numbers_repo.list_numbers(conn, account.id)


def count_numbers(conn: Connection, account: AccountRow) -> int:
    return numbers_repo.count_numbers(conn, account.id)


def number_of_account(conn: Connection, account: AccountRow, whatsapp: str) -> NumberRow | None:
    """The account's number with these digits; None for a number of another account too,
    so a caller can't tell the two apart."""
    row = numbers_repo.get_number_by_whatsapp(conn, whatsapp)
    return row if row is not None and row.account_id == account.id else None


def this_month(account: AccountRow, now: int) -> int:
    return month_of(now, load_zone(account.timezone))


def numbers_this_month(
    conn: Connection, account: AccountRow, now: int
) -> list[tuple[NumberRow, MonthCounts]]:
    month = this_month(account, now)
    per_number = counts_repo.number_bucket_totals(conn, account_id=account.id, month=month)
    return [
        (number, _counts(month, per_number.get(number.phone_number_id, {})))
        for number in account_numbers(conn, account)
    ]
