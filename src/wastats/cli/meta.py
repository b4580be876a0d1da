"""`wastats meta ...` (link, status, sync), `wastats dev fake-graph` and
`wastats accounts update`: Meta's record from the command line (docs/meta-record.md)."""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from wastats.cli.common import console, database, fail, now, open_database, settings
from wastats.domain.accounts import get_account
from wastats.domain.errors import InvalidInput
from wastats.ingest.identity import SecretKeyMissing, load_body_sealer
from wastats.meta.graph import GraphClient, GraphError
from wastats.meta.link import link_waba
from wastats.meta.sync import SyncOutcome, sync_waba, sync_with_tokens
from wastats.meta.tokens import NO_TOKEN, MetaTokens, check_token, global_token
from wastats.store import meta as repo
from wastats.store import meta_tokens as token_repo

app = typer.Typer(help="Meta's record: link WABAs, sync their analytics, see the sync state.")
dev_app = typer.Typer(help="Tools for development and the README walk-through.")


def _token(token_file: Path | None) -> str | None:
    """The token of `--token-file` (`-`: standard input), checked; None without the option.
    Never echoed: errors say what is wrong with it, not what it is."""
    if token_file is None:
        return None
    try:
        if str(token_file) == "-":
            text = sys.stdin.read()
        else:
            text = token_file.read_text(encoding="utf-8")
    except OSError as exc:
        fail(f"cannot read the token file {token_file}: {exc.strerror}")
    except UnicodeDecodeError:
        fail(f"the token file {token_file} is not text")
    where = "standard input" if str(token_file) == "-" else f"the token file {token_file}"
    if not text.strip():
        fail(f"{where} is empty")
    try:
        return check_token(text)
    except InvalidInput as exc:
        fail(f"{where}: {exc}")


def meta_tokens() -> MetaTokens:
    """The token sealer of this deployment (the body keys' secrets, docs/security.md)."""
    try:
        return MetaTokens(load_body_sealer(settings()))
    except SecretKeyMissing as exc:
        fail(str(exc))


def _when(ts: int | None) -> str:
    return "never" if ts is None else datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M")


