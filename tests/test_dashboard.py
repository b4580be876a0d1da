"""The dashboard (/dashboard): sign-in, CSRF, sessions and security headers over HTTP on SQLite and
PostgreSQL, then the whole page in real headless Chromium against a live server fed through real
signed webhooks, with every drawn value checked against /v1."""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest
from fastapi.testclient import TestClient

from conftest import APP_SECRET, FakeClock, make_settings
from helpers import Tenant, add_number, bearer, create_tenant
from live import live_server
from wastats.api.context import SESSION_COOKIE
from wastats.api.dashboard import CONTENT_SECURITY_POLICY, CSRF_COOKIE
from wastats.app import create_app
from wastats.settings import Settings
from wastats.whatsapp.signature import sign
from webhooks import WEBHOOK, at, body, inbound, status

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page

LOGIN = "/dashboard/login"
LOGOUT = "/dashboard/logout"
DASHBOARD = "/dashboard"
CSRF_INPUT = re.compile(r'name="csrf_token" value="([^"]+)"')


# --- helpers ------------------------------------------------------------------------------------


@pytest.fixture
def tenant(settings: Settings) -> Tenant:
    return create_tenant(settings, name="Cafe Yafo", timezone="Asia/Jerusalem")


def csrf_of(client: TestClient, path: str = LOGIN) -> str:
    page = client.get(path)
    assert page.status_code == 200, page.text
    match = CSRF_INPUT.search(page.text)
    assert match, "no CSRF field in the form"
    return match.group(1)


def set_cookies(response: httpx.Response) -> dict[str, str]:
    """Each Set-Cookie header of `response` by cookie name (the whole header line)."""
    return {h.split("=", 1)[0]: h for h in response.headers.get_list("set-cookie")}


def login(
    client: TestClient, tenant: Tenant, *, secret: str | None = None, csrf: str | None = None
) -> httpx.Response:
    token = csrf if csrf is not None else csrf_of(client)
    return client.post(
        LOGIN,
        data={
            "csrf_token": token,
            "client_id": tenant.client_id,
            "client_secret": tenant.client_secret if secret is None else secret,
        },
        follow_redirects=False,
    )


# --- sign-in and CSRF ---------------------------------------------------------------------------


def test_login_page_renders_with_a_csrf_token(client: TestClient) -> None:
    page = client.get(LOGIN)
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    token = CSRF_INPUT.search(page.text)
    assert token
    cookie = set_cookies(page)[CSRF_COOKIE]
    assert f"{CSRF_COOKIE}={token.group(1)};" in cookie
    assert "HttpOnly" in cookie
    assert "SameSite=strict" in cookie
    assert '<label for="client_id">Client id</label>' in page.text
    assert 'type="password"' in page.text
    # A reload keeps the same token, so two open tabs both work.
    assert csrf_of(client) == token.group(1)


def test_wrong_secret_shows_the_error_and_sets_no_session(
    client: TestClient, tenant: Tenant
) -> None:
    answer = login(client, tenant, secret="not-the-secret")
    assert answer.status_code == 401
    assert "The client id or secret is wrong." in answer.text
    assert "Traceback" not in answer.text
    assert SESSION_COOKIE not in set_cookies(answer)
    assert SESSION_COOKIE not in client.cookies
    # The id typed is kept (escaped) so the user only retypes the secret.
    assert f'value="{tenant.client_id}"' in answer.text


def test_incomplete_form_is_a_400_and_no_attempt(client: TestClient, tenant: Tenant) -> None:
    answer = client.post(LOGIN, data={"csrf_token": csrf_of(client), "client_id": tenant.client_id})
    assert answer.status_code == 400
    assert "Enter both the client id and the client secret." in answer.text


