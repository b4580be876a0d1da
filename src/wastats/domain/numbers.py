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
    with_history: bool = False,
) -> NumberRow:
    """Register a number to an account. If another account last had it, the new owner counts
    only what arrives from now on, unless `with_history` (the operator's choice) moves the
    number's whole history along (docs/counting.md, "Moving a number")."""
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
        counts_from=None if with_history else _counts_from(conn, phone_number_id, account.id, now),
    )
    # No batch for this number may be counted meanwhile (other numbers' batches may).
    locks_repo.hold_counting_locks(conn, [phone_number_id])
    repo.insert_number(conn, number)
    # Events that arrived before the number was registered were kept and counted into units;
    # building its rollups now makes all of that history visible at once (from `counts_from`).
    units = units_repo.all_of(conn, phone_number_id).values()
    zone = load_zone(account.timezone)
    rollups = counts_repo.rollups_of(phone_number_id, units, zone, number.counts_from)
    counts_repo.replace_rollups(conn, phone_number_id, rollups)
    return number


def _counts_from(conn: Connection, phone_number_id: str, account_id: int, now: int) -> int | None:
    """Where the account's history of the number starts by default.

    Never seen removed: None, all of it (a new number's backlog, received before it was
    registered, is its owner's). Last removed by this same account: what that registration
    had, so removing and adding back changes nothing. Last removed by another account (or one
    since deleted): now, the registration time. Not the removal time: the service cannot know
    when the number changed hands at Meta, and webhooks between removal and registration may
    still be the old owner's; a tenant must never see another's data.
    """
    release = repo.last_release(conn, phone_number_id)
    if release is None:
        return None
    if release.account_id == account_id:
        return release.counts_from
    return now


def find_number(conn: Connection, number: str) -> NumberRow:
    """A registered number by its digits (any punctuation) or by its phone-number id."""
    row = repo.get_number(conn, number)
    if row is None:
        digits = normalise_whatsapp(number)
        row = repo.get_number_by_whatsapp(conn, digits) if digits else None
    if row is None:
        raise NotFound(f"no registered number {number!r}")
    return row


def remove_number(conn: Connection, number: str, *, now: int) -> NumberRow:
    """Unregister a number. Its facts stay (as for any unregistered number), so adding it
    again to this account brings its counts back; to another account, only what arrives from
    then on, unless the operator moves its history along (`add_number`'s `with_history`)."""
    row = find_number(conn, number)
    locks_repo.hold_counting_locks(conn, [row.phone_number_id])
    counts_repo.replace_rollups(conn, row.phone_number_id, {})  # the account's sums follow
    repo.delete_number(conn, row.phone_number_id)
    repo.record_release(conn, row, now)
    return row


def list_numbers(conn: Connection, client_id: str | None = None) -> list[NumberRow]:
    account_id = get_account(conn, client_id).id if client_id else None
    return repo.list_numbers(conn, account_id)
