"""GET /v1/stats and /v1/numbers through the real app, on SQLite and PostgreSQL."""

from __future__ import annotations

import csv
import io
from typing import Any

import pytest
from fastapi.testclient import TestClient

from conftest import FakeClock
from helpers import Tenant, add_number, bearer, create_tenant, get_token
from wastats.settings import Settings
from webhooks import at, deliver, inbound, status

A_ID, B_ID = "106540352242922", "106540352242933"
A, B = "15550783881", "15550783882"


def for_number(value: dict[str, Any], pnid: str) -> dict[str, Any]:
    return {**value, "metadata": {"display_phone_number": "1", "phone_number_id": pnid}}


def template(wamid: str, when: str, category: str, zone: str = "UTC", user: str = "972501111111",
             pnid: str = A_ID, kind: str = "regular") -> list[dict[str, Any]]:  # fmt: skip
    t = at(when, zone)
    pricing = ("PMP", category, kind)
    return [
        for_number(status(wamid, "sent", t, pricing=pricing, user=user), pnid),
        for_number(status(wamid, "delivered", t + 2, user=user), pnid),
    ]


@pytest.fixture
def tenant(settings: Settings) -> Tenant:
    t = create_tenant(settings, "Shop", "Asia/Jerusalem")
    add_number(settings, t, A, A_ID, display_name="Shop A")
    add_number(settings, t, B, B_ID)
    return t


@pytest.fixture
def data(client: TestClient, tenant: Tenant, clock: FakeClock) -> None:
    """Three months of traffic for two numbers, around a DST change in Jerusalem."""
    clock.now = at("2025-05-20 12:00")
    z = "Asia/Jerusalem"
    deliver(
        client,
        for_number(inbound("972501111111", at("2025-02-28 23:30", z)), A_ID),  # Feb, local
        for_number(inbound("972501111111", at("2025-03-01 00:30", z)), A_ID),  # same session
        for_number(inbound("972502222222", at("2025-03-27 23:59", z)), A_ID),  # eve of DST
        # 23 h 11 min later across the 23-hour DST day: still the same 24-hour session.
        for_number(inbound("972502222222", at("2025-03-29 00:10", z)), A_ID),
        for_number(inbound("14155550100", at("2025-04-10 10:00", z)), B_ID),
        *template("w1", "2025-03-05 10:00", "marketing", z),
        *template("w2", "2025-03-06 10:00", "marketing", z, user="972502222222"),
        *template("w3", "2025-04-02 10:00", "utility", z, pnid=B_ID, user="14155550100"),
        *template("w4", "2025-04-03 10:00", "utility", z, kind="free_customer_service"),
        *template("w5", "2025-05-19 10:00", "authentication", z, pnid=B_ID),
    )


def get(client: TestClient, tenant: Tenant, **params: Any) -> Any:
    response = client.get("/v1/stats", params=params, headers=bearer(get_token(client, tenant)))
    assert response.status_code == 200, response.text
    return response.json()


def bucket_sums(rows: list[dict[str, Any]]) -> dict[str, int]:
    return {k: sum(r[k] for r in rows) for k in ("marketing", "service", "incoming", "uncounted")}


def test_monthly_answer(client: TestClient, tenant: Tenant, data: None) -> None:
    answer = get(client, tenant, **{"from": "2025-02", "to": "2025-05"})
    assert answer["tz"] == "Asia/Jerusalem"
    assert (answer["from"], answer["to"]) == ("2025-02-01", "2025-05-31")
    assert answer["numbers"] == [A, B]
    assert answer["rules_version"] == 1
    assert answer["as_of"] == "2025-05-19T07:00:02Z"
    got = [(r["period"], r["marketing"], r["service"], r["incoming"], r["uncounted"], r["final"])
           for r in answer["rows"]]  # fmt: skip
    assert got == [
        ("2025-02", 0, 0, 1, 0, True),
        ("2025-03", 2, 0, 1, 0, True),
        ("2025-04", 0, 1, 1, 1, True),
        ("2025-05", 0, 1, 0, 0, False),  # the current month can still change
    ]
    assert answer["rows"][0]["start"] == "2025-02-01T00:00:00+02:00"
    assert answer["rows"][2]["start"] == "2025-04-01T00:00:00+03:00"  # summer time
    assert answer["totals"] == {"marketing": 2, "service": 2, "incoming": 3, "total": 7,
                                "uncounted": 1}  # fmt: skip


