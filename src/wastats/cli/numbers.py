"""`wastats numbers ...`: the business numbers of an account."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Annotated

import typer

from wastats.cli.common import console, database, meta_id, now, print_table
from wastats.domain import numbers as service

app = typer.Typer(help="Register, list and remove business numbers.", no_args_is_help=True)


@app.command("add")
def add(
    account: Annotated[
        str,
        typer.Option(metavar="CLIENT_ID", help="client_id of the account the number belongs to."),
    ],
    whatsapp: Annotated[
        str,
        typer.Option(
            metavar="NUMBER",
            help="The number as shown to customers, e.g. 972501234567 or +972-50-...",
        ),
    ],
    phone_number_id: Annotated[
        str,
        typer.Option(
            metavar="ID",
            callback=meta_id,
            help="Meta's phone-number id, digits (webhooks' metadata.phone_number_id).",
        ),
    ],
    waba_id: Annotated[
        str | None,
        typer.Option(metavar="ID", callback=meta_id, help="WhatsApp Business Account id, digits."),
    ] = None,
    display_name: Annotated[str | None, typer.Option(metavar="TEXT", help="Display name.")] = None,
    business_name: Annotated[
        str | None, typer.Option(metavar="TEXT", help="Business name.")
    ] = None,
    coexistence: Annotated[
        bool,
        typer.Option("--coexistence", help="The number is also used in the WhatsApp Business app."),
    ] = False,
    with_history: Annotated[
        bool,
        typer.Option(
            "--with-history",
            help="The number was another account's: show this account its history too "
            "(by default it sees only what arrives from now on).",
        ),
    ] = False,
) -> None:
    """Register a number; webhooks already received for it are counted at once (for a number
    another account had, only from now on unless --with-history)."""
    with database(write=True) as conn:
        number = service.add_number(
            conn,
            client_id=account,
            whatsapp=whatsapp,
            phone_number_id=phone_number_id,
            waba_id=waba_id,
            display_name=display_name,
            business_name=business_name,
            coexistence=coexistence,
            now=now(),
            with_history=with_history,
        )
    console.print(
        f"Registered {number.whatsapp} (phone-number id {number.phone_number_id}).",
        highlight=False,
    )
    if number.counts_from is not None:
        since = datetime.fromtimestamp(number.counts_from, UTC).strftime("%Y-%m-%d %H:%M UTC")
        console.print(
            f"It was another account's: this account counts it from {since} "
            "(--with-history shows it the earlier history too).",
            highlight=False,
        )


@app.command("list")
def list_(
    account: Annotated[
        str | None, typer.Option(metavar="CLIENT_ID", help="Only this account's numbers.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON lines.")] = False,
) -> None:
    """List registered numbers."""
    with database(write=False) as conn:
        rows = service.list_numbers(conn, account)
    if as_json:
        for n in rows:
            typer.echo(
                json.dumps(
                    {
                        "whatsapp": n.whatsapp,
                        "phone_number_id": n.phone_number_id,
                        "waba_id": n.waba_id,
                        "display_name": n.display_name,
                        "business_name": n.business_name,
                        "coexistence": n.coexistence,
                        "created_at": n.created_at,
                        "counts_from": n.counts_from,
                    }
                )
            )
        return
    table = [
        [
            n.whatsapp,
            n.phone_number_id,
            n.waba_id or "",
            n.display_name or "",
            n.business_name or "",
            "yes" if n.coexistence else "no",
            datetime.fromtimestamp(n.created_at, UTC).strftime("%Y-%m-%d"),
        ]
        for n in rows
    ]
    print_table(
        ["whatsapp", "phone_number_id", "waba_id", "display name", "business", "coexistence",
         "added"],
        table,
        ids=["whatsapp", "phone_number_id", "waba_id"],
    )  # fmt: skip


@app.command("remove")
def remove(
    number: Annotated[
        str, typer.Argument(metavar="NUMBER", help="The number's digits or its phone-number id.")
    ],
) -> None:
    """Unregister a number. Its webhook history is kept: adding it back to the same account
    restores its counts; another account counts it from then on (see numbers add
    --with-history)."""
    with database(write=True) as conn:
        row = service.remove_number(conn, number, now=now())
    console.print(
        f"Removed {row.whatsapp} (phone-number id {row.phone_number_id}).", highlight=False
    )
