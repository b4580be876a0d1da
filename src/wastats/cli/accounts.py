"""`wastats accounts ...`: tenants and their client credentials."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Annotated

import typer

from wastats.cli.common import console, database, now, plural, print_table
from wastats.domain import accounts as service
from wastats.domain import numbers as numbers_service

app = typer.Typer(help="Create, list, rotate and delete accounts (tenants).", no_args_is_help=True)


def _show_credentials(creds: service.NewCredentials, as_json: bool, title: str) -> None:
    if as_json:
        typer.echo(
            json.dumps(
                {
                    "client_id": creds.client_id,
                    "client_secret": creds.client_secret,
                    "timezone": creds.timezone,
                }
            )
        )
        return
    console.print(f"[bold green]{title}[/]")
    console.print(f"client_id:     {creds.client_id}", highlight=False)
    console.print(f"client_secret: {creds.client_secret}", highlight=False)
    console.print(f"timezone:      {creds.timezone}", highlight=False)
    console.print("[yellow]The secret is shown only now: only its hash is stored.[/]")


@app.command("create")
def create(
    name: Annotated[
        str, typer.Option(metavar="NAME", help="Name of the account (a customer, a business).")
    ],
    timezone: Annotated[
        str,
        typer.Option(
            metavar="ZONE", help="IANA time zone that decides which month a count belongs to."
        ),
    ] = "UTC",
    as_json: Annotated[
        bool,
        typer.Option("--json", help="Print one JSON object: client_id, client_secret, timezone."),
    ] = False,
) -> None:
    """Create an account and print its client_id and client_secret (once)."""
    with database(write=True, migrate=True) as conn:
        creds = service.create_account(conn, name=name, timezone=timezone, now=now())
    _show_credentials(creds, as_json, f"Account {name!r} created.")


@app.command("list")
def list_(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON lines.")] = False,
) -> None:
    """List accounts (never their secrets)."""
    with database(write=False) as conn:
        rows = service.list_accounts(conn)
    if as_json:
        for account, numbers in rows:
            typer.echo(
                json.dumps(
                    {
                        "client_id": account.client_id,
                        "name": account.name,
                        "timezone": account.timezone,
                        "numbers": numbers,
                        "created_at": account.created_at,
                    }
                )
            )
        return
    table = [
        [
            account.client_id,
            account.name,
            account.timezone,
            str(numbers),
            datetime.fromtimestamp(account.created_at, UTC).strftime("%Y-%m-%d %H:%M"),
        ]
        for account, numbers in rows
    ]
    print_table(["client_id", "name", "timezone", "numbers", "created"], table, ids=["client_id"])


@app.command("rotate-secret")
def rotate_secret(
    client_id: Annotated[str, typer.Argument(metavar="CLIENT_ID", help="The account's client_id.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Give an account a new client_secret; the old one and its tokens stop working."""
    with database(write=True) as conn:
        creds = service.rotate_secret(conn, client_id)
    _show_credentials(creds, as_json, "New secret issued; tokens of the old one are revoked.")


@app.command("delete")
def delete(
    client_id: Annotated[str, typer.Argument(metavar="CLIENT_ID", help="The account's client_id.")],
    yes: Annotated[bool, typer.Option("--yes", help="Do not ask for confirmation.")] = False,
) -> None:
    """Delete an account, its tokens and its number registrations.

    The numbers' webhook history stays: registering a number again brings its counts back."""
    if not yes:
        # Named before the question: a client_id alone does not say which customer goes.
        with database(write=False) as conn:
            account = service.get_account(conn, client_id)
            numbers = numbers_service.list_numbers(conn, client_id)
        registered = ", ".join(n.whatsapp for n in numbers)
        typer.confirm(
            f"Delete account {account.name!r} ({client_id}) and its "
            f"{plural(len(numbers), 'number registration')}"
            + (f" ({registered})" if numbers else "")
            + "?",
            abort=True,
        )
    with database(write=True) as conn:
        account = service.delete_account(conn, client_id, now=now())
    console.print(f"Deleted account {account.name!r} ({client_id}).", highlight=False)
