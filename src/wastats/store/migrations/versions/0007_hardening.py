"""hardening: lockout counted per address and per (address, client id); sealed inbox bodies

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02

Why (issue 11):

* `login_failures` was keyed by the client IP alone, so one tenant's successful sign-in reset
  the count of an attacker guessing another tenant's secret from the same address, and ten
  typos locked out every tenant behind it. It now has one row per address (`client_id` '') and
  one per (address, client id), each with its own limit. The rows are short-lived counters, so
  the table is recreated empty rather than converted: at worst a lock in force during the
  upgrade ends early.
* Raw webhook bodies are sealed with AES-256-GCM; `inbox.body_key` names the key that sealed
  each one. Bodies stored before this revision keep `body_key` NULL (read as they are) until
  the service seals them at its first start (the key is not the migration's to know).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from wastats.store.migrations.citus import distribute_new_table

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.drop_table("login_failures")
    op.create_table(
        "login_failures",
        sa.Column("address", sa.String(length=64), nullable=False),
        sa.Column("client_id", sa.String(length=64), nullable=False),
        sa.Column("failures", sa.Integer(), nullable=False),
        sa.Column("window_start", sa.BigInteger(), nullable=False),
        sa.Column("locked_until", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("address", "client_id", name=op.f("pk_login_failures")),
    )
    distribute_new_table("login_failures")  # on an already distributed Citus database
    with op.batch_alter_table("login_failures", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_login_failures_window_start"), ["window_start"], unique=False
        )
    with op.batch_alter_table("inbox", schema=None) as batch_op:
        batch_op.add_column(sa.Column("body_key", sa.String(length=16), nullable=True))


def downgrade() -> None:
    # Sealed bodies cannot be read by an older wastats: they are dropped (their rows, hashes
    # and the facts derived from them stay, as after the retention purge).
    op.execute("UPDATE inbox SET body = NULL WHERE body_key IS NOT NULL")
    with op.batch_alter_table("inbox", schema=None) as batch_op:
        batch_op.drop_column("body_key")
    op.drop_table("login_failures")
    op.create_table(
        "login_failures",
        sa.Column("ip", sa.String(length=64), nullable=False),
        sa.Column("failures", sa.Integer(), nullable=False),
        sa.Column("window_start", sa.BigInteger(), nullable=False),
        sa.Column("locked_until", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("ip", name=op.f("pk_login_failures")),
    )
