"""A moved number counts for its new owner from the move on: counts_from, released_numbers

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-02

Why: issue 11. A number removed from one account and added to another showed the new owner
the old owner's history. `business_numbers.counts_from` (Unix seconds, NULL for all history)
is where the new owner's counts start; `released_numbers` remembers which account last
removed a number, so adding it back decides whether it changed hands (docs/counting.md).
Existing registrations keep all their history (NULL).

"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from wastats.store.migrations.citus import distribute_new_table

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

Id64 = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    with op.batch_alter_table("business_numbers", schema=None) as batch_op:
        batch_op.add_column(sa.Column("counts_from", sa.BigInteger(), nullable=True))
    op.create_table(
        "released_numbers",
        sa.Column("phone_number_id", sa.String(64), nullable=False),
        sa.Column("account_id", Id64, nullable=True),
        sa.Column("released_at", sa.BigInteger(), nullable=False),
        sa.Column("counts_from", sa.BigInteger(), nullable=True),
        sa.ForeignKeyConstraint(
            ["account_id"],
            ["accounts.id"],
            name=op.f("fk_released_numbers_account_id_accounts"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("phone_number_id", name=op.f("pk_released_numbers")),
    )
    distribute_new_table("released_numbers")  # on an already distributed Citus database


def downgrade() -> None:
    op.drop_table("released_numbers")
    with op.batch_alter_table("business_numbers", schema=None) as batch_op:
        batch_op.drop_column("counts_from")
