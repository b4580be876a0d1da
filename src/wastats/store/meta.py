"""Repository: Meta's record (reported half-hour slots) and the per-WABA sync state."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

from sqlalchemy import Connection, func, select, union, update

from wastats.store.schema import (
    accounts,
    business_numbers,
    counted_units,
    inbound_messages,
    message_facts,
    meta_reported,
    meta_sync_state,
    service_state,
)
from wastats.store.sql import chunks, insert_for

REPORTED_KEY = ("phone_number_id", "slot", "country", "category", "pricing_type", "tier")


@dataclass(frozen=True, slots=True)
class ReportedRow:
    phone_number_id: str
    slot: int
    country: str
    category: str
    pricing_type: str
    tier: str
    waba_id: str
    volume: int
    cost_micros: int | None

    def key(self) -> tuple[str, int, str, str, str, str]:
        return (
            self.phone_number_id,
            self.slot,
            self.country,
            self.category,
            self.pricing_type,
            self.tier,
        )


@dataclass(frozen=True, slots=True)
class SyncState:
    waba_id: str
    account_id: int | None
    linked_at: int
    covered_from: int | None
    covered_to: int | None
    last_success: int | None
    last_error: str | None
    last_error_at: int | None
    failures: int
    next_try: int
    lease_until: int


# --- reported rows ------------------------------------------------------------------------------


def upsert_reported(conn: Connection, rows: Sequence[ReportedRow], now: int) -> None:
    """Insert or overwrite (Meta revises recent slots) rows by their key; twice = once."""
    if not rows:
        return
    stmt = insert_for(conn, meta_reported)
    stmt = stmt.on_conflict_do_update(
        index_elements=list(REPORTED_KEY),
        set_={
            "waba_id": stmt.excluded.waba_id,
            "volume": stmt.excluded.volume,
            "cost_micros": stmt.excluded.cost_micros,
            "synced_at": stmt.excluded.synced_at,
        },
    )
    for part in chunks(list(rows), 2000):
        conn.execute(
            stmt,
            [
                {
                    "phone_number_id": r.phone_number_id,
                    "slot": r.slot,
                    "country": r.country,
                    "category": r.category,
                    "pricing_type": r.pricing_type,
                    "tier": r.tier,
                    "waba_id": r.waba_id,
                    "volume": r.volume,
                    "cost_micros": r.cost_micros,
                    "synced_at": now,
                }
                for r in part
            ],
        )


def reported_between(
    conn: Connection, phone_number_ids: Iterable[str], start: int, end: int
) -> Iterator[ReportedRow]:
    """Reported rows of these numbers with start <= slot < end."""
    c = meta_reported.c
    for part in chunks(sorted(set(phone_number_ids))):
        rows = conn.execute(
            select(
                c.phone_number_id,
                c.slot,
                c.country,
                c.category,
                c.pricing_type,
                c.tier,
                c.waba_id,
                c.volume,
                c.cost_micros,
            ).where(c.phone_number_id.in_(part), c.slot >= start, c.slot < end)
        )
        for row in rows:
            yield ReportedRow(*row)


def count_reported(conn: Connection) -> int:
    return int(conn.execute(select(func.count()).select_from(meta_reported)).scalar_one())


def first_reported_slot(conn: Connection, phone_number_id: str) -> int | None:
    c = meta_reported.c
    value = conn.execute(
        select(func.min(c.slot)).where(c.phone_number_id == phone_number_id)
    ).scalar_one()
    return None if value is None else int(value)


# --- observed side, for reconciliation -----------------------------------------------------------


def message_units_between(
    conn: Connection, phone_number_ids: Iterable[str], start: int, end: int
) -> Iterator[tuple[str, int, str, str]]:
    """(phone_number_id, ts, category, pricing_type) of the Rule P units (delivered messages:
    what Meta's `volume` counts) of these numbers with start <= ts < end."""
    m = message_facts.c
    for part in chunks(sorted(set(phone_number_ids))):
        rows = conn.execute(
            select(m.phone_number_id, m.unit_ts, m.unit_category, m.unit_pricing_type).where(
                m.phone_number_id.in_(part),
                m.unit_ts >= start,
                m.unit_ts < end,
                m.unit_era == "PMP",
            )
        )
        for number, ts, category, pricing in rows:
            yield number, int(ts), category, pricing


def event_times_between(
    conn: Connection, phone_number_ids: Iterable[str], start: int, end: int
) -> Iterator[tuple[str, int]]:
    """(phone_number_id, ts) of every counted thing (message units, inbound messages, sessions)
    of these numbers in [start, end): the evidence that webhooks for the number arrived then."""
    m, i, u = message_facts.c, inbound_messages.c, counted_units.c
    for part in chunks(sorted(set(phone_number_ids))):
        query = union(
            select(m.phone_number_id, m.unit_ts).where(
                m.phone_number_id.in_(part), m.unit_ts >= start, m.unit_ts < end
            ),
            select(i.phone_number_id, i.ts).where(
                i.phone_number_id.in_(part), i.ts >= start, i.ts < end
            ),
            select(u.phone_number_id, u.ts).where(
                u.phone_number_id.in_(part), u.ts >= start, u.ts < end
            ),
        )
        for number, ts in conn.execute(query):
            yield number, int(ts)


# --- sync state -----------------------------------------------------------------------------------

_STATE = (
    meta_sync_state.c.waba_id,
    meta_sync_state.c.account_id,
    meta_sync_state.c.linked_at,
    meta_sync_state.c.covered_from,
    meta_sync_state.c.covered_to,
    meta_sync_state.c.last_success,
    meta_sync_state.c.last_error,
    meta_sync_state.c.last_error_at,
    meta_sync_state.c.failures,
    meta_sync_state.c.next_try,
    meta_sync_state.c.lease_until,
)


def get_state(conn: Connection, waba_id: str) -> SyncState | None:
    row = conn.execute(select(*_STATE).where(meta_sync_state.c.waba_id == waba_id)).first()
    return SyncState(*row) if row else None


def list_states(conn: Connection, waba_ids: Iterable[str] | None = None) -> list[SyncState]:
    query = select(*_STATE).order_by(meta_sync_state.c.waba_id)
    if waba_ids is not None:
        query = query.where(meta_sync_state.c.waba_id.in_(sorted(set(waba_ids))))
    return [SyncState(*row) for row in conn.execute(query)]


def ensure_state(conn: Connection, waba_id: str, account_id: int | None, now: int) -> None:
    """A state row for the WABA (new ones are due at once); links it to `account_id` if given."""
    stmt = insert_for(conn, meta_sync_state).values(
        waba_id=waba_id,
        account_id=account_id,
        linked_at=now,
        failures=0,
        next_try=0,
        lease_until=0,
    )
    if account_id is None:
        conn.execute(stmt.on_conflict_do_nothing(index_elements=["waba_id"]))
    else:
        conn.execute(
            stmt.on_conflict_do_update(index_elements=["waba_id"], set_={"account_id": account_id})
        )


def wabas_of_numbers(conn: Connection) -> list[str]:
    """WABA ids of registered numbers: the WABAs the service syncs (with the linked ones)."""
    rows = conn.execute(
        select(business_numbers.c.waba_id).where(business_numbers.c.waba_id.is_not(None)).distinct()
    )
    return sorted(str(w) for (w,) in rows)


def wabas_of_numbers_by_id(conn: Connection, phone_number_ids: Iterable[str]) -> dict[str, str]:
    """The WABA id of each of these registered numbers (those that have one)."""
    n = business_numbers.c
    out: dict[str, str] = {}
    for part in chunks(sorted(set(phone_number_ids))):
        rows = conn.execute(
            select(n.phone_number_id, n.waba_id).where(
                n.phone_number_id.in_(part), n.waba_id.is_not(None)
            )
        )
        out.update({pnid: str(waba) for pnid, waba in rows})
    return out


def set_waba_of_number(conn: Connection, phone_number_id: str, waba_id: str) -> None:
    """Record the WABA of a number registered without one (found when its WABA is linked)."""
    conn.execute(
        update(business_numbers)
        .where(
            business_numbers.c.phone_number_id == phone_number_id,
            business_numbers.c.waba_id.is_(None),
        )
        .values(waba_id=waba_id)
    )


def wabas_of_account(conn: Connection, account_id: int) -> list[str]:
    linked = conn.execute(
        select(meta_sync_state.c.waba_id).where(meta_sync_state.c.account_id == account_id)
    )
    numbers = conn.execute(
        select(business_numbers.c.waba_id)
        .where(business_numbers.c.account_id == account_id, business_numbers.c.waba_id.is_not(None))
        .distinct()
    )
    return sorted({str(w) for (w,) in linked} | {str(w) for (w,) in numbers})


def claim(conn: Connection, waba_id: str, now: int, lease_until: int, *, force: bool) -> bool:
    """Take the WABA for a sync if nobody holds it (and, unless `force`, it is due)."""
    s = meta_sync_state.c
    query = update(meta_sync_state).where(s.waba_id == waba_id, s.lease_until <= now)
    if not force:
        query = query.where(s.next_try <= now)
    return conn.execute(query.values(lease_until=lease_until)).rowcount == 1


def record_chunk(conn: Connection, waba_id: str, start: int, end: int, lease_until: int) -> None:
    """[start, end) is stored completely: extend the covered span (contiguous from its start)."""
    state = get_state(conn, waba_id)
    assert state is not None
    covered_from, covered_to = state.covered_from, state.covered_to
    if covered_to is None or covered_from is None or start > covered_to:
        # First chunk, or a gap Meta can no longer fill (the service was off for longer than
        # Meta's window): the covered span starts again here.
        covered_from, covered_to = start, end
    else:
        covered_from, covered_to = min(covered_from, start), max(covered_to, end)
    conn.execute(
        update(meta_sync_state)
        .where(meta_sync_state.c.waba_id == waba_id)
        .values(covered_from=covered_from, covered_to=covered_to, lease_until=lease_until)
    )


def record_success(conn: Connection, waba_id: str, now: int, next_try: int) -> None:
    conn.execute(
        update(meta_sync_state)
        .where(meta_sync_state.c.waba_id == waba_id)
        .values(last_success=now, failures=0, next_try=next_try, lease_until=0)
    )


def record_error(conn: Connection, waba_id: str, now: int, message: str, next_try: int) -> None:
    conn.execute(
        update(meta_sync_state)
        .where(meta_sync_state.c.waba_id == waba_id)
        .values(
            last_error=message[:500],
            last_error_at=now,
            failures=meta_sync_state.c.failures + 1,
            next_try=next_try,
            lease_until=0,
        )
    )


# --- the account setting --------------------------------------------------------------------------


def history_from_meta(conn: Connection, account_id: int) -> bool:
    value = conn.execute(
        select(accounts.c.history_from_meta).where(accounts.c.id == account_id)
    ).scalar_one_or_none()
    return bool(value)


def set_history_from_meta(conn: Connection, account_id: int, on: bool) -> None:
    conn.execute(update(accounts).where(accounts.c.id == account_id).values(history_from_meta=on))


# --- the rate card and first observations ---------------------------------------------------------

RATECARD_KEY = "meta_ratecard"


def stored_ratecard(conn: Connection) -> str | None:
    """The operator's imported rate card (CSV text), if any."""
    value = conn.execute(
        select(service_state.c.value).where(service_state.c.key == RATECARD_KEY)
    ).scalar_one_or_none()
    return None if value is None else str(value)


def store_ratecard(conn: Connection, text: str) -> None:
    stmt = insert_for(conn, service_state).values(key=RATECARD_KEY, value=text)
    conn.execute(stmt.on_conflict_do_update(index_elements=["key"], set_={"value": text}))


def first_observed(conn: Connection, phone_number_ids: Iterable[str]) -> dict[str, int]:
    """The time of the first counted thing of each number (that has one)."""
    m, i, u = message_facts.c, inbound_messages.c, counted_units.c
    out: dict[str, int] = {}
    for part in chunks(sorted(set(phone_number_ids))):
        for column, number in ((m.unit_ts, m.phone_number_id), (i.ts, i.phone_number_id),
                               (u.ts, u.phone_number_id)):  # fmt: skip
            rows = conn.execute(
                select(number, func.min(column)).where(number.in_(part)).group_by(number)
            )
            for pnid, ts in rows:
                if ts is not None:
                    out[pnid] = min(out.get(pnid, int(ts)), int(ts))
    return out


def message_units_with_country(
    conn: Connection, phone_number_ids: Iterable[str], start: int, end: int
) -> Iterator[tuple[str, int, str, str, str]]:
    """(phone_number_id, ts, category, pricing_type, country) of PMP message units."""
    m = message_facts.c
    for part in chunks(sorted(set(phone_number_ids))):
        rows = conn.execute(
            select(
                m.phone_number_id, m.unit_ts, m.unit_category, m.unit_pricing_type, m.unit_country
            ).where(
                m.phone_number_id.in_(part),
                m.unit_ts >= start,
                m.unit_ts < end,
                m.unit_era == "PMP",
            )
        )
        for number, ts, category, pricing, country in rows:
            yield number, int(ts), category, pricing, country or ""
