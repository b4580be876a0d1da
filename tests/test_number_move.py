"""A number moved to another account: the new owner sees only what arrived after the move
(issue 11), unless the operator moves the history along; on SQLite and PostgreSQL.

Everything goes through the real app (webhooks in, `/v1/stats` and the partners API out), the
real domain services and the real CLI (`wastats numbers`, `wastats recount`)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text
from typer.testing import CliRunner

from conftest import SECRET_KEY, FakeClock, make_settings
from fakegraph import TOKEN, client_for, fake_graph
from helpers import Tenant, add_number, bearer, create_tenant, get_token
from wastats.app import create_app
from wastats.cli import app as cli_app
from wastats.domain import numbers
from wastats.meta.fake_graph import FakeGraph, FakeNumber, FakePoint, FakeWaba
from wastats.meta.sync import sync_waba
from wastats.settings import Settings
from wastats.store.db import Database
from webhooks import at, body, deliver, inbound, post, settle, status

PNID, DIGITS = "106540352242922", "15550783881"
STATS = "/api/whatsapp/getConversationsStatistics"
REGISTERED = at("2025-01-01 00:00")
REMOVED = at("2025-03-01 00:00")
MOVED = at("2025-03-10 00:00")  # registration to the new owner: where its counts start

runner = CliRunner()


def template(wamid: str, ts: int, user: str) -> list[dict[str, Any]]:
    """A marketing template sent at `ts` and delivered: one Marketing unit."""
    return [
        status(wamid, "sent", ts, pricing=("PMP", "marketing", "regular"), user=user,
               number=PNID),
        status(wamid, "delivered", ts + 2, user=user, number=PNID),
    ]  # fmt: skip


def old_owners_traffic(client: TestClient) -> None:
    """February: two customers write in (2 incoming sessions), two templates (2 Marketing)."""
    deliver(
        client,
        inbound("972501111111", at("2025-02-10 10:00"), number=PNID),
        inbound("972502222222", at("2025-02-11 10:00"), number=PNID),
        *template("wamid.old.1", at("2025-02-12 10:00"), "972501111111"),
        *template("wamid.old.2", at("2025-02-13 10:00"), "972502222222"),
    )


def remove(settings: Settings, now: int) -> None:
    db = Database(settings.database_url)
    try:
        with db.write() as conn:
            numbers.remove_number(conn, PNID, now=now)
    finally:
        db.dispose()


def v1(client: TestClient, tenant: Tenant, **params: str) -> Any:
    headers = bearer(get_token(client, tenant))
    response = client.get("/v1/stats", params=params, headers=headers)
    assert response.status_code == 200, response.text
    return response.json()


def buckets(answer: Any) -> dict[str, tuple[int, int]]:
    """{period: (marketing, incoming)} of a `/v1/stats` answer."""
    return {row["period"]: (row["marketing"], row["incoming"]) for row in answer["rows"]}


def partners(client: TestClient, tenant: Tenant) -> list[tuple[str, int, int]]:
    """(monthYear, totalMarketing, totalIncoming) of getConversationsStatistics."""
    response = client.get(STATS, headers=bearer(get_token(client, tenant)))
    assert response.status_code == 200
    answer = response.json()
    assert answer["status"] == "OK", answer
    return [(i["monthYear"], i["totalMarketing"], i["totalIncoming"]) for i in answer["list"]]


def cli(settings: Settings, *args: str) -> tuple[int, str]:
    env = {"WASTATS_DATABASE_URL": settings.database_url, "WASTATS_SECRET_KEY": SECRET_KEY}
    result = runner.invoke(cli_app, list(args), env=env)
    return result.exit_code, result.stdout + result.stderr


@pytest.fixture
def old(settings: Settings) -> Tenant:
    return create_tenant(settings, "Old owner")


@pytest.fixture
def new(settings: Settings) -> Tenant:
    return create_tenant(settings, "New owner")


def test_the_new_owner_sees_only_what_arrived_after_the_move(
    client: TestClient, settings: Settings, old: Tenant, new: Tenant
) -> None:
    add_number(settings, old, DIGITS, PNID, now=REGISTERED)
    old_owners_traffic(client)
    assert buckets(v1(client, old, **{"from": "2025-02", "to": "2025-02"})) == {"2025-02": (2, 2)}
    remove(settings, REMOVED)
    # Between removal and registration: whose it is, the service cannot know; not the new
    # owner's (the registration time is the move).
    deliver(client, inbound("972503333333", at("2025-03-05 10:00"), number=PNID))
    add_number(settings, new, DIGITS, PNID, now=MOVED)
    # Nothing of the new owner's yet: not even the time of the old owner's newest event.
    assert v1(client, new, **{"from": "2025-01", "to": "2025-03"})["as_of"] is None
    deliver(
        client,
        # Late webhooks of the old owner's traffic, received after the move: still not the new
        # owner's (the pipeline's path, not registration's).
        inbound("972501111111", at("2025-02-20 10:00"), number=PNID),
        *template("wamid.old.3", at("2025-02-21 10:00"), "972501111111"),
        status("wamid.old.1", "read", at("2025-03-11 10:00"), user="972501111111", number=PNID),
        # The new owner's own traffic: one customer session, one template.
        inbound("972504444444", at("2025-03-15 10:00"), number=PNID),
        *template("wamid.new.1", at("2025-03-16 10:00"), "972504444444"),
    )
    span = {"from": "2025-01", "to": "2025-03"}
    monthly = {"2025-01": (0, 0), "2025-02": (0, 0), "2025-03": (1, 1)}
    # Monthly in the account's zone: the account rollups; grouped by number: its rollups.
    assert buckets(v1(client, new, **span)) == monthly
    by_number = v1(client, new, group_by="number", **span)
    assert {r["period"]: r["marketing"] + r["incoming"] for r in by_number["rows"]} == {
        "2025-03": 2
    }
    # By day with unique customers: the counted units themselves.
    daily = v1(client, new, granularity="day", unique="true",
               **{"from": "2025-02-01", "to": "2025-03-31"})  # fmt: skip
    assert {p: v for p, v in buckets(daily).items() if v != (0, 0)} == {
        "2025-03-15": (0, 1),
        "2025-03-16": (1, 0),
    }
    assert daily["totals"]["unique_customers"]["incoming"] == 1
    assert daily["totals"]["unique_customers"]["marketing"] == 1
    assert v1(client, new, **span)["as_of"] == "2025-03-16T10:00:02Z"
    # The partners API reads the rollups: the same.
    assert partners(client, new) == [("032025", 1, 1)]
    # The old owner no longer has the number: nothing.
    assert partners(client, old) == []
    # A full recount rebuilds the counts the same way: nothing to repair.
    code, out = cli(settings, "recount", "--dry-run")
    assert code == 0, out
    assert "No difference" in out


def test_recount_rebuilds_a_moved_numbers_rollups_from_the_move(
    client: TestClient, settings: Settings, old: Tenant, new: Tenant
) -> None:
    add_number(settings, old, DIGITS, PNID, now=REGISTERED)
    old_owners_traffic(client)
    remove(settings, REMOVED)
    add_number(settings, new, DIGITS, PNID, now=MOVED)
    deliver(client, inbound("972504444444", at("2025-03-15 10:00"), number=PNID))
    db = Database(settings.database_url)
    try:
        with db.write() as conn:
            conn.execute(text("DELETE FROM monthly_counts"))
    finally:
        db.dispose()
    code, out = cli(settings, "recount")
    assert code == 1, out  # it differed, and was repaired
    assert partners(client, new) == [("032025", 0, 1)]
    assert buckets(v1(client, new, **{"from": "2025-02", "to": "2025-03"})) == {
        "2025-02": (0, 0),
        "2025-03": (0, 1),
    }
    assert cli(settings, "recount", "--dry-run")[0] == 0


def test_with_history_the_new_owner_gets_the_numbers_history(
    client: TestClient, settings: Settings, old: Tenant, new: Tenant
) -> None:
    add_number(settings, old, DIGITS, PNID, now=REGISTERED)
    old_owners_traffic(client)
    code, out = cli(settings, "numbers", "remove", PNID)
    assert code == 0, out
    code, out = cli(settings, "numbers", "add", "--account", new.client_id, "--whatsapp", DIGITS,
                    "--phone-number-id", PNID, "--with-history")  # fmt: skip
    assert code == 0, out
    assert "another account" not in out
    assert partners(client, new) == [("022025", 2, 2)]
    daily = v1(client, new, granularity="day", **{"from": "2025-02-01", "to": "2025-02-28"})
    assert sum(m + i for m, i in buckets(daily).values()) == 4
    assert cli(settings, "recount", "--dry-run")[0] == 0


def test_the_cli_says_where_a_moved_numbers_counts_start(
    client: TestClient, settings: Settings, old: Tenant, new: Tenant
) -> None:
    add_number(settings, old, DIGITS, PNID, now=REGISTERED)
    old_owners_traffic(client)
    assert cli(settings, "numbers", "remove", DIGITS)[0] == 0
    code, out = cli(settings, "numbers", "add", "--account", new.client_id, "--whatsapp", DIGITS,
                    "--phone-number-id", PNID)  # fmt: skip
    assert code == 0, out
    assert "It was another account's: this account counts it from" in out
    assert "--with-history" in out
    code, out = cli(settings, "numbers", "list", "--json")
    listed = json.loads(out)
    assert listed["counts_from"] is not None
    assert partners(client, new) == []  # February was the old owner's
    code, out = cli(settings, "numbers", "add", "--help")
    assert "--with-history" in out


def test_adding_a_number_back_to_the_same_account_keeps_its_history(
    client: TestClient, settings: Settings, old: Tenant
) -> None:
    add_number(settings, old, DIGITS, PNID, now=REGISTERED)
    old_owners_traffic(client)
    remove(settings, REMOVED)
    add_number(settings, old, DIGITS, PNID, now=MOVED)
    assert partners(client, old) == [("022025", 2, 2)]
    assert buckets(v1(client, old, **{"from": "2025-02", "to": "2025-02"})) == {"2025-02": (2, 2)}


def test_a_number_back_with_its_earlier_owner_after_another_starts_at_the_return(
    client: TestClient, settings: Settings, old: Tenant, new: Tenant
) -> None:
    """Old → new → old: the old owner must not see the new owner's traffic of March; a single
    start can't leave a gap in the middle, so it starts at the return (its February is then
    hidden too, the safe side; --with-history would show all of it)."""
    add_number(settings, old, DIGITS, PNID, now=REGISTERED)
    old_owners_traffic(client)
    remove(settings, REMOVED)
    add_number(settings, new, DIGITS, PNID, now=MOVED)
    deliver(client, inbound("972504444444", at("2025-03-15 10:00"), number=PNID))
    remove(settings, at("2025-04-01 00:00"))
    add_number(settings, old, DIGITS, PNID, now=at("2025-04-02 00:00"))
    deliver(client, inbound("972505555555", at("2025-04-03 10:00"), number=PNID))
    assert partners(client, old) == [("042025", 0, 1)]


def test_a_same_account_round_trip_keeps_a_moved_numbers_start(
    client: TestClient, settings: Settings, old: Tenant, new: Tenant
) -> None:
    """The new owner removing the number and adding it back changes nothing: its start stays
    the move, it does not gain the old owner's history."""
    add_number(settings, old, DIGITS, PNID, now=REGISTERED)
    old_owners_traffic(client)
    remove(settings, REMOVED)
    add_number(settings, new, DIGITS, PNID, now=MOVED)
    deliver(client, inbound("972504444444", at("2025-03-15 10:00"), number=PNID))
    remove(settings, at("2025-04-01 00:00"))
    add_number(settings, new, DIGITS, PNID, now=at("2025-04-02 00:00"))
    assert partners(client, new) == [("032025", 0, 1)]


