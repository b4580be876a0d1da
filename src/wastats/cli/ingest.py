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

from wastats.cli.common import (
    console,
    database,
    errors,
    fail,
    now,
    open_database,
    plural,
    print_table,
    settings,
    unreachable,
)
from wastats.domain.accounts import get_account
from wastats.ingest.identity import (
    CustomerHasher,
    SecretKeyMissing,
    load_body_sealer,
    load_secret_key,
)
from wastats.ingest.importer import ImportFileError, ImportReport, import_file, parsing_process
from wastats.ingest.pipeline import Pipeline
from wastats.ingest.recount import recount
from wastats.sealing import BodySealer
from wastats.store import inbox as inbox_repo
from wastats.store.db import Database

events_app = typer.Typer(
    help="Stored webhook bodies: rejected ones, replay, purge.", no_args_is_help=True
)


def _pipeline_and_db() -> tuple[Pipeline, BodySealer, Database]:
    s = settings()
    # On SQLite without a configured key, the key is a file made beside the database: check the
    # database is there first, so a mistyped directory gets neither. Otherwise loading the key
    # makes nothing, and a missing one is the first thing to say.
    db = open_database(migrate=True) if s.is_sqlite and s.secret_key is None else None
    try:
        hasher = CustomerHasher(load_secret_key(s))
        sealer = load_body_sealer(s)
    except (SecretKeyMissing, ValueError) as exc:  # ValueError: a key too short to be one
        if db is not None:
            db.dispose()
        fail(str(exc) if isinstance(exc, SecretKeyMissing) else f"WASTATS_SECRET_KEY: {exc}")
    return Pipeline(hasher), sealer, db or open_database(migrate=True)


