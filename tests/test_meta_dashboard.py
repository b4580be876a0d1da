"""The dashboard's page of Meta's record (/dashboard/reconciliation) in real headless Chromium,
against a live server fed through real signed webhooks and a sync from the fake Graph API."""

from __future__ import annotations

import re
from datetime import datetime
from zoneinfo import ZoneInfo

import httpx
from fastapi.testclient import TestClient

from conftest import APP_SECRET, FakeClock, make_settings
from fakegraph import TOKEN, client_for, fake_graph
from helpers import add_number, create_tenant
from live import live_server
from test_dashboard import browser  # noqa: F401 - the fixture
from wastats.app import create_app
from wastats.meta.fake_graph import FakeGraph, FakeNumber, FakePoint, FakeWaba
from wastats.meta.sync import sync_waba
from wastats.store.db import Database
from wastats.whatsapp.signature import sign
from webhooks import WEBHOOK, body, status

NOW = 1_796_385_600  # 2026-12-04T12:00:00Z: November is final (48 h)
WABA = "555"
PNID = "8200001"
DIGITS = "972509999999"
PAGE = "/dashboard/reconciliation"


def _ts(text: str) -> int:
    return int(datetime.fromisoformat(text).replace(tzinfo=ZoneInfo("UTC")).timestamp())


def test_the_page_needs_a_session(database_url: str) -> None:
    with TestClient(create_app(make_settings(database_url))) as http:
        answer = http.get(PAGE, follow_redirects=False)
    assert answer.status_code == 303
    assert answer.headers["location"].endswith("/dashboard/login")


def test_reconciliation_page_in_a_real_browser(database_url: str, browser) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    from playwright.sync_api import expect

    settings = make_settings(database_url)
    tenant = create_tenant(settings, name="Cafe <Yafo>", timezone="UTC")
    add_number(settings, tenant, DIGITS, PNID, waba_id=WABA)
    oct5, nov3, nov10 = _ts("2026-10-05 10:00"), _ts("2026-11-03 10:00"), _ts("2026-11-10 10:00")
    points = [
        FakePoint(oct5, DIGITS, "IL", "UTILITY", "REGULAR", 2, 0.01, "0:250000"),
        FakePoint(nov3, DIGITS, "IL", "MARKETING", "REGULAR", 4, 0.1, "0:MAX"),
        FakePoint(nov10, DIGITS, "IL", "MARKETING", "REGULAR", 4, 0.1, "0:MAX"),
    ]
    state = FakeGraph(token=TOKEN)
    state.add_waba(FakeWaba(WABA, numbers=[FakeNumber(PNID, f"+{DIGITS}", "S")], points=points))
    db = Database(database_url)
    try:
        with fake_graph(state) as url, client_for(url) as client:
            assert sync_waba(db, client, WABA, now=NOW).error is None
    finally:
        db.dispose()
    # Webhooks for October's two messages and November 3rd's four; none for November 10th.
    values = [
        status(f"wamid.o{k}", "delivered", oct5 + k, number=PNID,
               pricing=("PMP", "utility", "regular")) for k in range(2)
    ] + [
        status(f"wamid.n{k}", "delivered", nov3 + k, number=PNID,
               pricing=("PMP", "marketing", "regular")) for k in range(4)
    ]  # fmt: skip
    app = create_app(settings, clock=FakeClock(NOW))
    with live_server(app) as base:  # type: ignore[arg-type]
        raw = body(*values)
        answer = httpx.post(
            base + WEBHOOK,
            content=raw,
            headers={"X-Hub-Signature-256": sign(APP_SECRET.encode(), raw)},
        )
        assert answer.status_code == 200
        assert app.state.ctx.ingest.wait_idle(60)
        page = browser.new_page()
        errors: list[str] = []
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.goto(base + "/dashboard/login")
        page.get_by_label("Client id", exact=True).fill(tenant.client_id)
        page.get_by_label("Client secret", exact=True).fill(tenant.client_secret)
        page.get_by_role("button", name="Sign in").click()
        expect(page).to_have_url(re.compile(re.escape(base + "/dashboard") + r"(\?.*)?$"))
        page.goto(base + PAGE + "?from=2026-10&to=2026-11")
        expect(page.locator(".account-name")).to_have_text("Cafe <Yafo>")  # escaped, shown
        rows = page.locator("#rows tbody tr")
        expect(rows).to_have_count(2)
        october, november = rows.nth(0), rows.nth(1)
        expect(october.locator("td")).to_have_text(
            ["2026-10", DIGITS, "utility", "regular", "2", "2", "+0", "match", "0.01 (Meta's)"]
        )
        expect(november.locator("td")).to_have_text(
            [
                "2026-11",
                DIGITS,
                "marketing",
                "regular",
                "4",
                "8",
                "-4",
                "collection gap",
                "0.20 (Meta's)",
            ]
        )
        # The gap is highlighted, the match is not.
        gap_bg = november.evaluate("e => getComputedStyle(e).backgroundColor")
        match_bg = october.evaluate("e => getComputedStyle(e).backgroundColor")
        assert gap_bg == "rgb(254, 226, 226)"
        assert match_bg != gap_bg
        coverage = page.locator(f'#coverage tr[data-number="{DIGITS}"] td')
        expect(coverage).to_have_text([DIGITS, "6", "10", "60.0%", "4", "1 / 2"])
        expect(page.locator("#last-sync")).to_contain_text("2026-12-04 12:00 UTC")
        assert errors == []  # nothing refused by the Content-Security-Policy
        page.close()


