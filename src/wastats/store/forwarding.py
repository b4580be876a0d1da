"""Repository: forwarding destinations and their deliveries (docs/forwarding.md).

A delivery is one (inbox body, destination) pair. It is written in the transaction that stores
the body in the inbox, so a body acknowledged to Meta always has its deliveries, and it lives
in one of three states:

* `pending`: to be tried at `next_attempt_at`. A worker *claims* due rows by moving that time
  forward by a lease; if the worker dies mid-attempt the lease runs out and any process claims
  the row again (at least once). On PostgreSQL the claim skips rows another process has locked
  (`FOR UPDATE SKIP LOCKED`), so each delivery is attempted by one process at a time.
* `delivered`: the destination answered 2xx. Dropped after the raw-body retention.
* `dead`: still failing at the end of the retry window; kept, with its body, for `replay`.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Connection,
    Integer,
    and_,
    bindparam,
    case,
    cast,
    delete,
    func,
    or_,
    select,
    update,
)
from sqlalchemy.dialects import sqlite

from wastats.sealing import BodySealer
from wastats.store import inbox as inbox_repo
from wastats.store.schema import business_numbers, forward_deliveries, forward_destinations
from wastats.store.sql import chunks, insert_for, sqlite_cursor

PENDING = "pending"
DELIVERED = "delivered"
DEAD = "dead"

ALL = "all"
WABA = "waba"
NUMBER = "number"

FROM_CLI = "cli"
FROM_CONFIG = "config"

_d = forward_destinations
_q = forward_deliveries


@dataclass(frozen=True, slots=True)
class Destination:
    id: int
    url: str
    scope: str
    scope_value: str
    source: str
    paused: bool
    created_at: int
    delivered_total: int
    failed_attempts_total: int
    last_delivered_at: int | None
    last_error: str | None
    last_error_at: int | None


@dataclass(frozen=True, slots=True)
class Target:
    """What the enqueue step needs of a destination to decide whether a body goes there."""

    id: int
    scope: str
    scope_value: str
    phone_number_id: str | None
    """For a number scope: the registered number's phone-number id, if it is registered."""
    url: str = ""
    paused: bool = False


@dataclass(frozen=True, slots=True)
class NewDelivery:
    inbox_id: int
    destination_id: int
    headers: Sequence[tuple[str, str]]
    leased_until: int | None = None
    """Claimed already, until then, by the process that queues it (it delivers the body from
    memory right after the commit); None: due now, for any process to claim."""


@dataclass(frozen=True, slots=True)
class Queued:
    id: int
    inbox_id: int
    destination_id: int


@dataclass(frozen=True, slots=True)
class Claimed:
    id: int
    inbox_id: int
    destination_id: int
    headers: list[tuple[str, str]]
    attempts: int
    """Attempts made before this one."""
    created_at: int
    body: bytes | None
    """None: the raw body is no longer stored (cannot be delivered)."""


@dataclass(frozen=True, slots=True)
class Result:
    id: int
    destination_id: int
    delivered: bool
    next_attempt_at: int | None = None
    """For a failure: when to try again; None: give up (dead letter)."""
    error: str | None = None
    """None on a failure: not attempted, handed back (due now, no attempt counted)."""
    lease_until: int | None = None
    """The lease the attempt was made under (the row's `next_attempt_at` while claimed). A
    failure or a hand-back is recorded only while the row still holds that lease: once it has
    run out and another process has claimed the row, making it due again (or dead) would let a
    third claim post the body while that process is posting it. None: unconditionally."""

    @property
    def released(self) -> bool:
        return not self.delivered and self.error is None


@dataclass(frozen=True, slots=True)
class Backlog:
    """A destination's deliveries that are not delivered yet."""

    pending: int = 0
    failing: int = 0
    """Pending deliveries that have failed at least once."""
    dead: int = 0
    oldest_pending_at: int | None = None
    """`created_at` of the oldest pending delivery."""


@dataclass(frozen=True, slots=True)
class DeadLetter:
    id: int
    inbox_id: int
    destination_id: int
    created_at: int
    dead_at: int
    attempts: int
    last_error: str | None


# --- destinations -----------------------------------------------------------------------------


def _destination(row: object) -> Destination:
    m = row._mapping  # type: ignore[attr-defined]
    return Destination(
        id=int(m["id"]),
        url=m["url"],
        scope=m["scope"],
        scope_value=m["scope_value"],
        source=m["source"],
        paused=bool(m["paused"]),
        created_at=int(m["created_at"]),
        delivered_total=int(m["delivered_total"]),
        failed_attempts_total=int(m["failed_attempts_total"]),
        last_delivered_at=m["last_delivered_at"],
        last_error=m["last_error"],
        last_error_at=m["last_error_at"],
    )


