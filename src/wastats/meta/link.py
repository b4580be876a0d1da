"""Linking a WABA to an account: its phone numbers from the Graph API become registered numbers
(those not registered yet), and the WABA's sync state is created so the first sync reads Meta's
whole window."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Connection

from wastats.domain import numbers as numbers_service
from wastats.domain.accounts import get_account
from wastats.domain.errors import Conflict, InvalidInput
from wastats.domain.phone import normalise_whatsapp
from wastats.meta.graph import PhoneNumber
from wastats.store import meta as repo
from wastats.store import numbers as numbers_repo


@dataclass(frozen=True, slots=True)
class LinkedNumber:
    whatsapp: str
    phone_number_id: str
    verified_name: str | None
    action: str
    """`registered`, `already registered`, or why it was skipped."""


def link_waba(
    conn: Connection, *, client_id: str, waba_id: str, numbers: list[PhoneNumber], now: int
) -> list[LinkedNumber]:
    """Register the WABA's numbers that are not registered yet and link the WABA to the account.
    Numbers registered to another account are left alone (and said so)."""
    account = get_account(conn, client_id)
    out: list[LinkedNumber] = []
    for n in numbers:
        digits = normalise_whatsapp(n.display_phone_number) or ""
        existing = numbers_repo.find_conflicting(
            conn, phone_number_id=n.phone_number_id, whatsapp=digits or "-"
        )
        if existing is not None and existing.account_id == account.id:
            action = "already registered"
            if existing.waba_id is None:
                # Registered by hand without its WABA: record it, or the sync's data would
                # never be matched to the number.
                repo.set_waba_of_number(conn, existing.phone_number_id, waba_id)
                action = "already registered (WABA id recorded)"
        elif existing is not None:
            action = "skipped: registered to another account"
        elif not digits:
            action = f"skipped: {n.display_phone_number!r} is not a phone number"
        else:
            try:
                numbers_service.add_number(
                    conn,
                    client_id=client_id,
                    whatsapp=digits,
                    phone_number_id=n.phone_number_id,
                    waba_id=waba_id,
                    display_name=n.verified_name,
                    business_name=None,
                    coexistence=False,
                    now=now,
                )
                action = "registered"
            except (Conflict, InvalidInput) as exc:
                action = f"skipped: {exc}"
        out.append(LinkedNumber(digits, n.phone_number_id, n.verified_name, action))
    repo.ensure_state(conn, waba_id, account.id, now)
    return out
