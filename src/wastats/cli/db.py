"""`wastats db ...`: schema migrations."""

from __future__ import annotations

import time
from typing import Annotated

import typer
from sqlalchemy.exc import OperationalError

from wastats.cli.common import (
    console,
    errors,
    fail,
    open_database,
    settings,
    shown_url,
    unreachable,
)
from wastats.store import citus, migrate
from wastats.store.db import first_line

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
    before, after = upgrade_waiting(settings().database_url, wait)
    if before == after:
        console.print(f"The schema is up to date ({after}).")
    else:
        console.print(f"Upgraded the schema from {before or 'empty'} to {after}.")


def upgrade_waiting(url: str, wait: float) -> tuple[str | None, str | None]:
    """`migrate.upgrade`, trying again for `wait` seconds while the database cannot be reached
    (it may still be starting); then the one-line "cannot reach" error and exit 1."""
    deadline = time.monotonic() + wait
    waiting = False
    while True:
        try:
            return migrate.upgrade(url)
        except OperationalError as exc:
            if time.monotonic() >= deadline:
                unreachable(url, exc)
            if not waiting:
                errors.print(
                    f"Waiting for the database at {shown_url(url)} ({first_line(exc.orig)})",
                    highlight=False,
                    soft_wrap=True,
                )
                waiting = True
            # A retry a second: a starting PostgreSQL needs seconds, not milliseconds.
            time.sleep(1)


@app.command("distribute")
def distribute() -> None:
    """On Citus: distribute the tables by business number (docs/deployment.md). Idempotent.

    One table per transaction, then the coordinator's leftover local copies are dropped.
    Refuses a server without Citus."""
    db = open_database()
    try:
        changed = citus.distribute(db)
    except citus.NotCitus as exc:
        fail(str(exc))
    except OperationalError as exc:
        fail(f"cannot reach the database: {exc.orig}")
    finally:
        db.dispose()
    if changed:
        console.print(f"Distributed {len(changed)} tables: {', '.join(changed)}.")
    else:
        console.print("Every table is already distributed.")
