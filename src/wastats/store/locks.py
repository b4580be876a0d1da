"""Repository: the lock that serialises counting across processes on PostgreSQL.

Everything that reads units and writes rollups from them must hold it for its transaction:
the pipeline's batches, registering or removing a number (which builds or drops its rollups
from its units) and recount. Without it, under PostgreSQL's READ COMMITTED, a number
registered while a batch for it was being counted could miss that batch's units in its
rollups: the batch did not see the registration, the registration did not see the batch's
units. SQLite needs nothing: it has one writer at a time (`store.db`).

One lock for all numbers: batches usually touch many numbers each, so per-number locks (taken
in a fixed order, to avoid deadlocks) would pay off only where batches touch disjoint numbers,
as on a sharded deployment (docs/deployment.md).
"""

from __future__ import annotations

from sqlalchemy import Connection, text

COUNTING_LOCK = 7_420_113_902
"""The advisory lock's key (any constant unused by other advisory locks of the database)."""


def hold_counting_lock(conn: Connection) -> None:
    """Take the counting lock until the end of `conn`'s transaction (waits for it)."""
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": COUNTING_LOCK})
