"""The root `wastats` command and `wastats serve`."""

from __future__ import annotations

from typing import Annotated

import typer
import uvicorn

from wastats import __version__
from wastats.cli import accounts, db, forward, ingest, meta, numbers, reconcile, security, stats
from wastats.cli.common import ReadableGroup, console, errors, fail, settings
from wastats.cli.db import upgrade_waiting
from wastats.ingest.identity import SecretKeyMissing, load_secret_key
from wastats.logs import configure_logging
from wastats.store.db import DATABASE_WAIT_SECONDS

app = typer.Typer(
    name="wastats",
    help="Statistics for WhatsApp Business numbers: webhooks in, monthly Marketing, Service "
    "and Incoming counts out. Configuration comes from WASTATS_* variables "
    "(see docs/configuration.md).",
    no_args_is_help=True,
    rich_markup_mode="rich",
    cls=ReadableGroup,  # readable metavars everywhere, commands in working order
)
app.add_typer(accounts.app, name="accounts")
app.add_typer(numbers.app, name="numbers")
app.add_typer(db.app, name="db")
app.add_typer(ingest.events_app, name="events")
app.command("import")(ingest.import_command)
app.command("recount")(ingest.recount_command)
app.command("stats")(stats.stats_command)
app.add_typer(security.lockout_app, name="lockout")
ingest.events_app.command("purge")(security.purge_command)
# Meta's record (docs/meta-record.md)
app.add_typer(meta.app, name="meta")
app.add_typer(meta.dev_app, name="dev")
accounts.app.command("update")(meta.accounts_update)
app.command("reconcile")(reconcile.reconcile_command)
app.add_typer(meta.ratecard_app, name="ratecard")
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
    # Also read from WASTATS_* variables, so a container is configured by its environment alone.
    host: Annotated[
        str, typer.Option(envvar="WASTATS_HOST", metavar="ADDRESS", help="Address to listen on.")
    ] = "127.0.0.1",
    port: Annotated[
        int,
        typer.Option(
            envvar="WASTATS_PORT", metavar="PORT", help="Port to listen on.", min=1, max=65535
        ),
    ] = 8000,
    workers: Annotated[
        int,
        typer.Option(
            envvar="WASTATS_WORKERS",
            metavar="N",
            help="Worker processes (stateless; use PostgreSQL for more than one).",
            min=1,
        ),
    ] = 1,
) -> None:
    """Run the HTTP service. Creates or migrates the database first."""
    s = settings()
    if workers > 1 and s.is_sqlite:
        # Allowed (it works), but it is not what the operator wants: one file, one writer.
        errors.print(
            f"[yellow]warning:[/] {workers} workers on SQLite: the database file takes one "
            "writer at a time, so more processes add waiting, not speed. Use PostgreSQL for more "
            "than one worker (docs/deployment.md).",
            highlight=False,
            soft_wrap=True,
        )
    try:
        # Checked here so a missing key is one line at start, not an error in every worker.
        load_secret_key(s)
    except SecretKeyMissing as exc:
        fail(str(exc))
    # On PostgreSQL the database may be a moment behind (compose, a host's boot): wait for it
    # as the app's own start does (DATABASE_WAIT_SECONDS) rather than exit at once.
    before, after = upgrade_waiting(s.database_url, 0 if s.is_sqlite else DATABASE_WAIT_SECONDS)
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
        # Bounded: on SIGTERM, requests still in progress (a client holding half a body, a
        # long CSV download) get this long, then their connections are closed and we exit.
        timeout_graceful_shutdown=s.graceful_shutdown_seconds,
    )


def main() -> None:
    app()
