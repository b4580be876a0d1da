"""The webhook's fast path (a raw ASGI endpoint ahead of FastAPI, issue 13) answers exactly what
the framework route answers, and keeps the framework's duties: request ids, the access log,
metrics, the body limit and a 500 that is a problem with the request id, never a stack trace.

Each case is sent twice to the same app: through the fast path, then with it switched off
(`app.webhook = None`), through FastAPI's stack and the Starlette endpoint; the answers must be
equal byte for byte (status, every header in order, body)."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import httpx
import pytest
from fastapi.testclient import TestClient

from conftest import APP_SECRET, FakeClock, make_settings
from wastats.app import WastatsApp, create_app
from wastats.whatsapp.signature import sign
from webhooks import WEBHOOK, at, body, inbound, settle

RAW = body(inbound("972501111111", at("2025-03-10 10:00")))
SIGNED = {"X-Hub-Signature-256": sign(APP_SECRET.encode(), RAW), "Content-Type": "application/json"}


def both_ways(client: TestClient, method: str, **request: object) -> list[httpx.Response]:
    app = client.app
    assert isinstance(app, WastatsApp)
    fast = app.webhook
    assert fast is not None
    answers = [client.request(method, WEBHOOK, **request)]  # type: ignore[arg-type]
    app.webhook = None
    try:
        answers.append(client.request(method, WEBHOOK, **request))  # type: ignore[arg-type]
    finally:
        app.webhook = fast
    return answers


def wire(response: httpx.Response) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    # Everything but the Date header, which is the second the answer was written.
    headers = [(k, v) for k, v in response.headers.raw if k.lower() != b"date"]
    return response.status_code, headers, response.content


@pytest.fixture
def fast_client(database_url: str, clock: FakeClock) -> Iterator[TestClient]:
    settings = make_settings(database_url, max_webhook_body_bytes=4096)
    with TestClient(create_app(settings, clock=clock), raise_server_exceptions=False) as client:
        yield client


CASES: dict[str, tuple[str, dict[str, object]]] = {
    "accepted": ("POST", {"content": RAW, "headers": SIGNED}),
    "bad signature": (
        "POST", {"content": RAW, "headers": {"X-Hub-Signature-256": "sha256=00"}},
    ),
    "missing signature": ("POST", {"content": RAW}),
    "too large": ("POST", {"content": b"x" * 5000, "headers": SIGNED}),
    "handshake": (
        "GET",
        {"params": {"hub.mode": "subscribe", "hub.challenge": "42",
                    "hub.verify_token": "test-verify-token"}},
    ),
    "handshake refused": ("GET", {"params": {"hub.mode": "subscribe", "hub.challenge": "42"}}),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(CASES))
def test_fast_path_answers_byte_for_byte_as_the_framework(
    fast_client: TestClient, case: str
) -> None:
    method, request = CASES[case]
    headers = {**request.get("headers", {}), "X-Request-ID": f"case-{case.replace(' ', '-')}"}  # type: ignore[dict-item]
    fast, framework = both_ways(fast_client, method, **{**request, "headers": headers})
    assert wire(fast) == wire(framework)
    assert fast.headers["x-request-id"] == headers["X-Request-ID"]
    settle(fast_client)


def test_without_a_secret_both_paths_answer_503_alike(database_url: str) -> None:
    settings = make_settings(database_url, meta_app_secret=None)
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        fast, framework = both_ways(
            client, "POST", content=RAW, headers={**SIGNED, "X-Request-ID": "no-secret"}
        )
    assert fast.status_code == 503
    assert wire(fast) == wire(framework)


def test_fast_path_gives_request_ids_logs_and_counts(
    fast_client: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="wastats.access"):
        given = fast_client.post(WEBHOOK, content=RAW, headers={**SIGNED, "X-Request-ID": "abc.1"})
        made = fast_client.post(WEBHOOK, content=RAW, headers={**SIGNED, "X-Request-ID": "bad id!"})
        refused = fast_client.post(WEBHOOK, content=RAW)
    assert given.headers["x-request-id"] == "abc.1"
    generated = made.headers["x-request-id"]
    assert generated != "bad id!"
    assert len(generated) == 32
    assert int(generated, 16) >= 0
    lines = [r for r in caplog.records if r.name == "wastats.access"]
    assert [
        (r.__dict__["route"], r.__dict__["status"], r.__dict__["request_id"]) for r in lines
    ] == [
        (WEBHOOK, 200, "abc.1"),
        (WEBHOOK, 200, generated),
        (WEBHOOK, 401, refused.headers["x-request-id"]),
    ]
    metrics = fast_client.get("/metrics").text
    assert (
        'wastats_http_requests_total{method="POST",route="/webhooks/whatsapp",status="200"} 2.0'
        in metrics
    )
    assert (
        'wastats_http_requests_total{method="POST",route="/webhooks/whatsapp",status="401"} 1.0'
        in metrics
    )
    assert 'wastats_http_request_duration_seconds_count{route="/webhooks/whatsapp"} 3.0' in metrics
    settle(fast_client)


def test_an_unexpected_error_is_a_problem_with_the_request_id_and_no_trace(
    fast_client: TestClient, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    ingest = fast_client.app.state.ctx.ingest  # type: ignore[attr-defined]

    async def broken(raw: bytes, headers: object = ()) -> None:
        raise RuntimeError("secret internals")

    monkeypatch.setattr(ingest, "accept", broken)
    with caplog.at_level(logging.ERROR):
        fast, framework = both_ways(
            fast_client, "POST", content=RAW, headers={**SIGNED, "X-Request-ID": "boom-1"}
        )
    assert fast.status_code == 500
    assert wire(fast) == wire(framework)
    assert b"secret internals" not in fast.content
    assert b"Traceback" not in fast.content
    errors = [r for r in caplog.records if r.getMessage().startswith("unexpected error")]
    assert errors
    assert all(r.__dict__["request_id"] == "boom-1" for r in errors)
    metrics = fast_client.get("/metrics").text
    assert (
        'wastats_http_requests_total{method="POST",route="/webhooks/whatsapp",status="500"} 2.0'
        in metrics
    )


def test_other_methods_still_reach_the_framework_route(fast_client: TestClient) -> None:
    # HEAD and the 405 of other methods come from the route FastAPI still has.
    put = fast_client.put(WEBHOOK, content=RAW)
    assert put.status_code == 405
    assert put.headers["x-request-id"]
