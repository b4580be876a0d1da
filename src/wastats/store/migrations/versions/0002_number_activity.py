"""number activity: the newest event per number, for `as_of`

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from wastats.store.migrations.citus import distribute_new_table

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "number_activity",
        sa.Column("phone_number_id", sa.String(length=64), nullable=False),
        sa.Column("newest_event", sa.BigInteger(), nullable=False),
        sa.Column("last_received", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("phone_number_id", name=op.f("pk_number_activity")),
    )
    distribute_new_table("number_activity")  # on a distributed Citus database


def downgrade() -> None:
    op.drop_table("number_activity")