@pytest.mark.parametrize("granularity", ["day", "week"])
def test_finer_buckets_add_up_to_the_same_totals(
    client: TestClient, tenant: Tenant, data: None, granularity: str
) -> None:
    month = get(client, tenant, **{"from": "2025-02", "to": "2025-05"})
    fine = get(client, tenant, **{"from": "2025-02", "to": "2025-05", "granularity": granularity})
    assert fine["totals"] == month["totals"]
    assert bucket_sums(fine["rows"]) == bucket_sums(month["rows"])
    # Zero-filled, contiguous, clipped to the range.
    assert fine["rows"][0]["start"] == "2025-02-01T00:00:00+02:00"
    assert fine["rows"][-1]["end"] == "2025-06-01T00:00:00+03:00"
    for before, after in zip(fine["rows"], fine["rows"][1:], strict=False):
        assert before["end"] == after["start"]
    if granularity == "day":
        assert len(fine["rows"]) == 28 + 31 + 30 + 31
        by_day = {r["period"]: r["incoming"] for r in fine["rows"] if r["incoming"]}
        assert by_day == {"2025-02-28": 1, "2025-03-27": 1, "2025-04-10": 1}
        dst = next(r for r in fine["rows"] if r["period"] == "2025-03-28")
        assert (dst["start"], dst["end"]) == (
            "2025-03-28T00:00:00+02:00",
            "2025-03-29T00:00:00+03:00",
        )  # 23-hour day
    else:
        assert fine["rows"][0]["period"] == "2025-W05"  # Saturday 1 Feb, clipped ISO week


def test_day_buckets_in_new_york_across_dst(client: TestClient, tenant: Tenant, data: None) -> None:
    answer = get(client, tenant, **{"from": "2025-03-08", "to": "2025-03-10",
                                    "granularity": "day", "tz": "America/New_York"})  # fmt: skip
    assert answer["tz"] == "America/New_York"
    assert [(r["period"], r["start"]) for r in answer["rows"]] == [
        ("2025-03-08", "2025-03-08T00:00:00-05:00"),
        ("2025-03-09", "2025-03-09T00:00:00-05:00"),
        ("2025-03-10", "2025-03-10T00:00:00-04:00"),
    ]


def test_group_by_number_category_country(client: TestClient, tenant: Tenant, data: None) -> None:
    answer = get(client, tenant, **{"from": "2025-03", "to": "2025-04",
                                    "group_by": "number,category,country"})  # fmt: skip
    rows = [(r["period"], r["number"], r["country"], r["category"], r["pricing"], r["marketing"],
             r["service"], r["incoming"], r["uncounted"]) for r in answer["rows"]]  # fmt: skip
    assert rows == [
        ("2025-03", A, "IL", "incoming", "", 0, 0, 1, 0),
        ("2025-03", A, "IL", "marketing", "regular", 2, 0, 0, 0),
        ("2025-04", A, "IL", "utility", "free_customer_service", 0, 0, 0, 1),
        ("2025-04", B, "US", "incoming", "", 0, 0, 1, 0),
        ("2025-04", B, "US", "utility", "regular", 0, 1, 0, 0),
    ]
    assert bucket_sums(answer["rows"]) == {k: v for k, v in answer["totals"].items()
                                           if k != "total"}  # fmt: skip


