"""Schema migrations (Alembic), run by `wastats db upgrade` and on the first start of `serve`."""

from __future__ import annotations

import functools
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, text

from wastats.store.db import Database, create_migration_engine

MIGRATIONS = Path(__file__).parent / "migrations"

# Any constant works; it only has to be the same in every wastats process.
_PG_MIGRATION_LOCK = 7_420_113_901


def alembic_config(connection: Connection | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    return config


@functools.cache
def head_revision() -> str | None:
    """The newest migration this wastats ships. Cached: finding it loads every revision script
    (tens of milliseconds), and the scripts are part of the installed package, fixed for the
    life of the process; every app start and CLI command asks."""
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def current_revision(connection: Connection) -> str | None:
    return MigrationContext.configure(connection).get_current_revision()


def upgrade(url: str) -> tuple[str | None, str | None]:
    """Bring the database to the newest schema; returns (revision before, revision after).

    Several processes may start at once against one PostgreSQL: an advisory lock makes the
    others wait and then find nothing to do, instead of racing to create the same tables.
    """
    engine = create_migration_engine(url)
    try:
        with engine.begin() as connection:
            if connection.dialect.name == "postgresql":
                connection.execute(
                    text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_MIGRATION_LOCK}
                )
            before = current_revision(connection)
            command.upgrade(alembic_config(connection), "head")
            after = current_revision(connection)
        return before, after
    finally:
        engine.dispose()


class SchemaOutOfDate(Exception):
    pass


def check_schema_current(db: Database) -> None:
    """Raise SchemaOutOfDate unless the database is at the newest migration."""
    with db.read() as connection:
        current = current_revision(connection)
    head = head_revision()
    if current != head:
        raise SchemaOutOfDate(
            f"the database schema is at {current or 'nothing'}, this wastats needs {head}: "
            "run `wastats db upgrade`"
        )
