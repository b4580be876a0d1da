"""Accounts (tenants) and their client credentials."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from zoneinfo import ZoneInfo

from sqlalchemy import Connection

from wastats.counting import calendar
from wastats.domain.errors import InvalidInput, NotFound
from wastats.store import accounts as repo
from wastats.store import numbers as numbers_repo
from wastats.store.accounts import AccountRow


@dataclass(frozen=True, slots=True)
class NewCredentials:
    """Shown once: only the hash of the secret is stored."""

    client_id: str
    client_secret: str
    timezone: str


def hash_secret(secret: str) -> str:
    """The stored form of a client secret or an access token (the one hash of both).

    Both are 256 random bits: a slow password hash would add nothing but a denial-of-service
    lever, so a plain SHA-256 is the right tool here, and lookups by hash need no clear copy."""
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def load_zone(name: str) -> ZoneInfo:
    """A zone named by a user (a new account's, a query's `tz`): the calendar's zone, or
    InvalidInput with a message naming it. Stored zones are read with `calendar.load_zone`."""
    try:
        return calendar.load_zone(name)
    except calendar.UnknownZone as exc:
        raise InvalidInput(str(exc)) from None


MAX_NAME = 200
"""Longest account, display or business name, in characters (the columns' size)."""


def check_name(label: str, value: str | None) -> None:
    """InvalidInput, naming the limit, for a name its column cannot hold (PostgreSQL refused it
    with a traceback; SQLite kept it whole)."""
    if value is not None and len(value) > MAX_NAME:
        raise InvalidInput(
            f"the {label} is {len(value)} characters long; at most {MAX_NAME} are allowed"
        )
    if value is not None and "\x00" in value:
        raise InvalidInput(f"the {label} must not contain a NUL character")


def create_account(conn: Connection, *, name: str, timezone: str, now: int) -> NewCredentials:
    name = name.strip()
    if not name:
        raise InvalidInput("the account name must not be empty")
    check_name("account name", name)
    load_zone(timezone)
    client_id = secrets.token_hex(12)
    client_secret = secrets.token_urlsafe(32)
    repo.insert_account(
        conn,
        client_id=client_id,
        secret_hash=hash_secret(client_secret),
        name=name,
        timezone=timezone,
        now=now,
    )
    return NewCredentials(client_id=client_id, client_secret=client_secret, timezone=timezone)


def get_account(conn: Connection, client_id: str) -> AccountRow:
    account = repo.get_account_by_client_id(conn, client_id)
    if account is None:
        raise NotFound(f"no account with client id {client_id!r}")
    return account


def list_accounts(conn: Connection) -> list[tuple[AccountRow, int]]:
    return repo.list_accounts(conn)


def rotate_secret(conn: Connection, client_id: str) -> NewCredentials:
    """A new secret; the old one stops working and every token issued with it is revoked."""
    account = get_account(conn, client_id)
    client_secret = secrets.token_urlsafe(32)
    repo.update_secret_hash(conn, account.id, hash_secret(client_secret))
    repo.delete_tokens_of(conn, account.id)
    return NewCredentials(
        client_id=client_id, client_secret=client_secret, timezone=account.timezone
    )


def delete_account(conn: Connection, client_id: str, *, now: int) -> AccountRow:
    account = get_account(conn, client_id)
    # Its numbers go with it (the schema cascades): remember each as released by it, or adding
    # one to another account later would hand that account this one's history.
    for number in numbers_repo.list_numbers(conn, account.id):
        numbers_repo.record_release(conn, number, now)
    repo.delete_account(conn, account.id)
    return account
