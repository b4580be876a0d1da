"""`wastats recount`: rebuild every count from the stored facts, and say what differed.

The incremental pipeline only ever recomputes what a batch touched. This recomputes everything
with `rules.count_all`, the rulebook applied to all facts of a number at once, compares it with
the stored units and rollups, and repairs any difference. On a healthy database there is none;
after a rules change (a new version of the counting rules) this is how history is recounted.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Connection

from wastats.counting import rules
from wastats.domain.accounts import load_zone
from wastats.store import counts as counts_repo
from wastats.store import facts as facts_repo
from wastats.store import locks as locks_repo
from wastats.store import numbers as numbers_repo
from wastats.store import units as units_repo


@dataclass(frozen=True, slots=True)
class NumberRecount:
    phone_number_id: str
    registered: bool
    units: int
    units_missing: int
    units_extra: int
    units_changed: int
    rollup_rows_differing: int

    @property
    def differs(self) -> bool:
        return bool(
            self.units_missing + self.units_extra + self.units_changed + self.rollup_rows_differing
        )


def recount_number(conn: Connection, phone_number_id: str, *, repair: bool) -> NumberRecount:
    # Facts, units and rollups read as one state, with no batch counted in between (a live
    # service may be counting on PostgreSQL meanwhile: without the lock, false differences).
    locks_repo.hold_counting_locks(conn, [phone_number_id])
    expected = {
        unit.unit_key: unit
        for unit in rules.count_all(
            facts_repo.all_inbound(conn, phone_number_id),
            facts_repo.all_statuses(conn, phone_number_id),
        )
    }
    stored = units_repo.all_of(conn, phone_number_id)
    missing = expected.keys() - stored.keys()
    extra = stored.keys() - expected.keys()
    changed = {k for k in expected.keys() & stored.keys() if expected[k] != stored[k]}
    if repair and (missing or extra or changed):
        units_repo.replace_all(conn, phone_number_id, expected)

    rollups_differing = 0
    zones = numbers_repo.zones_of(conn, [phone_number_id])
    registered = phone_number_id in zones
    if registered:
        zone = load_zone(zones[phone_number_id])
        # From the *expected* units, so a repair of units also repairs the rollups.
        should = counts_repo.rollups_of(phone_number_id, expected.values(), zone)
        have = counts_repo.rollup_rows(conn, phone_number_id)
        rollups_differing = sum(
            1 for key in should.keys() | have.keys() if should.get(key, 0) != have.get(key, 0)
        )
        if repair and rollups_differing:
            counts_repo.replace_rollups(conn, phone_number_id, should)
    return NumberRecount(
        phone_number_id=phone_number_id,
        registered=registered,
        units=len(expected),
        units_missing=len(missing),
        units_extra=len(extra),
        units_changed=len(changed),
        rollup_rows_differing=rollups_differing,
    )


def numbers_to_recount(conn: Connection, account_id: int | None) -> list[str]:
    if account_id is None:
        return facts_repo.known_numbers(conn)
    return [n.phone_number_id for n in numbers_repo.list_numbers(conn, account_id)]


def recount_account_rollups(conn: Connection, account_id: int, *, repair: bool) -> int:
    """Check (and unless `repair` is false, rebuild) one account's rollup from its numbers'
    rollups; returns how many rows differed. Holds its numbers' counting locks: no batch for
    them changes the rollups between the read and the rewrite."""
    locks_repo.hold_counting_locks(conn, counts_repo.account_numbers(conn, account_id))
    return counts_repo.rebuild_account_rollups(conn, account_id, repair=repair)


def accounts_to_recount(conn: Connection, account_id: int | None) -> list[int]:
    return counts_repo.account_ids(conn) if account_id is None else [account_id]
