"""Per-account Meta access tokens against the fake Graph API and a real database: each WABA is
synced with its account's token (else the global one, else not at all), tokens are sealed at
rest and resealed when the body keys rotate, a refused token (190) fails only its own WABAs,
and the CLI reads tokens from files or standard input without ever showing them."""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from conftest import SECRET_KEY, make_settings
from fakegraph import TOKEN, VERSION, fake_graph
from helpers import Tenant, create_tenant
from wastats.app import create_app
from wastats.cli.main import app as cli_app
from wastats.meta.fake_graph import FakeGraph, FakeNumber, FakeWaba
from wastats.meta.sync import sync_with_tokens
from wastats.meta.tokens import MetaTokens, check_token
from wastats.sealing import BodySealer, BodyUnreadable
from wastats.store import meta as repo
from wastats.store import meta_tokens as token_repo
from wastats.store.db import Database

runner = CliRunner()

TOKEN_A = "EAAG-account-a-token-7f3c9e1d2b4a6f8e0c1d"
TOKEN_B = "EAAG-account-b-token-1a2b3c4d5e6f7a8b9c0d"
NOW = 1_796_212_800  # 2026-12-02T12:00:00Z


def _fake() -> FakeGraph:
    """WABA 7001 readable only with TOKEN_A, 7002 only with TOKEN_B, 7003 (and 7004) with the
    global TOKEN; 7005 also with TOKEN_A (a second WABA of account A)."""
    state = FakeGraph(token=TOKEN, page_size=50)
    for k, (waba_id, token) in enumerate(
        [("7001", TOKEN_A), ("7002", TOKEN_B), ("7003", None), ("7005", TOKEN_A)]
    ):
        waba = FakeWaba(waba_id, generated_per_day=1, token=token)
        waba.numbers = [FakeNumber(f"90{k}1", f"+972 50-{k}00-0001", f"Shop {waba_id}")]
        state.add_waba(waba)
    return state


def _env(database_url: str, url: str, **extra: str) -> dict[str, str]:
    return {
        "WASTATS_DATABASE_URL": database_url,
        "WASTATS_SECRET_KEY": SECRET_KEY,
        "WASTATS_META_GRAPH_URL": url,
        "WASTATS_META_GRAPH_VERSION": VERSION,
        "WASTATS_META_ACCESS_TOKEN": "",
        "WASTATS_BODY_KEYS": "",
        **extra,
    }


def _run(env: dict[str, str], *args: str, stdin: str | None = None) -> tuple[int, str]:
    result = runner.invoke(cli_app, list(args), env=env, input=stdin)
    return result.exit_code, result.output


def _link(env: dict[str, str], tenant: Tenant, waba: str, token_file: Path | None) -> str:
    args = ["meta", "link", "--account", tenant.client_id, "--waba", waba, "--no-sync"]
    if token_file is not None:
        args += ["--token-file", str(token_file)]
    code, out = _run(env, *args)
    assert code == 0, out
    return out


def _tokens_by_waba(state: FakeGraph) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for waba_id, token in state.tokens_used:
        out.setdefault(waba_id, set()).add(token)
    return out


def _sealer(*secrets: str) -> MetaTokens:
    return MetaTokens(BodySealer([s.encode() for s in secrets]))


