"""For migrations: a table a migration creates is distributed at once on a distributed database.

A database distributed with `wastats db distribute` and then upgraded gets new tables from the
migrations; left as plain coordinator tables, the next migration joining them with distributed
ones fails ("relation message_facts is not distributed"). So a migration that creates a table
calls `distribute_new_table` right after creating it, before filling it: where the database is
already distributed, the table is distributed as `store/citus.py` registers it. On plain
PostgreSQL, on SQLite, and on a Citus database not distributed yet (`wastats db distribute`
will do it, with the others) nothing happens.
"""

from __future__ import annotations

from alembic import op
from sqlalchemy import text

from wastats.store import citus


def distribute_new_table(table: str) -> None:
    conn = op.get_bind()
    # Citus detected in a statement of its own, before its catalog is named (`citus.roles`):
    # naming `pg_dist_partition` fails on plain PostgreSQL.
    if not citus.has_citus(conn):
        return
    done = citus.roles(conn)
    if done:  # already distributed: the new table must be too, or joins with it fail
        # One connection per node for the rest of the migration's transaction: after a table
        # is distributed in parallel, creating a table with a foreign key to a reference table
        # (or changing one) in the same transaction fails ("cannot modify table ... because
        # there was a parallel operation on a distributed table").
        conn.execute(text("SET LOCAL citus.multi_shard_modify_mode TO 'sequential'"))
        citus.distribute_table(conn, table, done)
