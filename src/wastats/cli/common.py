"""What every command shares: settings, the database, one-line errors, the clock."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import NoReturn

import typer
from rich.console import Console
from sqlalchemy import Connection
from sqlalchemy.exc import OperationalError

from wastats.domain.errors import DomainError, InvalidInput
from wastats.settings import ConfigurationError, Settings, load_settings
from wastats.store.db import Database
from wastats.store.migrate import SchemaOutOfDate, check_schema_current, upgrade

console = Console()
errors = Console(stderr=True)


def fail(message: str, code: int = 1) -> NoReturn:
    errors.print(f"[bold red]error:[/] {message}", highlight=False, markup=True, soft_wrap=True)
    raise typer.Exit(code)


def settings() -> Settings:
    try:
        return load_settings()
    except ConfigurationError as exc:
        fail(str(exc))


def now() -> int:
    return int(time.time())


def open_database(*, migrate: bool = False) -> Database:
    """The configured database, migrated first if asked, refused (one line) if its schema is
    not the one this wastats needs or it cannot be reached. The caller disposes of it."""
    s = settings()
    if migrate:
        try:
            upgrade(s.database_url)
        except OperationalError as exc:
            fail(f"cannot reach the database: {exc.orig}")
    db = Database(s.database_url, pool_size=1)
    try:
        check_schema_current(db)
    except SchemaOutOfDate as exc:
        db.dispose()
        fail(str(exc))
    except OperationalError as exc:
        db.dispose()
        fail(f"database error: {exc.orig}")
    return db


@contextmanager
def database(*, write: bool, migrate: bool = False) -> Iterator[Connection]:
    """A transaction on the configured database, committed when the command's work is done.

    Domain errors, configuration errors and an unreachable database become one-line messages.
    """
    db = open_database(migrate=migrate)
    try:
        with db.write() if write else db.read() as conn:
            yield conn
    except (DomainError, InvalidInput) as exc:
        fail(str(exc))
    except OperationalError as exc:
        fail(f"database error: {exc.orig}")
    finally:
        db.dispose()
