"""Bad input never gives a 500 (issue 11): deep JSON, dates past the calendar, hostile strings
in every parameter of both APIs, HEAD on the compatible API, a body over the limit in each route
family's own format, and clients that hang up or dawdle mid-body. Through the real app (and a
real socket where the transport matters), on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import logging
import socket
import time
from typing import Any

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, example, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from conftest import FakeClock, make_settings
from helpers import Tenant, add_number, bearer, create_tenant, get_token
from live import live_server
from wastats.app import create_app
from wastats.settings import Settings

TOKEN = "/api/settings/accessToken"
STATS = "/api/whatsapp/getConversationsStatistics"
NUMBERS = "/api/whatsapp/getWhatsApp"
V1 = "/v1/stats"
PARTNER_REASONS = {1, 2, 3, 4, 13, 27, 40, 41, 42}
DEEP = b"[" * 100_000

# Shapes that broke parsers before: deep nesting, calendar edges, overflows, control and
# non-ASCII characters, huge numbers, SQL and formula lookalikes, surrogates (as JSON escapes).
HOSTILE = st.one_of(
    st.text(max_size=40),
    st.sampled_from(
        [
            "9999-12",
            "9999-12-31",
            "0000-01",
            "0001-01-01",
            "1969-12-31",
            "2025-02-30",
            "2025-13",
            "10000-01",
            "-2025-01",
            "2025-1",
            "122025",
            "129999",
            "009999",
            "001970",
            "000000",
            "999999999999",
            "1e309",
            "NaN",
            "null",
            "[" * 500,
            "{" * 500,
            "\x00",
            "' OR 1=1 --",
            "=1+1",
            "Europe/../../etc/passwd",
            "America/Argentina/ComodRivadavia",
            "Etc/GMT+14",
            "+",
            "+" * 40,
            "9" * 400,
            "١٢٣٤٥٦٧٨٩٠١",
            "day,week",
            "number," * 50,
        ]
    ),  # fmt: skip
)
JSON_VALUES = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), HOSTILE),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner),
    max_leaves=8,
)
FUZZ = hypothesis_settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@pytest.fixture
def tenant(settings: Settings) -> Tenant:
    t = create_tenant(settings, "Shop", "Asia/Jerusalem")
    add_number(settings, t, "15550783881")
    return t


@pytest.fixture
def token(client: TestClient, tenant: Tenant) -> str:
    return get_token(client, tenant)


def partners_ok(response: Any) -> dict[str, Any]:
    """A compatible-API answer: HTTP 200 and the envelope with a documented reason."""
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    assert answer["status"] in ("OK", "FAIL"), answer
    assert answer["reason"] in PARTNER_REASONS, answer
    return answer


# --- deep JSON and calendar overflows -------------------------------------------------------


def test_deeply_nested_bodies_are_bad_bodies(client: TestClient, token: str) -> None:
    answer = partners_ok(client.post(TOKEN, content=DEEP))
    assert answer["reason"] == 2
    answer = partners_ok(client.request("GET", STATS, content=DEEP, headers=bearer(token)))
    assert (answer["reason"], answer["message"]) == (2, "the body is not a JSON object")
    # Deep but not too deep for the parser: still not an object.
    answer = partners_ok(client.post(TOKEN, content=b"[" * 50 + b"]" * 50))
    assert answer["reason"] == 2


def test_a_date_past_the_calendar_is_an_invalid_parameter(client: TestClient, token: str) -> None:
    for to in ("9999-12", "9999-12-31"):
        response = client.get(V1, params={"to": to}, headers=bearer(token))
        assert response.status_code == 422, response.text
        assert response.json()["errors"] == [
            {"parameter": "to", "message": "to must be between 1970-01-01 and 9998-12-31"}
        ]
    response = client.get(V1, params={"from": "9999-12"}, headers=bearer(token))
    assert response.status_code == 422
    assert response.json()["errors"][0]["parameter"] == "from"


@FUZZ
@given(params=st.dictionaries(
    st.sampled_from(["from", "to", "granularity", "tz", "numbers", "group_by", "unique",
                     "format"]),
    HOSTILE, max_size=5,
))  # fmt: skip
@example(params={"to": "9999-12"})
@example(params={"from": "9999-12-31", "granularity": "week"})
@example(params={"tz": "\x00", "numbers": "+" * 40})
def test_v1_answers_any_parameters_with_a_result_or_a_problem(
    client: TestClient, token: str, params: dict[str, str]
) -> None:
    response = client.get(V1, params=params, headers=bearer(token))
    assert response.status_code in (200, 422), (params, response.text)
    if response.status_code == 422:
        assert response.headers["content-type"] == "application/problem+json"
        assert response.json()["status"] == 422
        assert response.json()["detail"]


@FUZZ
@given(
    query=st.dictionaries(st.sampled_from(["start_date", "end_date", "whatsapp"]), HOSTILE),
    body=st.one_of(
        st.none(),
        st.dictionaries(st.sampled_from(["start_date", "end_date", "whatsapp", "x"]), JSON_VALUES),
        JSON_VALUES,
        st.binary(max_size=30),
        st.integers(1, 20_000).map(lambda n: b"[" * n),
        st.integers(1, 20_000).map(lambda n: b'{"a":' * n),
    ),
)
@example(query={"start_date": "129999", "end_date": "009999"}, body=b"[" * 100_000)
def test_partners_statistics_answer_any_input_in_band(
    client: TestClient, token: str, query: dict[str, str], body: object
) -> None:
    content = body if isinstance(body, bytes) else None if body is None else json.dumps(body)
    response = client.request("GET", STATS, params=query, content=content, headers=bearer(token))
    partners_ok(response)


@FUZZ
@given(body=st.one_of(
    st.dictionaries(st.sampled_from(["client_id", "client_secret"]), JSON_VALUES),
    JSON_VALUES, st.binary(max_size=30), st.integers(1, 20_000).map(lambda n: b"[" * n),
))  # fmt: skip
def test_the_token_endpoint_answers_any_body_in_band(client: TestClient, body: object) -> None:
    content = body if isinstance(body, bytes) else json.dumps(body)
    answer = partners_ok(client.post(TOKEN, content=content))
    assert answer["reason"] in (2, 3)


# --- methods and body limits ----------------------------------------------------------------


def test_head_on_the_compatible_endpoints_is_reason_13(client: TestClient) -> None:
    for path, expected in ((STATS, "GET"), (NUMBERS, "GET"), (TOKEN, "POST")):
        head = client.head(path)
        assert head.status_code == 200, path
        # HEAD carries no body; its headers are those of the reason-13 answer.
        other = client.request("PATCH", path)
        assert other.json() == {
            "status": "FAIL",
            "reason": 13,
            "message": f"you need to use {expected} method",
        }
        assert head.headers["content-length"] == other.headers["content-length"]
        assert head.headers["content-type"] == "application/json"


def test_a_body_over_the_limit_is_answered_like_the_rest_of_its_api(database_url: str) -> None:
    settings = make_settings(database_url, max_body_bytes=2048, max_webhook_body_bytes=4096)
    with TestClient(create_app(settings, clock=FakeClock())) as client:
        big = b"{" + b" " * 5000 + b"}"
        # The compatible API: exactly the bytes and type its own FAIL answers have.
        wrong = client.request("PATCH", TOKEN)
        refused = client.post(TOKEN, content=big)
        assert refused.status_code == 413
        assert refused.headers["content-type"] == wrong.headers["content-type"]
        expected = {"status": "FAIL", "reason": 2,
                    "message": "request body too large: the limit is 2048 bytes"}  # fmt: skip
        assert refused.content == json.dumps(expected, separators=(",", ":")).encode()
        assert wrong.content == json.dumps(wrong.json(), separators=(",", ":")).encode()
        # Everywhere else: an RFC 9457 problem, as the other errors there.
        for path, limit in ((V1, 2048), ("/webhooks/whatsapp", 4096), ("/dashboard/login", 2048)):
            response = client.post(path, content=b" " * 6000)
            assert response.status_code == 413, path
            assert response.headers["content-type"] == "application/problem+json"
            assert response.json() == {
                "type": "about:blank", "title": "Payload Too Large", "status": 413,
                "detail": f"request body too large: the limit is {limit} bytes",
            }  # fmt: skip
        # A chunked upload without Content-Length is cut off while it streams, same answer.
        chunks = iter([b"{" + b" " * 1500] * 3)
        response = client.post(TOKEN, content=chunks)
        assert response.status_code == 413
        assert response.json() == expected


# --- clients that hang up or dawdle ---------------------------------------------------------


def _half_a_body(port: int, path: str, declared: int = 1000) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    sock.sendall(
        f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Content-Length: {declared}\r\n\r\n".encode()
        + b'{"client_id": "'
    )
    return sock


def _read_answer(sock: socket.socket) -> bytes:
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


@pytest.fixture
def wastats_log(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.INFO, logger="wastats")
    return caplog


def _wait_for(predicate: Any, what: str, timeout: float = 30.0) -> None:
    """A bounded poll of something observable (not a sleep standing in for a wait)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def test_a_client_that_hangs_up_mid_body_is_an_info_line_not_a_500(
    settings: Settings, wastats_log: pytest.LogCaptureFixture
) -> None:
    app = create_app(settings)
    with live_server(app) as url:
        port = int(url.rsplit(":", 1)[1])
        for path in (TOKEN, "/webhooks/whatsapp"):
            sock = _half_a_body(port, path)
            sock.close()

        def logged() -> bool:
            return (
                sum("client closed the connection" in r.message for r in wastats_log.records) == 2
            )

        _wait_for(logged, "two disconnect lines")
        assert not [r for r in wastats_log.records if r.levelno >= logging.ERROR]
        assert all(r.exc_info is None for r in wastats_log.records)
        access = [r for r in wastats_log.records if r.name == "wastats.access"]
        assert {getattr(r, "status", None) for r in access} == {499}


def test_a_body_too_slow_gets_408_in_the_route_family_format(database_url: str) -> None:
    settings = make_settings(database_url, body_timeout_seconds=0.3)
    app = create_app(settings)
    with live_server(app) as url:
        port = int(url.rsplit(":", 1)[1])
        with _half_a_body(port, TOKEN) as sock:
            answer = _read_answer(sock)  # the server answers and closes: no client timeout
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 408 "), answer
        assert json.loads(body) == {
            "status": "FAIL", "reason": 2,
            "message": "request body not received within 0.3 seconds",
        }  # fmt: skip
        with _half_a_body(port, "/webhooks/whatsapp") as sock:
            answer = _read_answer(sock)
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 408 "), answer
        assert b"application/problem+json" in head
        assert json.loads(body)["title"] == "Request Timeout"
