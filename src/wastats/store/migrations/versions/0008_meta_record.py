"""Meta's record: reported half-hour slots, per-WABA sync state, history-from-Meta setting

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-02

Why: spec/meta-record.md. `meta_reported` keeps Meta's `pricing_analytics` per half-hour UTC
slot (so any whole- or half-hour zone re-buckets exactly), keyed by phone-number id like the
facts, so rows of unregistered numbers are kept; `meta_sync_state` is what lets a sync resume
after a crash and what `wastats meta status` shows. `accounts.history_from_meta` lets the
compatible API answer months before the first observed day from reported data (off by default).

(0007 is being added on another branch; whoever merges re-chains this onto it.)
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from wastats.store.migrations.citus import distribute_new_table

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

Id64 = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "meta_reported",
        sa.Column("phone_number_id", sa.String(64), nullable=False),
        sa.Column("slot", sa.BigInteger(), nullable=False),
        sa.Column("country", sa.String(2), nullable=False),
        sa.Column("category", sa.String(48), nullable=False),
        sa.Column("pricing_type", sa.String(48), nullable=False),
        sa.Column("tier", sa.String(32), nullable=False),
        sa.Column("waba_id", sa.String(64), nullable=False),
        sa.Column("volume", sa.BigInteger(), nullable=False),
        sa.Column("cost_micros", sa.BigInteger(), nullable=True),
        sa.Column("synced_at", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint(
            "phone_number_id",
            "slot",
            "country",
            "category",
            "pricing_type",
            "tier",
            name="pk_meta_reported",
        ),
    )
    distribute_new_table("meta_reported")  # on an already distributed Citus database
    op.create_table(
        "meta_sync_state",
        sa.Column("waba_id", sa.String(64), nullable=False),
        sa.Column("account_id", Id64, nullable=True),
        sa.Column("linked_at", sa.BigInteger(), nullable=False),
        sa.Column("covered_from", sa.BigInteger(), nullable=True),
        sa.Column("covered_to", sa.BigInteger(), nullable=True),
        sa.Column("last_success", sa.BigInteger(), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("last_error_at", sa.BigInteger(), nullable=True),
        sa.Column("failures", sa.Integer(), nullable=False),
        sa.Column("next_try", sa.BigInteger(), nullable=False),
        sa.Column("lease_until", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["account_id"],
            ["accounts.id"],
            name="fk_meta_sync_state_account_id_accounts",
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("waba_id", name="pk_meta_sync_state"),
    )
    distribute_new_table("meta_sync_state")  # on an already distributed Citus database
    with op.batch_alter_table("accounts") as batch_op:
        batch_op.add_column(
            sa.Column("history_from_meta", sa.Boolean(), nullable=False, server_default=sa.false())
        )


def downgrade() -> None:
    with op.batch_alter_table("accounts") as batch_op:
        batch_op.drop_column("history_from_meta")
    op.drop_table("meta_sync_state")
    op.drop_table("meta_reported")