def test_each_waba_is_synced_with_its_accounts_token_and_tokens_are_sealed(
    database_url: str, tmp_path: Path
) -> None:
    settings = make_settings(database_url)
    a, b, c = (create_tenant(settings, name) for name in ("A", "B", "C"))
    file_a, file_b = tmp_path / "a.token", tmp_path / "b.token"
    file_a.write_text(TOKEN_A + "\n")
    file_b.write_text(TOKEN_B)
    state = _fake()
    with fake_graph(state) as url:
        env = _env(database_url, url)
        assert "stored (sealed)" in _link(env, a, "7001", file_a)
        _link(env, b, "7002", file_b)
        _link({**env, "WASTATS_META_ACCESS_TOKEN": TOKEN}, c, "7003", None)
        state.tokens_used.clear()
        # Without a global token: A and B sync with their own; C's WABA has none and says so.
        code, out = _run(env, "meta", "sync")
        assert code == 1, out
        assert "WABA 7001: synced" in out
        assert "WABA 7002: synced" in out
        assert "WABA 7003: sync failed" in out
        assert "no Meta access token" in out
        assert _tokens_by_waba(state) == {"7001": {TOKEN_A}, "7002": {TOKEN_B}}
        # With it: C's WABA uses the global token; A and B still their own.
        state.tokens_used.clear()
        code, out = _run({**env, "WASTATS_META_ACCESS_TOKEN": TOKEN}, "meta", "sync")
        assert code == 0, out
        assert _tokens_by_waba(state) == {"7001": {TOKEN_A}, "7002": {TOKEN_B}, "7003": {TOKEN}}
        code, status = _run({**env, "WASTATS_META_ACCESS_TOKEN": TOKEN}, "meta", "status")
        assert code == 0, status
    lines = {ln.split()[1]: ln for ln in status.splitlines() if ln[:1] in "│|" and "700" in ln}
    assert "account" in lines["7001"], status
    assert "global" in lines["7003"], status
    for secret in (TOKEN_A, TOKEN_B, TOKEN):
        assert secret not in out + status
    db = Database(database_url)
    try:
        with db.read() as conn:
            rows = token_repo.sealed_tokens(conn)
    finally:
        db.dispose()
    assert {r.client_id for r in rows} == {a.client_id, b.client_id}
    for row in rows:
        assert TOKEN_A.encode() not in row.sealed
        assert TOKEN_B.encode() not in row.sealed
    if database_url.startswith("sqlite:///"):
        path = Path(database_url.removeprefix("sqlite:///"))
        stored = b"".join(p.read_bytes() for p in path.parent.glob(path.name + "*"))
        assert TOKEN_A.encode() not in stored
        assert TOKEN_B.encode() not in stored


def test_a_refused_token_fails_only_the_wabas_that_use_it(
    database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)  # httpx's request lines and the sync's warnings included
    settings = make_settings(database_url)
    a, b = create_tenant(settings, "A"), create_tenant(settings, "B")
    state = _fake()
    db = Database(database_url)
    tokens = _sealer(SECRET_KEY)
    try:
        with db.write() as conn:
            tokens.set(conn, a.client_id, TOKEN_A, NOW)
            tokens.set(conn, b.client_id, TOKEN_B, NOW)
            from wastats.domain.accounts import get_account

            for waba_id, tenant in (("7001", a), ("7005", a), ("7002", b)):
                repo.ensure_state(conn, waba_id, get_account(conn, tenant.client_id).id, NOW)
        state.expired.add(TOKEN_A)
        with fake_graph(state) as url:
            s = make_settings(database_url, meta_graph_url=url, meta_graph_version=VERSION)
            outcomes = sync_with_tokens(db, s, tokens, now=lambda: NOW, interval=3600)
        by_waba = {o.waba_id: o for o in outcomes}
        assert by_waba["7002"].error is None
        assert by_waba["7002"].rows > 0
        assert by_waba["7001"].error_kind == "token"
        assert "expired" in (by_waba["7001"].error or "")
        # The second WABA of the refused token is marked without asking Meta again.
        assert by_waba["7005"].error_kind == "token"
        assert "the same token as WABA 7001" in (by_waba["7005"].error or "")
        assert _tokens_by_waba(state) == {"7001": {TOKEN_A}, "7002": {TOKEN_B}}
        with db.read() as conn:
            states = {st.waba_id: st for st in repo.list_states(conn)}
        assert states["7002"].last_error is None
        assert states["7002"].last_success == NOW
        assert states["7001"].failures == 1
        assert states["7005"].failures == 1
        assert states["7005"].next_try == NOW + 3600
        for st in states.values():
            assert TOKEN_A not in (st.last_error or "")
            assert TOKEN_B not in (st.last_error or "")
        assert "expired" in caplog.text  # the failure is logged ...
        assert TOKEN_A not in caplog.text  # ... never the token
        assert TOKEN_B not in caplog.text
    finally:
        db.dispose()