def test_a_released_numbers_former_account_deleted_still_counts_as_another(
    client: TestClient, settings: Settings, old: Tenant, new: Tenant
) -> None:
    add_number(settings, old, DIGITS, PNID, now=REGISTERED)
    old_owners_traffic(client)
    remove(settings, REMOVED)
    assert cli(settings, "accounts", "delete", old.client_id, "--yes")[0] == 0
    add_number(settings, new, DIGITS, PNID, now=MOVED)
    assert partners(client, new) == []


def test_a_number_whose_account_was_deleted_with_it_still_counts_as_anothers(
    client: TestClient, settings: Settings, old: Tenant, new: Tenant
) -> None:
    """Deleting an account drops its registrations with it (no `numbers remove`): its numbers
    must still count as released by another account."""
    add_number(settings, old, DIGITS, PNID, now=REGISTERED)
    old_owners_traffic(client)
    assert cli(settings, "accounts", "delete", old.client_id, "--yes")[0] == 0
    add_number(settings, new, DIGITS, PNID, now=MOVED)
    assert partners(client, new) == []
    assert cli(settings, "recount", "--dry-run")[0] == 0


def test_a_new_numbers_backlog_is_still_counted_when_it_is_added(
    client: TestClient, settings: Settings, new: Tenant
) -> None:
    """Never registered before: what arrived before registration is its owner's (the docs
    promise it), as before the move rule."""
    old_owners_traffic(client)
    add_number(settings, new, DIGITS, PNID, now=MOVED)
    assert partners(client, new) == [("022025", 2, 2)]


