"""`wastats db ...`: schema migrations."""

from __future__ import annotations

import typer
from sqlalchemy.exc import OperationalError

from wastats.cli.common import console, fail, settings
from wastats.store import migrate

app = typer.Typer(help="Database schema.", no_args_is_help=True)


@app.command("upgrade")
def upgrade() -> None:
    """Apply pending migrations (Alembic). Safe to run from several processes at once."""
    s = settings()
    try:
        before, after = migrate.upgrade(s.database_url)
    except OperationalError as exc:
        fail(f"cannot reach the database: {exc.orig}")
    if before == after:
        console.print(f"The schema is up to date ({after}).")
    else:
        console.print(f"Upgraded the schema from {before or 'empty'} to {after}.")