def test_numbers_filter_and_unique_customers(
    client: TestClient, tenant: Tenant, data: None
) -> None:
    params = {"from": "2025-02", "to": "2025-05", "numbers": "+1 555-078-3881", "unique": "true"}
    answer = get(client, tenant, **params)
    assert answer["numbers"] == [A]
    assert answer["totals"]["unique_customers"] == {"marketing": 2, "service": 0, "incoming": 2,
                                                    "total": 2}  # fmt: skip
    march = next(r for r in answer["rows"] if r["period"] == "2025-03")
    assert march["unique_customers"] == {"marketing": 2, "service": 0, "incoming": 1, "total": 2}


def test_rollups_and_units_give_the_same_rows(
    client: TestClient, tenant: Tenant, data: None
) -> None:
    fast = get(client, tenant, **{"from": "2025-02", "to": "2025-05", "group_by": "category"})
    slow = get(client, tenant, **{"from": "2025-02", "to": "2025-05", "group_by": "category",
                                  "unique": "true"})  # fmt: skip
    strip = [{k: v for k, v in r.items() if k != "unique_customers"} for r in slow["rows"]]
    assert fast["rows"] == strip


def test_csv_rows_equal_json_rows(client: TestClient, tenant: Tenant, data: None) -> None:
    params = {"from": "2025-02", "to": "2025-05", "group_by": "number", "unique": "true"}
    answer = get(client, tenant, **params)
    headers = {**bearer(get_token(client, tenant)), "Accept": "text/csv"}
    response = client.get("/v1/stats", params=params, headers=headers)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/csv")
    assert 'filename="wastats-2025-02-01-2025-05-31.csv"' in response.headers["content-disposition"]
    lines = list(csv.DictReader(io.StringIO(response.text)))
    assert list(lines[0]) == ["period", "start", "end", "final", "number", "marketing", "service",
                              "incoming", "total", "uncounted", "unique_marketing",
                              "unique_service", "unique_incoming", "unique_total", "source",
                              "cost_source", "cost_meta", "cost_estimate",
                              "cost_estimate_currency"]  # fmt: skip
    assert len(lines) == len(answer["rows"])
    for line, row in zip(lines, answer["rows"], strict=True):
        assert line["period"] == row["period"]
        assert line["number"] == row["number"]
        assert line["final"] == str(row["final"]).lower()
        for k in ("marketing", "service", "incoming", "total", "uncounted"):
            assert int(line[k]) == row[k]
        assert int(line["unique_total"]) == row["unique_customers"]["total"]
        # No WABA linked: Meta's record's columns are there, and empty.
        assert [line[k] for k in ("source", "cost_source", "cost_meta")] == ["", "", ""]
    same = client.get("/v1/stats", params={**params, "format": "csv"},
                      headers=bearer(get_token(client, tenant)))  # fmt: skip
    assert same.text == response.text


def test_defaults_cover_the_last_twelve_months(
    client: TestClient, tenant: Tenant, data: None
) -> None:
    answer = get(client, tenant)
    assert (answer["from"], answer["to"]) == ("2024-06-01", "2025-05-20")
    assert len(answer["rows"]) == 12
    assert answer["rows"][-1]["end"] == "2025-05-21T00:00:00+03:00"  # clipped at today


def test_numbers_endpoint(client: TestClient, tenant: Tenant) -> None:
    response = client.get("/v1/numbers", headers=bearer(get_token(client, tenant)))
    numbers = response.json()["numbers"]
    assert [(n["whatsapp"], n["phone_number_id"], n["display_name"]) for n in numbers] == [
        (A, A_ID, "Shop A"),
        (B, B_ID, None),
    ]


