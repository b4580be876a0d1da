"""SQLite: the pending rows' hash index holds 8 hex digits of each hash, not 64

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-07

Why: issue 13. The counting child now gathers bigger batches under load (thousands of bodies:
each counting transaction then shares the pages it writes among more bodies), so more rows wait
as pending, and every webhook's commit inserts its hashes at random places of the pending rows'
index. With whole 64-digit hashes, 4,000 pending rows made an index of 145 pages, and a commit
of ten bodies wrote ten of them (measured: the writer's WAL doubled, 5.7 to 11.3 KB a webhook).
Eight digits make the index a fifth of that size.

Eight digits are not unique, so the index is not either: the writer looks new hashes up by
their first digits among the pending rows and compares the whole hash of what it finds
(`inbox.insert_bodies`), in the same write transaction as its insert; SQLite has one writer at a
time, so nothing comes in between. The settled rows keep their unique index on the whole hash.
No table copy: an index is dropped and another built.
"""

from __future__ import annotations

from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    if op.get_bind().dialect.name != "sqlite":
        return
    op.execute("DROP INDEX uq_inbox_pending_sha256")
    op.execute(
        "CREATE INDEX ix_inbox_pending_sha_prefix ON inbox (substr(body_sha256, 1, 8)) "
        "WHERE state = 'pending'"
    )


def downgrade() -> None:
    if op.get_bind().dialect.name != "sqlite":
        return
    op.execute("DROP INDEX ix_inbox_pending_sha_prefix")
    op.execute(
        "CREATE UNIQUE INDEX uq_inbox_pending_sha256 ON inbox (body_sha256) WHERE state = 'pending'"
    )
