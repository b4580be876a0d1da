"""`wastats stats`: an account's counts from a running service, through the Python client.

It asks the service rather than the database so the operator sees exactly what the account's
API users see (same rules, same zone handling, same `final` flags)."""

from __future__ import annotations

from typing import Annotated

import httpx
import typer
from rich.table import Table

from wastats.cli.common import console, database, fail, now
from wastats.client import Client, Counts, Stats, WastatsError
from wastats.domain import auth

DEFAULT_URL = "http://127.0.0.1:8000"
# Long enough for one command, short enough that a token left in a log is soon worthless.
OPERATOR_TOKEN_SECONDS = 300


def stats_command(
    account: Annotated[
        str, typer.Option(help="The account's client_id.", metavar="CLIENT_ID", show_default=False)
    ],
    from_: Annotated[
        str | None,
        typer.Option(
            "--from",
            metavar="DATE",
            help="First day: YYYY-MM or YYYY-MM-DD (default: 11 months ago).",
        ),
    ] = None,
    to: Annotated[
        str | None,
        typer.Option(metavar="DATE", help="Last day: YYYY-MM or YYYY-MM-DD (default: today)."),
    ] = None,
    by: Annotated[
        list[str] | None,
        typer.Option(
            "--by",
            metavar="GROUP",
            help="Break down by number, category and/or country (repeat or comma-separate).",
        ),
    ] = None,
    number: Annotated[
        list[str] | None,
        typer.Option(
            "--number", metavar="NUMBER", help="Only this number of the account (repeatable)."
        ),
    ] = None,
    granularity: Annotated[
        str, typer.Option(metavar="day|week|month", help="Bucket size.")
    ] = "month",
    tz: Annotated[
        str | None,
        typer.Option(
            metavar="ZONE", help="IANA time zone of the buckets (default: the account's)."
        ),
    ] = None,
    unique: Annotated[
        bool, typer.Option("--unique", help="Add unique customers per period.")
    ] = False,
    csv: Annotated[bool, typer.Option("--csv", help="Print the service's CSV instead.")] = False,
    url: Annotated[
        str, typer.Option(envvar="WASTATS_URL", metavar="URL", help="The service's base URL.")
    ] = DEFAULT_URL,
    secret: Annotated[
        str | None,
        typer.Option(
            envvar="WASTATS_CLIENT_SECRET",
            metavar="SECRET",
            help="The account's client_secret. Without it a short-lived token is made directly "
            "in the database (WASTATS_DATABASE_URL), which the operator can do anyway.",
            show_default=False,
        ),
    ] = None,
) -> None:
    """An account's Marketing / Service / Incoming counts, as its API users get them."""
    base_url = url
    group_by = [part.strip() for value in by or () for part in value.split(",") if part.strip()]
    try:
        with _client(base_url, account, secret) as client:
            fetch = client.stats_csv if csv else client.stats
            answer = fetch(
                from_=from_,
                to=to,
                granularity=granularity,
                tz=tz,
                numbers=number or None,
                group_by=group_by,
                unique=unique,
            )
    except httpx.TransportError as exc:
        fail(f"cannot reach {base_url}: {_first_line(exc)}")
    except httpx.HTTPError as exc:
        fail(f"HTTP error talking to {base_url}: {_first_line(exc)}")
    except WastatsError as exc:
        fail(_first_line(exc))
    if isinstance(answer, str):
        # Exactly the service's CSV, so `--csv > file` equals a download from /v1/stats.
        typer.echo(answer, nl=False)
        return
    console.print(_table(answer, unique=unique))
    console.print(_footer(answer), highlight=False)


def _client(base_url: str, account: str, secret: str | None) -> Client:
    if secret:
        return Client(base_url, account, secret)
    # The operator runs this next to the database: a token made there needs no secret.
    with database(write=True) as conn:
        issued = auth.operator_token(
            conn, client_id=account, now=now(), lifetime=OPERATOR_TOKEN_SECONDS
        )
    return Client.from_token(base_url, issued.access_token)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]


def _table(answer: Stats, *, unique: bool) -> Table:
    # The grouping columns in the answer's own order; pricing goes with category because a
    # free message's row (say `service`, `free_customer_service`) has its unit in no bucket.
    groups: list[str] = [g for g in ("number", "country", "category") if g in answer.group_by]
    if "category" in groups:
        groups.append("pricing")
    table = Table(
        "period",
        *groups,
        title=f"{answer.from_} to {answer.to}, {answer.granularity}s in {answer.tz}",
        show_footer=True,
    )
    table.columns[0].footer = "total"
    for column in table.columns:
        if column.header == "number":
            column.no_wrap = True  # an id: never cut (the other columns give way)
            column.min_width = max([6] + [len(row.number or "") for row in answer.rows])
    for name, value in _counts(answer.totals, unique=unique):
        table.add_column(name, justify="right", footer=value)
    table.add_column("final")
    for row in answer.rows:
        grouped = [getattr(row, g) or "–" for g in groups]
        counted = [value for _, value in _counts(row, unique=unique)]
        table.add_row(row.period, *grouped, *counted, "yes" if row.final else "no")
    return table


def _counts(counts: Counts, *, unique: bool) -> list[tuple[str, str]]:
    columns = [
        ("marketing", str(counts.marketing)),
        ("service", str(counts.service)),
        ("incoming", str(counts.incoming)),
        ("total", str(counts.total)),
    ]
    if unique:
        customers = counts.unique_customers
        columns.append(("unique customers", str(customers.total) if customers else "–"))
    return columns


def _footer(answer: Stats) -> str:
    as_of = answer.as_of.strftime("%Y-%m-%d %H:%M UTC") if answer.as_of else "none yet"
    return (
        f"Newest event counted: {as_of}. In no bucket (free or unclassified): "
        f"{answer.totals.uncounted}. Periods not final can still change (late webhooks)."
    )