def import_command(
    files: Annotated[
        list[Path],
        typer.Argument(
            help="Files with one webhook body (JSON) per line, or one JSON array of bodies; "
            ".gz compressed is fine. A file that cannot be read is reported and skipped.",
            metavar="FILE...",
            show_default=False,
        ),
    ],
    allow_rejected: Annotated[
        bool,
        typer.Option(
            "--allow-rejected",
            help="Exit 0 even if some lines were rejected (they are kept either way, listed "
            "with their FILE:LINE by `wastats events rejected`).",
        ),
    ] = False,
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

    Each rejected line is reported as FILE:LINE with the reason, and the exit status is 1 if any
    line was rejected (unless --allow-rejected) or any file could not be read.
    No signature is needed: whoever can run this command can write to the database anyway."""
    unreadable: list[str] = []
    readable: list[Path] = []
    for path in files:
        # Checked here, one by one, so one wrong name does not stop the other files.
        if not path.exists():
            unreadable.append(f"{path}: no such file")
        elif not path.is_file():
            unreadable.append(f"{path}: not a file")
        else:
            readable.append(path)
    if not readable:
        fail("; ".join(unreadable))
    pipeline, sealer, db = _pipeline_and_db()
    report = ImportReport()
    total = sum(f.stat().st_size for f in readable)
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
            for path in readable:
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
                        parser=parser, sealer=sealer,
                    )  # fmt: skip
                except ImportFileError as exc:
                    unreadable.append(f"{path}: {exc}")  # the other files are still imported
                except OSError as exc:  # unreadable (permissions, a disk error)
                    unreadable.append(f"{path}: {exc.strerror or exc}")
                advance(0)  # the bar advances as bytes are read: the last chunk counts after
    except OperationalError as exc:
        unreachable(db.url, exc)
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
    for line in report.rejected_lines:
        errors.print(f"[yellow]rejected:[/] {line}", highlight=False, soft_wrap=True)
    if counted.rejected > len(report.rejected_lines):
        errors.print(f"... and {counted.rejected - len(report.rejected_lines)} more rejected")
    console.print(
        f"Read {plural(report.lines, 'body', 'bodies')}: {report.new_bodies} new, "
        f"{report.duplicates} already stored; counted "
        f"{plural(counted.statuses, 'status update')} and "
        f"{plural(counted.inbound, 'incoming message')}; "
        f"{plural(counted.rejected, 'body', 'bodies')} rejected"
        + (" (kept: see `wastats events rejected`)." if counted.rejected else "."),
        highlight=False,
        soft_wrap=True,
    )
    if unreadable:
        fail("; ".join(unreadable))
    if counted.rejected and not allow_rejected:
        fail(
            f"{plural(counted.rejected, 'line was', 'lines were')} rejected (listed above); "
            "fix and import them again, or pass --allow-rejected to accept that"
        )


def recount_command(
    account: Annotated[
        str | None, typer.Option(metavar="CLIENT_ID", help="Only this account's numbers.")
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Only report differences; change nothing.")
    ] = False,
) -> None:
    """Rebuild all counts from the stored facts and report any difference from what was stored.

    Exits with status 1 if anything differed (and was repaired, unless --dry-run)."""
    with database(write=False) as conn:
        account_id = get_account(conn, account).id if account else None
    db = open_database()
    try:
        report = recount(db, account_id, repair=not dry_run)
    finally:
        db.dispose()
    table = Table("phone_number_id", "registered", "units", "missing", "extra", "changed",
                  "rollup rows off")  # fmt: skip
    table.columns[0].no_wrap = True  # an id: never cut, the counts' columns give way
    table.columns[0].min_width = len("phone_number_id")
    for result in report.numbers:
        table.add_row(
            result.phone_number_id,
            "yes" if result.registered else "no",
            str(result.units),
            str(result.units_missing),
            str(result.units_extra),
            str(result.units_changed),
            str(result.rollup_rows_differing),
        )
    console.print(table)
    if report.account_rows_differing:
        console.print(
            f"[bold red]Account rollups: {plural(report.account_rows_differing, 'row')} "
            "differed.[/]"
        )
    if report.differs:
        what = "found" if dry_run else "found and repaired"
        console.print(
            f"[bold red]Differences {what} on {report.numbers_differing} of {len(report.numbers)} "
            "numbers.[/]"
        )
        raise typer.Exit(1)
    console.print(f"[green]No difference: {plural(len(report.numbers), 'number')} recounted.[/]")


@events_app.command("rejected")
def rejected(
    limit: Annotated[
        int, typer.Option(metavar="N", help="Show at most this many, newest first.")
    ] = 50,
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
    table: list[list[str]] = []
    for r in rows:
        received = datetime.fromtimestamp(r.received_at, UTC).strftime("%Y-%m-%d %H:%M:%S")
        table.append([str(r.id), received, r.source, str(r.events), r.reason or ""])
    # An imported body's reason starts with its FILE:LINE (see ingest/importer.py).
    print_table(["id", "received (UTC)", "source", "events", "reason"], table, ids=["id"])
    console.print(f"{plural(len(rows), 'rejected body', 'rejected bodies')} shown.")


@events_app.command("replay")
def replay(
    ids: Annotated[
        list[int] | None,
        typer.Argument(metavar="ID...", help="Inbox ids to replay (default: every rejected one)."),
    ] = None,
) -> None:
    """Parse and count stored rejected bodies again (after an upgrade that understands them).

    Safe to repeat: counting is idempotent, so what was already counted is not counted twice."""
    pipeline, sealer, db = _pipeline_and_db()
    try:
        with db.read() as conn:
            chosen = ids or inbox_repo.ids_by_state(conn, inbox_repo.REJECTED)
        processed = still_rejected = 0
        for start in range(0, len(chosen), 500):
            part = chosen[start : start + 500]
            with db.write() as conn:
                bodies = inbox_repo.load_bodies(
                    conn, part, sealer, states=(inbox_repo.REJECTED, inbox_repo.PENDING)
                )
                report = pipeline.process(conn, bodies, now())
            processed += report.bodies
            still_rejected += report.rejected
    finally:
        db.dispose()
    console.print(
        f"Replayed {plural(processed, 'body', 'bodies')}: {processed - still_rejected} now "
        f"understood, {still_rejected} still rejected.",
        highlight=False,
    )
