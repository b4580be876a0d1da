"""Alembic environment: always driven from `wastats.store.migrate`, which hands us a connection."""

from __future__ import annotations

from alembic import context

from wastats.store.schema import emitted_on, metadata

connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=metadata,
    render_as_batch=connection.dialect.name == "sqlite",
    compare_type=True,
    include_object=emitted_on(connection.dialect.name),
)
with context.begin_transaction():
    context.run_migrations()
