"""inbound messages keyed by (number, wamid, customer, time), not by (number, wamid)

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01

Why: with the wamid alone as the key, the first copy of a message to arrive was kept and any
other copy ignored, so when two copies disagreed (the fixtures hold two different messages
both called `wamid.ID`) the counts depended on arrival order, and the live pipeline, which had
counted the batch's own copy, disagreed with `wastats recount`. Every distinct copy is a fact
now, as a message's statuses already are. Existing rows all stay: each is distinct in the new
key too.
"""

from __future__ import annotations

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

NEW_KEY = ["phone_number_id", "wamid", "user_key", "ts"]
OLD_KEY = ["phone_number_id", "wamid"]


def _replace_primary_key(columns: list[str]) -> None:
    with op.batch_alter_table("inbound_messages", schema=None) as batch_op:
        batch_op.drop_constraint("pk_inbound_messages", type_="primary")
        batch_op.create_primary_key("pk_inbound_messages", columns)


def upgrade() -> None:
    _replace_primary_key(NEW_KEY)


def downgrade() -> None:
    # The old key holds one copy per wamid: keep the earliest (then the smallest customer key),
    # a choice that does not depend on the order the copies came in.
    op.execute(
        "DELETE FROM inbound_messages WHERE EXISTS (SELECT 1 FROM inbound_messages AS o "
        "WHERE o.phone_number_id = inbound_messages.phone_number_id "
        "AND o.wamid = inbound_messages.wamid AND (o.ts < inbound_messages.ts "
        "OR (o.ts = inbound_messages.ts AND o.user_key < inbound_messages.user_key)))"
    )
    _replace_primary_key(OLD_KEY)
