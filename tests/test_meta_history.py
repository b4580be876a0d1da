"""Meta's record in the statistics: `/v1/stats` shows reported months where the service has no
observations of its own (`source`, Incoming null) and cost (Meta's or estimated, labelled); the
compatible API does so only when the account turned history from Meta on; rate cards parse and
import with clear errors."""

from __future__ import annotations

import csv
import io
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from conftest import FakeClock, make_settings
from fakegraph import TOKEN, client_for, fake_graph
from helpers import add_number, bearer, create_tenant, get_token
from wastats.app import create_app
from wastats.cli.common import console
from wastats.cli.main import app as cli_app
from wastats.domain import ratecard
from wastats.domain.errors import InvalidInput
from wastats.meta.fake_graph import FakeGraph, FakeNumber, FakePoint, FakeWaba
from wastats.meta.sync import sync_waba
from wastats.store.db import Database
from webhooks import body, post, settle, status

NOW = 1_796_212_800  # 2026-12-02T12:00:00Z
WABA = "777"
PNID = "8100001"
DIGITS = "972508888888"


def _ts(text: str) -> int:
    return int(datetime.fromisoformat(text).replace(tzinfo=ZoneInfo("UTC")).timestamp())


def _points() -> list[FakePoint]:
    sep = _ts("2026-09-10 10:00")
    nov = _ts("2026-11-10 10:00")
    return [
        FakePoint(sep, DIGITS, "IL", "MARKETING", "REGULAR", 3, 0.075, "0:MAX"),
        FakePoint(sep, DIGITS, "IL", "UTILITY", "REGULAR", 2, None, "0:250000"),
        FakePoint(sep + 1800, DIGITS, "IL", "SERVICE", "FREE_CUSTOMER_SERVICE", 4, None),
        FakePoint(nov, DIGITS, "IL", "MARKETING", "REGULAR", 5, 0.125, "0:MAX"),
    ]


@pytest.fixture
def linked(database_url: str) -> tuple[TestClient, str, str]:  # type: ignore[misc]
    settings = make_settings(database_url)
    tenant = create_tenant(settings, timezone="UTC")
    add_number(settings, tenant, DIGITS, PNID, waba_id=WABA)
    state = FakeGraph(token=TOKEN)
    state.add_waba(FakeWaba(WABA, numbers=[FakeNumber(PNID, f"+{DIGITS}", "S")], points=_points()))
    db = Database(database_url)
    try:
        with fake_graph(state) as url, client_for(url) as client:
            assert sync_waba(db, client, WABA, now=NOW).error is None
    finally:
        db.dispose()
    with TestClient(create_app(settings, clock=FakeClock(NOW))) as http:
        nov = _ts("2026-11-10 10:00")
        for k in range(5):
            value = status(f"wamid.h{k}", "delivered", nov + k, number=PNID,
                           pricing=("PMP", "marketing", "regular"))  # fmt: skip
            assert post(http, body(value)) == 200
        settle(http)
        yield http, get_token(http, tenant), tenant.client_id


def test_v1_stats_shows_reported_months_with_source_and_cost(
    linked: tuple[TestClient, str, str],
) -> None:
    http, token, _ = linked
    answer = http.get(
        "/v1/stats",
        params={"from": "2026-09", "to": "2026-11", "group_by": "number"},
        headers=bearer(token),
    ).json()
    rows = {r["period"]: r for r in answer["rows"]}
    sep, oct_, nov = rows["2026-09"], rows.get("2026-10"), rows["2026-11"]
    assert sep["source"] == "reported"
    assert sep["incoming"] is None
    assert (sep["marketing"], sep["service"], sep["uncounted"], sep["total"]) == (3, 2, 4, 5)
    # Meta's cost for the marketing point, an estimate for the utility one: both, labelled.
    assert sep["cost"]["source"] == "meta+estimate"
    assert sep["cost"]["meta"] == 0.075
    assert sep["cost"]["estimate"] == pytest.approx(2 * 0.004)
    assert oct_ is None or oct_["source"] == "observed"
    # November is observed (the first observation): the counts are ours, the cost Meta's.
    assert nov["source"] == "observed"
    assert (nov["marketing"], nov["incoming"]) == (5, 0)
    assert nov["cost"] == {"source": "meta", "amount": 0.125, "currency": None}
    assert answer["totals"]["marketing"] == 8
    by_category = http.get(
        "/v1/stats",
        params={"from": "2026-09", "to": "2026-09", "group_by": "category"},
        headers=bearer(token),
    ).json()["rows"]
    costs = {(r["category"], r["pricing"]): r["cost"] for r in by_category}
    assert costs[("marketing", "regular")]["source"] == "meta"
    assert costs[("utility", "regular")] == {
        "source": "estimate", "amount": pytest.approx(0.008), "currency": "USD",
    }  # fmt: skip
    assert costs[("service", "free_customer_service")] is None  # free: no cost at all


