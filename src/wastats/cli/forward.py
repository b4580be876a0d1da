"""`wastats forward ...`: pass every webhook on to the customer's existing consumer."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Annotated

import typer
from rich.table import Table
from sqlalchemy import Connection

from wastats.cli.common import console, database, now, settings
from wastats.forward import destinations as service
from wastats.store import forwarding as store

app = typer.Typer(
    help="Forward every accepted webhook, byte-exact with Meta's signature, to your existing "
    "consumer (docs/forwarding.md).",
    no_args_is_help=True,
)

DestinationId = Annotated[
    int, typer.Argument(metavar="ID", help="The destination's id (`wastats forward list`).")
]


def _sync(conn: Connection) -> None:
    """The configured destinations (WASTATS_FORWARD_URLS) in the table, as the service has."""
    service.sync_configured(conn, settings(), now())


def _when(ts: int | None) -> str:
    if ts is None:
        return ""
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S")


@app.command("add")
def add(
    url: Annotated[
        str, typer.Option(metavar="URL", help="Where to POST each webhook (https://...).")
    ],
    waba: Annotated[
        str | None,
        typer.Option(metavar="WABA_ID", help="Only webhooks of this WhatsApp Business Account."),
    ] = None,
    number: Annotated[
        str | None,
        typer.Option(metavar="DIGITS", help="Only webhooks of this business number (digits)."),
    ] = None,
) -> None:
    """Add a destination: every webhook accepted from now on (or of one WABA or number) is
    POSTed there as Meta sent it."""
    with database(write=True) as conn:
        _sync(conn)
        added = service.add(conn, url=url, waba=waba, number=number, now=now())
    what = service.describe_scope(added.scope, added.scope_value)
    console.print(f"Destination {added.id}: {added.url} gets {what}.", highlight=False)


@app.command("list")
def list_(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON lines.")] = False,
) -> None:
    """List destinations."""
    with database(write=True) as conn:
        _sync(conn)
        rows = store.list_destinations(conn)
    if as_json:
        for d in rows:
            typer.echo(
                json.dumps(
                    {
                        "id": d.id,
                        "url": d.url,
                        "scope": d.scope,
                        "scope_value": d.scope_value or None,
                        "source": d.source,
                        "paused": d.paused,
                        "created_at": d.created_at,
                    }
                )
            )
        return
    table = Table("id", "url", "forwards", "set by", "paused")
    for d in rows:
        table.add_row(
            str(d.id),
            d.url,
            service.describe_scope(d.scope, d.scope_value),
            "WASTATS_FORWARD_URLS" if d.source == store.FROM_CONFIG else "cli",
            "yes" if d.paused else "no",
        )
    console.print(table)


@app.command("remove")
def remove(destination: DestinationId) -> None:
    """Remove a destination; deliveries still queued for it are dropped."""
    with database(write=True) as conn:
        _sync(conn)
        removed = service.remove(conn, destination)
    console.print(f"Removed destination {removed.id} ({removed.url}).", highlight=False)


@app.command("pause")
def pause(destination: DestinationId) -> None:
    """Stop delivering to a destination; webhooks keep being queued for it until `resume`."""
    with database(write=True) as conn:
        _sync(conn)
        service.set_paused(conn, destination, True)
    console.print(f"Paused destination {destination}.", highlight=False)


@app.command("resume")
def resume(destination: DestinationId) -> None:
    """Deliver to a paused destination again, what was queued meanwhile first."""
    with database(write=True) as conn:
        _sync(conn)
        service.set_paused(conn, destination, False)
    console.print(f"Resumed destination {destination}.", highlight=False)


@app.command("status")
def status(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON lines.")] = False,
) -> None:
    """Per destination: delivered, pending, failing, dead letters, oldest pending, last error."""
    with database(write=True) as conn:
        _sync(conn)
        found = service.statuses(conn, now())
    if as_json:
        for s in found:
            d, b = s.destination, s.backlog
            typer.echo(
                json.dumps(
                    {
                        "id": d.id,
                        "url": d.url,
                        "state": s.state,
                        "delivered": d.delivered_total,
                        "pending": b.pending,
                        "failing": b.failing,
                        "dead": b.dead,
                        "oldest_pending_seconds": s.oldest_pending_age,
                        "failed_attempts": d.failed_attempts_total,
                        "last_delivered_at": d.last_delivered_at,
                        "last_error": d.last_error,
                        "last_error_at": d.last_error_at,
                    }
                )
            )
        return
    table = Table(
        "id", "url", "state", "delivered", "pending", "failing", "dead", "oldest pending",
        "last error",
    )  # fmt: skip
    for s in found:
        d, b = s.destination, s.backlog
        error = f"{_when(d.last_error_at)} {d.last_error}" if d.last_error else ""
        table.add_row(
            str(d.id), d.url, s.state, str(d.delivered_total), str(b.pending), str(b.failing),
            str(b.dead), f"{s.oldest_pending_age} s" if b.pending else "", error,
        )  # fmt: skip
    console.print(table)


@app.command("dead")
def dead(
    destination: Annotated[
        int | None, typer.Option(metavar="ID", help="Only this destination's.")
    ] = None,
    limit: Annotated[int, typer.Option(min=1, help="At most this many.")] = 100,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON lines.")] = False,
) -> None:
    """Dead letters: deliveries still failing at the end of the 7-day retry window."""
    with database(write=False) as conn:
        rows = service.dead_letters(conn, destination, limit)
    if as_json:
        for r in rows:
            typer.echo(
                json.dumps(
                    {
                        "id": r.id,
                        "destination": r.destination_id,
                        "inbox_id": r.inbox_id,
                        "queued_at": r.created_at,
                        "dead_at": r.dead_at,
                        "attempts": r.attempts,
                        "last_error": r.last_error,
                    }
                )
            )
        return
    table = Table("id", "destination", "inbox id", "queued", "given up", "attempts", "last error")
    for r in rows:
        table.add_row(
            str(r.id), str(r.destination_id), str(r.inbox_id), _when(r.created_at),
            _when(r.dead_at), str(r.attempts), r.last_error or "",
        )  # fmt: skip
    console.print(table)


@app.command("replay")
def replay(
    ids: Annotated[
        list[int] | None,
        typer.Argument(metavar="[DELIVERY_ID]...", help="Dead letters to send again."),
    ] = None,
    destination: Annotated[
        int | None, typer.Option(metavar="ID", help="Every dead letter of this destination.")
    ] = None,
    everything: Annotated[bool, typer.Option("--all", help="Every dead letter.")] = False,
) -> None:
    """Queue dead letters again, with a new 7-day retry window (a running service sends them
    within a second)."""
    with database(write=True) as conn:
        count = service.replay(
            conn, ids=ids or [], destination_id=destination, everything=everything, now=now()
        )
    console.print(f"Queued {count} dead letters again.", highlight=False)