def test_rotation_reseals_tokens_and_a_lost_key_never_falls_back_to_the_global_token(
    database_url: str,
) -> None:
    settings = make_settings(database_url)
    a = create_tenant(settings, "A")
    db = Database(database_url)
    try:
        old, new = _sealer("old-key"), _sealer("new-key", "old-key")
        with db.write() as conn:
            account_id = old.set(conn, a.client_id, TOKEN_A, NOW)
            repo.ensure_state(conn, "7001", account_id, NOW)
            (before,) = token_repo.sealed_tokens(conn)
        state = _fake()
        with fake_graph(state) as url:
            s = make_settings(
                database_url, meta_graph_url=url, meta_graph_version=VERSION,
                meta_access_token=TOKEN,
            )  # fmt: skip
            # After the rotation (new key first, old one still listed): the token still opens,
            # and the round reseals it with the new key.
            outcomes = sync_with_tokens(db, s, new, now=lambda: NOW, interval=3600)
            assert [o.error for o in outcomes] == [None]
            with db.read() as conn:
                (after,) = token_repo.sealed_tokens(conn)
            assert after.key_id != before.key_id
            assert after.sealed != before.sealed
            assert after.key_id == BodySealer([b"new-key"]).key_id
            # The old key can go now.
            only_new = _sealer("new-key")
            state.tokens_used.clear()
            outcomes = sync_with_tokens(
                db, s, only_new, now=lambda: NOW + 60, interval=3600, force=True
            )
            assert [o.error for o in outcomes] == [None]
            assert _tokens_by_waba(state) == {"7001": {TOKEN_A}}
            # A key nobody has any more: the WABA says so, and the global token is not tried
            # (it may belong to another business).
            state.tokens_used.clear()
            lost = _sealer("some-other-key")
            outcomes = sync_with_tokens(
                db, s, lost, now=lambda: NOW + 120, interval=3600, force=True
            )
            assert outcomes[0].error_kind == "token"
            assert "does not open" in (outcomes[0].error or "")
            assert state.tokens_used == []
    finally:
        db.dispose()


def test_a_sealed_token_is_bound_to_its_account(database_url: str) -> None:
    settings = make_settings(database_url)
    a, b = create_tenant(settings, "A"), create_tenant(settings, "B")
    tokens = _sealer(SECRET_KEY)
    db = Database(database_url)
    try:
        with db.write() as conn:
            id_a = tokens.set(conn, a.client_id, TOKEN_A, NOW)
            id_b = tokens.set(conn, b.client_id, TOKEN_B, NOW)
            rows = {r.account_id: r for r in token_repo.sealed_tokens(conn)}
            # A's sealed token copied into B's row does not open as B's.
            token_repo.put(conn, id_b, rows[id_a].sealed, rows[id_a].key_id, NOW)
            opened = tokens.opened(conn)
        assert opened[id_a] == TOKEN_A
        assert not isinstance(opened[id_b], str)
    finally:
        db.dispose()


