"""`wastats import`, `wastats recount`, `wastats events ...`: the operator's ingestion tools."""

from __future__ import annotations

import json
from concurrent.futures.process import BrokenProcessPool
from contextlib import nullcontext
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table
from sqlalchemy.exc import OperationalError

from wastats.cli.common import console, database, fail, now, open_database, settings
from wastats.domain.accounts import get_account
from wastats.ingest.identity import CustomerHasher, SecretKeyMissing, load_secret_key
from wastats.ingest.importer import ImportFileError, ImportReport, import_file, parsing_process
from wastats.ingest.pipeline import Pipeline
from wastats.ingest.recount import (
    accounts_to_recount,
    numbers_to_recount,
    recount_account_rollups,
    recount_number,
)
from wastats.store import inbox as inbox_repo
from wastats.store.db import Database

events_app = typer.Typer(help="Stored webhook bodies: rejected ones, replay.", no_args_is_help=True)


def _pipeline_and_db() -> tuple[Pipeline, Database]:
    s = settings()
    try:
        hasher = CustomerHasher(load_secret_key(s))
    except SecretKeyMissing as exc:
        fail(str(exc))
    return Pipeline(hasher), open_database(migrate=True)


def import_command(
    files: Annotated[
        list[Path],
        typer.Argument(
            help="Files with one webhook body (JSON) per line, or one JSON array of bodies; "
            ".gz compressed is fine.",
            exists=True,
            dir_okay=False,
            readable=True,
        ),
    ],
    parallel: Annotated[
        bool,
        typer.Option(
            "--parallel/--serial",
            help="Parse in a second process while this one stores (the default: about 1.5x "
            "faster on two cores); --serial does everything in this process, for a single core "
            "or about 100 MB less memory.",
        ),
    ] = True,
) -> None:
    """Backfill webhook history from files. Idempotent: importing a file twice changes nothing.

    No signature is needed: whoever can run this command can write to the database anyway."""
    pipeline, db = _pipeline_and_db()
    report = ImportReport()
    unreadable: list[str] = []
    total = sum(f.stat().st_size for f in files)
    try:
        with (
            parsing_process(pipeline) if parallel else nullcontext() as parser,
            Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                DownloadColumn(),
                TextColumn("{task.fields[events]} events"),
                TimeRemainingColumn(),
                console=console,
                transient=False,
            ) as progress,
        ):
            task = progress.add_task("importing", total=total, events=0)
            for path in files:
                progress.update(task, description=path.name)

                def advance(n: int) -> None:
                    assert report.counted is not None
                    progress.update(
                        task,
                        advance=n,
                        events=report.counted.statuses + report.counted.inbound,
                    )

                try:
                    import_file(
                        db, pipeline, path, now=now(), report=report, on_bytes=advance,
                        parser=parser,
                    )  # fmt: skip
                except ImportFileError as exc:
                    unreadable.append(f"{path.name}: {exc}")  # the other files are still imported
                advance(0)  # the bar advances as bytes are read: the last chunk counts after
    except OperationalError as exc:
        fail(f"database error: {exc.orig}")
    except BrokenProcessPool:
        # Everything committed so far stays (and counts); importing the file again finishes it.
        fail(
            "the parsing process stopped unexpectedly (out of memory?); what was committed is "
            "kept: run the same import again (with --serial if it keeps failing) to finish it"
        )
    finally:
        db.dispose()
    counted = report.counted
    assert counted is not None
    console.print(
        f"Read {report.lines} bodies: {report.new_bodies} new, {report.duplicates} already "
        f"stored; counted {counted.statuses} status updates and {counted.inbound} incoming "
        f"messages; {counted.rejected} bodies rejected (see `wastats events rejected`).",
        highlight=False,
        soft_wrap=True,
    )
    if unreadable:
        fail("; ".join(unreadable))