def add_destination(
    conn: Connection, *, url: str, scope: str, scope_value: str, source: str, now: int
) -> int | None:
    """Insert a destination; returns its id, or None if the same (url, scope) exists."""
    row = conn.execute(
        insert_for(conn, _d)
        .values(
            url=url,
            scope=scope,
            scope_value=scope_value,
            source=source,
            paused=False,
            created_at=now,
            delivered_total=0,
            failed_attempts_total=0,
        )
        .on_conflict_do_nothing()
        .returning(_d.c.id)
    ).first()
    return None if row is None else int(row[0])


def find_destination(conn: Connection, url: str, scope: str, scope_value: str) -> int | None:
    row = conn.execute(
        select(_d.c.id).where(_d.c.url == url, _d.c.scope == scope, _d.c.scope_value == scope_value)
    ).first()
    return None if row is None else int(row[0])


def list_destinations(conn: Connection) -> list[Destination]:
    return [_destination(r) for r in conn.execute(select(_d).order_by(_d.c.id))]


def get_destination(conn: Connection, destination_id: int) -> Destination | None:
    row = conn.execute(select(_d).where(_d.c.id == destination_id)).first()
    return None if row is None else _destination(row)


def remove_destination(conn: Connection, destination_id: int) -> bool:
    # Its deliveries first: not every SQLite connection is guaranteed to enforce the cascade.
    conn.execute(delete(_q).where(_q.c.destination_id == destination_id))
    return bool(conn.execute(delete(_d).where(_d.c.id == destination_id)).rowcount)


def set_paused(conn: Connection, destination_id: int, paused: bool) -> bool:
    result = conn.execute(update(_d).where(_d.c.id == destination_id).values(paused=paused))
    return bool(result.rowcount)


def sync_configured(conn: Connection, urls: Sequence[str], now: int) -> None:
    """Make the `config` destinations exactly `urls` (scope all); CLI ones are untouched.

    A configured URL keeps its row (and so its paused flag and totals) across restarts."""
    for url in urls:
        add_destination(conn, url=url, scope=ALL, scope_value="", source=FROM_CONFIG, now=now)
    stale = conn.execute(
        select(_d.c.id).where(_d.c.source == FROM_CONFIG, _d.c.url.not_in(list(urls) or [""]))
    ).scalars()
    for destination_id in list(stale):
        remove_destination(conn, int(destination_id))


_TARGETS = (
    select(
        _d.c.id,
        _d.c.scope,
        _d.c.scope_value,
        business_numbers.c.phone_number_id,
        _d.c.url,
        _d.c.paused,
    )
    .select_from(
        _d.outerjoin(
            business_numbers,
            and_(_d.c.scope == NUMBER, business_numbers.c.whatsapp == _d.c.scope_value),
        )
    )
    .order_by(_d.c.id)
)


@functools.cache
def _targets_sqlite() -> str:
    """`_TARGETS` as SQLite's SQL text (its one parameter, the scope, written in), made once."""
    return str(_TARGETS.compile(dialect=sqlite.dialect(), compile_kwargs={"literal_binds": True}))


def targets(conn: Connection) -> list[Target]:
    """Every destination, paused ones included (a paused destination keeps its queue and gets
    it on resume), with a number scope resolved to the number's phone-number id.

    Read in the inbox writer's transaction of every webhook commit, so always current (a
    destination the CLI adds in another process applies to the next commit): on SQLite straight
    on the driver's cursor, where SQLAlchemy's statement handling cost 15 times SQLite's own
    query (measured: 124 against 8 us; a cache's version check, `PRAGMA data_version`, costs
    7 us, so the query is its own check)."""
    rows: Sequence[Any]
    if conn.dialect.name == "sqlite":
        with sqlite_cursor(conn) as cursor:
            rows = cursor.execute(_targets_sqlite()).fetchall()
    else:
        rows = conn.execute(_TARGETS).all()
    return [Target(int(r[0]), r[1], r[2], r[3], r[4], bool(r[5])) for r in rows]


# --- deliveries -------------------------------------------------------------------------------