@pytest.mark.parametrize(
    "forgery",
    ["no field", "wrong field", "no cookie", "cross-site", "same-site", "json body"],
)
def test_post_without_a_matching_csrf_token_is_refused_and_changes_nothing(
    database_url: str, clock: FakeClock, forgery: str
) -> None:
    # With a threshold of 1, any attempt that counted would lock this address out at once.
    settings = make_settings(database_url, lockout_threshold=1)
    tenant = create_tenant(settings)
    with TestClient(create_app(settings, clock=clock)) as client:
        token = csrf_of(client)
        fields = {"client_id": tenant.client_id, "client_secret": tenant.client_secret}
        headers: dict[str, str] = {}
        if forgery == "wrong field":
            fields["csrf_token"] = token[::-1]
        elif forgery == "no cookie":
            fields["csrf_token"] = token
            client.cookies.clear()
        elif forgery in ("cross-site", "same-site"):
            fields["csrf_token"] = token
            headers["Sec-Fetch-Site"] = forgery
        if forgery == "json body":
            answer = client.post(
                LOGIN, json={**fields, "csrf_token": token}, follow_redirects=False
            )
        else:
            answer = client.post(LOGIN, data=fields, headers=headers, follow_redirects=False)
        assert answer.status_code == 403
        assert "Request refused" in answer.text
        assert SESSION_COOKIE not in set_cookies(answer)
        # Nothing changed: no session, and the refused post was not a failed attempt.
        assert SESSION_COOKIE not in client.cookies
        client.cookies.clear()
        wrong = login(client, tenant, secret="wrong")
        assert "The client id or secret is wrong." in wrong.text
        assert login(client, tenant).status_code == 429  # the first counted failure locked


def test_correct_login_sets_a_strict_httponly_cookie_and_redirects(
    client: TestClient, tenant: Tenant, settings: Settings
) -> None:
    answer = login(client, tenant)
    assert answer.status_code == 303
    assert answer.headers["location"] == DASHBOARD
    cookie = set_cookies(answer)[SESSION_COOKIE]
    assert "HttpOnly" in cookie
    assert "SameSite=strict" in cookie
    assert "Path=/;" in cookie or cookie.endswith("Path=/")
    assert f"Max-Age={settings.token_lifetime_seconds}" in cookie
    assert "Secure" not in cookie  # plain http here; see the https test
    # The CSRF token is replaced on sign-in, so one seen before is worth nothing after.
    assert CSRF_COOKIE in set_cookies(answer)

    page = client.get(DASHBOARD)
    assert page.status_code == 200
    assert "Cafe Yafo" in page.text
    assert "Asia/Jerusalem" in page.text
    assert client.get("/v1/numbers").status_code == 200  # /v1 takes the session cookie


def test_session_cookie_is_secure_over_https(settings: Settings, clock: FakeClock) -> None:
    tenant = create_tenant(settings)
    app = create_app(settings, clock=clock)
    with TestClient(app, base_url="https://testserver") as client:
        answer = login(client, tenant)
    assert answer.status_code == 303
    assert "Secure" in set_cookies(answer)[SESSION_COOKIE]
    assert "Secure" in set_cookies(answer)[CSRF_COOKIE]


def test_dashboard_without_a_session_redirects_to_sign_in(client: TestClient) -> None:
    answer = client.get(DASHBOARD, follow_redirects=False)
    assert answer.status_code == 303
    assert answer.headers["location"] == LOGIN
    client.cookies.set(SESSION_COOKIE, "forged-or-expired")
    answer = client.get(DASHBOARD, follow_redirects=False)
    assert answer.status_code == 303
    assert f'{SESSION_COOKIE}=""' in set_cookies(answer)[SESSION_COOKIE]  # dropped


def test_session_ends_with_the_token_lifetime(
    client: TestClient, tenant: Tenant, clock: FakeClock, settings: Settings
) -> None:
    login(client, tenant)
    assert client.get(DASHBOARD, follow_redirects=False).status_code == 200
    clock.advance(settings.token_lifetime_seconds)
    assert client.get(DASHBOARD, follow_redirects=False).status_code == 303


