"""Repository: accounts, their access tokens, and the lockout of the token endpoint."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import Connection, case, delete, func, select, update

from wastats.store.schema import access_tokens, accounts, business_numbers, login_failures
from wastats.store.sql import insert_for


@dataclass(frozen=True, slots=True)
class AccountRow:
    id: int
    client_id: str
    secret_hash: str
    name: str
    timezone: str
    created_at: int


def _account(row: object) -> AccountRow:
    m = row._mapping  # type: ignore[attr-defined]
    return AccountRow(
        id=m["id"],
        client_id=m["client_id"],
        secret_hash=m["secret_hash"],
        name=m["name"],
        timezone=m["timezone"],
        created_at=m["created_at"],
    )


_ACCOUNT_COLUMNS = (
    accounts.c.id,
    accounts.c.client_id,
    accounts.c.secret_hash,
    accounts.c.name,
    accounts.c.timezone,
    accounts.c.created_at,
)


def insert_account(
    conn: Connection, *, client_id: str, secret_hash: str, name: str, timezone: str, now: int
) -> int:
    result = conn.execute(
        accounts.insert()
        .values(
            client_id=client_id,
            secret_hash=secret_hash,
            name=name,
            timezone=timezone,
            created_at=now,
        )
        .returning(accounts.c.id)
    )
    return int(result.scalar_one())


def get_account_by_client_id(conn: Connection, client_id: str) -> AccountRow | None:
    row = conn.execute(select(*_ACCOUNT_COLUMNS).where(accounts.c.client_id == client_id)).first()
    return _account(row) if row else None


def list_accounts(conn: Connection) -> list[tuple[AccountRow, int]]:
    """Every account with how many numbers it has, oldest first."""
    numbers = (
        select(func.count()).where(business_numbers.c.account_id == accounts.c.id).scalar_subquery()
    )
    rows = conn.execute(select(*_ACCOUNT_COLUMNS, numbers.label("numbers")).order_by(accounts.c.id))
    return [(_account(row), int(row.numbers)) for row in rows]


def update_secret_hash(conn: Connection, account_id: int, secret_hash: str) -> None:
    conn.execute(
        update(accounts).where(accounts.c.id == account_id).values(secret_hash=secret_hash)
    )


def delete_account(conn: Connection, account_id: int) -> None:
    # Tokens, numbers and rollups go with it (ON DELETE CASCADE); facts and units stay keyed by
    # phone_number_id, exactly as for a number nobody has registered.
    conn.execute(delete(access_tokens).where(access_tokens.c.account_id == account_id))
    conn.execute(delete(accounts).where(accounts.c.id == account_id))


# --- access tokens ------------------------------------------------------------------------------


def insert_token(
    conn: Connection, *, token_hash: str, account_id: int, now: int, expires_at: int
) -> None:
    conn.execute(
        access_tokens.insert().values(
            token_hash=token_hash, account_id=account_id, created_at=now, expires_at=expires_at
        )
    )


def account_for_token(conn: Connection, token_hash: str, now: int) -> AccountRow | None:
    """The account a live token belongs to. The lookup is by the SHA-256 of the token, so a
    timing difference reveals nothing about any stored token."""
    row = conn.execute(
        select(*_ACCOUNT_COLUMNS)
        .join(access_tokens, access_tokens.c.account_id == accounts.c.id)
        .where(access_tokens.c.token_hash == token_hash, access_tokens.c.expires_at > now)
    ).first()
    return _account(row) if row else None


def delete_token(conn: Connection, token_hash: str) -> bool:
    """Revoke one token (a dashboard logout); True if it existed."""
    return bool(
        conn.execute(delete(access_tokens).where(access_tokens.c.token_hash == token_hash)).rowcount
    )


def delete_expired_tokens(conn: Connection, now: int) -> int:
    return conn.execute(delete(access_tokens).where(access_tokens.c.expires_at <= now)).rowcount


def delete_tokens_of(conn: Connection, account_id: int) -> int:
    return conn.execute(
        delete(access_tokens).where(access_tokens.c.account_id == account_id)
    ).rowcount


# --- lockout ------------------------------------------------------------------------------------

ANY_CLIENT = ""
"""`client_id` of the row that counts every failure from an address."""


@dataclass(frozen=True, slots=True)
class FailureRow:
    address: str
    client_id: str
    failures: int
    window_start: int
    locked_until: int


def locked_until(conn: Connection, address: str, client_ids: Sequence[str]) -> tuple[str, int]:
    """The latest lock on `address` for any of `client_ids`: (client id, until), or ('', 0)."""
    row = conn.execute(
        select(login_failures.c.client_id, login_failures.c.locked_until)
        .where(login_failures.c.address == address, login_failures.c.client_id.in_(client_ids))
        .order_by(login_failures.c.locked_until.desc())
        .limit(1)
    ).first()
    return (str(row[0]), int(row[1])) if row else (ANY_CLIENT, 0)


def record_failure(
    conn: Connection,
    *,
    address: str,
    client_id: str,
    now: int,
    window: int,
    threshold: int,
    lock_seconds: int,
) -> bool:
    """Count one failed attempt in the (address, client id) row; returns True if that attempt
    locks it.

    One atomic upsert, so concurrent failures from several API processes all count.
    """
    stmt = insert_for(conn, login_failures).values(
        address=address, client_id=client_id, failures=1, window_start=now, locked_until=0
    )
    stale = login_failures.c.window_start <= now - window
    stmt = stmt.on_conflict_do_update(
        index_elements=[login_failures.c.address, login_failures.c.client_id],
        set_={
            "failures": case((stale, 1), else_=login_failures.c.failures + 1),
            "window_start": case((stale, now), else_=login_failures.c.window_start),
        },
    ).returning(login_failures.c.failures)
    failures = int(conn.execute(stmt).scalar_one())
    if failures < threshold:
        return False
    # Locked: the count starts afresh when the lock ends.
    conn.execute(
        update(login_failures)
        .where(login_failures.c.address == address, login_failures.c.client_id == client_id)
        .values(locked_until=now + lock_seconds, failures=0, window_start=now + lock_seconds)
    )
    return True


def clear_failures(conn: Connection, address: str, client_id: str) -> None:
    """Forget one (address, client id) row: after that client's own successful sign-in. The
    address-wide row is never cleared by a success (one tenant's success must not reset the
    count of guesses at another's secret)."""
    conn.execute(
        delete(login_failures).where(
            login_failures.c.address == address, login_failures.c.client_id == client_id
        )
    )


def expire_failures(conn: Connection, *, now: int, window: int) -> int:
    """Drop rows whose window has passed and whose lock (if any) has ended."""
    result = conn.execute(
        delete(login_failures).where(
            login_failures.c.window_start <= now - window, login_failures.c.locked_until <= now
        )
    )
    return int(result.rowcount)


def list_failures(conn: Connection) -> list[FailureRow]:
    rows = conn.execute(
        select(
            login_failures.c.address,
            login_failures.c.client_id,
            login_failures.c.failures,
            login_failures.c.window_start,
            login_failures.c.locked_until,
        ).order_by(login_failures.c.locked_until.desc(), login_failures.c.address)
    )
    return [FailureRow(str(a), str(c), int(f), int(w), int(u)) for a, c, f, w, u in rows]


def delete_failures(
    conn: Connection, *, address: str | None = None, client_id: str | None = None
) -> int:
    """Delete lockout rows (all of them, or those of an address and/or a client id)."""
    stmt = delete(login_failures)
    if address is not None:
        stmt = stmt.where(login_failures.c.address == address)
    if client_id is not None:
        stmt = stmt.where(login_failures.c.client_id == client_id)
    return int(conn.execute(stmt).rowcount)
