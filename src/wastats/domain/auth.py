"""Access tokens from client credentials, and the per-IP lockout that guards them."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from enum import Enum

from sqlalchemy import Connection

from wastats.domain.accounts import get_account, hash_secret
from wastats.store import accounts as repo
from wastats.store.accounts import AccountRow

# Compared against when the client id is unknown, so a wrong id costs the same as a wrong
# secret and response times don't reveal which client ids exist.
_DUMMY_HASH = hash_secret("wastats-no-such-client")


class TokenRefusal(Enum):
    BAD_CREDENTIALS = "client_id or client_secret is wrong"
    LOCKED_OUT = "too many failed attempts from this address; try again later"


@dataclass(frozen=True, slots=True)
class IssuedToken:
    access_token: str
    expires_at: int


@dataclass(frozen=True, slots=True)
class LockoutPolicy:
    threshold: int
    window_seconds: int
    lock_seconds: int


def is_storable(text: str) -> bool:
    """True unless `text` has a NUL or a lone surrogate (what JSON's `\\u0000` and `\\ud800`
    escapes can smuggle into a str), neither of which any credential or token contains."""
    if "\x00" in text:
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def issue_token(
    conn: Connection,
    *,
    client_id: str,
    client_secret: str,
    ip: str,
    now: int,
    lifetime: int,
    lockout: LockoutPolicy,
) -> IssuedToken | TokenRefusal:
    """A new token for valid credentials; a refusal otherwise. Older tokens stay valid."""
    if repo.locked_until(conn, ip) > now:
        return TokenRefusal.LOCKED_OUT
    # A NUL or a lone surrogate can't be in any issued credential (and PostgreSQL refuses NUL
    # in text): such a guess is simply wrong, and counts, without being looked up.
    storable = is_storable(client_id) and is_storable(client_secret)
    account = repo.get_account_by_client_id(conn, client_id) if storable else None
    expected = account.secret_hash if account else _DUMMY_HASH
    secret_ok = storable and hmac.compare_digest(hash_secret(client_secret), expected)
    if account is None or not secret_ok:
        repo.record_failure(
            conn,
            ip=ip,
            now=now,
            window=lockout.window_seconds,
            threshold=lockout.threshold,
            lock_seconds=lockout.lock_seconds,
        )
        return TokenRefusal.BAD_CREDENTIALS
    repo.clear_failures(conn, ip)
    token = secrets.token_urlsafe(32)
    repo.insert_token(
        conn,
        token_hash=hash_token(token),
        account_id=account.id,
        now=now,
        expires_at=now + lifetime,
    )
    repo.delete_expired_tokens(conn, now)
    return IssuedToken(access_token=token, expires_at=now + lifetime)


def operator_token(conn: Connection, *, client_id: str, now: int, lifetime: int) -> IssuedToken:
    """A short-lived token for an account, without its secret: for the operator, who can read
    and write the database anyway (`wastats stats`), so a secret would protect nothing here.
    Raises NotFound for an unknown client id."""
    account = get_account(conn, client_id)
    token = secrets.token_urlsafe(32)
    repo.insert_token(
        conn,
        token_hash=hash_token(token),
        account_id=account.id,
        now=now,
        expires_at=now + lifetime,
    )
    return IssuedToken(access_token=token, expires_at=now + lifetime)


def authenticate(conn: Connection, token: str, now: int) -> AccountRow | None:
    """The account of a live bearer token, or None."""
    if not token or len(token) > 200 or not is_storable(token):
        return None
    return repo.account_for_token(conn, hash_token(token), now)


def revoke_token(conn: Connection, token: str) -> bool:
    """End one token now (logout); other tokens of the account stay valid. True if it existed."""
    if not token or len(token) > 200:
        return False
    return repo.delete_token(conn, hash_token(token))
