"""account rollups: monthly counts summed over each account's numbers

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-25
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from wastats.store.migrations.citus import distribute_new_table

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "account_monthly_counts",
        sa.Column(
            "account_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False
        ),
        sa.Column("month", sa.Integer(), nullable=False),
        sa.Column("bucket", sa.String(length=16), nullable=False),
        sa.Column("category", sa.String(length=48), nullable=False),
        sa.Column("pricing_type", sa.String(length=48), nullable=False),
        sa.Column("units", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["account_id"],
            ["accounts.id"],
            name=op.f("fk_account_monthly_counts_account_id_accounts"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint(
            "account_id",
            "month",
            "bucket",
            "category",
            "pricing_type",
            name=op.f("pk_account_monthly_counts"),
        ),  # fmt: skip
    )
    distribute_new_table("account_monthly_counts")  # on a distributed Citus database
    # Existing data: the sum of the per-number rollups of registered numbers.
    op.execute(
        "INSERT INTO account_monthly_counts "
        "SELECT b.account_id, m.month, m.bucket, m.category, m.pricing_type, SUM(m.units) "
        "FROM monthly_counts m JOIN business_numbers b "
        "ON b.phone_number_id = m.phone_number_id "
        "GROUP BY b.account_id, m.month, m.bucket, m.category, m.pricing_type"
    )


def downgrade() -> None:
    op.drop_table("account_monthly_counts")