def enqueue(conn: Connection, deliveries: Sequence[NewDelivery], now: int) -> list[Queued]:
    """Add deliveries, due now or leased to the caller (a pair already queued is skipped);
    returns the rows inserted (one multi-row INSERT ... RETURNING per batch)."""
    if not deliveries:
        return []
    stmt = (
        insert_for(conn, _q)
        .on_conflict_do_nothing()
        .returning(_q.c.id, _q.c.inbox_id, _q.c.destination_id)
    )
    rows = conn.execute(
        stmt,
        [
            {
                "inbox_id": d.inbox_id,
                "destination_id": d.destination_id,
                "headers": json.dumps([list(h) for h in d.headers]),
                "state": PENDING,
                "created_at": now,
                "attempts": 0,
                "next_attempt_at": now if d.leased_until is None else d.leased_until,
            }
            for d in deliveries
        ],
    ).all()
    return [Queued(int(r[0]), int(r[1]), int(r[2])) for r in rows]


def bodies(conn: Connection, inbox_ids: Sequence[int], sealer: BodySealer) -> dict[int, bytes]:
    """The raw bodies to forward, by inbox id, opened. The one place forwarding reads bodies:
    whatever the inbox does to stored bodies (retention, sealing), `inbox.load_bodies` undoes."""
    states = (inbox_repo.PENDING, inbox_repo.PROCESSED, inbox_repo.REJECTED)
    return dict(inbox_repo.load_bodies(conn, inbox_ids, sealer, states=states))


def claim(
    conn: Connection,
    destination_id: int,
    limit: int,
    *,
    now: int,
    lease_until: int,
    sealer: BodySealer,
) -> list[Claimed]:
    """Take up to `limit` due deliveries of a destination, oldest first, for `lease_until`."""
    if limit <= 0:
        return []
    due = (
        select(_q.c.id)
        .where(
            _q.c.destination_id == destination_id,
            _q.c.state == PENDING,
            _q.c.next_attempt_at <= now,
        )
        .order_by(_q.c.next_attempt_at, _q.c.id)
        .limit(limit)
        # PostgreSQL: rows another process is claiming right now are skipped, not waited for
        # (SQLite, one writer at a time, ignores it).
        .with_for_update(skip_locked=True)
    )
    rows = conn.execute(
        update(_q)
        .where(_q.c.id.in_(due.scalar_subquery()))
        .values(next_attempt_at=lease_until)
        .returning(_q.c.id, _q.c.inbox_id, _q.c.headers, _q.c.attempts, _q.c.created_at)
    ).all()
    found = bodies(conn, [int(r[1]) for r in rows], sealer)
    claimed = [
        Claimed(
            id=int(r[0]),
            inbox_id=int(r[1]),
            destination_id=destination_id,
            headers=[(str(k), str(v)) for k, v in json.loads(r[2])],
            attempts=int(r[3]),
            created_at=int(r[4]),
            body=found.get(int(r[1])),
        )
        for r in rows
    ]
    return sorted(claimed, key=lambda c: c.id)


def record_results(conn: Connection, results: Sequence[Result], now: int) -> None:
    """Store the outcome of attempts, and each destination's totals and last outcome.

    Only rows still pending are changed: a row whose lease ran out and that another process
    already delivered stays delivered."""
    if not results:
        return
    delivered = [r for r in results if r.delivered]
    failed = [r for r in results if not r.delivered and not r.released]
    released = [r for r in results if r.released]
    if released:
        conn.execute(
            update(_q)
            .where(_q.c.id == bindparam("row_id"), _q.c.state == PENDING, _still_leased())
            .values(next_attempt_at=now),
            [{"row_id": r.id, "lease": r.lease_until} for r in released],
        )
    if delivered:
        conn.execute(
            update(_q)
            .where(_q.c.id == bindparam("row_id"), _q.c.state == PENDING)
            .values(state=DELIVERED, delivered_at=now, attempts=_q.c.attempts + 1),
            [{"row_id": r.id} for r in delivered],
        )
    if failed:
        conn.execute(
            update(_q)
            .where(_q.c.id == bindparam("row_id"), _q.c.state == PENDING, _still_leased())
            .values(
                state=bindparam("new_state"),
                next_attempt_at=bindparam("next_at"),
                dead_at=bindparam("dead"),
                last_error=bindparam("error"),
                attempts=_q.c.attempts + 1,
            ),
            [
                {
                    "row_id": r.id,
                    "lease": r.lease_until,
                    "new_state": PENDING if r.next_attempt_at is not None else DEAD,
                    "next_at": r.next_attempt_at if r.next_attempt_at is not None else now,
                    "dead": None if r.next_attempt_at is not None else now,
                    "error": _one_line(r.error),
                }
                for r in failed
            ],
        )
    _update_totals(conn, delivered, failed, now)


def _still_leased() -> ColumnElement[bool]:
    """The row still holds the lease of the result (bound as `lease`; NULL: no condition).
    A delivered outcome needs no such condition: the body did arrive, whoever holds the row."""
    lease = cast(bindparam("lease"), Integer)  # typed: PostgreSQL cannot infer `$n IS NULL`
    return or_(lease.is_(None), _q.c.next_attempt_at == lease)