# --- Meta's record of a moved number ----------------------------------------------------------


def test_meta_record_before_the_move_is_not_the_new_owners(database_url: str) -> None:
    """Meta's reported September (synced while the number was the old owner's) stays out of
    the new owner's `/v1/stats` and its history-from-Meta months; its own November shows."""
    now, waba, pnid, digits = at("2026-12-02 12:00"), "777", "8100001", "972508888888"
    settings = make_settings(database_url)
    old, new = create_tenant(settings, "Old"), create_tenant(settings, "New")
    add_number(settings, old, digits, pnid, waba_id=waba, now=at("2026-01-01 00:00"))
    sep, nov = at("2026-09-10 10:00"), at("2026-11-10 10:00")
    state = FakeGraph(token=TOKEN)
    points = [FakePoint(sep, digits, "IL", "MARKETING", "REGULAR", 3, 0.075, "0:MAX"),
              FakePoint(nov, digits, "IL", "MARKETING", "REGULAR", 5, 0.125, "0:MAX")]  # fmt: skip
    state.add_waba(FakeWaba(waba, numbers=[FakeNumber(pnid, f"+{digits}", "S")], points=points))
    db = Database(database_url)
    try:
        with fake_graph(state) as url, client_for(url) as graph:
            assert sync_waba(db, graph, waba, now=now).error is None
        with db.write() as conn:
            numbers.remove_number(conn, pnid, now=at("2026-09-30 00:00"))
    finally:
        db.dispose()
    add_number(settings, new, digits, pnid, waba_id=waba, now=at("2026-10-01 00:00"))
    env = {"WASTATS_DATABASE_URL": database_url, "WASTATS_SECRET_KEY": SECRET_KEY}
    on = ["accounts", "update", new.client_id, "--history-from-meta", "on"]
    assert runner.invoke(cli_app, on, env=env).exit_code == 0
    with TestClient(create_app(settings, clock=FakeClock(now))) as http:
        for k in range(5):
            value = status(f"wamid.n{k}", "delivered", nov + k, number=pnid,
                           pricing=("PMP", "marketing", "regular"))  # fmt: skip
            assert post(http, body(value)) == 200
        settle(http)
        answer = v1(http, new, group_by="number", **{"from": "2026-09", "to": "2026-11"})
        rows = {r["period"]: r for r in answer["rows"]}
        assert "2026-09" not in rows or rows["2026-09"]["marketing"] == 0, rows
        assert rows["2026-11"]["marketing"] == 5
        assert partners(http, new) == [("112026", 5, 0)]
        recon = http.get(
            "/v1/reconciliation",
            params={"from": "2026-09", "to": "2026-11"},
            headers=bearer(get_token(http, new)),
        )
        assert recon.status_code == 200, recon.text
        reported = {r["period"]: r["reported"] for r in recon.json()["rows"]}
        assert reported.get("2026-09", 0) == 0, reported
        assert reported["2026-11"] == 5
