"""`wastats lockout ...` and `wastats events purge`: the operator's hands on the lockout of the
token endpoint and on the raw webhook bodies kept in the inbox (docs/security.md)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Annotated

import typer
from rich.table import Table

from wastats.cli.common import console, database, fail, now, settings
from wastats.domain import auth
from wastats.ingest.service import retention_cutoff
from wastats.store import inbox as inbox_repo

lockout_app = typer.Typer(
    help="Failed sign-ins and blocked addresses of the token endpoint and the dashboard.",
    no_args_is_help=True,
)


def _when(ts: int) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S")


@lockout_app.command("list")
def lockout_list(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON lines.")] = False,
) -> None:
    """Addresses (IPv6: /64 networks) with recent failures, per client id or for the whole
    address, and until when each is blocked. `?` and hex digits: a client id no account has
    (kept as a digest)."""
    s = settings()
    at = now()
    with database(write=True) as conn:
        rows = auth.list_lockouts(conn, at, s.lockout_window_seconds)
    if as_json:
        for r in rows:
            item = {"address": r.address, "client_id": r.client_id or None,
                    "failures": r.failures, "locked_until": r.locked_until or None}  # fmt: skip
            typer.echo(json.dumps(item))
        return
    table = Table("address", "client id", "failures", "blocked until (UTC)")
    for r in rows:
        blocked = _when(r.locked_until) if r.locked_until > at else ""
        table.add_row(r.address, r.client_id or "(any)", str(r.failures), blocked)
    console.print(table)
    console.print(f"{sum(r.locked_until > at for r in rows)} blocked, {len(rows)} in all.")


@lockout_app.command("clear")
def lockout_clear(
    address: Annotated[
        str | None, typer.Option(help="Only this client address (IPv6: its whole /64).")
    ] = None,
    client_id: Annotated[str | None, typer.Option(help="Only this client id.")] = None,
    everything: Annotated[
        bool, typer.Option("--all", help="Clear every counter and lift every block.")
    ] = False,
) -> None:
    """Lift blocks and forget failed attempts: of an address, a client id, or --all."""
    if not (address or client_id or everything):
        fail("say what to clear: --address, --client-id, or --all")
    with database(write=True) as conn:
        cleared = auth.clear_lockouts(conn, address=address, client_id=client_id)
    console.print(f"Cleared {cleared} lockout counters.", highlight=False)


def purge_command(
    everything: Annotated[
        bool,
        typer.Option(
            "--all",
            help="Drop every raw body already counted or rejected, whatever its age (pending "
            "ones are still needed and stay).",
        ),
    ] = False,
) -> None:
    """Drop raw webhook bodies now: those past WASTATS_RAW_RETENTION_DAYS, or with --all every
    one no longer needed. Their hashes, states and reasons stay (duplicates are still
    recognised, and what they counted stays counted); purged rejected bodies can no longer be
    replayed."""
    s = settings()
    at = now()
    cutoff = retention_cutoff(0 if everything else s.raw_retention_days, at)
    with database(write=True) as conn:
        purged = inbox_repo.purge_bodies(conn, cutoff)
        held, oldest = inbox_repo.held_bodies(conn)
    console.print(f"Dropped {purged} raw bodies.", highlight=False)
    if held:
        assert oldest is not None
        console.print(
            f"{held} still held (pending, or within the retention); the oldest received "
            f"{_when(oldest)} UTC.",
            highlight=False,
        )
