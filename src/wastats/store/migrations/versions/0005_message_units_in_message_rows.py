"""message units move into their message's row

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-25

Why: a Rule P unit belongs to exactly one message and changes only when that message's
statuses do, which rewrites the message's row anyway. In `counted_units` it cost a second
random index write per message, the largest single cost of a backfill (docs/benchmarks.md,
"Import"). Incoming sessions and CBP conversations stay in `counted_units`.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

# (message_facts column, counted_units column) of a message unit.
COLUMNS = (("unit_ts", "ts"), ("unit_bucket", "bucket"), ("unit_category", "category"),
           ("unit_pricing_type", "pricing_type"), ("unit_era", "era"),
           ("unit_user_key", "user_key"), ("unit_country", "country"))  # fmt: skip
TYPES: dict[str, sa.types.TypeEngine[Any]] = {
    "unit_ts": sa.BigInteger(),
    "unit_bucket": sa.String(length=16),
    "unit_category": sa.String(length=48),
    "unit_pricing_type": sa.String(length=48),
    "unit_era": sa.String(length=4),
    "unit_user_key": sa.String(length=32),
    "unit_country": sa.String(length=2),
}
# Matched as `message_key = substr(unit_key, 3)`, not `unit_key = 'P:' || message_key`: SQLite
# then finds each unit's message through the message's primary key. The other way round it
# scanned all of a number's messages per unit (found on a 1M-status database: it never ended).
SAME_MESSAGE = (
    "u.phone_number_id = message_facts.phone_number_id "
    "AND message_facts.message_key = substr(u.unit_key, 3) AND u.kind = 'message'"
)


def upgrade() -> None:
    with op.batch_alter_table("message_facts", schema=None) as batch_op:
        for name, _ in COLUMNS:
            batch_op.add_column(sa.Column(name, TYPES[name], nullable=True))
        batch_op.create_index(
            batch_op.f("ix_message_facts_phone_number_id_unit_ts"),
            ["phone_number_id", "unit_ts"],
            unique=False,
            sqlite_where=sa.text("unit_ts IS NOT NULL"),
            postgresql_where=sa.text("unit_ts IS NOT NULL"),
        )
    # UPDATE ... FROM: PostgreSQL, and SQLite since 3.33.
    assignments = ", ".join(f"{mine} = u.{theirs}" for mine, theirs in COLUMNS)
    op.execute(
        f"UPDATE message_facts SET {assignments} FROM counted_units AS u WHERE {SAME_MESSAGE}"
    )
    op.execute(
        "DELETE FROM counted_units WHERE kind = 'message' AND EXISTS (SELECT 1 FROM message_facts "
        "WHERE message_facts.phone_number_id = counted_units.phone_number_id "
        "AND message_facts.message_key = substr(counted_units.unit_key, 3))"
    )


def downgrade() -> None:
    mine = ", ".join(m for m, _ in COLUMNS)
    theirs = ", ".join(t for _, t in COLUMNS)
    op.execute(
        f"INSERT INTO counted_units (phone_number_id, unit_key, kind, {theirs}) "
        f"SELECT phone_number_id, 'P:' || message_key, 'message', {mine} FROM message_facts "
        "WHERE unit_ts IS NOT NULL"
    )
    with op.batch_alter_table("message_facts", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_message_facts_phone_number_id_unit_ts"))
        for name, _ in reversed(COLUMNS):
            batch_op.drop_column(name)
