"""Repository: the inbox of raw webhook bodies, stored before anything is parsed.

A body's row (`inbox`: hash, state, outcome) and the body itself (`inbox_bodies`, while it is
kept) are two tables, read and written together only here.

Bodies are sealed (AES-256-GCM, wastats.sealing) on the way in and opened on the way out, here
and nowhere else, so no caller can store one in clear or forget to open one: every function
that takes or gives a body takes the `BodySealer`. Rejection reasons are stored redacted
(`redact_reason`): they outlive the bodies and are printed by `wastats events rejected`.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Connection,
    and_,
    bindparam,
    delete,
    exists,
    func,
    insert,
    select,
    update,
)

from wastats.sealing import BodySealer, BodyUnreadable
from wastats.store.schema import PENDING_SHA_PREFIX, forward_deliveries, inbox, inbox_bodies
from wastats.store.sql import IN_CHUNK, chunks, insert_for, sqlite_cursor

log = logging.getLogger(__name__)

PENDING = "pending"
PROCESSED = "processed"
REJECTED = "rejected"


@dataclass(frozen=True, slots=True)
class NewBody:
    sha256: str
    body: bytes | None
    """None: keep only the hash (an imported line: the file is the raw copy)."""
    source: str
    received_at: int


@dataclass(frozen=True, slots=True)
class Outcome:
    id: int
    state: str
    reason: str | None
    events: int


@dataclass(frozen=True, slots=True)
class InboxRow:
    id: int
    received_at: int
    source: str
    state: str
    reason: str | None
    events: int
    size: int | None


def insert_bodies(
    conn: Connection, bodies: Sequence[NewBody], sealer: BodySealer
) -> dict[str, int]:
    """Store bodies not seen before, sealed; returns {sha256: id} of the ones actually inserted.

    A body already in the inbox (Meta's retry, a re-imported file) is skipped by its hash."""
    if not bodies:
        return {}
    sealed = [_sealed(b, sealer) for b in bodies]
    if conn.dialect.name == "sqlite":
        return _insert_bodies_sqlite(conn, sealed)
    stmt = (
        insert_for(conn, inbox)
        .on_conflict_do_nothing(index_elements=[inbox.c.body_sha256])
        .returning(inbox.c.id, inbox.c.body_sha256)
    )
    rows = conn.execute(
        stmt,
        [
            {
                "body_sha256": b.sha256,
                "source": b.source,
                "received_at": b.received_at,
                "state": PENDING,
                "events": 0,
            }
            for b in sealed
        ],
    )
    inserted = {sha: int(id_) for id_, sha in rows}
    kept = [
        {"id": inserted[b.sha256], "body_key": b.key_id, "body": b.body}
        for b in {b.sha256: b for b in sealed}.values()  # a body twice in one batch: once
        if b.body is not None and b.sha256 in inserted
    ]
    if kept:
        conn.execute(insert(inbox_bodies), kept)
    return inserted


@dataclass(frozen=True, slots=True)
class _SealedBody:
    sha256: str
    body: bytes | None
    key_id: str | None
    source: str
    received_at: int


def _sealed(body: NewBody, sealer: BodySealer) -> _SealedBody:
    if body.body is None:
        return _SealedBody(body.sha256, None, None, body.source, body.received_at)
    return _SealedBody(
        body.sha256,
        sealer.seal(body.body, body.sha256),
        sealer.key_id,
        body.source,
        body.received_at,
    )


def _insert_bodies_sqlite(conn: Connection, bodies: Sequence[_SealedBody]) -> dict[str, int]:
    """`insert_bodies` on SQLite, straight on the driver's cursor: this is every webhook's
    commit, and SQLAlchemy's parameter and result handling cost more than SQLite's own insert
    (measured: 450 against 300 us a commit of 6 bodies).

    A body's hash is unique among settled rows by their index, and among pending ones by this
    lookup: their index holds the first digits of each hash only (migration 0013), so what it
    finds is compared whole. Both lookups and the insert run in the caller's write transaction,
    and SQLite has one writer, so no other transaction can settle or insert a body in
    between."""
    inserted: dict[str, int] = {}
    prefix = PENDING_SHA_PREFIX
    with sqlite_cursor(conn) as cursor:
        for part in chunks(list({b.sha256: b for b in bodies}.values()), IN_CHUNK // 4):
            marks = ", ".join("?" * len(part))
            # Each SELECT names its index, its WHERE as the index's own, so SQLite uses it.
            stored = {
                sha
                for (sha,) in cursor.execute(
                    "SELECT body_sha256 FROM inbox INDEXED BY uq_inbox_settled_sha256 "
                    f"WHERE body_sha256 IN ({marks}) AND state <> '{PENDING}' "
                    "UNION ALL "
                    "SELECT body_sha256 FROM inbox INDEXED BY ix_inbox_pending_sha_prefix "
                    f"WHERE substr(body_sha256, 1, {prefix}) IN ({marks}) "
                    f"AND state = '{PENDING}'",
                    [b.sha256 for b in part] + [b.sha256[:prefix] for b in part],
                )
            }
            new = [b for b in part if b.sha256 not in stored]
            if not new:
                continue
            values = ", ".join([f"(?, ?, ?, '{PENDING}', 0)"] * len(new))
            cursor.execute(
                "INSERT INTO inbox (body_sha256, source, received_at, state, events) "
                f"VALUES {values} RETURNING id, body_sha256",
                [x for b in new for x in (b.sha256, b.source, b.received_at)],
            )
            ids = {sha: int(id_) for id_, sha in cursor.fetchall()}
            kept = [(ids[b.sha256], b.key_id, b.body) for b in new if b.body is not None]
            if kept:
                cursor.execute(
                    "INSERT INTO inbox_bodies (id, body_key, body) VALUES "
                    + ", ".join(["(?, ?, ?)"] * len(kept)),
                    [x for row in kept for x in row],
                )
            inserted.update(ids)
    return inserted


def pending_ids(
    conn: Connection,
    limit: int,
    *,
    received_before: int | None = None,
    skip_claimed: bool = False,
) -> list[int]:
    """The first pending rows, by id. `skip_claimed` (PostgreSQL): leave out rows another
    transaction holds (`claim_pending`): another process is counting them."""
    query = select(inbox.c.id).where(inbox.c.state == PENDING).order_by(inbox.c.id).limit(limit)
    if received_before is not None:
        query = query.where(inbox.c.received_at < received_before)
    if skip_claimed and conn.dialect.name == "postgresql":
        query = query.with_for_update(skip_locked=True)
    return [int(i) for i in conn.execute(query).scalars()]


def claim_pending(conn: Connection, ids: Sequence[int]) -> list[int]:
    """Those of `ids` still pending (with their body), now held by this transaction until it
    ends; ascending. On PostgreSQL a row another transaction holds is skipped, never waited for
    (`FOR UPDATE SKIP LOCKED`): that transaction is counting it, or has loaded it to count it.
    So two processes handed the same rows never count one twice, nor queue behind each other.
    SQLite has one writer at a time: a plain read."""
    claimed: list[int] = []
    for part in chunks(sorted(ids)):
        query = (
            select(inbox.c.id)
            .where(inbox.c.id.in_(part), inbox.c.state == PENDING, _has_body())
            .order_by(inbox.c.id)
        )
        if conn.dialect.name == "postgresql":
            query = query.with_for_update(skip_locked=True)
        claimed.extend(int(i) for i in conn.execute(query).scalars())
    return claimed


def unclaimed_pending(conn: Connection, ids: Sequence[int]) -> list[int]:
    """Those of `ids` still pending that no other transaction holds: what is left for the
    caller to count. `claim_pending` in a transaction the caller ends at once, before waiting
    for anything (the rows are then free again)."""
    return claim_pending(conn, ids)


def load_bodies(
    conn: Connection,
    ids: Sequence[int],
    sealer: BodySealer,
    *,
    states: Sequence[str] = (PENDING,),
    lock: bool = False,
) -> list[tuple[int, bytes]]:
    """(id, body), opened, of the given rows that are in one of `states` and still have their
    body. With `lock` (PostgreSQL), only the rows no other transaction holds, now held by this
    one until it ends (`claim_pending`).

    A body no configured key opens (its key was dropped from WASTATS_BODY_KEYS, or the row was
    tampered with) is left out; a pending one is marked rejected with the reason, so that it is
    listed by `wastats events rejected` (and replayed once the key is back) rather than picked
    up by every sweep forever."""
    loaded: list[tuple[int, bytes]] = []
    unreadable: list[Outcome] = []
    for part in chunks(sorted(ids)):
        rows: Iterable[Sequence[Any]]
        if conn.dialect.name == "sqlite":
            rows = _sealed_rows_sqlite(conn, part, states)
        else:
            query = (
                select(inbox.c.id, inbox_bodies.c.body, inbox_bodies.c.body_key,
                       inbox.c.body_sha256, inbox.c.state)
                .join(inbox_bodies, inbox_bodies.c.id == inbox.c.id)
                .where(inbox.c.id.in_(part), inbox.c.state.in_(states))
                .order_by(inbox.c.id)
            )  # fmt: skip
            if lock:
                # The row holds the body's place in counting; its body is only read.
                query = query.with_for_update(skip_locked=True, of=inbox)
            rows = conn.execute(query)
        for id_, body, key_id, sha, state in rows:
            try:
                loaded.append((int(id_), sealer.open(bytes(body), key_id, sha)))
            except BodyUnreadable as exc:
                log.error("inbox body %d cannot be opened: %s", id_, exc)
                if state == PENDING:
                    unreadable.append(Outcome(int(id_), REJECTED, f"body {exc}", 0))
    if unreadable:
        _mark_unreadable(conn, unreadable)
    return loaded


def _sealed_rows_sqlite(
    conn: Connection, ids: Sequence[int], states: Sequence[str]
) -> list[tuple[Any, ...]]:
    """`load_bodies`' query on SQLite's own cursor: the counting child runs it for every body it
    counts, and SQLAlchemy's statement and row handling cost more than the query (measured with
    `bench/bench_count_ids.py --per-body 1`)."""
    with sqlite_cursor(conn) as cursor:
        return cursor.execute(
            "SELECT inbox.id, body, body_key, body_sha256, state "
            "FROM inbox JOIN inbox_bodies ON inbox_bodies.id = inbox.id "
            f"WHERE inbox.id IN ({', '.join('?' * len(ids))}) "
            f"AND state IN ({', '.join('?' * len(states))}) ORDER BY inbox.id",
            [*ids, *states],
        ).fetchall()


def _mark_unreadable(conn: Connection, outcomes: Sequence[Outcome]) -> None:
    conn.execute(
        update(inbox)
        .where(inbox.c.id == bindparam("row_id"))
        .values(state=bindparam("new_state"), reason=bindparam("new_reason")),
        [{"row_id": o.id, "new_state": o.state, "new_reason": o.reason} for o in outcomes],
    )


def keep_bodies(conn: Connection, bodies: dict[int, bytes], sealer: BodySealer) -> None:
    """Store the bodies of rows inserted without one (rejected import lines, for replay),
    sealed."""
    if not bodies:
        return
    hashes: dict[int, str] = {}
    for part in chunks(sorted(bodies)):
        rows = conn.execute(select(inbox.c.id, inbox.c.body_sha256).where(inbox.c.id.in_(part)))
        hashes.update((int(id_), str(sha)) for id_, sha in rows)
    conn.execute(
        insert(inbox_bodies),
        [
            {"id": id_, "body": sealer.seal(raw, hashes[id_]), "body_key": sealer.key_id}
            for id_, raw in sorted(bodies.items())
        ],
    )


def set_reasons(conn: Connection, reasons: dict[int, str]) -> None:
    """Replace the reasons of some rows (an import adds where each rejected line came from).
    The caller redacts what came from a body (`redact_reason`); the place is the operator's."""
    if reasons:
        conn.execute(
            update(inbox).where(inbox.c.id == bindparam("row_id")).values(reason=bindparam("why")),
            [
                {"row_id": id_, "why": why.replace("\x00", "\\x00")[:2000]}
                for id_, why in sorted(reasons.items())
            ],
        )


def record_outcomes(conn: Connection, outcomes: Sequence[Outcome], now: int) -> None:
    if not outcomes:
        return
    if conn.dialect.name == "sqlite":
        # On SQLite's own cursor: one row per counted body, in every counting transaction, and
        # SQLAlchemy's per-row parameter handling cost about as much as SQLite's update.
        with sqlite_cursor(conn) as cursor:
            cursor.executemany(
                "UPDATE inbox SET state = ?, reason = ?, events = ?, processed_at = ? WHERE id = ?",
                [(o.state, redact_reason(o.reason), o.events, now, o.id) for o in outcomes],
            )
        return
    conn.execute(
        update(inbox)
        .where(inbox.c.id == bindparam("row_id"))
        .values(
            state=bindparam("new_state"),
            reason=bindparam("new_reason"),
            events=bindparam("new_events"),
            processed_at=now,
        ),
        [
            {
                "row_id": o.id,
                "new_state": o.state,
                "new_reason": redact_reason(o.reason),
                "new_events": o.events,
            }  # fmt: skip
            for o in outcomes
        ],
    )


# Meta's message ids embed the customer's phone number (base64 of it), and any run of seven or
# more digits may be a phone number: a reason names where and what was wrong, never whose.
_WAMID = re.compile(r"wamid\.[A-Za-z0-9+/=_\-.]+")
_LONG_DIGITS = re.compile(r"\+?\d(?:[\d \-]{5,}\d)")


def redact_reason(reason: str | None) -> str | None:
    """A rejection reason fit to keep beside a purged body: one printable line (PostgreSQL text
    refuses NUL), at most 2,000 characters, without message ids or anything like a phone
    number."""
    if reason is None:
        return None
    reason = reason.replace("\x00", "\\x00")
    reason = _WAMID.sub("wamid.[redacted]", reason)
    reason = _LONG_DIGITS.sub(_digits_or_not, reason)
    return reason[:2000]


def _digits_or_not(match: re.Match[str]) -> str:
    digits = sum(c.isdigit() for c in match.group())
    return "[digits]" if digits >= 7 else match.group()


def list_by_state(conn: Connection, state: str, limit: int) -> list[InboxRow]:
    rows = conn.execute(
        select(
            inbox.c.id,
            inbox.c.received_at,
            inbox.c.source,
            inbox.c.state,
            inbox.c.reason,
            inbox.c.events,
            func.length(inbox_bodies.c.body),
        )
        .outerjoin(inbox_bodies, inbox_bodies.c.id == inbox.c.id)
        .where(inbox.c.state == state)
        .order_by(inbox.c.id.desc())
        .limit(limit)
    )
    return [
        InboxRow(
            id=int(r[0]),
            received_at=int(r[1]),
            source=r[2],
            state=r[3],
            reason=r[4],
            events=int(r[5]),
            size=None if r[6] is None else int(r[6]),
        )
        for r in rows
    ]


def ids_by_state(conn: Connection, state: str) -> list[int]:
    query = select(inbox.c.id).where(inbox.c.state == state).order_by(inbox.c.id)
    return [int(i) for i in conn.execute(query).scalars()]


def count_by_state(conn: Connection) -> dict[str, int]:
    rows = conn.execute(select(inbox.c.state, func.count()).group_by(inbox.c.state))
    return {state: int(n) for state, n in rows}


def seal_clear_bodies(conn: Connection, sealer: BodySealer, limit: int) -> int:
    """Seal up to `limit` bodies stored in clear by a wastats from before sealing (migration
    0007); returns how many. Run until it returns 0."""
    rows = conn.execute(
        select(inbox_bodies.c.id, inbox_bodies.c.body, inbox.c.body_sha256)
        .join(inbox, inbox.c.id == inbox_bodies.c.id)
        .where(inbox_bodies.c.body_key.is_(None))
        .order_by(inbox_bodies.c.id)
        .limit(limit)
    ).all()
    if rows:
        conn.execute(
            update(inbox_bodies)
            .where(inbox_bodies.c.id == bindparam("row_id"), inbox_bodies.c.body_key.is_(None))
            .values(body=bindparam("sealed"), body_key=sealer.key_id),
            [
                {"row_id": int(id_), "sealed": sealer.seal(bytes(body), str(sha))}
                for id_, body, sha in rows
            ],
        )
    return len(rows)


def _has_body() -> ColumnElement[bool]:
    """The inbox row's body is still kept."""
    return exists().where(inbox_bodies.c.id == inbox.c.id)


def purgeable(received_before: int) -> ColumnElement[bool]:
    """Which inbox rows' bodies may be dropped: no longer waiting to be counted, and received
    before the cutoff. The one predicate of every purge (timed, at start-up, `wastats events
    purge`): a feature that needs bodies kept longer (a delivery still pending, say) adds its
    condition here."""
    return and_(
        inbox.c.state != PENDING,
        inbox.c.received_at < received_before,
        # Forwarding (issue 15): a body a destination still waits for (pending, or dead and
        # kept for `wastats forward replay`) stays, whatever the retention.
        ~exists().where(
            forward_deliveries.c.inbox_id == inbox.c.id,
            forward_deliveries.c.state.in_(("pending", "dead")),
        ),
    )


def purge_bodies(
    conn: Connection, received_before: int, *, ids: Sequence[int] | None = None
) -> int:
    """Drop the bodies `purgeable` allows (of the rows `ids` only, if given); returns how many.
    The row (hash, state, reason) stays, so the same body is still recognised as a duplicate,
    and the facts derived from it stay."""
    # From the bodies held, not from every row ever received: the rows whose bodies are gone
    # outnumber them by far.
    held = select(inbox_bodies.c.id).join(inbox, inbox.c.id == inbox_bodies.c.id)

    def purge(*among: ColumnElement[bool]) -> int:
        doomed = held.where(purgeable(received_before), *among)
        return int(conn.execute(delete(inbox_bodies).where(inbox_bodies.c.id.in_(doomed))).rowcount)

    if ids is None:
        return purge()
    return sum(purge(inbox_bodies.c.id.in_(part)) for part in chunks(sorted(ids)))


def held_bodies(conn: Connection) -> tuple[int, int | None]:
    """How many raw bodies are held, and when the oldest of them was received."""
    count, oldest = conn.execute(
        select(func.count(), func.min(inbox.c.received_at)).join_from(
            inbox_bodies, inbox, inbox.c.id == inbox_bodies.c.id
        )
    ).one()
    return int(count), None if oldest is None else int(oldest)


def oldest_pending_received_at(conn: Connection) -> int | None:
    """`received_at` of the first pending body, by id (arrival order): the ingest lag.

    The same access path as the ingestion sweep (`pending_ids`): the `state` index in id
    order, one row read, however many bodies are waiting."""
    row = conn.execute(
        select(inbox.c.received_at).where(inbox.c.state == PENDING).order_by(inbox.c.id).limit(1)
    ).first()
    return None if row is None else int(row[0])