def test_logout_revokes_the_token(client: TestClient, tenant: Tenant) -> None:
    login(client, tenant)
    old = client.cookies[SESSION_COOKIE]
    assert client.get("/v1/stats", headers=bearer(old)).status_code == 200

    # Without the CSRF token, logging out is refused and the session lives on.
    refused = client.post(LOGOUT, data={}, follow_redirects=False)
    assert refused.status_code == 403
    assert client.get("/v1/stats", headers=bearer(old)).status_code == 200

    answer = client.post(
        LOGOUT, data={"csrf_token": csrf_of(client, DASHBOARD)}, follow_redirects=False
    )
    assert answer.status_code == 303
    assert answer.headers["location"] == LOGIN
    assert f'{SESSION_COOKIE}=""' in set_cookies(answer)[SESSION_COOKIE]
    assert client.get("/v1/stats", headers=bearer(old)).status_code == 401
    client.cookies.set(SESSION_COOKIE, old)
    assert client.get(DASHBOARD, follow_redirects=False).status_code == 303
    assert client.get("/v1/stats").status_code == 401


def test_signing_in_again_replaces_the_old_session(client: TestClient, tenant: Tenant) -> None:
    login(client, tenant)
    first = client.cookies[SESSION_COOKIE]
    csrf = csrf_of(client, DASHBOARD)
    assert login(client, tenant, csrf=csrf).status_code == 303
    assert client.cookies[SESSION_COOKIE] != first
    assert client.get("/v1/stats", headers=bearer(first)).status_code == 401


def test_lockout_message_after_repeated_failures(database_url: str, clock: FakeClock) -> None:
    settings = make_settings(database_url, lockout_threshold=2)
    tenant = create_tenant(settings)
    with TestClient(create_app(settings, clock=clock)) as client:
        for _ in range(2):
            assert login(client, tenant, secret="wrong").status_code == 401
        locked = login(client, tenant)  # even the right secret, while locked
        assert locked.status_code == 429
        assert (
            "Too many failed attempts from this address for this client id; try again in "
            "15 minutes." in locked.text
        )
        assert locked.headers["Retry-After"] == str(settings.lockout_seconds)
        assert SESSION_COOKIE not in set_cookies(locked)
        clock.advance(settings.lockout_seconds)
        assert login(client, tenant).status_code == 303


# --- the page itself ----------------------------------------------------------------------------


def test_pages_carry_a_self_only_csp_and_no_external_resources(
    client: TestClient, tenant: Tenant
) -> None:
    for path in (LOGIN, DASHBOARD):
        if path == DASHBOARD:
            login(client, tenant)
        page = client.get(path)
        assert page.status_code == 200
        assert page.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
        assert "default-src 'self'" in CONTENT_SECURITY_POLICY
        assert "unsafe" not in CONTENT_SECURITY_POLICY
        assert page.headers["x-content-type-options"] == "nosniff"
        assert page.headers["cache-control"] == "no-store"
        assert '<meta name="viewport"' in page.text
        assert "<script>" not in page.text
        assert " style=" not in page.text
        for url in re.findall(r'(?:src|href|action)="([^"]*)"', page.text):
            assert url.startswith("/"), url  # everything from this server


def test_dashboard_page_contents(client: TestClient, tenant: Tenant) -> None:
    login(client, tenant)
    page = client.get(DASHBOARD).text
    # The last twelve months up to the current one in the account's zone (clock: 15 Jan 2026).
    assert 'id="from" name="from" type="month" value="2025-02"' in page
    assert 'id="to" name="to" type="month" value="2026-01"' in page
    assert 'id="tz" name="tz" list="zones" value="Asia/Jerusalem"' in page
    assert '<option value="Europe/Berlin">' in page
    assert (
        'href="/v1/stats?format=csv&amp;granularity=month&amp;from=2025-02&amp;to=2026-01'
        '&amp;tz=Asia%2FJerusalem"' in page
    )
    chosen = client.get(DASHBOARD, params={"from": "2025-06", "to": "2025-08", "tz": "UTC"}).text
    assert 'value="2025-06"' in chosen
    assert 'value="2025-08"' in chosen
    assert 'list="zones" value="UTC"' in chosen


