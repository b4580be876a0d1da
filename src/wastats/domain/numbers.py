"""Business numbers: registering one makes its counts (including past ones) visible."""

from __future__ import annotations

import re

from sqlalchemy import Connection

from wastats.counting.calendar import load_zone
from wastats.domain.accounts import check_name, get_account
from wastats.domain.errors import Conflict, InvalidInput, NotFound
from wastats.domain.phone import normalise_whatsapp
from wastats.store import counts as counts_repo
from wastats.store import locks as locks_repo
from wastats.store import numbers as repo
from wastats.store import units as units_repo
from wastats.store.numbers import NumberRow

_META_ID = re.compile(r"[0-9A-Za-z_\-.]{1,64}")


def add_number(
    conn: Connection,
    *,
    client_id: str,
    whatsapp: str,
    phone_number_id: str,
    waba_id: str | None,
    display_name: str | None,
    business_name: str | None,
    coexistence: bool,
    now: int,
) -> NumberRow:
    account = get_account(conn, client_id)
    digits = normalise_whatsapp(whatsapp)
    if digits is None:
        raise InvalidInput(f"{whatsapp!r} is not a phone number: expected 8 to 15 digits")
    check_name("display name", display_name)
    check_name("business name", business_name)
    for label, value in (("phone-number id", phone_number_id), ("WABA id", waba_id)):
        if value is not None and not _META_ID.fullmatch(value):
            raise InvalidInput(f"{value!r} is not a valid {label}")
    existing = repo.find_conflicting(conn, phone_number_id=phone_number_id, whatsapp=digits)
    if existing is not None:
        what = (
            f"phone-number id {phone_number_id}"
            if existing.phone_number_id == phone_number_id
            else f"number {digits}"
        )
        owner = "this" if existing.account_id == account.id else "another"
        raise Conflict(f"{what} is already registered (to {owner} account)")
    number = NumberRow(
        phone_number_id=phone_number_id,
        account_id=account.id,
        whatsapp=digits,
        waba_id=waba_id,
        display_name=display_name,
        business_name=business_name,
        coexistence=coexistence,
        created_at=now,
    )
    # No batch for this number may be counted meanwhile (other numbers' batches may).
    locks_repo.hold_counting_locks(conn, [phone_number_id])
    repo.insert_number(conn, number)
    # Events that arrived before the number was registered were kept and counted into units;
    # building its rollups now makes all of that history visible at once.
    units = units_repo.all_of(conn, phone_number_id).values()
    rollups = counts_repo.rollups_of(phone_number_id, units, load_zone(account.timezone))
    counts_repo.replace_rollups(conn, phone_number_id, rollups)
    return number


def find_number(conn: Connection, number: str) -> NumberRow:
    """A registered number by its digits (any punctuation) or by its phone-number id."""
    row = repo.get_number(conn, number)
    if row is None:
        digits = normalise_whatsapp(number)
        row = repo.get_number_by_whatsapp(conn, digits) if digits else None
    if row is None:
        raise NotFound(f"no registered number {number!r}")
    return row


def remove_number(conn: Connection, number: str) -> NumberRow:
    """Unregister a number. Its facts stay (as for any unregistered number), so adding it
    again, to this or another account, brings its counts back."""
    row = find_number(conn, number)
    locks_repo.hold_counting_locks(conn, [row.phone_number_id])
    counts_repo.replace_rollups(conn, row.phone_number_id, {})  # the account's sums follow
    repo.delete_number(conn, row.phone_number_id)
    return row


def list_numbers(conn: Connection, client_id: str | None = None) -> list[NumberRow]:
    account_id = get_account(conn, client_id).id if client_id else None
    return repo.list_numbers(conn, account_id)
