"""`wastats db ...`: schema migrations."""

from __future__ import annotations

import time
from typing import Annotated

import typer
from sqlalchemy.exc import OperationalError

from wastats.cli.common import console, errors, first_line, settings, shown_url, unreachable
from wastats.store import migrate

app = typer.Typer(help="Database schema.", no_args_is_help=True)


@app.command("upgrade")
def upgrade(
    wait: Annotated[
        int,
        typer.Option(
            metavar="SECONDS",
            help="Keep trying this long while the database cannot be reached (it may still be "
            "starting, as in compose.yaml).",
            min=0,
        ),
    ] = 0,
) -> None:
    """Create the database, or apply pending migrations (Alembic). Safe to run from several
    processes at once."""
    s = settings()
    deadline = time.monotonic() + wait
    waiting = False
    while True:
        try:
            before, after = migrate.upgrade(s.database_url)
            break
        except OperationalError as exc:
            if time.monotonic() >= deadline:
                unreachable(s.database_url, exc)
            if not waiting:
                errors.print(
                    f"Waiting for the database at {shown_url(s.database_url)} "
                    f"({first_line(exc.orig)})",
                    highlight=False,
                    soft_wrap=True,
                )
                waiting = True
            # A retry a second: a starting PostgreSQL needs seconds, not milliseconds.
            time.sleep(1)
    if before == after:
        console.print(f"The schema is up to date ({after}).")
    else:
        console.print(f"Upgraded the schema from {before or 'empty'} to {after}.")
