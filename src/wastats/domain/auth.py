"""Access tokens from client credentials, and the lockout that guards them.

Failed attempts are counted twice, each with its own limit (issue 11): per (address, client
id), which stops guessing one tenant's secret and is reset only by that tenant's own success,
and per address, which stops trying many client ids and is never reset by a success (so one
tenant signing in cannot reset the count of guesses at another's secret). The per-address limit
is higher, so one tenant's typos lock out only that tenant, not everyone behind the same NAT.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import math
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


INVALID_ADDRESS = "invalid"
"""The lockout bucket of every client address that is not an IP address (a proxy's garbage in
`X-Forwarded-For`): counted together rather than not at all."""


class TokenRefusal(Enum):
    BAD_CREDENTIALS = "client_id or client_secret is wrong"


@dataclass(frozen=True, slots=True)
class LockedOut:
    """The address (or this client id from it) is blocked until `until`."""

    until: int
    seconds_left: int
    whole_address: bool

    @property
    def message(self) -> str:
        what = "this address" if self.whole_address else "this address for this client id"
        return f"too many failed attempts from {what}; try again in {wait_words(self.seconds_left)}"


@dataclass(frozen=True, slots=True)
class IssuedToken:
    access_token: str
    expires_at: int


@dataclass(frozen=True, slots=True)
class LockoutPolicy:
    threshold: int
    """Failures per (address, client id) within the window that lock that pair."""
    window_seconds: int
    lock_seconds: int
    address_threshold: int = 100
    """Failures per address, whatever the client id, within the window that lock the address."""


def wait_words(seconds: int) -> str:
    """`45 seconds`, `1 minute`, `15 minutes`: how long a block lasts, for a person."""
    if seconds < 60:
        return f"{max(seconds, 1)} second{'s' if seconds != 1 else ''}"
    minutes = math.ceil(seconds / 60)
    return f"{minutes} minute{'s' if minutes != 1 else ''}"


def lockout_address(client: str) -> str:
    """The address failures are counted under: an IPv4 address as is (an IPv4-mapped IPv6
    address as its IPv4 one), an IPv6 address as its /64 network (one subscriber usually holds
    a whole /64, so counting single addresses would let it rotate through 2^64 of them), and
    anything else as `invalid`."""
    try:
        address = ipaddress.ip_address(client.strip())
    except ValueError:
        return INVALID_ADDRESS
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        # Any %zone suffix is not part of the network.
        return str(ipaddress.IPv6Network((int(address), 64), strict=False))
    return str(address)


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


def _unknown_client_key(client_id: str) -> str:
    """The lockout row key of a client id no account has: `?` and 32 hex digits of its SHA-256
    (account client ids are 24 hex digits, so the two never meet)."""
    digest = hashlib.sha256(client_id.encode("utf-8", "surrogatepass")).hexdigest()
    return f"?{digest[:32]}"


def issue_token(
    conn: Connection,
    *,
    client_id: str,
    client_secret: str,
    ip: str,
    now: int,
    lifetime: int,
    lockout: LockoutPolicy,
) -> IssuedToken | TokenRefusal | LockedOut:
    """A new token for valid credentials; a refusal otherwise. Older tokens stay valid.

    `ip` is the client address as the app sees it (after a trusted proxy's X-Forwarded-For)."""
    address = lockout_address(ip)
    # A NUL or a lone surrogate can't be in any issued credential (and PostgreSQL refuses NUL
    # in text): such a guess is simply wrong, and counts, without being looked up.
    storable = is_storable(client_id) and is_storable(client_secret)
    account = repo.get_account_by_client_id(conn, client_id) if storable else None
    # A made-up client id gets a row too, under a digest (it may be any length), so a wrong id
    # costs the same statements as a wrong secret. Such rows are bounded: at most the address
    # limit per address and window, and they expire.
    client_key = account.client_id if account else _unknown_client_key(client_id)
    keys = [repo.ANY_CLIENT, client_key]
    locked_key, until = repo.locked_until(conn, address, keys)
    if until > now:
        return LockedOut(
            until=until, seconds_left=until - now, whole_address=locked_key == repo.ANY_CLIENT
        )
    expected = account.secret_hash if account else _DUMMY_HASH
    secret_ok = storable and hmac.compare_digest(hash_secret(client_secret), expected)
    if account is None or not secret_ok:
        repo.expire_failures(conn, now=now, window=lockout.window_seconds)
        repo.record_failure(
            conn,
            address=address,
            client_id=repo.ANY_CLIENT,
            now=now,
            window=lockout.window_seconds,
            threshold=lockout.address_threshold,
            lock_seconds=lockout.lock_seconds,
        )
        repo.record_failure(
            conn,
            address=address,
            client_id=client_key,
            now=now,
            window=lockout.window_seconds,
            threshold=lockout.threshold,
            lock_seconds=lockout.lock_seconds,
        )
        return TokenRefusal.BAD_CREDENTIALS
    repo.clear_failures(conn, address, account.client_id)
    token = secrets.token_urlsafe(32)
    repo.insert_token(
        conn,
        token_hash=hash_secret(token),
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
        token_hash=hash_secret(token),
        account_id=account.id,
        now=now,
        expires_at=now + lifetime,
    )
    return IssuedToken(access_token=token, expires_at=now + lifetime)


def authenticate(conn: Connection, token: str, now: int) -> AccountRow | None:
    """The account of a live bearer token, or None."""
    if not token or len(token) > 200 or not is_storable(token):
        return None
    return repo.account_for_token(conn, hash_secret(token), now)


def revoke_token(conn: Connection, token: str) -> bool:
    """End one token now (logout); other tokens of the account stay valid. True if it existed."""
    if not token or len(token) > 200:
        return False
    return repo.delete_token(conn, hash_secret(token))


# --- the operator's view of the lockout ---------------------------------------------------------


def list_lockouts(conn: Connection, now: int, window: int) -> list[repo.FailureRow]:
    """Failure counters still in force (within the window, or locked), locked ones first; the
    expired ones are dropped on the way."""
    repo.expire_failures(conn, now=now, window=window)
    return repo.list_failures(conn)


def clear_lockouts(
    conn: Connection, *, address: str | None = None, client_id: str | None = None
) -> int:
    """Forget failures and lift locks: of an address (given as any client address of it, an
    IPv6 one for its /64), of a client id, of both together, or (neither) all of them."""
    return repo.delete_failures(
        conn, address=None if address is None else lockout_address(address), client_id=client_id
    )
