"""`wastats recount`: rebuild every count from the stored facts, and say what differed.

The incremental pipeline only ever recomputes what a batch touched. This recomputes everything
with `rules.count_all`, the rulebook applied to all facts of a number at once, compares it with
the stored units and rollups, and repairs any difference. On a healthy database there is none;
after a rules change (a new version of the counting rules) this is how history is recounted.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy import Connection

from wastats.counting import rules
from wastats.counting.calendar import load_zone
from wastats.store import counts as counts_repo
from wastats.store import facts as facts_repo
from wastats.store import locks as locks_repo
from wastats.store import numbers as numbers_repo
from wastats.store import units as units_repo
from wastats.store.db import Database


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
    scope = numbers_repo.scopes_of(conn, [phone_number_id]).get(phone_number_id)
    registered = scope is not None
    if scope is not None:
        zone = load_zone(scope.timezone)
        # From the *expected* units, so a repair of units also repairs the rollups; only those
        # the registration counts (a moved number's start), as the pipeline does.
        should = counts_repo.rollups_of(phone_number_id, expected.values(), zone, scope.counts_from)
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


@dataclass
class RecountReport:
    numbers: list[NumberRecount] = field(default_factory=list)
    account_rows_differing: int = 0
    """Account rollup rows that differed from the sum of their numbers' rollups."""

    @property
    def numbers_differing(self) -> int:
        return sum(1 for n in self.numbers if n.differs)

    @property
    def differs(self) -> bool:
        return bool(self.numbers_differing or self.account_rows_differing)


def recount(db: Database, account_id: int | None, *, repair: bool) -> RecountReport:
    """Recount the numbers of `account_id` (every number, registered or not, when None), then
    the account rollups, repairing any difference unless `repair` is false.

    One transaction per number, so a long recount holds a number's counting lock only briefly
    and a live service keeps counting between numbers; the account-wide sums come last, once
    the numbers' own rollups are right, one account at a time (reading only its numbers' rows:
    on Citus, only their shards)."""
    with db.read() as conn:
        numbers = numbers_to_recount(conn, account_id)
        accounts = accounts_to_recount(conn, account_id)
    report = RecountReport()
    for number in numbers:
        with db.write() as conn:
            report.numbers.append(recount_number(conn, number, repair=repair))
    for each in accounts:
        with db.write() as conn:
            report.account_rows_differing += recount_account_rollups(conn, each, repair=repair)
    return report


def recount_account_rollups(conn: Connection, account_id: int, *, repair: bool) -> int:
    """Check (and unless `repair` is false, rebuild) one account's rollup from its numbers'
    rollups; returns how many rows differed. Holds its numbers' counting locks: no batch for
    them changes the rollups between the read and the rewrite."""
    locks_repo.hold_counting_locks(conn, counts_repo.account_numbers(conn, account_id))
    return counts_repo.rebuild_account_rollups(conn, account_id, repair=repair)


def accounts_to_recount(conn: Connection, account_id: int | None) -> list[int]:
    return counts_repo.account_ids(conn) if account_id is None else [account_id]