def test_v1_stats_csv_and_the_cli_show_source_and_cost(
    linked: tuple[TestClient, str, str], database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    http, token, client_id = linked
    params = {"from": "2026-09", "to": "2026-11", "group_by": "number"}
    answer = http.get("/v1/stats", params=params | {"format": "csv"}, headers=bearer(token))
    assert answer.status_code == 200, answer.text
    rows = {r["period"]: r for r in csv.DictReader(io.StringIO(answer.text))}
    sep, nov = rows["2026-09"], rows["2026-11"]
    # Meta's record alone: Incoming unknown (an empty cell, not 0); both figures, labelled.
    assert (sep["source"], sep["incoming"]) == ("reported", "")
    assert (sep["marketing"], sep["service"], sep["uncounted"], sep["total"]) == (
        "3",
        "2",
        "4",
        "5",
    )
    assert sep["cost_source"] == "meta+estimate"
    assert float(sep["cost_meta"]) == 0.075
    assert float(sep["cost_estimate"]) == pytest.approx(2 * 0.004)
    assert sep["cost_estimate_currency"] == "USD"
    assert nov["source"] == "observed"
    assert (nov["marketing"], nov["incoming"]) == ("5", "0")
    assert [nov[k] for k in ("cost_source", "cost_meta", "cost_estimate")] == ["meta", "0.125", ""]
    assert nov["cost_estimate_currency"] == ""
    # The JSON answer and the CSV say the same.
    doc = http.get("/v1/stats", params=params, headers=bearer(token)).json()
    assert [r["source"] for r in doc["rows"]] == [r["source"] for r in rows.values()]
    # `wastats stats --csv` prints the same bytes; its table shows source and labelled cost.
    monkeypatch.setattr("wastats.cli.stats.now", lambda: NOW)  # the API's clock
    # Wide enough for every column: the console's width is fixed when it is first built.
    monkeypatch.setattr(console, "width", 250)
    env = {"WASTATS_DATABASE_URL": database_url, "COLUMNS": "250"}
    command = ["stats", "--account", client_id, "--from", "2026-09", "--to", "2026-11"]
    result = CliRunner().invoke(cli_app, [*command, "--by", "number", "--csv"], env=env)
    assert result.exit_code == 0, result.output
    assert result.stdout == answer.text
    table = CliRunner().invoke(cli_app, command, env=env)
    assert table.exit_code == 0, table.output
    lines = [line for line in table.stdout.splitlines() if "│" in line]  # the table's rows
    september = next(line for line in lines if "2026-09" in line)
    assert "reported" in september
    assert "unknown" in september
    assert "(Meta's) + ≈ 0.01 USD (estimate)" in september
    november = next(line for line in lines if "2026-11" in line)
    assert "observed" in november
    assert "0.12 (Meta's)" in november


def test_reported_rows_count_against_the_row_cap(database_url: str) -> None:
    """The row cap holds after Meta's record is merged in. Grouped by country over ten months,
    the estimate made before reading anything is ten rows (it cannot know the countries), so
    a cap of 10 lets the question through; Meta reported twelve countries in September, which
    only the merge finds, and it must refuse rather than answer twelve rows."""
    countries = ["IL", "US", "DE", "FR", "IT", "ES", "GB", "BR", "IN", "MX", "NL", "TR"]
    sep = _ts("2026-09-10 10:00")
    points = [
        FakePoint(sep, DIGITS, c, "MARKETING", "REGULAR", 1, None, "0:MAX") for c in countries
    ]
    settings = make_settings(database_url)
    tenant = create_tenant(settings, timezone="UTC")
    add_number(settings, tenant, DIGITS, PNID, waba_id=WABA)
    state = FakeGraph(token=TOKEN)
    state.add_waba(FakeWaba(WABA, numbers=[FakeNumber(PNID, f"+{DIGITS}", "S")], points=points))
    db = Database(database_url)
    try:
        with fake_graph(state) as url, client_for(url) as client:
            assert sync_waba(db, client, WABA, now=NOW).error is None
    finally:
        db.dispose()
    params = {"from": "2026-02", "to": "2026-11", "group_by": "country"}
    for cap, code in ((10, 422), (11, 422), (12, 200)):
        capped = make_settings(database_url, max_stats_rows=cap)
        with TestClient(create_app(capped, clock=FakeClock(NOW))) as http:
            token = get_token(http, tenant)
            for form in ("json", "csv"):
                answer = http.get(
                    "/v1/stats", params=params | {"format": form}, headers=bearer(token)
                )
                assert answer.status_code == code, (cap, form, answer.text)
                if code == 422:
                    assert answer.json()["max_rows"] == cap
                elif form == "csv":
                    assert len(answer.text.splitlines()) == 1 + len(countries)
                else:
                    assert len(answer.json()["rows"]) == len(countries)


def test_compatible_api_uses_reported_months_only_when_turned_on(
    linked: tuple[TestClient, str, str], database_url: str
) -> None:
    http, token, client_id = linked
    stats_url = "/api/whatsapp/getConversationsStatistics"

    def months() -> list[str]:
        answer = http.get(stats_url, headers=bearer(token)).json()
        assert answer["status"] == "OK", answer
        return [m["monthYear"] for m in answer["list"]]

    assert months() == ["112026"]
    result = CliRunner().invoke(
        cli_app, ["accounts", "update", client_id, "--history-from-meta", "on"],
        env={"WASTATS_DATABASE_URL": database_url},
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    answer = http.get(stats_url, headers=bearer(token)).json()
    by_month = {m["monthYear"]: m for m in answer["list"]}
    assert list(by_month) == ["112026", "092026"]
    assert by_month["092026"]["totalMarketing"] == 3
    assert by_month["092026"]["totalService"] == 2
    assert by_month["092026"]["totalIncoming"] == 0
    assert by_month["112026"]["totalMarketing"] == 5  # observed, not added to


def test_unlinked_numbers_answer_as_before(database_url: str) -> None:
    settings = make_settings(database_url)
    tenant = create_tenant(settings, timezone="UTC")
    add_number(settings, tenant, DIGITS, PNID)
    with TestClient(create_app(settings, clock=FakeClock(NOW))) as http:
        token = get_token(http, tenant)
        rows = http.get("/v1/stats", params={"from": "2026-11"}, headers=bearer(token)).json()
    assert all("source" not in r and "cost" not in r for r in rows["rows"])


def test_shipped_rate_card_and_its_lookups() -> None:
    card = ratecard.shipped()
    assert card.source
    assert card.date
    nov = _ts("2026-11-01 00:00")
    aug = _ts("2026-08-01 00:00")
    marketing = card.rate("IL", "marketing", "regular", "0:MAX", nov)
    assert marketing is not None
    assert marketing.currency == "USD"
    # Paid service messages only from 1 October 2026.
    assert card.rate("IL", "service", "regular", "", aug) is None
    assert card.rate("IL", "service", "regular", "", nov) is not None
    # No estimate for categories only Meta can cost.
    assert card.rate("IL", "business_agent", "regular", "", nov) is None


def test_a_market_row_wins_over_the_default() -> None:
    card = ratecard.parse(
        "# v2\n# source: test\n# date: 2026-12-01\n"
        "market,category,pricing_type,tier,currency,rate,effective_from,effective_to\n"
        "*,marketing,regular,,USD,0.02,2025-07-01,\n"
        "IL,marketing,regular,,USD,0.03,2025-07-01,2026-01-01\n"
        "IL,marketing,regular,,USD,0.04,2026-01-01,\n"
    )
    assert card.rate("IL", "marketing", "regular", "", _ts("2025-12-31 23:00")).rate == 0.03  # type: ignore[union-attr]
    assert card.rate("IL", "marketing", "regular", "", _ts("2026-01-01 00:00")).rate == 0.04  # type: ignore[union-attr]
    assert card.rate("BR", "marketing", "regular", "", _ts("2026-01-01 00:00")).rate == 0.02  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("market,category\n*,x\n", "source"),
        ("# v\n# source: s\n# date: d\nmarket,category\n*,x\n", "header"),
        ("# v\n# source: s\n# date: d\n"
         "market,category,pricing_type,tier,currency,rate,effective_from,effective_to\n"
         "*,marketing,regular,,USD,cheap,,\n", "line 5"),
        ("# v\n# source: s\n# date: d\n"
         "market,category,pricing_type,tier,currency,rate,effective_from,effective_to\n"
         "*,marketing,regular,,USD,0.1,July,\n", "effective_from"),
    ],
)  # fmt: skip
def test_bad_rate_cards_are_refused_with_the_reason(text: str, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        ratecard.parse(text)


def test_ratecard_import(database_url: str, tmp_path: Path) -> None:
    env = {"WASTATS_DATABASE_URL": database_url}
    good = tmp_path / "card.csv"
    good.write_text(
        "# operator card 2026-12\n# source: Meta rate card CSV, 2026-12-01\n# date: 2026-12-01\n"
        "market,category,pricing_type,tier,currency,rate,effective_from,effective_to\n"
        "*,marketing,regular,,EUR,0.05,2025-07-01,\n"
    )
    bad = tmp_path / "bad.csv"
    bad.write_text("nonsense\n")
    runner = CliRunner()
    result = runner.invoke(cli_app, ["ratecard", "import", str(bad)], env=env)
    assert result.exit_code == 1
    assert "source" in result.output
    result = runner.invoke(cli_app, ["ratecard", "import", str(good)], env=env)
    assert result.exit_code == 0, result.output
    assert "1 rates" in result.output
    shown = runner.invoke(cli_app, ["ratecard", "show"], env=env)
    assert "EUR" in shown.output
