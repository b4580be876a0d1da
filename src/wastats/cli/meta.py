"""`wastats meta ...` (link, status, sync), `wastats dev fake-graph` and
`wastats accounts update`: Meta's record from the command line (docs/meta-record.md)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from wastats.cli.common import console, database, fail, now, open_database, settings
from wastats.domain.accounts import get_account
from wastats.meta.graph import GraphError
from wastats.meta.link import link_waba
from wastats.meta.sync import SyncOutcome, client_from, sync_all, sync_waba
from wastats.store import meta as repo

app = typer.Typer(help="Meta's record: link WABAs, sync their analytics, see the sync state.")
dev_app = typer.Typer(help="Tools for development and the README walk-through.")


def _token(token_file: Path | None) -> str | None:
    if token_file is None:
        return None
    try:
        token = token_file.read_text(encoding="utf-8").strip()
    except OSError as exc:
        fail(f"cannot read the token file {token_file}: {exc.strerror}")
    if not token:
        fail(f"the token file {token_file} is empty")
    return token


def _when(ts: int | None) -> str:
    return "never" if ts is None else datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M")


def _print_outcome(outcome: SyncOutcome) -> None:
    if outcome.skipped:
        console.print(f"WABA {outcome.waba_id}: not due, or being synced by another process.")
    elif outcome.error:
        console.print(
            f"[red]WABA {outcome.waba_id}: sync failed after {outcome.chunks} chunks "
            f"({outcome.rows} rows): {outcome.error}[/]",
            highlight=False,
        )
    else:
        console.print(
            f"WABA {outcome.waba_id}: synced, {outcome.rows} reported rows in "
            f"{outcome.chunks} requests.",
            highlight=False,
        )


TokenFile = Annotated[
    Path | None,
    typer.Option(
        metavar="FILE",
        help="Read the Meta access token from FILE instead of WASTATS_META_ACCESS_TOKEN.",
    ),
]


@app.command("link")
def link(
    account: Annotated[str, typer.Option(metavar="CLIENT_ID", help="The account to link to.")],
    waba: Annotated[str, typer.Option(metavar="WABA_ID", help="WhatsApp Business Account id.")],
    token_file: TokenFile = None,
    no_sync: Annotated[
        bool, typer.Option("--no-sync", help="Only register the numbers; sync later.")
    ] = False,
) -> None:
    """Register the WABA's phone numbers that are not registered yet, then run the first sync
    (Meta's last 365 days)."""
    s = settings()
    try:
        with client_from(s, token=_token(token_file)) as client:
            numbers = client.phone_numbers(waba)
            with database(write=True, migrate=False) as conn:
                linked = link_waba(
                    conn, client_id=account, waba_id=waba, numbers=numbers, now=now()
                )
            console.print(f"WABA {waba}: {len(linked)} phone numbers.", highlight=False)
            for n in linked:
                console.print(
                    f"  {n.whatsapp or '?'}  {n.phone_number_id}  {n.verified_name or ''}  "
                    f"{n.action}",
                    highlight=False,
                )
            if no_sync:
                return
            db = open_database()
            try:
                outcome = sync_waba(
                    db, client, waba, now=now(), interval=s.meta_sync_interval, force=True
                )
            finally:
                db.dispose()
    except GraphError as exc:
        fail(f"Graph API: {exc}")
    _print_outcome(outcome)
    if outcome.error:
        raise typer.Exit(1)


@app.command("sync")
def sync(
    waba: Annotated[
        str | None, typer.Option(metavar="WABA_ID", help="Only this WABA (default: all).")
    ] = None,
    token_file: TokenFile = None,
) -> None:
    """Sync now, whether due or not (the service also syncs by itself, hourly by default)."""
    s = settings()
    db = open_database()
    try:
        with client_from(s, token=_token(token_file)) as client:
            outcomes = sync_all(
                db,
                client,
                now=now,
                interval=s.meta_sync_interval,
                force=True,
                waba_ids=[waba] if waba else None,
            )
    except GraphError as exc:
        fail(f"Graph API: {exc}")
    finally:
        db.dispose()
    if not outcomes:
        console.print("No WABA to sync: link one with `wastats meta link`.")
    for outcome in outcomes:
        _print_outcome(outcome)
    if any(o.error for o in outcomes):
        raise typer.Exit(1)


@app.command("status")
def status(
    account: Annotated[
        str | None, typer.Option(metavar="CLIENT_ID", help="Only this account's WABAs.")
    ] = None,
) -> None:
    """Per WABA: last successful sync, span covered, last error, next try."""
    with database(write=False) as conn:
        if account:
            states = repo.list_states(
                conn, repo.wabas_of_account(conn, get_account(conn, account).id)
            )
        else:
            states = repo.list_states(conn)
    if not states:
        console.print("No WABA linked or synced yet.")
        return
    table = Table("WABA", "last success", "covered (UTC)", "last error", "next try")
    for st in states:
        covered = (
            f"{_when(st.covered_from)} → {_when(st.covered_to)}"
            if st.covered_from is not None
            else "nothing yet"
        )
        error = f"{_when(st.last_error_at)}: {st.last_error}" if st.last_error else ""
        table.add_row(st.waba_id, _when(st.last_success), covered, error, _when(st.next_try))
    console.print(table)


@dev_app.command("fake-graph")
def fake_graph(
    port: Annotated[int, typer.Option(help="Port on 127.0.0.1.", min=1, max=65535)] = 8765,
    token: Annotated[
        str, typer.Option(metavar="TOKEN", help="The access token the fake accepts.")
    ] = "fake-token",
    wabas: Annotated[int, typer.Option(help="WABAs (ids 1000, 1001, ...).", min=1)] = 1,
    numbers: Annotated[int, typer.Option(help="Phone numbers per WABA.", min=1)] = 3,
    per_day: Annotated[
        int, typer.Option(help="Reported data points per number and day.", min=0, max=48)
    ] = 6,
) -> None:
    """Serve a fake Graph API on 127.0.0.1 with generated data (for trying wastats out)."""
    import uvicorn

    from wastats.meta.fake_graph import create_fake_graph, demo_state

    state = demo_state(token=token, wabas=wabas, numbers=numbers, per_day=per_day)
    console.print(
        f"Fake Graph API on http://127.0.0.1:{port}: WABAs "
        f"{', '.join(state.wabas)}; token {token!r}. Ctrl-C stops it.",
        highlight=False,
    )
    uvicorn.run(create_fake_graph(state), host="127.0.0.1", port=port, log_level="warning")


def accounts_update(
    client_id: Annotated[str, typer.Argument(metavar="CLIENT_ID", help="The account.")],
    history_from_meta: Annotated[
        str | None,
        typer.Option(
            metavar="on|off",
            help="Answer months before a number's first observed day from Meta's record in "
            "the compatible API (Marketing and Service; Incoming 0).",
        ),
    ] = None,
) -> None:
    """Change an account's settings."""
    if history_from_meta not in ("on", "off"):
        fail("nothing to change: give --history-from-meta on|off")
    with database(write=True) as conn:
        account = get_account(conn, client_id)
        repo.set_history_from_meta(conn, account.id, history_from_meta == "on")
    console.print(f"{client_id}: history from Meta {history_from_meta}.", highlight=False)


ratecard_app = typer.Typer(help="The rate card behind cost estimates.")


@ratecard_app.command("import")
def ratecard_import(
    file: Annotated[Path, typer.Argument(metavar="FILE", help="Rate card CSV (see docs).")],
) -> None:
    """Replace the rate card used for estimates (the shipped one is an illustrative sample)."""
    from wastats.domain import ratecard

    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        fail(f"cannot read {file}: {exc}")
    with database(write=True) as conn:
        card = ratecard.parse(text)  # InvalidInput becomes one red line
        repo.store_ratecard(conn, text)
    console.print(
        f"Rate card {card.version!r} imported: {len(card.rates)} rates; source: {card.source}; "
        f"date: {card.date}.",
        highlight=False,
    )


@ratecard_app.command("show")
def ratecard_show() -> None:
    """Print the rate card in use."""
    from wastats.domain.history import current_card

    with database(write=False) as conn:
        card = current_card(conn)
    typer.echo(card.text, nl=False)
