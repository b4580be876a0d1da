"""Which Meta access token syncs which WABA, and the accounts' own tokens sealed at rest.

The spec's token is "a system user's token, usually one for all the WABAs an operator manages;
optionally one per account". So a WABA is synced with its account's own token when the account
has one (`wastats meta token set`, or `wastats meta link --token-file`), else with the global
`WASTATS_META_ACCESS_TOKEN`, else not at all (and its status says why). The account of a WABA is
the one that linked it, else the one its registered numbers belong to
(`store.meta_tokens.waba_accounts`).

Account tokens are stored sealed (`BodySealer.for_meta_tokens`: AES-256-GCM under keys of their
own derived from the body keys, the account as associated data) and opened only to build the
sync's HTTP client; they are never logged, printed or put in an error message. When
`WASTATS_BODY_KEYS` rotates, `reseal` moves tokens sealed with an old key to the new one (at the
start of every sync round, the service's and `wastats meta sync`'s), after which the old key may
be dropped.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from sqlalchemy import Connection

from wastats.domain.accounts import get_account
from wastats.domain.errors import InvalidInput
from wastats.sealing import BodySealer, BodyUnreadable
from wastats.settings import Settings
from wastats.store import meta_tokens as repo

log = logging.getLogger("wastats.meta")

ACCOUNT = "account"
GLOBAL = "global"
NONE = "none"
UNREADABLE = "account (unreadable)"
OVERRIDE = "token file"

NO_TOKEN = (
    "token: no Meta access token for this WABA: set WASTATS_META_ACCESS_TOKEN, or the "
    "account's own with `wastats meta token set --account CLIENT_ID`"
)


def global_token(settings: Settings) -> str | None:
    """`WASTATS_META_ACCESS_TOKEN`, None when unset or empty."""
    value = settings.meta_access_token
    return (value.get_secret_value().strip() or None) if value is not None else None


def _bound_to(account_id: int) -> str:
    # Associated data: a sealed token copied into another account's row does not open.
    return f"meta-token/account/{account_id}"


def check_token(token: str) -> str:
    """The token without surrounding white space, or InvalidInput. A token goes into an HTTP
    header, so anything but printable ASCII without spaces is a mistake (a pasted line break, a
    whole file); the message never repeats the token."""
    token = token.strip()
    if not token:
        raise InvalidInput("the Meta access token is empty")
    if not token.isascii() or not token.isprintable() or any(c.isspace() for c in token):
        raise InvalidInput(
            "the Meta access token must be one word of printable ASCII (is it the right file?)"
        )
    if len(token) > 4096:
        raise InvalidInput("the Meta access token is longer than 4096 characters")
    return token


@dataclass(frozen=True, slots=True)
class TokenChoice:
    """The token a WABA is synced with. `source` is what may be shown (`account`, `global`,
    `none`, `account (unreadable)`, `token file`); the token itself is kept out of repr."""

    waba_id: str
    account_id: int | None
    source: str
    token: str | None = field(default=None, repr=False)
    problem: str | None = None
    """Why there is no token, fit to show and to record as the WABA's last error."""


class MetaTokens:
    """Seals, opens and chooses tokens. Takes the deployment's body sealer (its secrets)."""

    def __init__(self, body_sealer: BodySealer) -> None:
        self._sealer = body_sealer.for_meta_tokens()

    def set(self, conn: Connection, client_id: str, token: str, now: int) -> int:
        """Store the account's token sealed; returns the account's id."""
        account = get_account(conn, client_id)
        sealed = self._sealer.seal(check_token(token).encode("ascii"), _bound_to(account.id))
        repo.put(conn, account.id, sealed, self._sealer.key_id, now)
        return account.id

    def clear(self, conn: Connection, client_id: str) -> bool:
        return repo.remove(conn, get_account(conn, client_id).id)

    def stale(self, conn: Connection) -> bool:
        """Whether any token is sealed with a key other than the current one."""
        return any(row.key_id != self._sealer.key_id for row in repo.sealed_tokens(conn))

    def reseal(self, conn: Connection) -> int:
        """Reseal every token sealed with a key other than the current one (after a rotation of
        `WASTATS_BODY_KEYS`); how many were. A token no configured key opens is left as it is
        (its WABAs say so in their status)."""
        done = 0
        for row in repo.sealed_tokens(conn):
            if row.key_id == self._sealer.key_id:
                continue
            try:
                token = self._sealer.open(row.sealed, row.key_id, _bound_to(row.account_id))
            except BodyUnreadable:
                continue
            sealed = self._sealer.seal(token, _bound_to(row.account_id))
            done += repo.reseal(conn, row.account_id, row.key_id, sealed, self._sealer.key_id)
        if done:
            log.info("resealed %d Meta access tokens with the current key", done)
        return done

    def opened(self, conn: Connection) -> dict[int, str | BodyUnreadable]:
        """Every account's token in clear (or why it does not open), for one sync round."""
        out: dict[int, str | BodyUnreadable] = {}
        for row in repo.sealed_tokens(conn):
            try:
                raw = self._sealer.open(row.sealed, row.key_id, _bound_to(row.account_id))
                out[row.account_id] = raw.decode("ascii")
            except BodyUnreadable as exc:
                out[row.account_id] = exc
        return out

    def choose(
        self, conn: Connection, settings: Settings, *, override: str | None = None
    ) -> list[TokenChoice]:
        """The token of every known WABA (see the module docstring); `override` (a CLI
        `--token-file`) is used for all of them."""
        wabas = repo.waba_accounts(conn)
        if override is not None:
            return [TokenChoice(w, a, OVERRIDE, override) for w, a in wabas.items()]
        own = self.opened(conn)
        shared = global_token(settings)
        out: list[TokenChoice] = []
        for waba_id, account_id in wabas.items():
            mine = own.get(account_id) if account_id is not None else None
            if isinstance(mine, BodyUnreadable):
                # Never fall back to the global token here: it may be another business's.
                out.append(TokenChoice(waba_id, account_id, UNREADABLE, problem=(
                    f"token: the account's Meta token does not open ({mine}); set it again "
                    "with `wastats meta token set`"
                )))  # fmt: skip
            elif mine is not None:
                out.append(TokenChoice(waba_id, account_id, ACCOUNT, mine))
            elif shared is not None:
                out.append(TokenChoice(waba_id, account_id, GLOBAL, shared))
            else:
                out.append(TokenChoice(waba_id, account_id, NONE, problem=NO_TOKEN))
        return out

    def choose_unknown(
        self, waba_id: str, settings: Settings, *, override: str | None = None
    ) -> list[TokenChoice]:
        """The token of a WABA no account is known for yet: the override, else the global one."""
        if override is not None:
            return [TokenChoice(waba_id, None, OVERRIDE, override)]
        shared = global_token(settings)
        if shared is not None:
            return [TokenChoice(waba_id, None, GLOBAL, shared)]
        return [TokenChoice(waba_id, None, NONE, problem=NO_TOKEN)]