def _update_totals(
    conn: Connection, delivered: Sequence[Result], failed: Sequence[Result], now: int
) -> None:
    per_destination: dict[int, tuple[int, int, str | None]] = {}
    for r in delivered:
        ok, bad, error = per_destination.get(r.destination_id, (0, 0, None))
        per_destination[r.destination_id] = (ok + 1, bad, error)
    for r in failed:
        ok, bad, _ = per_destination.get(r.destination_id, (0, 0, None))
        per_destination[r.destination_id] = (ok, bad + 1, r.error)
    for destination_id, (ok, bad, error) in sorted(per_destination.items()):
        values: dict[str, object] = {
            "delivered_total": _d.c.delivered_total + ok,
            "failed_attempts_total": _d.c.failed_attempts_total + bad,
        }
        if ok:
            values["last_delivered_at"] = now
        if bad:
            values["last_error"] = _one_line(error)
            values["last_error_at"] = now
        conn.execute(update(_d).where(_d.c.id == destination_id).values(**values))


def _one_line(error: str | None) -> str | None:
    if error is None:
        return None
    return " ".join(error.replace("\x00", "\\x00").split())[:500]


def backlog(conn: Connection) -> dict[int, Backlog]:
    """Per destination: pending, failing, dead and the oldest pending (index-only counts of
    what is not delivered; delivered rows are never counted here)."""
    rows = conn.execute(
        select(
            _q.c.destination_id,
            _q.c.state,
            func.count(),
            func.sum(case((_q.c.attempts > 0, 1), else_=0)),
            func.min(_q.c.created_at),
        )
        .where(_q.c.state.in_((PENDING, DEAD)))
        .group_by(_q.c.destination_id, _q.c.state)
    )
    found: dict[int, dict[str, object]] = {}
    for destination_id, state, count, failing, oldest in rows:
        entry = found.setdefault(int(destination_id), {})
        if state == PENDING:
            entry.update(pending=int(count), failing=int(failing or 0), oldest=int(oldest))
        else:
            entry["dead"] = int(count)
    return {
        destination_id: Backlog(
            pending=int(e.get("pending", 0)),  # type: ignore[call-overload]
            failing=int(e.get("failing", 0)),  # type: ignore[call-overload]
            dead=int(e.get("dead", 0)),  # type: ignore[call-overload]
            oldest_pending_at=e.get("oldest"),  # type: ignore[arg-type]
        )
        for destination_id, e in found.items()
    }


def dead_letters(
    conn: Connection, *, destination_id: int | None = None, limit: int = 100
) -> list[DeadLetter]:
    query = select(
        _q.c.id,
        _q.c.inbox_id,
        _q.c.destination_id,
        _q.c.created_at,
        _q.c.dead_at,
        _q.c.attempts,
        _q.c.last_error,
    ).where(_q.c.state == DEAD)
    if destination_id is not None:
        query = query.where(_q.c.destination_id == destination_id)
    rows = conn.execute(query.order_by(_q.c.id).limit(limit))
    return [
        DeadLetter(int(r[0]), int(r[1]), int(r[2]), int(r[3]), int(r[4]), int(r[5]), r[6])
        for r in rows
    ]


def replay(
    conn: Connection,
    *,
    ids: Iterable[int] | None = None,
    destination_id: int | None = None,
    now: int,
) -> int:
    """Queue dead letters again, with a new retry window; returns how many."""
    condition = _q.c.state == DEAD
    if destination_id is not None:
        condition = and_(condition, _q.c.destination_id == destination_id)
    values = {"state": PENDING, "attempts": 0, "created_at": now, "next_attempt_at": now}
    values |= {"dead_at": None}
    if ids is None:
        return int(conn.execute(update(_q).where(condition).values(**values)).rowcount)
    total = 0
    for part in chunks(sorted(set(ids))):
        total += int(
            conn.execute(update(_q).where(condition, _q.c.id.in_(part)).values(**values)).rowcount
        )
    return total


def purge_delivered(conn: Connection, delivered_before: int) -> int:
    result = conn.execute(
        delete(_q).where(_q.c.state == DELIVERED, _q.c.delivered_at < delivered_before)
    )
    return int(result.rowcount)


def delivery_states(conn: Connection, destination_id: int) -> dict[int, str]:
    """{inbox id: state} of a destination's deliveries (for tests and `forward status -v`)."""
    rows = conn.execute(
        select(_q.c.inbox_id, _q.c.state).where(_q.c.destination_id == destination_id)
    )
    return {int(i): s for i, s in rows}
