"""forwarding: destinations and one delivery row per (inbox body, destination)

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-02

Why: wastats can stand in front of the customer's existing webhook consumer and pass every
accepted body on, byte-exact with Meta's signature (issue 15, docs/forwarding.md). Deliveries
are rows written in the same transaction as the inbox insert, so nothing accepted is skipped
after a crash, and are retried from the database for up to 7 days.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

Id64 = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "forward_destinations",
        sa.Column("id", Id64, primary_key=True, autoincrement=True),
        sa.Column("url", sa.Text(), nullable=False),
        sa.Column("scope", sa.String(16), nullable=False),
        sa.Column("scope_value", sa.String(64), nullable=False),
        sa.Column("source", sa.String(16), nullable=False),
        sa.Column("paused", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.Column("delivered_total", sa.BigInteger(), nullable=False),
        sa.Column("failed_attempts_total", sa.BigInteger(), nullable=False),
        sa.Column("last_delivered_at", sa.BigInteger()),
        sa.Column("last_error", sa.Text()),
        sa.Column("last_error_at", sa.BigInteger()),
        sa.PrimaryKeyConstraint("id", name="pk_forward_destinations"),
    )
    op.create_index(
        "ix_forward_destinations_url_scope_scope_value",
        "forward_destinations",
        ["url", "scope", "scope_value"],
        unique=True,
    )
    op.create_table(
        "forward_deliveries",
        sa.Column("id", Id64, primary_key=True, autoincrement=True),
        sa.Column("inbox_id", Id64, nullable=False),
        sa.Column("destination_id", Id64, nullable=False),
        sa.Column("headers", sa.Text(), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", sa.BigInteger(), nullable=False),
        sa.Column("last_error", sa.Text()),
        sa.Column("delivered_at", sa.BigInteger()),
        sa.Column("dead_at", sa.BigInteger()),
        sa.PrimaryKeyConstraint("id", name="pk_forward_deliveries"),
        sa.ForeignKeyConstraint(
            ["inbox_id"], ["inbox.id"], name="fk_forward_deliveries_inbox_id_inbox"
        ),
        sa.ForeignKeyConstraint(
            ["destination_id"],
            ["forward_destinations.id"],
            name="fk_forward_deliveries_destination_id_forward_destinations",
            ondelete="CASCADE",
        ),
    )
    op.create_index(
        "ix_forward_deliveries_inbox_id_destination_id",
        "forward_deliveries",
        ["inbox_id", "destination_id"],
        unique=True,
    )
    op.create_index(
        "ix_forward_deliveries_destination_id_state_next_attempt_at",
        "forward_deliveries",
        ["destination_id", "state", "next_attempt_at"],
    )


def downgrade() -> None:
    op.drop_table("forward_deliveries")
    op.drop_table("forward_destinations")