def test_cli_token_set_from_stdin_or_file_clear_and_bad_tokens(
    database_url: str, tmp_path: Path
) -> None:
    settings = make_settings(database_url)
    a = create_tenant(settings, "A")
    state = _fake()
    with fake_graph(state) as url:
        env = _env(database_url, url)
        code, out = _run(env, "meta", "token", "set", "--account", a.client_id,
                         stdin=TOKEN_A + "\n")  # fmt: skip
        assert code == 0, out
        assert TOKEN_A not in out
        # link without --token-file uses the stored token.
        code, out = _run(env, "meta", "link", "--account", a.client_id, "--waba", "7001")
        assert code == 0, out
        assert "WABA 7001: synced" in out
        assert _tokens_by_waba(state) == {"7001": {TOKEN_A}}
        code, status = _run(env, "meta", "status", "--account", a.client_id)
        row = next(ln for ln in status.splitlines() if "7001" in ln)
        assert "account" in row, status
        # A line break inside, or an empty stdin: refused, the token never repeated.
        code, out = _run(env, "meta", "token", "set", "--account", a.client_id,
                         "--token-file", "-", stdin="EAAG secret with spaces\n")  # fmt: skip
        assert code == 1
        assert "printable ASCII" in out
        assert "secret with spaces" not in out
        code, out = _run(env, "meta", "token", "set", "--account", a.client_id, stdin="")
        assert code == 1
        assert "empty" in out
        token_file = tmp_path / "b.token"
        token_file.write_text(TOKEN_B + "\n")
        code, out = _run(env, "meta", "token", "set", "--account", a.client_id,
                         "--token-file", str(token_file))  # fmt: skip
        assert code == 0, out
        code, out = _run(env, "meta", "token", "set", "--account", "no-such-client",
                         stdin=TOKEN_B)  # fmt: skip
        assert code == 1
        assert "Traceback" not in out
        code, out = _run(env, "meta", "token", "clear", "--account", a.client_id)
        assert code == 0
        assert "removed" in out
        code, out = _run(env, "meta", "token", "clear", "--account", a.client_id)
        assert code == 0
        assert "had no Meta token" in out
        code, status = _run(env, "meta", "status")
        row = next(ln for ln in status.splitlines() if "7001" in ln)
        assert "none" in row, status
        # A WABA nobody linked, named without any token: said, and a failure.
        code, out = _run(env, "meta", "sync", "--waba", "7003")
        assert code == 1
        assert "WABA 7003: not synced: token: no Meta access token" in out.replace("\n", " ")
        # With no token anywhere, the WABA is not synced and says why.
        code, out = _run(env, "meta", "sync")
        assert code == 1
        assert "no Meta access token" in out


def test_check_token() -> None:
    assert check_token("  abc\n") == "abc"
    for bad in ("", "a b", "a\nb", "ä", "x" * 5000):
        with pytest.raises(Exception, match="token"):
            check_token(bad)


def test_the_service_syncs_with_an_accounts_token_without_a_global_one(
    database_url: str,
) -> None:
    settings = make_settings(database_url)
    a = create_tenant(settings, "A")
    db = Database(database_url)
    try:
        with db.write() as conn:
            account_id = _sealer(SECRET_KEY).set(conn, a.client_id, TOKEN_A, NOW)
            repo.ensure_state(conn, "7001", account_id, NOW)
    finally:
        db.dispose()
    state = _fake()
    reached = threading.Event()
    with fake_graph(state) as url:
        s = make_settings(
            database_url, meta_graph_url=url, meta_graph_version=VERSION, meta_sync_interval=3600
        )
        assert s.meta_access_token is None
        with TestClient(create_app(s)):
            # Bounded wait until the service's own sync thread has called the Graph API.
            for _ in range(3000):
                if state.tokens_used:
                    reached.set()
                    break
                threading.Event().wait(0.01)
        assert reached.is_set(), "the sync thread did not start without a global token"
    assert {t for _, t in state.tokens_used} == {TOKEN_A}


_tokens = st.text(
    alphabet=st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=300
)


@settings(max_examples=50, deadline=None)
@given(token=_tokens, account=st.integers(1, 2**40), other=st.integers(1, 2**40))
def test_sealing_opens_only_for_its_account_and_never_with_a_body_key(
    token: str, account: int, other: int
) -> None:
    body = BodySealer([SECRET_KEY.encode()])
    tokens = body.for_meta_tokens()
    bound = f"meta-token/account/{account}"
    sealed = tokens.seal(token.encode(), bound)
    if len(token) >= 16:  # (a byte or two may turn up in random ciphertext by chance)
        assert token.encode() not in sealed
    assert tokens.open(sealed, tokens.key_id, bound) == token.encode()
    assert tokens.key_id == body.key_id  # one rotation of the body keys covers both
    with pytest.raises(BodyUnreadable):
        body.open(sealed, body.key_id, bound)  # a body key is not a token key
    if other != account:
        with pytest.raises(BodyUnreadable):
            tokens.open(sealed, tokens.key_id, f"meta-token/account/{other}")


def test_fake_graph_refuses_a_bad_waba_token_option(database_url: str) -> None:
    code, out = _run(
        {"WASTATS_DATABASE_URL": database_url}, "dev", "fake-graph", "--waba-token", "9999=x"
    )
    assert code == 1
    assert "WABA_ID=TOKEN" in out