def test_static_assets_are_served_from_the_package(client: TestClient) -> None:
    for name, kind in [
        ("dashboard.js", "javascript"),
        ("dashboard.css", "text/css"),
        ("favicon.svg", "image/svg+xml"),
    ]:
        answer = client.get(f"/dashboard/static/{name}")
        assert answer.status_code == 200, name
        assert kind in answer.headers["content-type"]
        assert answer.headers["x-content-type-options"] == "nosniff"
        assert "http://" not in answer.text.replace("http://www.w3.org/2000/svg", "")
        assert "https://" not in answer.text
    assert client.get("/dashboard/static/../app.py").status_code == 404
    assert client.get("/dashboard/static/nothing.js").status_code == 404


# --- the browser test ---------------------------------------------------------------------------

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip
ZONE = "Asia/Jerusalem"
SCREENSHOT = Path(__file__).resolve().parents[1] / "docs" / "dashboard.png"


@pytest.fixture
def browser() -> Iterator[Browser]:
    if not CHROMIUM.exists():
        reason = f"headless Chromium is not installed at {CHROMIUM} (apt-get install chromium)"
        if os.environ.get("WASTATS_REQUIRE_BROWSER") == "1":
            pytest.fail(f"WASTATS_REQUIRE_BROWSER=1 but {reason}")
        pytest.skip(reason)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


def _events(pnid: str, scale: int) -> tuple[list[dict[str, Any]], int]:
    """Webhook values for one number over February 2025 to January 2026 (account zone), and how
    many units they make: inbound messages from distinct customers (Incoming), and delivered,
    billed marketing and utility messages, as conversations until June 2025 (CBP) and as
    per-message pricing since July (PMP)."""
    values: list[dict[str, Any]] = []
    months = [(2025, m) for m in range(2, 13)] + [(2026, 1)]
    for i, (year, month) in enumerate(months):
        # The clock stands at 15 January 2026: January has half a month of traffic so far.
        partial = (year, month) == (2026, 1)
        divisor = scale * (2 if partial else 1)
        counts = {
            "incoming": (12 + 3 * i + (i % 3) * 4) // divisor,
            "marketing": (5 + 2 * i + (i % 4) * 2) // divisor,
            "utility": (4 + (i * 5) % 7) // divisor,
        }
        cbp = year == 2025 and month < 7
        for kind, n in counts.items():
            for k in range(n):
                day = 1 + (k * 5) % (13 if partial else 27)
                when = at(f"{year}-{month:02d}-{day:02d} {9 + k % 9:02d}:15", ZONE)
                user, key = f"9725{scale}{i:02d}{len(kind)}{k:04d}", f"{pnid}.{i}.{kind}.{k}"
                if kind == "incoming":
                    values.append(inbound(user, when, number=pnid))
                    continue
                conversation = (f"conv.{key}", kind, when + 86_400) if cbp else None
                pricing = ("CBP" if cbp else "PMP", kind, "regular")
                values.append(
                    status(f"wamid.{key}", "delivered", when, user=user, number=pnid,
                           pricing=pricing, conversation=conversation)
                )  # fmt: skip
    # Just after midnight on 1 December in Jerusalem, still 30 November in UTC: changing the
    # zone in the picker must move this one between months.
    values.append(inbound(f"97259{scale}000001", at("2025-12-01 00:30", ZONE), number=pnid))
    return values, len(values)


def _deliver(base: str, app: Any, values: list[dict[str, Any]]) -> None:
    with httpx.Client(base_url=base) as http:
        for start in range(0, len(values), 50):
            raw = body(*values[start : start + 50])
            answer = http.post(
                WEBHOOK,
                content=raw,
                headers={"X-Hub-Signature-256": sign(APP_SECRET.encode(), raw)},
            )
            assert answer.status_code == 200, answer.text
    assert app.state.ctx.ingest.wait_idle(60), "ingestion did not finish"


def _api(http: httpx.Client, token: str, **params: str) -> dict[str, Any]:
    answer = http.get("/v1/stats", params=params, headers=bearer(token))
    assert answer.status_code == 200, answer.text
    result: dict[str, Any] = answer.json()
    return result


