"""Repository: the locks that keep counting exact when several processes count on PostgreSQL.

Everything that reads units and writes rollups from them holds, for its transaction, the lock of
every business number it touches: the pipeline's batches, registering or removing a number
(which builds or drops its rollups from its units) and recount. Without it, under PostgreSQL's
READ COMMITTED, a number registered while a batch for it was being counted could miss that
batch's units in its rollups: the batch did not see the registration, the registration did not
see the batch's units. SQLite needs nothing: it has one writer at a time (`store.db`).

**One lock per partition of numbers, not one for all.** Every fact, unit and number rollup row
belongs to one business number, so batches for different numbers never read or write the same
rows and may be counted at once. The only rows two numbers share are their account's rollups
(`account_monthly_counts`), and those are written as added deltas (`INSERT ... ON CONFLICT DO
UPDATE SET units = units + excluded.units`, keys in sorted order): exact and deadlock-free
whichever transaction commits first, so they need no lock of their own.

Numbers are hashed into `PARTITIONS` partitions (a stable hash: every process computes the same
one) rather than locked one by one: a transaction takes at most `PARTITIONS` locks, always in
ascending order (no two transactions can then wait for each other in a cycle), and the ingest
service can split a batch into a few transactions that each claim the partitions no other
process holds (`try_partition_locks`), so N processes count different partitions at once
(`ingest.partitions`; docs/benchmarks.md, "Counting in parallel"). A transaction waits for a
lock only before it writes anything (the try-locks never wait), so a wait can never close a
cycle with a row lock it holds.

Advisory locks live on the server they are taken on: on Citus, every wastats process must
connect to the coordinator (docs/deployment.md), where these locks are then shared by all.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable

from sqlalchemy import Connection, text

PARTITIONS = 16
"""How many partitions numbers are hashed into. More: finer grain, but more transactions per
batch (the ingest service counts one per partition touched); 16 leaves 2-8 processes room."""

LOCK_SPACE = 742_011_390
"""The first key of the two-key advisory locks (`pg_advisory_xact_lock(int4, int4)`): any
constant no other advisory lock of the database uses; the second key is the partition."""


def partition_of(phone_number_id: str) -> int:
    """The partition of a business number: CRC-32 (stable across processes and Python runs,
    unlike `hash`) of its id, modulo `PARTITIONS`."""
    return zlib.crc32(phone_number_id.encode("utf-8", "replace")) % PARTITIONS


def partitions_of(numbers: Iterable[str]) -> list[int]:
    """The partitions of these numbers, ascending: the order every lock is taken in."""
    return sorted({partition_of(number) for number in numbers})


def hold_counting_locks(conn: Connection, numbers: Iterable[str]) -> None:
    """Take the locks of these numbers until the end of `conn`'s transaction (waits for them).

    Taken in ascending order, so two transactions never deadlock on them. Taking a lock the
    transaction already holds is harmless (advisory locks stack)."""
    hold_partition_locks(conn, partitions_of(numbers))


def hold_partition_locks(conn: Connection, partitions: Iterable[int]) -> None:
    if conn.dialect.name != "postgresql":
        return
    for partition in sorted(set(partitions)):
        conn.execute(
            text("SELECT pg_advisory_xact_lock(:space, :partition)"),
            {"space": LOCK_SPACE, "partition": partition},
        )


def try_partition_locks(conn: Connection, partitions: Iterable[int]) -> bool:
    """Take these partitions' locks if no other transaction holds any of them (never waits);
    False if one is taken. The caller must then end the transaction: locks taken before the
    busy one stay held until it ends."""
    if conn.dialect.name != "postgresql":
        return True
    for partition in sorted(set(partitions)):
        got = conn.execute(
            text("SELECT pg_try_advisory_xact_lock(:space, :partition)"),
            {"space": LOCK_SPACE, "partition": partition},
        ).scalar_one()
        if not got:
            return False
    return True
