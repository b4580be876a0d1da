"""`wastats reconcile`: our counts against Meta's analytics (docs/meta-record.md), from the
same answer model as `GET /v1/reconciliation`, so the table, `--json` and `--csv` show exactly
what the account's API users get (the same bytes, for `--json` and `--csv`)."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Column, Table

from wastats.cli.common import console, database, fail, now
from wastats.domain.accounts import get_account
from wastats.domain.answers import Cost, Reconciliation, reconciliation_csv_lines

_VERDICT_STYLE = {
    "match": "green",
    "collection gap": "bold red",
    "differs": "bold yellow",
    "not yet reported": "dim",
    "outside Meta's window": "dim",
}


def reconcile_command(
    account: Annotated[str, typer.Option(metavar="CLIENT_ID", help="The account.")],
    from_: Annotated[
        str | None,
        typer.Option(
            "--from", metavar="YYYY-MM[-DD]", help="First month or day (default: 12 months ago)."
        ),
    ] = None,
    to: Annotated[
        str | None, typer.Option(metavar="YYYY-MM[-DD]", help="Last month or day (default: today).")
    ] = None,
    granularity: Annotated[str, typer.Option(metavar="day|month", help="Period length.")] = "month",
    tz: Annotated[
        str | None, typer.Option(metavar="ZONE", help="IANA zone (default: the account's).")
    ] = None,
    number: Annotated[
        list[str] | None, typer.Option(metavar="NUMBER", help="Only these numbers (repeatable).")
    ] = None,
    csv: Annotated[
        bool, typer.Option("--csv", help="Print the CSV of GET /v1/reconciliation?format=csv.")
    ] = False,
    json: Annotated[
        bool, typer.Option("--json", help="Print the JSON of GET /v1/reconciliation.")
    ] = False,
) -> None:
    """Our counts against Meta's analytics, per period, number and category, with verdicts."""
    from wastats.domain import reconciliation
    from wastats.domain.reporting import ParameterError

    if csv and json:
        fail("give --csv or --json, not both")
    with database(write=False) as conn:
        try:
            result = reconciliation.answer(
                conn, get_account(conn, account), from_=from_, to=to, granularity=granularity,
                tz=tz, numbers=number, now=now(),
            ).model()  # fmt: skip
        except ParameterError as exc:
            fail(f"--{exc.parameter.replace('_', '-')}: {exc.message}")
    if json:
        typer.echo(result.wire_json().decode())
        return
    if csv:
        for chunk in reconciliation_csv_lines(result):
            typer.echo(chunk, nl=False)
        return
    _print(account, result)


def _print(account: str, result: Reconciliation) -> None:
    last_sync = result.last_sync.strftime("%Y-%m-%d %H:%M") if result.last_sync else "never"
    console.print(
        f"{account}: {result.from_} to {result.to} in {result.tz}; last sync {last_sync}"
        + (" (approximate: the zone's offset is not a whole or half hour)"
           if result.approximate else ""),
        highlight=False,
    )  # fmt: skip
    # The columns a reader scans by never wrap; category and pricing give way on narrow screens.
    table = Table(
        Column("period", no_wrap=True), Column("number", no_wrap=True), "category", "pricing",
        "observed", "reported", "diff", Column("verdict", no_wrap=True), "cost",
    )  # fmt: skip
    for row in result.rows:
        style = _VERDICT_STYLE.get(row.verdict, "")
        table.add_row(
            row.period, row.number, row.category, row.pricing_type, str(row.observed),
            str(row.reported), f"{row.difference:+d}", f"[{style}]{row.verdict}[/]",
            cost_label(row.cost),
        )  # fmt: skip
    console.print(table)
    summary = Table("number", "observed", "reported", "coverage", "|diff|", "matching periods")
    for s in result.summary.numbers:
        coverage = "-" if s.coverage is None else f"{s.coverage:.1%}"
        summary.add_row(
            s.number, str(s.observed), str(s.reported), coverage, str(s.absolute_difference),
            f"{s.matching_periods}/{s.periods}",
        )  # fmt: skip
    console.print(summary)


def cost_label(cost: Cost | None) -> str:
    """A cost as people read it: Meta's figure or an estimate, always labelled (the spec: an
    estimate is never shown as Meta's). Meta's figure is in the WABA's currency, which Meta's
    analytics do not name."""
    if cost is None:
        return "–"
    parts = []
    if cost.meta_amount is not None:
        parts.append(f"{cost.meta_amount:.2f} (Meta's)")
    if cost.estimate_amount is not None:
        currency = f" {cost.currency}" if cost.currency else ""
        parts.append(f"≈ {cost.estimate_amount:.2f}{currency} (estimate)")
    return " + ".join(parts)
