"""`wastats db ...`: schema migrations."""

from __future__ import annotations

import typer
from sqlalchemy.exc import OperationalError

from wastats.cli.common import console, fail, open_database, settings
from wastats.store import citus, migrate

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
