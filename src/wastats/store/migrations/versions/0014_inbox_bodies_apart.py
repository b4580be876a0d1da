"""inbox: the bodies move to a table of their own, `inbox_bodies`

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-07

Why: issue 13. Counting records each body's outcome on its inbox row (state, events, reason,
time). On SQLite a record whose size changes is written again whole, and with the sealed body
in the record that meant its overflow pages too: for 100-status bodies (10 KB each), a quarter
of the pages a counting transaction wrote, each written to the WAL and then to the database
(measured: 232 of 878 pages for 50 bodies). Apart, a body is written once when it is stored.
PostgreSQL already keeps large values apart (TOAST) and does not rewrite them on such an
update; it takes the same schema so that both dialects have one.

The bodies are copied, then the inbox's two columns dropped: on SQLite (3.35 or newer) the
inbox table is rewritten once, like any table copy (docs/deployment.md: stop wastats first).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None

Id64 = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    # Coordinator-local on Citus, like the inbox (store/citus.py): a plain table, nothing to
    # distribute.
    op.create_table(
        "inbox_bodies",
        sa.Column("id", Id64, autoincrement=False, nullable=False),
        sa.Column("body_key", sa.String(length=16), nullable=True),
        sa.Column("body", sa.LargeBinary(), nullable=False),
        sa.ForeignKeyConstraint(["id"], ["inbox.id"], name=op.f("fk_inbox_bodies_id_inbox")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_inbox_bodies")),
    )
    op.execute(
        "INSERT INTO inbox_bodies (id, body_key, body) "
        "SELECT id, body_key, body FROM inbox WHERE body IS NOT NULL ORDER BY id"
    )
    # Not Alembic's batch mode on SQLite: it copies the table from what it reflects, and it
    # cannot reflect the pending rows' expression index (migration 0013), which would be lost.
    op.execute("ALTER TABLE inbox DROP COLUMN body")
    op.execute("ALTER TABLE inbox DROP COLUMN body_key")


def downgrade() -> None:
    op.execute("ALTER TABLE inbox ADD COLUMN body_key VARCHAR(16)")
    body_type = "BLOB" if op.get_bind().dialect.name == "sqlite" else "BYTEA"
    op.execute(f"ALTER TABLE inbox ADD COLUMN body {body_type}")
    op.execute(
        "UPDATE inbox SET "
        "body = (SELECT body FROM inbox_bodies WHERE inbox_bodies.id = inbox.id), "
        "body_key = (SELECT body_key FROM inbox_bodies WHERE inbox_bodies.id = inbox.id) "
        "WHERE id IN (SELECT id FROM inbox_bodies)"
    )
    op.drop_table("inbox_bodies")