def _drawn_bars(page: Page) -> dict[tuple[str, str], int]:
    drawn = page.eval_on_selector_all(
        "#chart rect.seg",
        "els => els.map(e => [e.dataset.period, e.dataset.bucket, Number(e.dataset.value),"
        " e.getBBox().height])",
    )
    for _period, _bucket, value, height in drawn:
        assert (height > 0) == (value > 0), "a drawn segment's height must match its value"
    return {(p, b): v for p, b, v, _h in drawn}


def _expected_bars(answer: dict[str, Any]) -> dict[tuple[str, str], int]:
    return {
        (row["period"], bucket): row[bucket]
        for row in answer["rows"]
        for bucket in ("marketing", "service", "incoming")
    }


def _wait_drawn(page: Page, first: str, last: str, tz: str) -> None:
    selector = f'[data-state="ready"][data-from="{first}"][data-to="{last}"][data-tz="{tz}"]'
    page.wait_for_selector("#chart" + selector)
    page.wait_for_selector("#numbers-table" + selector)


def _check_page_against_api(
    page: Page, http: httpx.Client, token: str, first: str, last: str, tz: str
) -> dict[str, Any]:
    _wait_drawn(page, first, last, tz)
    series = _api(http, token, granularity="month", **{"from": first, "to": last, "tz": tz})
    assert _drawn_bars(page) == _expected_bars(series)
    periods = page.eval_on_selector_all("#chart g.bar", "els => els.map(e => e.dataset.period)")
    assert periods == [row["period"] for row in series["rows"]]
    cards = page.eval_on_selector_all(
        "#totals .card-value", "els => els.map(e => [e.dataset.bucket, Number(e.dataset.value)])"
    )
    assert dict(cards) == {
        k: series["totals"][k] for k in ("marketing", "service", "incoming", "total")
    }

    # The numbers table: this month and the previous one, in the chosen zone.
    current, previous = "2026-01", "2025-12"  # the clock: 15 January 2026, in every zone
    pair = {"granularity": "month", "from": previous, "to": current, "tz": tz}
    grouped = _api(http, token, group_by="number", **pair)
    totals = _api(http, token, **pair)
    numbers = http.get("/v1/numbers", headers=bearer(token)).json()["numbers"]
    expected: dict[tuple[str, str, str], int] = {}
    for n in numbers:
        for period in (current, previous):
            for key in ("marketing", "service", "incoming", "total"):
                expected[(n["whatsapp"], period, key)] = 0
    for row in grouped["rows"]:
        for key in ("marketing", "service", "incoming", "total"):
            expected[(row["number"], row["period"], key)] = row[key]
    for row in totals["rows"]:
        for key in ("marketing", "service", "incoming", "total"):
            expected[("all", row["period"], key)] = row[key]
    cells = page.eval_on_selector_all(
        "#numbers-table td[data-bucket]",
        "els => els.map(e => [e.dataset.number, e.dataset.period, e.dataset.bucket,"
        " Number(e.dataset.value), e.textContent])",
    )
    assert {(n, p, b): v for n, p, b, v, _t in cells} == expected
    for *_key, value, text in cells:
        assert int(text.replace(",", "")) == value  # what is shown is what is in the attribute
    names = page.eval_on_selector_all(
        "#numbers-table tbody tr", "els => els.map(e => [e.dataset.number, e.cells[1].textContent])"
    )
    assert names == [[n["whatsapp"], n["display_name"]] for n in numbers]
    # Finality as the API says it: January is still open, December is closed.
    final = {row["period"]: row["final"] for row in totals["rows"]}
    assert final == {previous: True, current: False}
    assert page.locator(f'th.month[data-period="{current}"] .badge').inner_text() == "not final"
    assert page.locator(f'th.month[data-period="{previous}"] .badge').count() == 0
    provisional = page.eval_on_selector_all(
        "#numbers-table td.provisional", "els => [...new Set(els.map(e => e.dataset.period))]"
    )
    assert provisional == [current]
    return series