def recount_command(
    account: Annotated[
        str | None, typer.Option(help="Only this account's numbers (client_id).")
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Only report differences; change nothing.")
    ] = False,
) -> None:
    """Rebuild all counts from the stored facts and report any difference from what was stored.

    Exits with status 1 if anything differed (and was repaired, unless --dry-run)."""
    with database(write=False) as conn:
        account_id = get_account(conn, account).id if account else None
        numbers = numbers_to_recount(conn, account_id)
    db = open_database()
    table = Table("phone_number_id", "registered", "units", "missing", "extra", "changed",
                  "rollup rows off")  # fmt: skip
    differing = 0
    try:
        for number in numbers:
            with db.write() as conn:
                result = recount_number(conn, number, repair=not dry_run)
            if result.differs:
                differing += 1
            table.add_row(
                number,
                "yes" if result.registered else "no",
                str(result.units),
                str(result.units_missing),
                str(result.units_extra),
                str(result.units_changed),
                str(result.rollup_rows_differing),
            )
        # Account-wide sums, after the numbers' own rollups are right: one account at a time.
        account_rows_off = 0
        with db.read() as conn:
            accounts = accounts_to_recount(conn, account_id)
        for each in accounts:
            with db.write() as conn:
                account_rows_off += recount_account_rollups(conn, each, repair=not dry_run)
    finally:
        db.dispose()
    console.print(table)
    if account_rows_off:
        console.print(f"[bold red]Account rollups: {account_rows_off} rows differed.[/]")
    if differing or account_rows_off:
        what = "found" if dry_run else "found and repaired"
        console.print(f"[bold red]Differences {what} on {differing} of {len(numbers)} numbers.[/]")
        raise typer.Exit(1)
    console.print(f"[green]No difference: {len(numbers)} numbers recounted.[/]")


@events_app.command("rejected")
def rejected(
    limit: Annotated[int, typer.Option(help="Show at most this many, newest first.")] = 50,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON lines.")] = False,
) -> None:
    """Bodies that were signed but not (fully) understood, with the reason.

    Everything understood in them was counted; replay them after an upgrade."""
    with database(write=False) as conn:
        rows = inbox_repo.list_by_state(conn, inbox_repo.REJECTED, limit)
    if as_json:
        for r in rows:
            item = {"id": r.id, "received_at": r.received_at, "source": r.source,
                    "events": r.events, "reason": r.reason, "bytes": r.size}  # fmt: skip
            typer.echo(json.dumps(item))
        return
    table = Table("id", "received (UTC)", "source", "events", "reason")
    for r in rows:
        received = datetime.fromtimestamp(r.received_at, UTC).strftime("%Y-%m-%d %H:%M:%S")
        table.add_row(str(r.id), received, r.source, str(r.events), r.reason or "")
    console.print(table)
    console.print(f"{len(rows)} rejected bodies shown.")


@events_app.command("replay")
def replay(
    ids: Annotated[
        list[int] | None, typer.Argument(help="Inbox ids to replay (default: every rejected one).")
    ] = None,
) -> None:
    """Parse and count stored rejected bodies again (after an upgrade that understands them).

    Safe to repeat: counting is idempotent, so what was already counted is not counted twice."""
    pipeline, db = _pipeline_and_db()
    try:
        with db.read() as conn:
            chosen = ids or inbox_repo.ids_by_state(conn, inbox_repo.REJECTED)
        processed = still_rejected = 0
        for start in range(0, len(chosen), 500):
            part = chosen[start : start + 500]
            with db.write() as conn:
                bodies = inbox_repo.load_bodies(
                    conn, part, states=(inbox_repo.REJECTED, inbox_repo.PENDING)
                )
                report = pipeline.process(conn, bodies, now())
            processed += report.bodies
            still_rejected += report.rejected
    finally:
        db.dispose()
    console.print(
        f"Replayed {processed} bodies: {processed - still_rejected} now understood, "
        f"{still_rejected} still rejected.",
        highlight=False,
    )
