"""Counting inbox bodies in parallel: transactions that each claim free partitions of numbers.

On PostgreSQL several processes count at once (`wastats serve --workers N`, several machines).
Counting a batch holds the locks of the numbers it touches (`store.locks`), so a batch spread
over every number would hold every lock and processes would take turns. Instead the bodies of a
batch are grouped by the partitions of the numbers they name, and counted in a few transactions
(`TRANSACTIONS_PER_BATCH`), each of which *tries* the locks of a share of the partitions: the
partitions another process is counting are put off, and the process counts the free ones
meanwhile. Two processes handed bodies for 20 numbers thus count different partitions at the
same time instead of one after the other.

Nothing waits for another process's rows (`store.inbox.claim_pending`, `FOR UPDATE SKIP
LOCKED`): the batch's bodies are read, once, in a short transaction that skips the rows another
transaction holds (that process is counting them); each counting transaction then claims its
rows again, under its partitions' locks, and counts only those still pending and unclaimed. A
body is thus counted by exactly one transaction (counting it twice would still be exact, facts
merge by set union, only wasted). The partitions put off are tried again, round after round,
while rounds make progress; when none does, a partition whose remaining rows another
transaction holds is dropped (nothing left to do), otherwise (that process counts other rows of
the partition) its lock is waited for.

What was found to serialise two processes, and what this does about it (docs/benchmarks.md,
"Counting in parallel"): one transaction per partition (16 per batch, each with the fixed cost
of the pipeline's dozen statements: +25% CPU in PostgreSQL) is now about four; the process that
finished its share waited at the end of every batch for the other's partitions (now: skipped
when the other holds the rows); both processes of a sweep read and opened the same bodies (now:
each skips what the other holds).

SQLite has one writer at a time: there a batch stays one transaction, as before.
"""

from __future__ import annotations

import random
import re
from collections import defaultdict
from collections.abc import Sequence

from sqlalchemy import Connection

from wastats.ingest.pipeline import BatchReport, Pipeline
from wastats.sealing import BodySealer
from wastats.store import inbox as inbox_repo
from wastats.store import locks as locks_repo
from wastats.store.db import Database

_NUMBER = re.compile(rb'"phone_number_id"\s*:\s*"([^"\\]{0,64})"')
"""The business numbers a raw body names (`metadata.phone_number_id` of each change). Only to
group bodies: the locks a transaction holds are those of the numbers the parser found
(`Pipeline.store`), so a body this misses is still counted under the right locks."""


def group_by_partition(bodies: Sequence[tuple[int, bytes]]) -> dict[tuple[int, ...], list[int]]:
    """{partitions named by the bodies: their inbox ids}: nearly every body names one number,
    so nearly every group has one partition. A body naming none (unreadable, or no events)
    goes with the partition of the empty number, where the pipeline files such events."""
    groups: dict[tuple[int, ...], list[int]] = defaultdict(list)
    for inbox_id, raw in bodies:
        numbers = {match.decode("utf-8", "replace") for match in _NUMBER.findall(raw)}
        groups[tuple(locks_repo.partitions_of(numbers or {""}))].append(inbox_id)
    return dict(groups)


TRANSACTIONS_PER_BATCH = 4
"""How many transactions a batch's partitions are spread over (fewer if it touches fewer). One
per partition made every batch pay the pipeline's fixed cost per transaction up to 16 times;
one for all would hold every partition and leave another process nothing to count. Four lets
two processes interleave at a quarter of the fixed cost."""


def count_bodies(
    db: Database,
    pipeline: Pipeline,
    sealer: BodySealer,
    ids: Sequence[int],
    now: int,
    *,
    keep_bodies: bool = True,
) -> BatchReport:
    """Count the pending inbox rows among `ids` (rows no longer pending, or held by another
    process counting them, are skipped). Without `keep_bodies` (WASTATS_RAW_RETENTION_DAYS=0),
    each counted body is dropped in the transaction that counts it, so no body outlives its
    counting."""
    if db.dialect != "postgresql":
        with db.write() as conn:
            return _count_group(conn, pipeline, sealer, list(ids), now, keep_bodies)
    # A write transaction, though it only reads: opening a body no key opens marks it rejected.
    # The rows another transaction holds are left out: that process counts them.
    with db.write() as conn:
        bodies = dict(inbox_repo.load_bodies(conn, ids, sealer, lock=True))
    groups = group_by_partition(list(bodies.items()))
    report = BatchReport()
    # Each process starts at its own place, so processes handed the same rows (two sweeps)
    # begin with different partitions rather than all trying the first.
    order = sorted(groups)
    start = random.randrange(len(order)) if order else 0
    order = order[start:] + order[:start]
    share = max(1, -(-len(order) // TRANSACTIONS_PER_BATCH))  # ceiling
    deferred: list[tuple[int, ...]] = []
    for first in range(0, len(order), share):
        with db.write() as conn:
            claimed: list[int] = []
            for partitions in order[first : first + share]:
                if locks_repo.try_partition_locks(conn, partitions):
                    claimed += groups[partitions]
                else:
                    deferred.append(partitions)  # another process is counting it: later
            report.add(_count_group(conn, pipeline, sealer, claimed, now, keep_bodies, bodies))
    while deferred:
        # Another round of tries: partitions come free as the other processes commit.
        busy: list[tuple[int, ...]] = []
        for partitions in deferred:
            with db.write() as conn:
                if locks_repo.try_partition_locks(conn, partitions):
                    report.add(
                        _count_group(conn, pipeline, sealer, groups[partitions], now,
                                     keep_bodies, bodies)
                    )  # fmt: skip
                    continue
            busy.append(partitions)
        if len(busy) < len(deferred):
            deferred = busy
            continue
        # All still busy. Rows another process holds are its to count: wait for a partition
        # only if some of its rows are left to this one.
        partitions, deferred = busy[0], busy[1:]
        with db.write() as conn:
            left = inbox_repo.unclaimed_pending(conn, groups[partitions])
        if left:
            with db.write() as conn:
                locks_repo.hold_partition_locks(conn, partitions)
                report.add(_count_group(conn, pipeline, sealer, left, now, keep_bodies, bodies))
    return report


def _count_group(
    conn: Connection,
    pipeline: Pipeline,
    sealer: BodySealer,
    ids: list[int],
    now: int,
    keep_bodies: bool,
    opened: dict[int, bytes] | None = None,
) -> BatchReport:
    """Count those of `ids` still pending and not held by another transaction, in `conn`'s
    transaction (which holds their partitions' locks). `opened`: their bodies, already read
    and opened (a pending row's body never changes): only the claim is read again."""
    if not ids:
        return BatchReport()
    if opened is None:
        bodies = inbox_repo.load_bodies(conn, ids, sealer, lock=True)
    else:
        bodies = [(i, opened[i]) for i in inbox_repo.claim_pending(conn, ids) if i in opened]
    if not bodies:
        return BatchReport()
    report = pipeline.process(conn, bodies, now)
    if not keep_bodies:
        # Nothing kept once counted: in the same transaction, so no body outlives it.
        inbox_repo.purge_bodies(conn, now + 1, ids=[i for i, _ in bodies])
    return report
