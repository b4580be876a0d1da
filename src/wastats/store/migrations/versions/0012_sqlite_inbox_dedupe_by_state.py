"""SQLite: the inbox's unique body hash split into a pending and a settled index

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-07

Why: issue 13. A unique index on a SHA-256 puts each new body in a random page of an index as
large as the inbox, and SQLite writes every page a commit touched to the WAL again (then to
the database at the checkpoint, with an fsync each). On the inbox writer's commit, which every
webhook waits for, that was half of what storing a body cost (measured: 20 KB written per
single-status webhook with the index, 3 KB without). Split by state, the pending rows' index
stays small (the counting child settles them within milliseconds), so the webhook's commit
touches few pages of it; a row moves to the settled rows' index in the counting child's
transaction, which settles hundreds of bodies in one commit, off the webhook's path.

Uniqueness is kept whole: each index is unique, and the writer looks a new body's hash up
among the settled rows in the same write transaction before inserting it
(`inbox.insert_bodies`); SQLite has one writer at a time, so nothing comes in between.
PostgreSQL keeps its one unique constraint: processes there insert concurrently, and a lookup
then an insert would race.

SQLite cannot drop a table's own UNIQUE constraint, so the table is copied (once; a large
inbox takes a while). The migration engine runs without foreign key enforcement, so the copy
does not touch `forward_deliveries`.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    if op.get_bind().dialect.name != "sqlite":
        return
    with op.batch_alter_table("inbox", schema=None, recreate="always") as batch_op:
        batch_op.drop_constraint("uq_inbox_body_sha256", type_="unique")
        batch_op.create_index(
            "uq_inbox_pending_sha256", ["body_sha256"], unique=True,
            sqlite_where=sa.text("state = 'pending'"),
        )  # fmt: skip
        batch_op.create_index(
            "uq_inbox_settled_sha256", ["body_sha256"], unique=True,
            sqlite_where=sa.text("state <> 'pending'"),
        )  # fmt: skip


def downgrade() -> None:
    if op.get_bind().dialect.name != "sqlite":
        return
    with op.batch_alter_table("inbox", schema=None, recreate="always") as batch_op:
        batch_op.drop_index("uq_inbox_settled_sha256")
        batch_op.drop_index("uq_inbox_pending_sha256")
        batch_op.create_unique_constraint("uq_inbox_body_sha256", ["body_sha256"])
