"""Per-account Meta access tokens, sealed: meta_tokens

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-07

Why: issue 12. The spec lets an operator give each account its own Meta token (a system user's
token per business) instead of one `WASTATS_META_ACCESS_TOKEN` for every WABA. A token is a
secret, so the row holds it sealed (AES-256-GCM under a key of its own derived from the body
keys, bound to the account) with the id of the key that sealed it (docs/security.md).

"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from wastats.store.migrations.citus import distribute_new_table

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

Id64 = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "meta_tokens",
        sa.Column("account_id", Id64, nullable=False),
        sa.Column("sealed", sa.LargeBinary(), nullable=False),
        sa.Column("key_id", sa.String(16), nullable=False),
        sa.Column("set_at", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["account_id"],
            ["accounts.id"],
            name=op.f("fk_meta_tokens_account_id_accounts"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("account_id", name=op.f("pk_meta_tokens")),
    )
    distribute_new_table("meta_tokens")  # on an already distributed Citus database


def downgrade() -> None:
    op.drop_table("meta_tokens")
