"""message facts: one row per message holding all its statuses, instead of one row per status;
the customer index of counted units covers incoming sessions only

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-25

Why: the rules always read a message's statuses together, and with hashed (random) keys every
row costs a random index write; one row per message is about a third of them, which is what lets
a backfill keep up (docs/benchmarks.md, "Import"). The status rows move over unchanged, as JSON
arrays in the order below (the same as `wastats.store.facts.STATUS_FIELDS`).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op

from wastats.store.migrations.citus import distribute_new_table

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

FIELDS = ("status", "ts", "conversation_id", "conversation_origin", "expiration_ts",
          "pricing_model", "pricing_type", "pricing_category", "billable", "user_key",
          "country")  # fmt: skip
BATCH = 5_000


def _encode(rows: Sequence[Sequence[Any]]) -> str:
    """Distinct rows by time, then status: what the application writes."""
    unique = {tuple(row) for row in rows}
    ordered = sorted(unique, key=lambda row: (row[1], row[0]))
    return json.dumps([list(row) for row in ordered], separators=(",", ":"), ensure_ascii=False)


def _grouped(conn: sa.Connection) -> Iterator[tuple[str, str, list[list[Any]]]]:
    """(number, message_key, status rows) of every message, streamed in key order."""
    result = conn.execute(
        sa.text(
            f"SELECT phone_number_id, message_key, {', '.join(FIELDS)} FROM message_statuses "
            "ORDER BY phone_number_id, message_key"
        )
    )
    current: tuple[str, str] | None = None
    rows: list[list[Any]] = []
    for number, key, *row in result:
        if current != (number, key):
            if current is not None:
                yield current[0], current[1], rows
            current, rows = (number, key), []
        billable = row[FIELDS.index("billable")]
        row[FIELDS.index("billable")] = None if billable is None else bool(billable)
        rows.append(row)
    if current is not None:
        yield current[0], current[1], rows


def upgrade() -> None:
    op.create_table(
        "message_facts",
        sa.Column("phone_number_id", sa.String(length=64), nullable=False),
        sa.Column("message_key", sa.String(length=200), nullable=False),
        sa.Column("statuses", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("phone_number_id", "message_key", name=op.f("pk_message_facts")),
    )
    distribute_new_table("message_facts")  # on a distributed Citus database
    op.create_table(
        "message_conversations",
        sa.Column("phone_number_id", sa.String(length=64), nullable=False),
        sa.Column("conversation_id", sa.String(length=160), nullable=False),
        sa.Column("message_key", sa.String(length=200), nullable=False),
        sa.PrimaryKeyConstraint(
            "phone_number_id",
            "conversation_id",
            "message_key",
            name=op.f("pk_message_conversations"),
        ),
    )
    distribute_new_table("message_conversations")  # on a distributed Citus database
    conn = op.get_bind()
    facts = sa.table(
        "message_facts", *(sa.column(c) for c in ("phone_number_id", "message_key", "statuses"))
    )
    batch: list[dict[str, str]] = []
    for number, key, rows in _grouped(conn):
        batch.append({"phone_number_id": number, "message_key": key, "statuses": _encode(rows)})
        if len(batch) >= BATCH:
            conn.execute(facts.insert(), batch)
            batch = []
    if batch:
        conn.execute(facts.insert(), batch)
    op.execute(
        "INSERT INTO message_conversations (phone_number_id, conversation_id, message_key) "
        "SELECT DISTINCT phone_number_id, conversation_id, message_key FROM message_statuses "
        "WHERE conversation_id IS NOT NULL"
    )
    op.drop_table("message_statuses")
    # Message units change customer by being recomputed (like any other change of facts), not
    # by an UPDATE through this index, so it needs to cover incoming sessions only.
    _replace_customer_index(sessions_only=True)


def _replace_customer_index(*, sessions_only: bool) -> None:
    where = {"sqlite_where": sa.text("kind = 'incoming'"),
             "postgresql_where": sa.text("kind = 'incoming'")} if sessions_only else {}  # fmt: skip
    with op.batch_alter_table("counted_units", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_counted_units_phone_number_id_user_key"))
        batch_op.create_index(
            batch_op.f("ix_counted_units_phone_number_id_user_key"),
            ["phone_number_id", "user_key"],
            unique=False,
            **where,
        )


def downgrade() -> None:
    _replace_customer_index(sessions_only=False)
    op.create_table(
        "message_statuses",
        sa.Column("phone_number_id", sa.String(length=64), nullable=False),
        sa.Column("message_key", sa.String(length=200), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("ts", sa.BigInteger(), nullable=False),
        sa.Column("conversation_id", sa.String(length=160), nullable=True),
        sa.Column("conversation_origin", sa.String(length=48), nullable=True),
        sa.Column("expiration_ts", sa.BigInteger(), nullable=True),
        sa.Column("pricing_model", sa.String(length=8), nullable=True),
        sa.Column("pricing_type", sa.String(length=48), nullable=True),
        sa.Column("pricing_category", sa.String(length=48), nullable=True),
        sa.Column("billable", sa.Boolean(), nullable=True),
        sa.Column("user_key", sa.String(length=32), nullable=True),
        sa.Column("country", sa.String(length=2), nullable=True),
        sa.PrimaryKeyConstraint(
            "phone_number_id", "message_key", "status", "ts", name=op.f("pk_message_statuses")
        ),
    )
    with op.batch_alter_table("message_statuses", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_message_statuses_phone_number_id_conversation_id"),
            ["phone_number_id", "conversation_id"],
            unique=False,
            sqlite_where=sa.text("conversation_id IS NOT NULL"),
            postgresql_where=sa.text("conversation_id IS NOT NULL"),
        )
    conn = op.get_bind()
    statuses = sa.table(
        "message_statuses", *(sa.column(c) for c in ("phone_number_id", "message_key", *FIELDS))
    )
    rows = conn.execute(sa.text("SELECT phone_number_id, message_key, statuses FROM message_facts"))
    batch: list[dict[str, Any]] = []
    for number, key, stored in rows.all():
        for row in json.loads(stored):
            fields = dict(zip(FIELDS, row, strict=True))
            batch.append({"phone_number_id": number, "message_key": key, **fields})
    # The old key was (message, status, time): of two statuses that differ only in other fields,
    # the old table kept one.
    seen: set[tuple[str, str, str, int]] = set()
    unique = []
    for row in batch:
        identity = (row["phone_number_id"], row["message_key"], row["status"], row["ts"])
        if identity not in seen:
            seen.add(identity)
            unique.append(row)
    for start in range(0, len(unique), BATCH):
        conn.execute(statuses.insert(), unique[start : start + BATCH])
    op.drop_table("message_conversations")
    op.drop_table("message_facts")
