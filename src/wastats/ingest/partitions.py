"""Counting inbox bodies in parallel: one transaction per partition of business numbers.

On PostgreSQL several processes count at once (`wastats serve --workers N`, several machines).
Counting a batch holds the locks of the numbers it touches (`store.locks`), so a batch spread
over every number would hold every lock and processes would take turns. Instead the bodies of a
batch are grouped by the partitions of the numbers they name, and each group is counted in a
transaction of its own that first *tries* its partitions' locks: a group whose partition another
process is counting is put off until the end (then waited for), and the process counts another
partition meanwhile. Two processes handed bodies for 20 numbers thus count different partitions
at the same time instead of one after the other.

Inside its transaction, once it holds the locks, a group re-reads which of its bodies are still
pending: a body another process counted meanwhile (two sweeps reading the same pending rows, a
crashed process's rows) is skipped, not counted twice. Counting it twice would still be exact
(facts merge by set union), only wasted.

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


def count_bodies(
    db: Database,
    pipeline: Pipeline,
    sealer: BodySealer,
    ids: Sequence[int],
    now: int,
    *,
    keep_bodies: bool = True,
) -> BatchReport:
    """Count the pending inbox rows among `ids` (rows no longer pending are skipped). Without
    `keep_bodies` (WASTATS_RAW_RETENTION_DAYS=0), each counted body is dropped in the
    transaction that counts it, so no body outlives its counting."""
    if db.dialect != "postgresql":
        with db.write() as conn:
            return _count_group(conn, pipeline, sealer, list(ids), now, keep_bodies)
    # A write transaction, though it only reads: opening a body no key opens marks it rejected.
    with db.write() as conn:
        groups = group_by_partition(inbox_repo.load_bodies(conn, ids, sealer))
    report = BatchReport()
    # Each process starts at its own place, so processes handed the same rows (two sweeps)
    # begin with different partitions rather than all trying the first.
    order = sorted(groups)
    start = random.randrange(len(order)) if order else 0
    deferred: list[tuple[int, ...]] = []
    for partitions in order[start:] + order[:start]:
        with db.write() as conn:
            if not locks_repo.try_partition_locks(conn, partitions):
                deferred.append(partitions)  # another process is counting it: come back later
                continue
            report.add(_count_group(conn, pipeline, sealer, groups[partitions], now, keep_bodies))
    for partitions in deferred:
        with db.write() as conn:
            locks_repo.hold_partition_locks(conn, partitions)
            report.add(_count_group(conn, pipeline, sealer, groups[partitions], now, keep_bodies))
    return report


def _count_group(
    conn: Connection,
    pipeline: Pipeline,
    sealer: BodySealer,
    ids: list[int],
    now: int,
    keep_bodies: bool,
) -> BatchReport:
    bodies = inbox_repo.load_bodies(conn, ids, sealer)  # only those still pending, now locked
    if not bodies:
        return BatchReport()
    report = pipeline.process(conn, bodies, now)
    if not keep_bodies:
        # Nothing kept once counted: in the same transaction, so no body outlives it.
        inbox_repo.purge_bodies(conn, now + 1, ids=[i for i, _ in bodies])
    return report
