"""Repository: how each table is laid out on Citus, and `wastats db distribute`.

The one registry of the tables' roles on a Citus cluster (docs/deployment.md): a table created
in `store/schema.py` must be added to exactly one of `DISTRIBUTED`, `REFERENCE` or
`COORDINATOR_LOCAL` — one line — or `tests/test_citus.py` fails. Migrations that create a table
call `migrations/citus.py`, which distributes it as registered here when the server runs Citus.

Every wastats process connects to the coordinator: the counting locks (`store.locks`) are
advisory locks, which exist only on the node they are taken on, and the coordinator-local tables
live only there.
"""

from __future__ import annotations

from sqlalchemy import Connection, text

from wastats.store.db import Database

DISTRIBUTED: dict[str, str] = {
    # table: distribution column. Tables with the same column are co-located with the first of
    # them listed, so a batch's statements for one number run on one node.
    "counted_units": "phone_number_id",
    "inbound_messages": "phone_number_id",
    "message_facts": "phone_number_id",
    "message_conversations": "phone_number_id",
    "user_links": "phone_number_id",
    "monthly_counts": "phone_number_id",
    "number_activity": "phone_number_id",
    "account_monthly_counts": "account_id",
    "meta_reported": "phone_number_id",  # Meta's record (migration 0008)
}
"""Tables sharded by their distribution column: every query on them filters by it."""

REFERENCE: tuple[str, ...] = (
    # In this order: a reference table's foreign keys point at tables listed before it.
    "accounts",
    "access_tokens",
    "login_failures",
    "business_numbers",
    "service_state",
    "meta_sync_state",  # one row per linked WABA (migration 0008)
    "released_numbers",  # which account last let a number go (migration 0010)
    "meta_tokens",  # an account's own sealed Meta token, one row per account (migration 0011)
)
"""Small tables copied to every node (joined with distributed tables)."""

COORDINATOR_LOCAL: tuple[str, ...] = (
    "inbox",  # an append-only log of raw bodies, purged after the retention: never joined
    "inbox_bodies",  # the inbox rows' bodies while they are kept (migration 0014)
    # Forwarding (migration 0009): deliveries point at inbox rows, so they live beside them.
    "forward_destinations",
    "forward_deliveries",
)
"""Tables left as plain tables on the coordinator."""


class NotCitus(Exception):
    """The server has no Citus extension: nothing to distribute."""


def has_citus(conn: Connection) -> bool:
    """Whether the database has the Citus extension. A statement of its own that is valid on
    any PostgreSQL (naming Citus's catalog, `pg_dist_partition`, fails where it is absent)."""
    if conn.dialect.name != "postgresql":
        return False
    found = conn.execute(text("SELECT count(*) FROM pg_extension WHERE extname = 'citus'"))
    return bool(found.scalar_one())


def roles(conn: Connection) -> dict[str, str]:
    """{table: 'distributed' | 'reference'} of the tables Citus already manages."""
    rows = conn.execute(
        text(
            "SELECT logicalrelid::regclass::text, partmethod FROM pg_dist_partition "
            "WHERE logicalrelid::regclass::text = ANY(:tables)"
        ),
        {"tables": [*DISTRIBUTED, *REFERENCE]},
    )
    return {table: "reference" if method == "n" else "distributed" for table, method in rows}


def distribute_table(conn: Connection, table: str, done: dict[str, str] | None = None) -> bool:
    """Make `table` what the registry says, if it is not yet (True if it changed anything).

    One table per statement: `create_distributed_table` copies the rows a table holds, and a
    table with a foreign key to a reference table is copied sequentially, which fails inside a
    transaction that already copied another table in parallel (the caller commits after each)."""
    done = roles(conn) if done is None else done
    if table in done:
        return False
    if conn.execute(text("SELECT to_regclass(:t) IS NULL"), {"t": table}).scalar_one():
        return False  # an older schema: the migration that creates it distributes it
    if table in REFERENCE:
        conn.execute(text("SELECT create_reference_table(:t)"), {"t": table})
    elif table in DISTRIBUTED:
        column = DISTRIBUTED[table]
        leader = next(t for t, c in DISTRIBUTED.items() if c == column)
        colocate = leader if leader != table and leader in done else "default"
        conn.execute(
            text("SELECT create_distributed_table(:t, :c, colocate_with => :with)"),
            {"t": table, "c": column, "with": colocate},
        )
    else:
        return False
    done[table] = "reference" if table in REFERENCE else "distributed"
    return True


def tables_in_order() -> list[str]:
    """Reference tables first (distributed tables' foreign keys point at them), then the
    distributed ones, each distribution column's leader first."""
    return [*REFERENCE, *DISTRIBUTED]


def truncate_local_data(conn: Connection, table: str) -> None:
    """Drop the copy of the rows Citus leaves in the coordinator's own table after distributing
    it (the shards hold them now)."""
    conn.execute(text("SELECT truncate_local_data_after_distributing_table(:t)"), {"t": table})


def distribute(db: Database) -> list[str]:
    """Make every registered table what the registry says (`wastats db distribute`); returns
    the tables changed (none when run again). Raises NotCitus on a server without Citus.

    One table per transaction (Citus copies a table's rows when distributing it), then the
    coordinator's leftover local copies of those tables are dropped."""
    with db.read() as conn:
        if not has_citus(conn):
            raise NotCitus(
                "this database has no Citus extension: `wastats db distribute` is for a Citus "
                "coordinator (CREATE EXTENSION citus on every node; see docs/deployment.md)"
            )
        done = roles(conn)
    changed: list[str] = []
    for table in tables_in_order():
        with db.write() as conn:
            if distribute_table(conn, table, done):
                changed.append(table)
    for table in changed:
        with db.write() as conn:
            truncate_local_data(conn, table)
    return changed
