"""What every command shares: settings, the database, one-line errors, the clock, and how
help, tables and counts read."""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn

import typer
from rich.console import Console
from rich.table import Table
from sqlalchemy import Connection
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DatabaseError, OperationalError
from typer.core import TyperArgument, TyperCommand, TyperGroup, TyperOption

from wastats.domain.errors import DomainError, InvalidInput
from wastats.settings import ConfigurationError, Settings, load_settings
from wastats.store.db import Database, first_line
from wastats.store.migrate import (
    SchemaOutOfDate,
    check_schema_current,
    current_revision,
    upgrade,
)

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


def shown_url(url: str) -> str:
    """A database URL fit to print: its password, if any, replaced by `***`."""
    return make_url(url).render_as_string(hide_password=True)


def unreachable(url: str, exc: DatabaseError) -> NoReturn:
    fail(
        f"cannot reach the database at {shown_url(url)}: {first_line(exc.orig)} "
        "(is WASTATS_DATABASE_URL right?)"
    )


def _no_database(url: str, detail: str) -> NoReturn:
    fail(
        f"there is no wastats database here: {detail} ({shown_url(url)}, from "
        "WASTATS_DATABASE_URL or its default). Point WASTATS_DATABASE_URL at your database, in "
        "the environment or a .env file in this directory, or create one with `wastats db "
        "upgrade` (`wastats serve` creates it too)."
    )


def _sqlite_file(url: str) -> Path | None:
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return None
    return Path(parsed.database)


def open_database(*, migrate: bool = False) -> Database:
    """The configured database, refused (one line) if there is none, if it cannot be reached or
    if its schema is not the one this wastats needs; with `migrate`, an older schema is upgraded
    first. The caller disposes of it.

    Only `serve` and `db upgrade` create a database: anywhere else a missing one is an error
    that says where wastats looked, rather than a new empty file in the working directory."""
    s = settings()
    path = _sqlite_file(s.database_url)
    if path is not None and not path.is_file():
        _no_database(s.database_url, f"no file {path.resolve()}")
    db = Database(s.database_url, pool_size=1)
    try:
        with db.read() as conn:
            revision = current_revision(conn)
        if revision is None:
            _no_database(s.database_url, "the database holds no wastats tables")
        if migrate:
            upgrade(s.database_url)
        check_schema_current(db)
    except SchemaOutOfDate as exc:
        db.dispose()
        fail(str(exc))
    except DatabaseError as exc:  # unreachable, or not a database at all ("file is not a database")
        db.dispose()
        unreachable(s.database_url, exc)
    except BaseException:
        db.dispose()
        raise
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


def meta_id(value: str | None) -> str | None:
    """A Meta id given on the command line (phone-number id, WABA id): digits, as Meta writes
    them, so a mistyped or swapped value (`--phone-number-id +972...`) is caught here."""
    if value is not None and not (value.isascii() and value.isdigit()):
        raise typer.BadParameter(f"{value!r} is not a Meta id: digits only, e.g. 106540352242922")
    return value


# --- how numbers of things read ----------------------------------------------------------------


def plural(count: int, singular: str, plural_form: str | None = None) -> str:
    """`1 body`, `2 bodies`, `0 numbers`: the count and the word that goes with it."""
    word = singular if count == 1 else (plural_form or f"{singular}s")
    return f"{count} {word}"


# --- tables that never cut an id ---------------------------------------------------------------


def print_table(
    headers: Sequence[str],
    rows: Sequence[Sequence[str]],
    *,
    ids: Sequence[str] = (),
    title: str | None = None,
) -> None:
    """Rows as a table whose `ids` columns are never cut: other columns fold (wrap anywhere)
    to make room, and where even that does not fit the terminal, each row is printed as
    `header: value` lines instead, so an id can always be read and copied whole."""
    table = Table(*headers, title=title)
    for index, column in enumerate(table.columns):
        if column.header in ids:
            column.no_wrap = True
            column.min_width = max([len(str(column.header))] + [len(r[index]) for r in rows])
        else:
            column.overflow = "fold"
            # Narrower than its header's longest word, a column reads one letter a line.
            column.min_width = max(len(word) for word in str(column.header).split() or [""])
    for row in rows:
        table.add_row(*row)
    # Each column also takes one space of padding on both sides and one border.
    needed = sum((column.min_width or 1) + 3 for column in table.columns) + 1
    if needed <= console.width:
        console.print(table)
        return
    if title:
        console.print(title, highlight=False)
    for number, row in enumerate(rows):
        if number:
            console.print()
        for header, value in zip(headers, row, strict=True):
            console.print(f"{header}: {value}", highlight=False, soft_wrap=True)


# --- help that reads like a well-kept tool's ---------------------------------------------------
#
# Typer shows every option's Python type (`--yes <bool>`, `--host <str>`,
# `--port <int range> [1<=x<=65535]`) and a required argument as `{client_id}`, so flags look
# as if they took values. It offers no hook for how a parameter shows itself, so the groups
# below give every parameter of every command one of these two classes when help is built:
# an option shows a metavar (its own, else its name in capitals) and a flag shows none; an
# argument reads `CLIENT_ID`, or `[ID]...` when optional, as in click and man pages.


class ReadableOption(TyperOption):
    def display_type_rich(self, ctx: Any) -> str | None:
        if self.is_flag or self.count:
            return None
        return self.metavar or (self.name or "value").upper()

    def _get_number_range_help_str(self) -> str | None:
        return None  # the metavar says what is wanted; a value out of range gets its error


class ReadableArgument(TyperArgument):
    @property
    def display_name_raw(self) -> str:
        return self.metavar or (self.name or "value").upper()

    def display_type_rich(self, ctx: Any) -> str | None:
        return None  # the name column already says it

    def _usage_display_name(self) -> str:
        name = self.display_name_raw
        if self.nargs != 1 and not name.endswith("..."):
            name += "..."
        return name if self.required else f"[{name}]"


def _readable(params: list[Any]) -> list[Any]:
    for param in params:
        # Subclasses that add behaviour only, no state: swapping the class of an instance built
        # by Typer is safe, and it is the one place Typer's rendering can be changed.
        if type(param) is TyperOption:
            param.__class__ = ReadableOption
        elif type(param) is TyperArgument:
            param.__class__ = ReadableArgument
    return params


class ReadableCommand(TyperCommand):
    def get_params(self, ctx: Any) -> list[Any]:
        return _readable(super().get_params(ctx))


WORKING_ORDER = ("serve", "accounts", "numbers", "stats", "import", "recount", "events", "db")
"""The root's commands in the order a new operator uses them; any other command follows."""


class ReadableGroup(TyperGroup):
    """The `wastats` group: readable help for it and for every command below it, whichever
    module added them, and its commands listed in working order."""

    def __init__(self, **attrs: Any) -> None:
        super().__init__(**attrs)
        _adopt(self)

    def get_params(self, ctx: Any) -> list[Any]:
        return _readable(super().get_params(ctx))

    def list_commands(self, ctx: Any) -> list[str]:
        names = super().list_commands(ctx)
        if ctx.parent is not None:
            return names  # a sub-group lists its commands as they were written
        ordered = [name for name in WORKING_ORDER if name in names]
        return ordered + [name for name in names if name not in ordered]


def _adopt(group: TyperGroup) -> None:
    for command in group.commands.values():
        if type(command) is TyperCommand:
            command.__class__ = ReadableCommand
        elif type(command) is TyperGroup:
            command.__class__ = ReadableGroup
            _adopt(command)
