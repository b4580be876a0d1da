"""What the public port serves besides the APIs: the API reference at /docs (Swagger UI from the
package, offline, under the CSP: checked in real headless Chromium with every request that is
not to 127.0.0.1 refused and recorded), and who may read /metrics (WASTATS_METRICS and
WASTATS_METRICS_TOKEN), each mode through the real app."""

from __future__ import annotations

import logging
import re
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest
from fastapi.testclient import TestClient

from conftest import FakeClock, make_settings
from helpers import create_tenant
from live import live_server
from test_dashboard import DASHBOARD, browser, login
from wastats.app import create_app
from wastats.settings import ConfigurationError, load_settings

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Route

__all__ = ["browser"]  # the fixture, imported for the browser test

TOKEN = "scrape-token-0123456789abcdef"


def app_client(database_url: str, clock: FakeClock, **overrides: Any) -> TestClient:
    return TestClient(create_app(make_settings(database_url, **overrides), clock=clock))


# --- /docs ----------------------------------------------------------------------------------


def test_docs_page_uses_only_local_assets_under_the_csp(
    database_url: str, clock: FakeClock
) -> None:
    with app_client(database_url, clock) as client:
        page = client.get("/docs")
        assert page.status_code == 200
        csp = page.headers["content-security-policy"]
        assert "default-src 'self'" in csp
        assert "script-src 'self';" in csp
        assert "unsafe" not in csp
        assert "<script>" not in page.text  # no inline script: Swagger UI starts from a file
        urls = re.findall(r'(?:src|href)="([^"]*)"', page.text)
        assert urls
        for url in urls:
            assert url.startswith("/"), url
            assert client.get(url).status_code == 200, url
        assert 'data-openapi-url="/openapi.json"' in page.text
        assert "swagger-ui-bundle.js" in page.text
        # ReDoc is not served (it needs inline styles and blob: workers).
        assert client.get("/redoc").status_code == 404
        assert client.get("/docs/assets/../../app.py").status_code == 404


@pytest.mark.parametrize("docs", ["on", "off"])
def test_docs_off_serves_no_reference_and_no_schema(
    database_url: str, clock: FakeClock, docs: str
) -> None:
    settings = make_settings(database_url, docs=docs)
    tenant = create_tenant(settings)
    with TestClient(create_app(settings, clock=clock)) as client:
        for path in ("/docs", "/openapi.json", "/docs/assets/swagger-ui-bundle.js"):
            assert client.get(path).status_code == (200 if docs == "on" else 404), path
        assert client.get("/redoc").status_code == 404
        assert client.get("/healthz").status_code == 200  # the rest is served as before
        # The dashboard links to the reference only when there is one.
        login(client, tenant)
        footer = client.get(DASHBOARD).text
        assert ('<a href="/docs">API reference</a>' in footer) == (docs == "on")


def test_docs_render_offline_in_a_real_browser(
    browser: Browser, sqlite_template: Path, tmp_path: Path
) -> None:
    from playwright.sync_api import expect

    database = tmp_path / "wastats.db"
    shutil.copyfile(sqlite_template, database)
    app = create_app(make_settings(f"sqlite:///{database}"), clock=FakeClock())
    with live_server(app) as base:
        operations = sum(
            len([m for m in item if m in ("get", "post", "put", "patch", "delete")])
            for item in httpx.get(base + "/openapi.json").json()["paths"].values()
        )
        context = browser.new_context()
        outside: list[str] = []
        local: list[str] = []

        def only_loopback(route: Route) -> None:
            url = route.request.url
            if url.startswith(base + "/"):
                local.append(url)
                route.continue_()
            else:  # as if offline: nothing but this server answers
                outside.append(url)
                route.abort()

        context.route("**/*", only_loopback)
        page = context.new_page()
        problems: list[str] = []
        page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: problems.append(str(e)))

        page.goto(base + "/docs")
        page.wait_for_selector(".opblock")
        shown = page.locator(".opblock").count()
        assert shown == operations > 5
        assert "wastats" in page.locator(".info .title").inner_text()
        # One operation opens and shows its parameters: the UI is alive, not just drawn.
        page.locator(".opblock-summary").filter(has_text="/v1/stats").first.click()
        page.wait_for_selector(".opblock.is-open .parameters")
        # "Try it out" calls this server from the page (connect-src 'self') and shows the answer.
        health = page.locator(".opblock").filter(has_text="/healthz")
        health.locator(".opblock-summary").click()
        health.locator("button.try-out__btn").click()
        health.locator("button.execute").click()
        status = health.locator(".live-responses-table tr.response .response-col_status")
        expect(status).to_have_text("200")
        assert outside == []
        assert any(url.endswith("/openapi.json") for url in local)
        assert problems == []  # no CSP violation, no script error
        context.close()


