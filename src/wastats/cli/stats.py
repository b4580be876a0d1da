"""`wastats stats`: an account's counts, read from the database through the same service and
answer model as `GET /v1/stats`, so the operator sees exactly what the account's API users see
(same rules, same zone handling, same `final` flags, the same CSV bytes), with Meta's record
(`source` and cost per row, docs/meta-record.md) once a WABA of the account is linked."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from wastats.cli.common import console, database, errors, now
from wastats.cli.reconcile import cost_label
from wastats.domain import history, reporting
from wastats.domain.accounts import get_account
from wastats.domain.answers import Counts, Stats, csv_lines


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
    csv: Annotated[
        bool, typer.Option("--csv", help="Print the CSV of GET /v1/stats?format=csv instead.")
    ] = False,
    url: Annotated[str | None, typer.Option(hidden=True)] = None,
    secret: Annotated[str | None, typer.Option(hidden=True)] = None,
) -> None:
    """An account's Marketing / Service / Incoming counts, as its API users get them."""
    if url is not None or secret is not None:
        # Options of the version that asked a running service over HTTP, accepted so that
        # existing scripts keep working.
        errors.print(
            "note: --url and --secret are ignored: wastats stats reads the database "
            "(WASTATS_DATABASE_URL) directly",
            highlight=False,
            soft_wrap=True,
        )
    group_by = [part.strip() for value in by or () for part in value.split(",") if part.strip()]
    with database(write=False) as conn:
        owner = get_account(conn, account)
        at = now()
        question = reporting.parse_question(
            conn, owner, from_=from_, to=to, granularity=granularity, tz=tz,
            numbers=number or None, group_by=group_by, unique=unique, now=at,
        )  # fmt: skip
        observed = reporting.answer(conn, owner, question, at).model()
        # With Meta's record (source, cost) once a WABA is linked, as /v1/stats answers.
        answer = history.stats_answer(conn, question, observed, at)
    if csv:
        for chunk in csv_lines(answer):
            typer.echo(chunk, nl=False)
        return
    console.print(_table(answer, unique=unique))
    console.print(_footer(answer), highlight=False)


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
    # Meta's record: only once a WABA is linked (then every row has a source).
    meta = any(row.source is not None for row in answer.rows)
    if meta:
        table.add_column("source")
        table.add_column("cost")
    for row in answer.rows:
        grouped = [getattr(row, g) or "–" for g in groups]
        counted = [value for _, value in _counts(row, unique=unique)]
        extra = [row.source or "–", cost_label(row.cost)] if meta else []
        table.add_row(row.period, *grouped, *counted, "yes" if row.final else "no", *extra)
    return table


def _counts(counts: Counts, *, unique: bool) -> list[tuple[str, str]]:
    columns = [
        ("marketing", str(counts.marketing)),
        ("service", str(counts.service)),
        # None: a row only Meta reported (Meta has no counterpart of Incoming).
        ("incoming", "unknown" if counts.incoming is None else str(counts.incoming)),
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
