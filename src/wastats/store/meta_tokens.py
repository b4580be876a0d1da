"""Repository: the accounts' own Meta access tokens (sealed; `wastats.meta.tokens` seals and
opens them) and which account each WABA belongs to, for choosing the token of its sync."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from sqlalchemy import Connection, delete, select, update

from wastats.store.schema import accounts, business_numbers, meta_sync_state, meta_tokens
from wastats.store.sql import insert_for


@dataclass(frozen=True, slots=True)
class SealedToken:
    account_id: int
    client_id: str
    sealed: bytes
    key_id: str
    set_at: int


def put(conn: Connection, account_id: int, sealed: bytes, key_id: str, now: int) -> None:
    """Store (or replace) the account's sealed token."""
    values = {"sealed": sealed, "key_id": key_id, "set_at": now}
    stmt = insert_for(conn, meta_tokens).values(account_id=account_id, **values)
    conn.execute(stmt.on_conflict_do_update(index_elements=["account_id"], set_=values))


def remove(conn: Connection, account_id: int) -> bool:
    """Drop the account's token; False if it had none."""
    result = conn.execute(delete(meta_tokens).where(meta_tokens.c.account_id == account_id))
    return result.rowcount > 0


def sealed_tokens(conn: Connection, account_ids: Iterable[int] | None = None) -> list[SealedToken]:
    t = meta_tokens.c
    query = select(t.account_id, accounts.c.client_id, t.sealed, t.key_id, t.set_at).join(
        accounts, accounts.c.id == t.account_id
    )
    if account_ids is not None:
        query = query.where(t.account_id.in_(sorted(set(account_ids))))
    return [
        SealedToken(int(a), str(c), bytes(s), str(k), int(at))
        for a, c, s, k, at in conn.execute(query.order_by(t.account_id))
    ]


def any_token(conn: Connection) -> bool:
    """Whether any account has a token (the service's sync then has work even without a global
    token)."""
    return conn.execute(select(meta_tokens.c.account_id).limit(1)).first() is not None


def reseal(conn: Connection, account_id: int, old_key_id: str, sealed: bytes, key_id: str) -> bool:
    """Replace a token sealed with `old_key_id` by its new sealing, unless it changed meanwhile
    (another process resealed it, or the operator set a new one)."""
    t = meta_tokens.c
    result = conn.execute(
        update(meta_tokens)
        .where(t.account_id == account_id, t.key_id == old_key_id)
        .values(sealed=sealed, key_id=key_id)
    )
    return result.rowcount == 1


def waba_accounts(conn: Connection) -> dict[str, int | None]:
    """Every WABA the service knows (linked ones and those of registered numbers) and the account
    whose token syncs it: the account that linked it, else the one account its registered numbers
    belong to; None when neither says (numbers of several accounts and no link)."""
    out: dict[str, int | None] = {}
    linked = conn.execute(select(meta_sync_state.c.waba_id, meta_sync_state.c.account_id))
    for waba_id, account_id in linked:
        out[str(waba_id)] = None if account_id is None else int(account_id)
    owners: dict[str, set[int]] = {}
    n = business_numbers.c
    rows = conn.execute(select(n.waba_id, n.account_id).where(n.waba_id.is_not(None)).distinct())
    for waba_id, account_id in rows:
        owners.setdefault(str(waba_id), set()).add(int(account_id))
    for waba_id, found in owners.items():
        if out.get(waba_id) is None:
            out[waba_id] = next(iter(found)) if len(found) == 1 else None
    return dict(sorted(out.items()))