def _print_outcome(outcome: SyncOutcome) -> None:
    if outcome.skipped and outcome.error:
        console.print(f"WABA {outcome.waba_id}: not synced: {outcome.error}", highlight=False)
    elif outcome.skipped:
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
        help="Read the Meta access token from FILE (`-`: standard input) instead of the "
        "account's own token or WASTATS_META_ACCESS_TOKEN.",
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
    (Meta's last 365 days). With --token-file, the token is also stored, sealed, as the
    account's own: the service syncs the account's WABAs with it from then on."""
    s = settings()
    given = _token(token_file)
    tokens = meta_tokens()
    with database(write=False) as conn:
        account_id = get_account(conn, account).id
        stored = tokens.opened(conn).get(account_id)
    if given is not None:
        token: str | None = given
    elif isinstance(stored, str):
        token = stored
    elif stored is not None:
        fail(f"the account's Meta token does not open ({stored}); set it again with --token-file")
    else:
        token = global_token(s)
    if token is None:
        fail(NO_TOKEN.removeprefix("token: ").replace("this WABA", f"account {account}")
             + ", or give --token-file")  # fmt: skip
    try:
        with GraphClient(s.meta_graph_url, s.meta_graph_version, token) as client:
            numbers = client.phone_numbers(waba)
            with database(write=True, migrate=False) as conn:
                linked = link_waba(
                    conn, client_id=account, waba_id=waba, numbers=numbers, now=now()
                )
                if given is not None:
                    # Only now: the token has just been shown to work for this WABA.
                    tokens.set(conn, account, given, now())
            console.print(f"WABA {waba}: {len(linked)} phone numbers.", highlight=False)
            for n in linked:
                console.print(
                    f"  {n.whatsapp or '?'}  {n.phone_number_id}  {n.verified_name or ''}  "
                    f"{n.action}",
                    highlight=False,
                )
            if given is not None:
                console.print(
                    f"Token stored (sealed) as account {account}'s own Meta token.",
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
    """Sync now, whether due or not (the service also syncs by itself, hourly by default). Each
    WABA with its account's own token, else WASTATS_META_ACCESS_TOKEN; --token-file for all."""
    s = settings()
    override = _token(token_file)
    tokens = meta_tokens()
    db = open_database()
    try:
        outcomes = sync_with_tokens(
            db,
            s,
            tokens,
            now=now,
            interval=s.meta_sync_interval,
            force=True,
            waba_ids=[waba] if waba else None,
            override=override,
        )
    finally:
        db.dispose()
    if not outcomes:
        console.print("No WABA to sync: link one with `wastats meta link`.")
    for outcome in outcomes:
        _print_outcome(outcome)
    # A WABA named with --waba that was not synced is a failure; among all of them, one that has
    # no token and was never linked is only said (another account's business, not Meta's).
    if any(o.error and (waba or not o.skipped) for o in outcomes):
        raise typer.Exit(1)


@app.command("status")
def status(
    account: Annotated[
        str | None, typer.Option(metavar="CLIENT_ID", help="Only this account's WABAs.")
    ] = None,
) -> None:
    """Per WABA: the token it is synced with (the account's own, the global one, or none; never
    the token), last successful sync, span covered, last error, next try."""
    s = settings()
    tokens = meta_tokens()
    with database(write=False) as conn:
        choices = {c.waba_id: c for c in tokens.choose(conn, s)}
        if account:
            account_id = get_account(conn, account).id
            wanted = repo.wabas_of_account(conn, account_id)
            states = repo.list_states(conn, wanted)
        else:
            wanted = sorted(choices)
            states = repo.list_states(conn)
        own = {t.account_id: t.client_id for t in token_repo.sealed_tokens(conn)}
    if not wanted:
        console.print("No WABA linked or synced yet.")
        return
    by_waba = {st.waba_id: st for st in states}
    table = Table("WABA", "token", "last success", "covered (UTC)", "last error", "next try")
    for waba_id in wanted:
        choice = choices.get(waba_id)
        token = choice.source if choice else "none"
        if choice is not None and choice.account_id in own and token.startswith("account"):
            token += f" ({own[choice.account_id]})"
        st = by_waba.get(waba_id)
        if st is None:
            # A WABA of registered numbers that was never synced (no token when it was due).
            table.add_row(waba_id, token, "never", "not synced", "", "")
            continue
        covered = (
            f"{_when(st.covered_from)} → {_when(st.covered_to)}"
            if st.covered_from is not None
            else "nothing yet"
        )
        error = f"{_when(st.last_error_at)}: {st.last_error}" if st.last_error else ""
        table.add_row(st.waba_id, token, _when(st.last_success), covered, error, _when(st.next_try))
    console.print(table)


token_app = typer.Typer(help="Accounts' own Meta access tokens (stored sealed, never shown).")
app.add_typer(token_app, name="token")


@token_app.command("set")
def token_set(
    account: Annotated[str, typer.Option(metavar="CLIENT_ID", help="The account.")],
    token_file: Annotated[
        Path,
        typer.Option(metavar="FILE", help="Read the token from FILE; `-` (the default): stdin."),
    ] = Path("-"),
) -> None:
    """Store the account's own Meta access token, sealed: its WABAs are synced with it instead
    of WASTATS_META_ACCESS_TOKEN (the running service picks it up at its next round)."""
    token = _token(token_file)
    assert token is not None
    tokens = meta_tokens()
    with database(write=True) as conn:
        tokens.set(conn, account, token, now())
    console.print(
        f"{account}: Meta token stored (sealed); its WABAs are synced with it.", highlight=False
    )


@token_app.command("clear")
def token_clear(
    account: Annotated[str, typer.Option(metavar="CLIENT_ID", help="The account.")],
) -> None:
    """Forget the account's own Meta token: its WABAs fall back to WASTATS_META_ACCESS_TOKEN."""
    tokens = meta_tokens()
    with database(write=True) as conn:
        removed = tokens.clear(conn, account)
    if removed:
        console.print(f"{account}: Meta token removed.", highlight=False)
    else:
        console.print(f"{account}: had no Meta token of its own.", highlight=False)


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
    waba_token: Annotated[
        list[str] | None,
        typer.Option(
            metavar="WABA_ID=TOKEN",
            help="A WABA readable only with its own token (repeatable), as for a business's own "
            "system user; try it with `wastats meta token set`.",
        ),
    ] = None,
) -> None:
    """Serve a fake Graph API on 127.0.0.1 with generated data (for trying wastats out)."""
    import uvicorn

    from wastats.meta.fake_graph import create_fake_graph, demo_state

    state = demo_state(token=token, wabas=wabas, numbers=numbers, per_day=per_day)
    for item in waba_token or []:
        waba_id, sep, own = item.partition("=")
        if not sep or waba_id not in state.wabas or not own:
            fail(f"--waba-token {item!r}: give WABA_ID=TOKEN for one of {', '.join(state.wabas)}")
        state.wabas[waba_id].token = own
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
    file: Annotated[
        Path,
        typer.Argument(
            metavar="FILE",
            help="Meta's published rate card (CSV, or its spreadsheet saved as CSV), or a card "
            "in wastats' own format (docs/meta-record.md).",
        ),
    ],
    source: Annotated[
        str | None,
        typer.Option(metavar="URL", help="Where the card comes from (stored with it)."),
    ] = None,
    effective_from: Annotated[
        str | None,
        typer.Option(
            metavar="YYYY-MM-DD",
            help="The day Meta's card takes effect (default: the date in its title rows).",
        ),
    ] = None,
) -> None:
    """Replace the rate card used for estimates (the shipped one is an illustrative sample).
    A card in Meta's layout takes effect on its date; the card imported before it keeps
    pricing the days before."""
    from datetime import date

    from wastats.domain import ratecard, ratecard_meta
    from wastats.domain.history import current_card

    try:
        raw = file.read_bytes()
    except OSError as exc:
        fail(f"cannot read {file}: {exc.strerror}")
    if raw.startswith(b"PK\x03\x04"):
        fail(f"{file} is a spreadsheet (.xlsx): open it, save it as CSV, and import the CSV")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        fail(f"{file} is not UTF-8 text (byte {exc.start}): save it as CSV in UTF-8")
    if source is not None and (not source.strip() or not source.isprintable()):
        fail("--source: give a URL or a short description on one line")
    when: date | None = None
    if effective_from is not None:
        try:
            when = date.fromisoformat(effective_from)
        except ValueError:
            fail(f"--effective-from: {effective_from!r} is not a date YYYY-MM-DD")
    regions: tuple[str, ...] = ()
    with database(write=True) as conn:
        if ratecard_meta.is_meta_layout(text):
            previous = current_card(conn) if repo.stored_ratecard(conn) else None
            meta_card = ratecard_meta.convert(
                text, name=file.name, source=source, effective_from=when, previous=previous,
                today=datetime.fromtimestamp(now(), UTC).date(),
            )  # fmt: skip
            text, regions = meta_card.text, meta_card.regions
        elif when is not None:
            fail("--effective-from is for Meta's layout; a wastats card has its own dates")
        elif source is not None:
            lines = text.splitlines()
            at = 1 if lines and lines[0].startswith("#") else 0
            text = "\n".join([*lines[:at], f"# source: {source}", *lines[at:]]) + "\n"
        card = ratecard.parse(text)  # InvalidInput becomes one red line
        repo.store_ratecard(conn, text)
    console.print(
        f"Rate card {card.version!r} imported: {len(card.rates)} rates; source: {card.source}; "
        f"date: {card.date}.",
        highlight=False,
    )
    if regions:
        console.print(
            f"{', '.join(regions)}: priced at the `Other` rate (Meta's card does not say which "
            "countries a region holds).",
            highlight=False,
        )


@ratecard_app.command("show")
def ratecard_show() -> None:
    """Print the rate card in use."""
    from wastats.domain.history import current_card

    with database(write=False) as conn:
        card = current_card(conn)
    typer.echo(card.text, nl=False)
