"""Schema migrations (Alembic), run by `wastats db upgrade` and on the first start of `serve`."""

from __future__ import annotations

import functools
import re
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import Connection, inspect, text

from wastats.store.db import Database, create_migration_engine

if TYPE_CHECKING:
    from alembic.config import Config

# Alembic is imported only to migrate (`upgrade` with something to do, `alembic_config`): its
# package loads every dialect's DDL support, 0.13 s of CPU, which every server start and every
# CLI command paid just to read two revision strings (`check_schema_current`).

MIGRATIONS = Path(__file__).parent / "migrations"

# Any constant works; it only has to be the same in every wastats process.
_PG_MIGRATION_LOCK = 7_420_113_901


def alembic_config(connection: Connection | None = None) -> Config:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    return config


_REVISION = re.compile(
    r"^(down_revision|revision)(?:\s*:[^=\n]*)?\s*=\s*(?:None|[\"']([^\"'\n]+)[\"'])\s*$", re.M
)
"""`revision = "0011"`, `down_revision: str | None = "0010"`, `down_revision = None`."""


@functools.cache
def head_revision() -> str | None:
    """The newest migration this wastats ships: the one revision no other script revises, read
    from the scripts' `revision` and `down_revision` lines (tests/test_migrations.py checks it
    against Alembic's own answer). Cached: the scripts are part of the installed package, fixed
    for the life of the process; every app start and CLI command asks."""
    revisions: set[str] = set()
    revised: set[str] = set()
    for script in (MIGRATIONS / "versions").glob("*.py"):
        found = {m.group(1): m.group(2) for m in _REVISION.finditer(script.read_text())}
        if "revision" not in found:
            raise RuntimeError(f"{script.name}: no `revision = ...` line")
        revisions.add(str(found["revision"]))
        if found.get("down_revision"):
            revised.add(str(found["down_revision"]))
    heads = revisions - revised
    if len(heads) > 1:
        raise RuntimeError(f"several migration heads: {sorted(heads)}")
    return heads.pop() if heads else None


def current_revision(connection: Connection) -> str | None:
    """The database's revision, as Alembic records it (None: no `alembic_version` table, or an
    empty one: nothing migrated yet)."""
    if not inspect(connection).has_table("alembic_version"):
        return None
    rows = connection.execute(text("SELECT version_num FROM alembic_version")).all()
    if len(rows) > 1:
        raise RuntimeError(f"the database records several revisions: {[r[0] for r in rows]}")
    return str(rows[0][0]) if rows else None


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
            if before is not None and before == head_revision():
                return before, before  # nothing to do: no need to load Alembic
            from alembic import command

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