def _overflowing(page: Page) -> dict[str, Any]:
    """What sticks out of the page sideways, ignoring what is inside the table's own scroller."""
    result: dict[str, Any] = page.evaluate(
        """() => {
          const width = document.documentElement.clientWidth;
          const bad = [];
          for (const el of document.querySelectorAll("body *")) {
            if (el.parentElement && el.parentElement.closest(".table-scroll")) continue;
            const r = el.getBoundingClientRect();
            if (r.width === 0 && r.height === 0) continue;
            if (r.right > width + 0.5 || r.left < -0.5) {
              bad.push(el.tagName + "#" + el.id + "." + (el.getAttribute("class") || ""));
            }
          }
          const scroller = document.getElementById("numbers-scroll");
          return {
            width, scrollWidth: document.documentElement.scrollWidth, bad,
            tableScrolls: scroller.scrollWidth > scroller.clientWidth,
          };
        }"""
    )
    return result


def test_dashboard_in_a_real_browser(
    browser: Browser, sqlite_template: Path, tmp_path: Path
) -> None:
    from playwright.sync_api import expect

    database = tmp_path / "wastats.db"
    shutil.copyfile(sqlite_template, database)
    settings = make_settings(f"sqlite:///{database}")
    tenant = create_tenant(settings, name="Cafe Yafo", timezone=ZONE)
    first_pnid = add_number(settings, tenant, "972501234567", display_name="Yafo front desk")
    second_pnid = add_number(settings, tenant, "972537654321", display_name="Yafo deliveries")
    app = create_app(settings, clock=FakeClock())

    with live_server(app) as base, httpx.Client(base_url=base) as http:
        first_values, first_units = _events(first_pnid, 1)
        second_values, second_units = _events(second_pnid, 2)
        _deliver(base, app, first_values + second_values)
        token = http.post(
            "/api/settings/accessToken",
            json={"client_id": tenant.client_id, "client_secret": tenant.client_secret},
        ).json()["access_token"]
        everything = _api(http, token, **{"from": "2025-01", "to": "2026-01"})
        assert everything["totals"]["total"] == first_units + second_units

        context = browser.new_context(
            viewport={"width": 1280, "height": 900}, locale="en-US", timezone_id="UTC"
        )
        page = context.new_page()
        console_errors: list[str] = []
        page.on("console", lambda m: console_errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: console_errors.append(str(e)))

        # Sign in through the form.
        page.goto(base + DASHBOARD)
        expect(page).to_have_url(base + LOGIN)
        page.get_by_label("Client id", exact=True).fill(tenant.client_id)
        page.get_by_label("Client secret", exact=True).fill("wrong")
        page.get_by_role("button", name="Sign in").click()
        expect(page.locator("#login-error")).to_have_text("The client id or secret is wrong.")
        page.screenshot(path=tmp_path / "login-refused.png")
        page.get_by_label("Client secret", exact=True).fill(tenant.client_secret)
        page.get_by_role("button", name="Sign in").click()
        expect(page).to_have_url(re.compile(re.escape(base + DASHBOARD) + r"(\?.*)?$"))
        expect(page.locator("#account-name")).to_have_text("Cafe Yafo")
        expect(page.locator("#account-zone")).to_have_text(ZONE)
        console_errors.clear()  # Chromium logs the wrong secret's 401; that one was meant

        # The default view: twelve months in the account's zone.
        series = _check_page_against_api(page, http, token, "2025-02", "2026-01", ZONE)
        assert series["totals"]["total"] == everything["totals"]["total"]
        expect(page.locator("#chart g.bar.provisional")).to_have_count(1)  # January
        page.screenshot(path=tmp_path / "dashboard-desktop.png")
        if os.environ.get("WASTATS_UPDATE_SCREENSHOT") == "1":
            page.screenshot(path=SCREENSHOT)
        assert console_errors == []  # no CSP violation, no script error

        # Another range and zone, applied in place (no reload: the marker survives).
        page.evaluate("window.__sameDocument = true")
        page.get_by_label("From month", exact=True).fill("2025-10")
        page.get_by_label("To month", exact=True).fill("2025-12")
        page.get_by_label("Time zone", exact=True).fill("UTC")
        page.get_by_role("button", name="Apply").click()
        utc = _check_page_against_api(page, http, token, "2025-10", "2025-12", "UTC")
        assert page.evaluate("window.__sameDocument") is True
        jerusalem = _api(http, token, granularity="month", **{"from": "2025-10", "to": "2025-12"})
        assert _expected_bars(utc) != _expected_bars(jerusalem)  # the midnight message moved
        assert re.search(r"from=2025-10&to=2025-12&tz=UTC", page.url)

        # The CSV button downloads exactly what /v1 answers for the same parameters.
        with page.expect_download() as download:
            page.get_by_role("link", name="Download CSV").click()
        csv_file = download.value.path()
        expected_csv = http.get(
            "/v1/stats",
            params={"format": "csv", "granularity": "month", "from": "2025-10", "to": "2025-12",
                    "tz": "UTC"},
            headers=bearer(token),
        )  # fmt: skip
        assert expected_csv.status_code == 200
        assert Path(csv_file).read_text(encoding="utf-8") == expected_csv.text
        assert download.value.suggested_filename == "wastats-2025-10-01-2025-12-31.csv"
        assert console_errors == []

        # A range with nothing in it says so rather than drawing an empty frame.
        page.get_by_label("From month", exact=True).fill("2024-01")
        page.get_by_label("To month", exact=True).fill("2024-03")
        page.get_by_role("button", name="Apply").click()
        _wait_drawn(page, "2024-01", "2024-03", "UTC")
        expect(page.locator("#chart")).to_have_attribute("data-empty", "true")
        expect(page.locator("#chart .empty")).to_have_text("Nothing was counted in this range.")
        expect(page.locator("#chart rect.seg")).to_have_count(0)
        expect(page.locator("#totals .card-value[data-bucket=total]")).to_have_text("0")

        # Errors from /v1 are shown, with the API's own words.
        page.get_by_label("From month", exact=True).fill("2025-12")
        page.get_by_label("To month", exact=True).fill("2025-10")
        page.get_by_role("button", name="Apply").click()
        problem = http.get(
            "/v1/stats",
            params={"granularity": "month", "from": "2025-12", "to": "2025-10", "tz": "UTC"},
            headers=bearer(token),
        )
        assert problem.status_code == 422
        expect(page.locator("#error")).to_be_visible()
        expect(page.locator("#error")).to_contain_text(problem.json()["detail"])
        page.wait_for_selector('#chart[data-state="error"][data-from="2025-12"]')
        page.screenshot(path=tmp_path / "dashboard-error.png")
        page.get_by_label("Time zone", exact=True).fill("Mars/Olympus_Mons")
        page.get_by_label("From month", exact=True).fill("2025-10")
        page.get_by_label("To month", exact=True).fill("2025-12")
        page.get_by_role("button", name="Apply").click()
        expect(page.locator("#error")).to_contain_text("Mars/Olympus_Mons")
        page.get_by_label("Time zone", exact=True).fill(ZONE)
        page.get_by_role("button", name="Apply").click()
        _wait_drawn(page, "2025-10", "2025-12", ZONE)
        expect(page.locator("#error")).to_be_hidden()

        # A phone: the layout reflows; only the table scrolls sideways, inside its box.
        page.set_viewport_size({"width": 390, "height": 844})
        page.reload()
        _check_page_against_api(page, http, token, "2025-10", "2025-12", ZONE)
        page.wait_for_function(
            "() => document.querySelector('#chart svg').getBoundingClientRect().width <= 390"
        )
        layout = _overflowing(page)
        assert layout["bad"] == [], layout
        assert layout["scrollWidth"] <= layout["width"] == 390, layout
        assert layout["tableScrolls"], layout
        page.screenshot(path=tmp_path / "dashboard-phone.png", full_page=True)

        # Signing out through the page ends the session for the browser and the API.
        page.get_by_role("button", name="Sign out").click()
        expect(page).to_have_url(base + LOGIN)
        page.goto(base + DASHBOARD)
        expect(page).to_have_url(base + LOGIN)
        assert page.evaluate("fetch('/v1/numbers').then(r => r.status)") == 401
        context.close()
