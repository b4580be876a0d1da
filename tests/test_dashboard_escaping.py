"""A hostile account name, number name, client id or query value is shown as text in every place
the dashboard shows it: in the HTML the server renders (Jinja2 with autoescape) and in what
dashboard.js draws, in real headless Chromium. An injection would add elements or run script;
the CSP would then also log a violation, which the browser test counts as a failure."""

from __future__ import annotations

import shutil
from html.parser import HTMLParser
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import quote_plus

import pytest
from fastapi.testclient import TestClient

from conftest import FakeClock, make_settings
from helpers import add_number, create_tenant
from live import live_server
from test_dashboard import DASHBOARD, LOGIN, browser, login
from wastats.app import create_app
from wastats.settings import Settings

if TYPE_CHECKING:
    from playwright.sync_api import Browser

__all__ = ["browser"]  # the fixture, imported for the browser test

# Breaks out of an attribute and out of text, and carries an entity that must stay literal.
HOSTILE = "\"'><script>window.__xss=1</script><img src=x onerror=window.__xss=2>&amp;"
HOSTILE_NUMBER_NAME = "<b>bold</b>\"'><svg onload=window.__xss=3>"
HOSTILE_ZONE = '"><script>window.__xss=4</script>&lt;'  # the picker keeps 64 characters


class _Page(HTMLParser):
    """The elements of a page, with their attributes, and the text inside chosen ids."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.elements: list[tuple[str, dict[str, str | None]]] = []
        self.texts: dict[str, str] = {}
        self._open: list[str | None] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        self.elements.append((tag, attributes))
        if tag not in ("input", "img", "meta", "link", "br"):
            self._open.append(attributes.get("id") or (tag if tag == "title" else None))

    def handle_endtag(self, tag: str) -> None:
        if self._open:
            self._open.pop()

    def handle_data(self, data: str) -> None:
        for key in self._open:
            if key is not None:
                self.texts[key] = self.texts.get(key, "") + data

    def by_id(self, element_id: str) -> dict[str, str | None]:
        found = [attrs for _tag, attrs in self.elements if attrs.get("id") == element_id]
        assert len(found) == 1, element_id
        return found[0]


def parsed(text: str) -> _Page:
    page = _Page()
    page.feed(text)
    page.close()
    return page


def assert_nothing_injected(page: _Page) -> None:
    """Only the page's own script and images: an escaped value adds no element."""
    scripts = [attrs.get("src") for tag, attrs in page.elements if tag == "script"]
    assert all(src and src.startswith("/dashboard/static/dashboard.js") for src in scripts)
    assert len(scripts) <= 1
    images = [attrs.get("class") for tag, attrs in page.elements if tag == "img"]
    assert images
    assert all(cls == "brand-mark" for cls in images)
    assert not [tag for tag, _ in page.elements if tag in ("svg", "b")]
    for _tag, attrs in page.elements:
        assert not any(name.startswith("on") for name in attrs), attrs


def test_hostile_values_are_escaped_in_every_server_rendered_place(
    settings: Settings, clock: FakeClock
) -> None:
    tenant = create_tenant(settings, name=HOSTILE)
    with TestClient(create_app(settings, clock=clock)) as client:
        # The sign-in form keeps the client id typed after a refusal.
        assert parsed(client.get(LOGIN).text).by_id("login-form")["action"] == LOGIN
        token = client.cookies["wastats_csrf"]
        refused = client.post(
            LOGIN, data={"csrf_token": token, "client_id": HOSTILE, "client_secret": "wrong"}
        )
        assert refused.status_code == 401
        assert HOSTILE not in refused.text
        page = parsed(refused.text)
        assert_nothing_injected(page)
        assert page.by_id("client_id")["value"] == HOSTILE

        # The dashboard shows the account's name in the title and the top bar, and echoes the
        # chosen zone from the query string into the picker and the CSV link.
        login(client, tenant)
        answer = client.get(DASHBOARD, params={"tz": HOSTILE_ZONE})
        assert answer.status_code == 200
        assert HOSTILE not in answer.text
        assert "<script>window" not in answer.text
        page = parsed(answer.text)
        assert_nothing_injected(page)
        assert page.texts["title"] == f"{HOSTILE} · Dashboard · wastats"
        assert page.texts["account-name"] == HOSTILE
        assert HOSTILE_ZONE not in answer.text
        assert page.by_id("tz")["value"] == HOSTILE_ZONE
        csv = page.by_id("csv-link")["href"]
        assert csv is not None
        assert csv.startswith("/v1/stats?format=csv&granularity=month&")
        assert csv.endswith("&tz=" + quote_plus(HOSTILE_ZONE))


