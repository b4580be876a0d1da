"""`wastats meta link/status/sync` and `wastats accounts update` against the fake Graph API and a
real database."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from conftest import SECRET_KEY, make_settings
from fakegraph import TOKEN, fake_graph
from helpers import add_number, create_tenant
from wastats.cli.main import app
from wastats.meta.fake_graph import FakeGraph, FakeNumber, FakeWaba
from wastats.store import meta as repo
from wastats.store import numbers as numbers_repo
from wastats.store.db import Database

runner = CliRunner()


def _run(env: dict[str, str], *args: str) -> tuple[int, str]:
    result = runner.invoke(app, list(args), env=env)
    return result.exit_code, result.output


def _fake() -> FakeGraph:
    state = FakeGraph(token=TOKEN, page_size=2)
    waba = FakeWaba("4242", generated_per_day=1)
    waba.numbers = [
        FakeNumber("9001", "+972 50-111-1111", "Blue Shop"),
        FakeNumber("9002", "+972 50-222-2222", "Blue Shop Support"),
        FakeNumber("9003", "+1 631-555-0103", "Blue Shop US"),
    ]
    state.add_waba(waba)
    return state


def test_link_registers_the_missing_numbers_and_syncs(database_url: str, tmp_path: Path) -> None:
    settings = make_settings(database_url)
    tenant = create_tenant(settings)
    add_number(settings, tenant, "972501111111", "9001")  # registered without its WABA
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    state = _fake()
    with fake_graph(state) as url:
        # The secret key too: --token-file stores the token sealed under the deployment's keys.
        env = {
            "WASTATS_DATABASE_URL": database_url,
            "WASTATS_META_GRAPH_URL": url,
            "WASTATS_SECRET_KEY": SECRET_KEY,
        }
        code, out = _run(
            env, "meta", "link", "--account", tenant.client_id, "--waba", "4242",
            "--token-file", str(token_file),
        )  # fmt: skip
        assert code == 0, out
        assert "972501111111  9001  Blue Shop  already registered (WABA id recorded)" in out
        assert "972502222222  9002  Blue Shop Support  registered" in out
        assert "16315550103  9003  Blue Shop US  registered" in out
        assert "WABA 4242: synced" in out
        code, out = _run(env, "meta", "status", "--account", tenant.client_id)
        assert code == 0, out
        assert "4242" in out
        assert "nothing yet" not in out

        # An expired token: one red line, exit 1, the error kept for `meta status`.
        state.fail("expired_token")
        code, out = _run(env, "meta", "sync", "--token-file", str(token_file))
        assert code == 1
        assert "token" in out
        code, status = _run(env, "meta", "status")
        assert "Session has expired" in status.replace("\n", " ") or "token" in status
        assert TOKEN not in out + status
    db = Database(database_url)
    try:
        with db.read() as conn:
            st = repo.get_state(conn, "4242")
            numbers = {n.phone_number_id: n for n in numbers_repo.list_numbers(conn)}
            reported = repo.count_reported(conn)
    finally:
        db.dispose()
    assert st is not None
    assert st.account_id is not None
    assert st.last_success is not None
    assert st.last_error is not None
    assert set(numbers) == {"9001", "9002", "9003"}
    assert numbers["9002"].waba_id == "4242"
    assert numbers["9001"].waba_id == "4242"
    assert numbers["9002"].display_name == "Blue Shop Support"
    assert reported > 0


def test_without_a_token_link_says_so(database_url: str) -> None:
    settings = make_settings(database_url)
    tenant = create_tenant(settings)
    code, out = _run(
        {"WASTATS_DATABASE_URL": database_url, "WASTATS_SECRET_KEY": SECRET_KEY},
        "meta", "link", "--account", tenant.client_id, "--waba", "4242",
    )  # fmt: skip
    assert code == 1
    assert "WASTATS_META_ACCESS_TOKEN" in out
    assert "Traceback" not in out


def test_accounts_update_history_from_meta(database_url: str) -> None:
    settings = make_settings(database_url)
    tenant = create_tenant(settings)
    env = {"WASTATS_DATABASE_URL": database_url}
    code, out = _run(env, "accounts", "update", tenant.client_id, "--history-from-meta", "on")
    assert code == 0, out
    db = Database(database_url)
    try:
        with db.read() as conn:
            from wastats.domain.accounts import get_account

            assert repo.history_from_meta(conn, get_account(conn, tenant.client_id).id)
    finally:
        db.dispose()
    code, out = _run(env, "accounts", "update", tenant.client_id)
    assert code == 1
    assert "--history-from-meta" in out