def _sign_in(page, base: str, tenant) -> None:  # type: ignore[no-untyped-def]
    from playwright.sync_api import expect

    page.goto(base + "/dashboard/login")
    page.get_by_label("Client id", exact=True).fill(tenant.client_id)
    page.get_by_label("Client secret", exact=True).fill(tenant.client_secret)
    page.get_by_role("button", name="Sign in").click()
    expect(page).to_have_url(re.compile(re.escape(base + "/dashboard") + r"(\?.*)?$"))


def test_main_dashboard_shows_source_and_cost(database_url: str, browser) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    """The main dashboard's panel: per month, number and category, the source (observed, or
    Meta's record before the first webhook) and the cost labelled Meta's or estimated; a link
    to the reconciliation page; and, for an account with no linked WABA, a plain note."""
    from playwright.sync_api import expect

    settings = make_settings(database_url)
    tenant = create_tenant(settings, name="Linked", timezone="UTC")
    add_number(settings, tenant, DIGITS, PNID, waba_id=WABA)
    other = create_tenant(settings, name="Unlinked", timezone="UTC")
    add_number(settings, other, "972508888777", "8200002")
    sep10, oct5, nov3 = _ts("2026-09-10 10:00"), _ts("2026-10-05 10:00"), _ts("2026-11-03 10:00")
    points = [
        FakePoint(sep10, DIGITS, "IL", "MARKETING", "REGULAR", 4, None, "0:MAX"),  # no cost
        FakePoint(oct5, DIGITS, "IL", "UTILITY", "REGULAR", 2, 0.01, "0:250000"),
        FakePoint(nov3, DIGITS, "IL", "MARKETING", "REGULAR", 4, 0.1, "0:MAX"),
    ]
    state = FakeGraph(token=TOKEN)
    state.add_waba(FakeWaba(WABA, numbers=[FakeNumber(PNID, f"+{DIGITS}", "S")], points=points))
    db = Database(database_url)
    try:
        with fake_graph(state) as url, client_for(url) as client:
            assert sync_waba(db, client, WABA, now=NOW).error is None
    finally:
        db.dispose()
    values = [
        status(f"wamid.o{k}", "delivered", oct5 + k, number=PNID,
               pricing=("PMP", "utility", "regular")) for k in range(2)
    ] + [
        status(f"wamid.n{k}", "delivered", nov3 + k, number=PNID,
               pricing=("PMP", "marketing", "regular")) for k in range(4)
    ]  # fmt: skip
    app = create_app(settings, clock=FakeClock(NOW))
    with live_server(app) as base:  # type: ignore[arg-type]
        raw = body(*values)
        answer = httpx.post(
            base + WEBHOOK,
            content=raw,
            headers={"X-Hub-Signature-256": sign(APP_SECRET.encode(), raw)},
        )
        assert answer.status_code == 200
        assert app.state.ctx.ingest.wait_idle(60)
        page = browser.new_page()
        errors: list[str] = []
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        _sign_in(page, base, tenant)
        # The first page's requests done (a token may have four in flight), then the range.
        expect(page.locator("#meta-table")).to_have_attribute("data-state", "ready")
        page.goto(base + "/dashboard?from=2026-09&to=2026-11&tz=UTC")
        meta = page.locator("#meta-table")
        expect(meta).to_have_attribute("data-state", "ready")
        rows = meta.locator("tbody tr")
        expect(rows).to_have_count(3)
        # September: before the first webhook, so Meta's record; Incoming unknown; Meta gave
        # no cost, so the rate card's estimate (4 × 0.025), labelled as one.
        expect(rows.nth(0).locator("td")).to_have_text(
            ["2026-09", DIGITS, "marketing", "regular", "Meta's record", "4", "0", "unknown",
             "≈ 0.10 USD (estimate)"]
        )  # fmt: skip
        expect(rows.nth(1).locator("td")).to_have_text(
            ["2026-10", DIGITS, "utility", "regular", "Observed", "0", "2", "0", "0.01 (Meta's)"]
        )
        expect(rows.nth(2).locator("td")).to_have_text(
            ["2026-11", DIGITS, "marketing", "regular", "Observed", "4", "0", "0", "0.10 (Meta's)"]
        )
        assert rows.nth(0).get_attribute("data-source") == "reported"
        # The chart's figures say the same of September's Incoming: unknown, not 0.
        figures = page.locator("#chart-body details table tbody tr").nth(0).locator("td")
        expect(figures).to_have_text(["4", "0", "unknown", "4"])
        assert rows.nth(0).get_attribute("data-cost-source") == "estimate"
        # The way to the reconciliation page, for the same range.
        link = page.locator("#reconciliation-link")
        expect(link).to_have_attribute("href", "/dashboard/reconciliation?from=2026-09&to=2026-11")
        link.click()
        expect(page).to_have_url(base + "/dashboard/reconciliation?from=2026-09&to=2026-11")
        expect(page.locator("#rows tbody tr")).to_have_count(3)
        assert errors == []  # nothing refused by the Content-Security-Policy
        page.close()
        # An account with no linked WABA: a plain note, and still the link.
        unlinked = browser.new_context().new_page()
        _sign_in(unlinked, base, other)
        expect(unlinked.locator("#meta-table")).to_have_attribute("data-state", "none")
        expect(unlinked.locator("#meta-table tbody")).to_contain_text("is linked")
        expect(unlinked.locator("#reconciliation-link")).to_be_visible()
        unlinked.close()