# --- /metrics -------------------------------------------------------------------------------


def test_metrics_public_by_default_with_a_warning(
    database_url: str, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, "wastats"), app_client(database_url, clock) as client:
        assert client.get("/metrics").status_code == 200
    assert "/metrics is open to anyone" in caplog.text
    caplog.clear()
    with (
        caplog.at_level(logging.WARNING, "wastats"),
        app_client(database_url, clock, metrics="public") as client,
    ):
        assert client.get("/metrics").status_code == 200
    assert "/metrics is open" not in caplog.text  # chosen on purpose: no warning


@pytest.mark.parametrize("explicit", [True, False])
def test_metrics_token_mode(
    database_url: str, clock: FakeClock, caplog: pytest.LogCaptureFixture, explicit: bool
) -> None:
    # A token alone switches the mode on; WASTATS_METRICS=token says so explicitly.
    mode = {"metrics": "token"} if explicit else {}
    with app_client(database_url, clock, metrics_token=TOKEN, **mode) as client:
        for headers in (
            {},
            {"Authorization": "Bearer wrong-token-0123456789abcdef"},
            {"Authorization": f"Bearer {TOKEN[:-1]}"},
            {"Authorization": f"Basic {TOKEN}"},
            {"Authorization": TOKEN},
        ):
            refused = client.get("/metrics", headers=headers)
            assert refused.status_code == 401, headers
            assert refused.headers["www-authenticate"] == 'Bearer realm="metrics"'
            assert refused.headers["content-type"] == "application/problem+json"
            assert "WASTATS_METRICS_TOKEN" in refused.json()["detail"]
            assert TOKEN not in refused.text
            assert "wastats_http_requests_total" not in refused.text
        assert client.get("/metrics", params={"token": TOKEN}).status_code == 401
        answer = client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
        assert answer.status_code == 200
        assert "wastats_http_requests_total" in answer.text
        # Refused scrapes are still counted, as any request.
        assert 'route="/metrics",status="401"' in answer.text
    assert TOKEN not in caplog.text


def test_metrics_off(database_url: str, clock: FakeClock) -> None:
    with app_client(database_url, clock, metrics="off", metrics_token=TOKEN) as client:
        assert client.get("/metrics").status_code == 404
        assert (
            client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 404
        )
        assert client.get("/healthz").status_code == 200


@pytest.mark.parametrize(
    ("environment", "message"),
    [
        (
            {"WASTATS_METRICS": "token"},
            "WASTATS_METRICS_TOKEN: Value error, must be set when WASTATS_METRICS=token",
        ),
        (
            {"WASTATS_METRICS_TOKEN": "short"},
            "WASTATS_METRICS_TOKEN: Value error, must be at least 16 characters",
        ),
        (
            {"WASTATS_METRICS": "private"},
            "WASTATS_METRICS: Input should be 'public', 'token' or 'off'",
        ),
        ({"WASTATS_DOCS": "maybe"}, "WASTATS_DOCS: Input should be 'on' or 'off'"),
    ],  # fmt: skip
)
def test_bad_access_settings_stop_the_start_with_one_line(
    monkeypatch: pytest.MonkeyPatch, environment: dict[str, str], message: str
) -> None:
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ConfigurationError) as caught:
        load_settings()
    assert str(caught.value) == f"invalid configuration: {message}"


def test_metrics_token_is_not_in_the_settings_repr() -> None:
    settings = load_settings(metrics_token=TOKEN)
    assert TOKEN not in repr(settings)
    assert settings.metrics_access() == "token"