@pytest.mark.parametrize(
    ("params", "parameter", "detail"),
    [
        ({"from": "2025-13"}, "from", "from must be a month YYYY-MM or a day YYYY-MM-DD"),
        ({"to": "yesterday"}, "to", "to must be a month YYYY-MM or a day YYYY-MM-DD"),
        ({"from": "2025-05", "to": "2025-04"}, "from", "from 2025-05-01 is after to 2025-04-30"),
        ({"granularity": "hour"}, "granularity", "granularity must be day, week or month"),
        ({"tz": "Mars/Base"}, "tz",
         "unknown time zone 'Mars/Base': use an IANA name such as UTC or Asia/Jerusalem"),
        ({"group_by": "number,colour"}, "group_by",
         "group_by takes number, category, country; not 'colour'"),
        ({"numbers": "12"}, "numbers", "'12' is not a phone number"),
        ({"numbers": "14155550199"}, "numbers", "14155550199 is not one of this account's numbers"),
        ({"from": "2020-01", "to": "2025-12"}, "to",
         "the range is 2192 days; at most 1830 days with granularity=month"),
        ({"from": "2024-01-01", "to": "2025-12-31", "granularity": "day"}, "to",
         "the range is 731 days; at most 400 days with granularity=day"),
        ({"from": "1969-12"}, "from", "from must be between 1970-01-01 and 9998-12-31"),
        ({"format": "xml"}, "format", "format must be json or csv"),
    ],
)  # fmt: skip
def test_every_error_is_a_problem(
    client: TestClient, tenant: Tenant, params: dict[str, str], parameter: str, detail: str
) -> None:
    response = client.get("/v1/stats", params=params, headers=bearer(get_token(client, tenant)))
    assert response.status_code == 422
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json() == {"type": "about:blank", "title": "Invalid parameter", "status": 422,
                               "detail": detail,
                               "errors": [{"parameter": parameter, "message": detail}]}  # fmt: skip


@pytest.mark.parametrize(
    "headers", [{}, {"Authorization": "Bearer nope"}, {"Authorization": "Basic x"}]
)
def test_unauthenticated(client: TestClient, headers: dict[str, str]) -> None:
    for path in ("/v1/stats", "/v1/numbers"):
        response = client.get(path, headers=headers)
        assert response.status_code == 401
        assert response.headers["www-authenticate"].startswith("Bearer")
        assert response.json()["title"] == "Unauthorized"


def test_expired_token(client: TestClient, tenant: Tenant, clock: FakeClock) -> None:
    token = get_token(client, tenant)
    clock.advance(3601)
    assert client.get("/v1/stats", headers=bearer(token)).status_code == 401


def test_tenants_are_isolated(
    client: TestClient, settings: Settings, tenant: Tenant, data: None
) -> None:
    other = create_tenant(settings, "Other")
    response = client.get("/v1/stats", params={"numbers": A},
                          headers=bearer(get_token(client, other)))  # fmt: skip
    assert response.status_code == 422
    assert response.json()["detail"] == f"{A} is not one of this account's numbers"
    answer = client.get("/v1/stats", params={"from": "2025-02", "to": "2025-05"},
                        headers=bearer(get_token(client, other))).json()  # fmt: skip
    assert answer["numbers"] == []
    assert answer["totals"]["total"] == 0
    assert answer["as_of"] is None
    assert client.get("/v1/numbers", headers=bearer(get_token(client, other))).json() == {
        "numbers": []
    }


@pytest.mark.parametrize("unique", [False, True])  # the rollups, then the counted units
def test_category_rows_sort_by_category_then_pricing(
    client: TestClient, tenant: Tenant, clock: FakeClock, unique: bool
) -> None:
    # Keyed by (category, pricing) pairs, not "category|pricing" text, whose "|" sorted
    # `authentication_international` before `authentication`.
    clock.now = at("2025-05-20 12:00")
    deliver(
        client,
        *template("c1", "2025-04-02 10:00", "authentication_international"),
        *template("c2", "2025-04-03 10:00", "authentication"),
        *template("c3", "2025-04-04 10:00", "utility", kind="free_customer_service"),
        *template("c4", "2025-04-05 10:00", "utility"),
    )
    answer = get(client, tenant, **{"from": "2025-04", "to": "2025-04", "group_by": "category",
                                    "unique": str(unique).lower()})  # fmt: skip
    assert [
        (r["category"], r["pricing"], r["service"], r["uncounted"]) for r in answer["rows"]
    ] == [
        ("authentication", "regular", 1, 0),
        ("authentication_international", "regular", 1, 0),
        ("utility", "free_customer_service", 0, 1),
        ("utility", "regular", 1, 0),
    ]