def test_hostile_names_are_text_in_the_browser(
    browser: Browser, sqlite_template: Path, tmp_path: Path
) -> None:
    from playwright.sync_api import expect

    database = tmp_path / "wastats.db"
    shutil.copyfile(sqlite_template, database)
    settings = make_settings(f"sqlite:///{database}")
    tenant = create_tenant(settings, name=HOSTILE)
    add_number(settings, tenant, "972501234567", display_name=HOSTILE_NUMBER_NAME)
    add_number(settings, tenant, "972537654321", business_name=HOSTILE)
    app = create_app(settings, clock=FakeClock())

    with live_server(app) as base:
        context = browser.new_context(viewport={"width": 1280, "height": 900})
        page = context.new_page()
        problems: list[str] = []
        page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: problems.append(str(e)))
        page.on("dialog", lambda d: problems.append(f"dialog: {d.message}"))

        page.goto(base + LOGIN)
        page.get_by_label("Client id", exact=True).fill(tenant.client_id)
        page.get_by_label("Client secret", exact=True).fill(tenant.client_secret)
        page.get_by_role("button", name="Sign in").click()
        expect(page.locator("#account-name")).to_have_text(HOSTILE)
        page.wait_for_selector('#numbers-table[data-state="ready"]')

        assert page.title() == f"{HOSTILE} · Dashboard · wastats"
        names = page.eval_on_selector_all(
            "#numbers-table tbody tr", "els => els.map(e => e.cells[1].textContent)"
        )
        assert names == [HOSTILE_NUMBER_NAME, HOSTILE]
        assert page.evaluate("window.__xss") is None
        assert page.locator("#numbers-table b, #numbers-table svg, img[src=x]").count() == 0
        assert problems == []
        context.close()


@pytest.mark.parametrize(
    ("missing", "status"), [(None, 303), ("client_id", 400), ("csrf_token", 403)]
)
def test_a_multipart_form_is_parsed_like_a_urlencoded_one(
    client: TestClient, settings: Settings, missing: str | None, status: int
) -> None:
    # Forms go through python-multipart: a browser may send either encoding. The CSRF check
    # holds for both: without the field, the post is refused.
    tenant = create_tenant(settings)
    client.get(LOGIN)
    fields = {
        "csrf_token": client.cookies["wastats_csrf"],
        "client_id": tenant.client_id,
        "client_secret": tenant.client_secret,
    }
    fields.pop(missing or "", None)
    as_parts = {name: (None, value) for name, value in fields.items()}
    answer = client.post(LOGIN, files=as_parts, follow_redirects=False)
    assert answer.status_code == status


@pytest.mark.parametrize(
    ("content", "content_type"),
    [
        (b"csrf_token=x&" + b"a=1&" * 20, "application/x-www-form-urlencoded"),  # too many
        (b"client_id=" + b"x" * 5000, "application/x-www-form-urlencoded"),  # too big
        (
            b'--b\r\nContent-Disposition: form-data; name="f"; filename="a.txt"\r\n\r\nx\r\n'
            b"--b--\r\n",
            "multipart/form-data; boundary=b",
        ),  # a file
        (b"--b\r\ngarbage", "multipart/form-data; boundary=b"),  # malformed
        (b"\xff\xfe", "application/x-www-form-urlencoded"),
    ],  # fmt: skip
)
def test_odd_form_bodies_are_refused_without_an_error(
    client: TestClient, content: bytes, content_type: str
) -> None:
    client.get(LOGIN)
    answer = client.post(LOGIN, content=content, headers={"Content-Type": content_type})
    assert answer.status_code == 403
    assert "Request refused" in answer.text
    assert answer.headers["content-security-policy"].startswith("default-src 'self'")
