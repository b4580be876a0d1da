"""The root `wastats` command and `wastats serve`."""

from __future__ import annotations

from typing import Annotated

import typer
import uvicorn
from sqlalchemy.exc import OperationalError

from wastats import __version__
from wastats.cli import accounts, db, forward, ingest, numbers, stats
from wastats.cli.common import console, fail, settings
from wastats.ingest.identity import SecretKeyMissing, load_secret_key
from wastats.logs import configure_logging
from wastats.store import migrate

app = typer.Typer(
    name="wastats",
    help="Statistics for WhatsApp Business numbers: webhooks in, monthly Marketing, Service "
    "and Incoming counts out. Configuration comes from WASTATS_* variables "
    "(see docs/configuration.md).",
    no_args_is_help=True,
    rich_markup_mode="rich",
)
app.add_typer(accounts.app, name="accounts")
app.add_typer(numbers.app, name="numbers")
app.add_typer(db.app, name="db")
app.add_typer(ingest.events_app, name="events")
app.command("import")(ingest.import_command)
app.command("recount")(ingest.recount_command)
app.command("stats")(stats.stats_command)
app.add_typer(forward.app, name="forward")


def _version(value: bool) -> None:
    if value:
        typer.echo(f"wastats {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version."),
    ] = False,
) -> None:
    """wastats: self-hosted WhatsApp Business statistics."""


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.", min=1, max=65535)] = 8000,
    workers: Annotated[
        int,
        typer.Option(help="Worker processes (stateless; use PostgreSQL for more than one).", min=1),
    ] = 1,
) -> None:
    """Run the HTTP service. Creates or migrates the database first."""
    s = settings()
    try:
        # Checked here so a missing key is one line at start, not an error in every worker.
        load_secret_key(s)
    except SecretKeyMissing as exc:
        fail(str(exc))
    try:
        before, after = migrate.upgrade(s.database_url)
    except OperationalError as exc:
        fail(f"cannot reach the database: {exc.orig}")
    if before != after:
        console.print(f"Database schema: {before or 'empty'} → {after}")
    console.print(f"wastats {__version__} on http://{host}:{port} (docs at /docs)")
    configure_logging(s)
    uvicorn.run(
        "wastats.app:create_app_from_environment",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        log_level=s.log_level.lower(),
        # Our middleware writes the access log (with route and request id) and configure_logging
        # formats every logger, uvicorn's included: uvicorn must not install its own handlers.
        access_log=False,
        log_config=None,
        # The app applies X-Forwarded-For itself, from WASTATS_FORWARDED_ALLOW_IPS.
        proxy_headers=False,
        server_header=False,
    )


def main() -> None:
    app()
