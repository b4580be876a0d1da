"""The Graph API client against the fake Graph API (a real HTTP server): both request forms,
paging, and every error answer classified as the sync needs it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import FIXTURES as _FIXTURES
from fakegraph import TOKEN, client_for, fake_graph
from wastats.meta.fake_graph import FakeGraph, FakeNumber, FakePoint, FakeWaba
from wastats.meta.graph import GraphClient, GraphError, _point

# The shared fixtures, found from the main checkout or from a worktree beside it.
FIXTURES = next(
    (p for p in (_FIXTURES, Path("/work/shared/fixtures/webhooks")) if p.is_dir()), _FIXTURES
)
WABA = "102290129340398"
DAY0 = 1_780_272_000  # 2026-06-01T00:00:00Z


def _state(numbers: int = 5, points: int = 0, page_size: int = 2) -> FakeGraph:
    state = FakeGraph(token=TOKEN, page_size=page_size)
    waba = FakeWaba(
        WABA,
        numbers=[
            FakeNumber(f"10{i:05d}", f"+1 631-555-{i:04d}", f"Shop {i}") for i in range(numbers)
        ],
    )
    for k in range(points):
        waba.points.append(
            FakePoint(DAY0 + k * 1800, "16315550000", "US", "MARKETING", "REGULAR", k + 1, 0.01)
        )
    state.add_waba(waba)
    return state


def test_phone_numbers_follow_every_page() -> None:
    state = _state(numbers=5, page_size=2)
    with fake_graph(state) as url, client_for(url) as client:
        numbers = client.phone_numbers(WABA)
    assert [n.phone_number_id for n in numbers] == [f"10{i:05d}" for i in range(5)]
    assert numbers[3].display_phone_number == "+1 631-555-0003"
    assert numbers[3].verified_name == "Shop 3"
    assert sum("/phone_numbers" in r for r in state.requests) == 3  # 2 + 2 + 1


@pytest.mark.parametrize("form", ["fields", "edge"])
def test_pricing_analytics_both_forms_all_pages(form: str) -> None:
    state = _state(points=7, page_size=3)
    with fake_graph(state) as url, client_for(url) as client:
        points = client.pricing_analytics(WABA, DAY0, DAY0 + 86400, form=form)
    assert [p.volume for p in points] == [1, 2, 3, 4, 5, 6, 7]
    assert points[0].category == "MARKETING"
    assert points[0].phone_number == "16315550000"
    assert len(state.requests) == 3
    if form == "fields":
        assert "fields=pricing_analytics.start" in state.requests[0].replace("%28", "(")
    # The token travels in the header, never in a URL the client builds.
    assert all(TOKEN not in r for r in state.requests)


def test_paging_by_cursor_when_next_points_elsewhere() -> None:
    """A `paging.next` on another host is not followed (it could carry the token there); the
    cursor on our own host gets the same pages."""
    state = _state(points=5, page_size=2)
    with fake_graph(state) as url:
        other = url.replace("127.0.0.1", "localhost")
        with GraphClient(other, "v24.0", TOKEN, retries=0) as client:
            points = client.pricing_analytics(WABA, DAY0, DAY0 + 86400, form="edge")
    assert [p.volume for p in points] == [1, 2, 3, 4, 5]
    assert sum("after=" in r for r in state.requests) == 2


def test_documented_fixture_points_parse() -> None:
    body = json.loads((FIXTURES / "meta-docs__pricing-analytics-response.json").read_text())
    raw = body["pricing_analytics"]["data"][0]["data_points"]
    points = [_point(p) for p in raw]
    assert sum(p.volume for p in points) == sum(p["volume"] for p in raw)
    assert {p.tier for p in points} == {"", "0:MAX", "0:2", "0:750000"}
    assert points[1].cost == 4.6
    # The fake serves the same field names the documentation shows (plus phone_number).
    fake_keys = set(FakePoint(0, "1", "US", "MARKETING", "REGULAR", 1, 1.0, "0:MAX").as_json())
    assert {k for p in raw for k in p} <= fake_keys


@pytest.mark.parametrize(
    ("fault", "kind", "code"),
    [
        ("expired_token", "token", 190),
        ("permission", "permission", 200),
        ("permission_10", "permission", 10),
        ("unknown_waba", "unknown_waba", 100),
        ("rate_limit", "rate_limit", 80007),
        ("rate_limit_app", "rate_limit", 4),
    ],
)
def test_refusals_are_classified_and_not_retried(fault: str, kind: str, code: int) -> None:
    state = _state()
    state.fail(fault, regain_minutes=7)
    with (
        fake_graph(state) as url,
        client_for(url, retries=3) as client,
        pytest.raises(GraphError) as raised,
    ):
        client.phone_numbers(WABA)
    assert raised.value.kind == kind
    assert raised.value.code == code
    assert len(state.requests) == 1  # retrying would fail the same way
    assert TOKEN not in str(raised.value)
    if kind == "rate_limit":
        assert raised.value.retry_after == 7 * 60  # from X-Business-Use-Case-Usage


def test_a_wrong_token_is_a_token_error() -> None:
    state = _state()
    with (
        fake_graph(state) as url,
        GraphClient(url, "v24.0", "wrong", retries=0) as client,
        pytest.raises(GraphError) as raised,
    ):
        client.phone_numbers(WABA)
    assert raised.value.kind == "token"


@pytest.mark.parametrize(
    ("fault", "kind"), [("server_error", "server"), ("malformed", "malformed")]
)
def test_transient_faults_are_retried_then_succeed(fault: str, kind: str) -> None:
    state = _state(numbers=1)
    state.fail(fault, times=2)
    with fake_graph(state) as url, client_for(url, retries=2) as client:
        assert len(client.phone_numbers(WABA)) == 1
    assert len(state.requests) == 3


@pytest.mark.parametrize(
    ("fault", "kind"), [("server_error", "server"), ("malformed", "malformed")]
)
def test_transient_faults_give_up_after_the_retries(fault: str, kind: str) -> None:
    state = _state(numbers=1)
    state.fail(fault)
    with (
        fake_graph(state) as url,
        client_for(url, retries=2) as client,
        pytest.raises(GraphError) as raised,
    ):
        client.pricing_analytics(WABA, DAY0, DAY0 + 86400)
    assert raised.value.kind == kind
    assert len(state.requests) == 3


def test_a_hanging_answer_ends_at_the_timeout() -> None:
    state = _state(numbers=1)
    state.fail("hang")
    with (
        fake_graph(state) as url,
        client_for(url, timeout=0.5, retries=1) as client,
        pytest.raises(GraphError) as raised,
    ):
        client.phone_numbers(WABA)
    assert raised.value.kind == "timeout"
    assert len(state.requests) == 2


def test_a_span_meta_refuses_is_refused() -> None:
    state = _state()
    with (
        fake_graph(state) as url,
        client_for(url) as client,
        pytest.raises(GraphError) as raised,
    ):
        client.pricing_analytics(WABA, DAY0, DAY0 + 40 * 86400)
    assert raised.value.kind == "refused"
