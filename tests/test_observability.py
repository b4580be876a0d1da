"""Operations through the real app, on SQLite and PostgreSQL: /metrics counts what really
happened, request ids, JSON logs without secrets, database errors from a database that is
really gone."""

from __future__ import annotations

import io
import json
import logging
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import APIRouter, FastAPI
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy.engine import make_url

from conftest import (
    APP_SECRET,
    SECRET_KEY,
    VERIFY_TOKEN,
    FakeClock,
    drop_postgres_database,
    make_settings,
)
from helpers import TEST_SEALER, add_number, bearer, create_tenant, get_token
from wastats.app import create_app
from wastats.logs import configure_logging
from wastats.settings import Settings
from wastats.store import inbox as inbox_repo
from wastats.store.db import Database
from wastats.whatsapp.signature import sign
from webhooks import DISPLAY, PHONE_NUMBER_ID, WEBHOOK, at, body, inbound, post, settle

TOKEN = "/api/settings/accessToken"
NUMBERS = "/api/whatsapp/getWhatsApp"
CUSTOMER = "16505551234"
GENERATED_ID = re.compile(r"[0-9a-f]{32}")

LabelKey = tuple[tuple[str, str], ...]


# --- helpers --------------------------------------------------------------------------------


class Scrape:
    """One /metrics answer, parsed with prometheus_client's own parser."""

    def __init__(self, text: str) -> None:
        self.samples: dict[str, dict[LabelKey, float]] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                key = tuple(sorted(sample.labels.items()))
                self.samples.setdefault(sample.name, {})[key] = sample.value

    def all(self, name: str) -> dict[LabelKey, float]:
        return self.samples.get(name, {})

    def value(self, name: str, **labels: str) -> float:
        return self.all(name)[tuple(sorted(labels.items()))]

    def by(self, name: str, label: str) -> dict[str, float]:
        return {dict(key)[label]: value for key, value in self.all(name).items()}


def scrape(client: TestClient, **headers: str) -> Scrape:
    response = client.get("/metrics", headers=headers)
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    return Scrape(response.text)


def requests_counted(s: Scrape) -> dict[tuple[str, str, str], float]:
    return {
        (labels["route"], labels["method"], labels["status"]): value
        for labels, value in ((dict(k), v) for k, v in s.all("wastats_http_requests_total").items())
    }


def records(output: io.StringIO) -> list[dict[str, Any]]:
    """The server's records. Every line must be one JSON object, tracebacks included."""
    parsed = [json.loads(line) for line in output.getvalue().splitlines()]
    # The test client (httpx2) logs the URLs it requests, in this same process.
    return [r for r in parsed if not r["logger"].startswith("httpx")]


def server_log(output: io.StringIO) -> str:
    return "\n".join(json.dumps(r) for r in records(output))


def access_records(output: io.StringIO) -> list[dict[str, Any]]:
    return [r for r in records(output) if r["logger"] == "wastats.access"]


@pytest.fixture
def log_output(settings: Settings) -> Iterator[io.StringIO]:
    """The process's logging as `wastats serve` configures it, written to a buffer."""
    output = io.StringIO()
    root = logging.getLogger()
    level = root.level
    handler = configure_logging(settings, stream=output)
    try:
        yield output
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


def probe_routes(app: FastAPI) -> None:
    """A route with a parameter under two nested routers' prefixes; `boom` fails unexpectedly."""
    outer = APIRouter(prefix="/probe")
    inner = APIRouter(prefix="/items")

    @inner.get("/{item}")
    async def item(item: str) -> dict[str, str]:
        if item == "boom":
            raise RuntimeError("kaput: internal detail")
        return {"item": item}

    outer.include_router(inner)
    app.include_router(outer)


# --- /metrics -------------------------------------------------------------------------------


def test_metrics_counts_real_traffic_by_route_template(
    client: TestClient, settings: Settings
) -> None:
    tenant = create_tenant(settings)
    add_number(settings, tenant, DISPLAY, PHONE_NUMBER_ID)
    token = get_token(client, tenant)
    assert client.get(NUMBERS, headers=bearer(token)).status_code == 200
    raw = body(inbound(CUSTOMER, at("2026-01-10 10:00")))
    assert post(client, raw) == 200
    assert post(client, raw) == 200  # Meta's retry of the same body
    assert post(client, b'{"hello": "world"}') == 200  # signed but not understood
    settle(client)
    assert post(client, raw, secret="not-the-app-secret") == 401
    assert client.get("/no/such/path/12345").status_code == 404

    s = scrape(client)
    # The scrape itself is counted once answered, so it is not in its own answer.
    assert requests_counted(s) == {
        (TOKEN, "POST", "200"): 1,
        (NUMBERS, "GET", "200"): 1,
        (WEBHOOK, "POST", "200"): 3,
        (WEBHOOK, "POST", "401"): 1,
        ("unmatched", "GET", "404"): 1,
    }
    assert s.by("wastats_http_request_duration_seconds_count", "route") == {
        TOKEN: 1,
        NUMBERS: 1,
        WEBHOOK: 4,
        "unmatched": 1,
    }
    assert s.by("wastats_webhook_bodies_total", "outcome") == {
        "accepted": 2,
        "duplicate": 1,
        "rejected": 1,
        "store_failed": 0,
    }
    assert s.by("wastats_events_counted_total", "kind") == {"inbound": 1, "status": 0}
    assert s.value("wastats_ingest_bodies_processed_total") == 2
    assert s.value("wastats_ingest_newest_event_timestamp_seconds") == at("2026-01-10 10:00")
    assert s.value("wastats_ingest_lag_seconds") == 0
    assert s.value("wastats_ingest_running") == 1
    assert s.value("wastats_database_errors_total") == 0
    assert s.value("wastats_ingest_store_errors_total") == 0
    assert s.value("wastats_ingest_process_errors_total") == 0

    again = scrape(client)
    assert requests_counted(again)[("/metrics", "GET", "200")] == 1


def test_metrics_is_not_in_the_openapi_schema(client: TestClient) -> None:
    assert "/metrics" not in client.get("/openapi.json").json()["paths"]


def test_metrics_speaks_openmetrics_when_asked(client: TestClient) -> None:
    response = client.get(
        "/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"}
    )
    assert response.headers["content-type"].startswith("application/openmetrics-text")
    assert response.text.rstrip().endswith("# EOF")


def test_route_label_is_the_template_under_nested_prefixes(app: FastAPI) -> None:
    probe_routes(app)
    with TestClient(app, raise_server_exceptions=False) as client:
        for item in ("one", "two", "three"):
            assert client.get(f"/probe/items/{item}").status_code == 200
        assert client.post("/probe/items/one").status_code == 405
        s = scrape(client)
    counted = requests_counted(s)
    assert counted[("/probe/items/{item}", "GET", "200")] == 3
    assert counted[("/probe/items/{item}", "POST", "405")] == 1
    assert not [key for key in counted if "one" in key[0] or "two" in key[0]]


def test_every_app_has_its_own_registry(settings: Settings, clock: FakeClock) -> None:
    first, second = create_app(settings, clock=clock), create_app(settings, clock=clock)
    try:
        assert TestClient(first).get("/nowhere").status_code == 404
        assert ("unmatched", "GET", "404") in requests_counted(scrape(TestClient(first)))
        assert requests_counted(scrape(TestClient(second))) == {}
    finally:
        first.state.ctx.db.dispose()
        second.state.ctx.db.dispose()


def test_ingest_lag_is_the_age_of_the_oldest_pending_body(
    app: FastAPI, settings: Settings, clock: FakeClock
) -> None:
    db = Database(settings.database_url)
    try:
        with db.write() as conn:
            inbox_repo.insert_bodies(
                conn,
                [
                    inbox_repo.NewBody(sha256=c * 64, body=b"{}", source="webhook", received_at=t)
                    for c, t in (("a", int(clock.now) - 120), ("b", int(clock.now) - 30))
                ],
                TEST_SEALER,
            )
    finally:
        db.dispose()
    # No lifespan (no `with`): the ingestion threads don't run, so the bodies stay pending.
    client = TestClient(app)
    try:
        s = scrape(client)
        assert s.value("wastats_ingest_lag_seconds") == 120
        assert s.value("wastats_ingest_running") == 0
        clock.advance(5)
        assert scrape(client).value("wastats_ingest_lag_seconds") == 125
    finally:
        app.state.ctx.db.dispose()


def test_database_errors_are_counted(
    request: pytest.FixtureRequest,
    database_url: str,
    tmp_path: Path,
    clock: FakeClock,
    log_output: io.StringIO,
) -> None:
    url = make_url(database_url)
    if url.get_backend_name() == "sqlite":
        # The database in a directory of its own, removed below: new connections fail with
        # "unable to open database file", as on a lost volume.
        home = tmp_path / "volume"
        home.mkdir()
        assert url.database
        shutil.copyfile(url.database, home / "wastats.db")
        database_url = f"sqlite:///{home / 'wastats.db'}"
    app = create_app(make_settings(database_url), clock=clock)
    with TestClient(app, raise_server_exceptions=False) as client:
        assert scrape(client).value("wastats_database_errors_total") == 0
        if url.get_backend_name() == "sqlite":
            shutil.rmtree(home)
            # Close the pooled connections (to the now unlinked file), as a restart of the
            # database would: the next request has to open the file again.
            app.state.ctx.db.dispose()
        else:
            # Terminates every connection; reconnecting finds no database.
            drop_postgres_database(request.getfixturevalue("pg_cluster"), str(url.database))
        answer = client.post(
            TOKEN,
            json={"client_id": "c", "client_secret": "s"},
            headers={"X-Request-ID": "db-down-1"},
        )
        assert answer.status_code == 503
        assert answer.headers["x-request-id"] == "db-down-1"
        assert answer.json()["detail"] == "the database is unavailable; retry later"
        s = scrape(client)
    # One for the request, one for this scrape's own query, which is left out of the answer.
    assert s.value("wastats_database_errors_total") == 2
    assert "wastats_ingest_lag_seconds" not in s.samples
    assert requests_counted(s)[(TOKEN, "POST", "503")] == 1
    [error] = [r for r in records(log_output) if r["message"].startswith("database error on")]
    assert error["request_id"] == "db-down-1"
    assert error["level"] == "ERROR"


# --- request ids ----------------------------------------------------------------------------


@pytest.mark.parametrize("given", ["abc", "Req-1.2_3", "x" * 64, "0"])
def test_a_valid_request_id_is_echoed(client: TestClient, given: str) -> None:
    response = client.get("/healthz", headers={"X-Request-ID": given})
    assert response.headers["x-request-id"] == given


@pytest.mark.parametrize(
    "given", ["x" * 65, "has space", "semi;colon", "a/b", "", "caf\xe9", "{json}"]
)
def test_an_invalid_request_id_is_replaced(client: TestClient, given: str) -> None:
    response = client.get("/healthz", headers={"X-Request-ID": given.encode("latin-1")})
    assert GENERATED_ID.fullmatch(response.headers["x-request-id"])
    assert response.headers["x-request-id"] != given


def test_a_request_id_is_generated_for_every_response(client: TestClient) -> None:
    responses = [
        client.get("/healthz"),
        client.get("/healthz"),
        client.get("/no/such/path"),  # 404
        client.post(WEBHOOK, content=b"{}"),  # 401, no signature
        client.get(f"{TOKEN}"),  # the compatible API's in-band wrong-method answer
    ]
    ids = [r.headers["x-request-id"] for r in responses]
    assert all(GENERATED_ID.fullmatch(i) for i in ids)
    assert len(set(ids)) == len(ids)


def test_an_unexpected_error_keeps_its_request_id_and_hides_the_traceback(
    app: FastAPI, log_output: io.StringIO
) -> None:
    probe_routes(app)
    with TestClient(app, raise_server_exceptions=False) as client:
        response = client.get("/probe/items/boom", headers={"X-Request-ID": "trace-500"})
        s = scrape(client)
    assert response.status_code == 500
    assert response.headers["x-request-id"] == "trace-500"
    assert "kaput" not in response.text
    assert "Traceback" not in response.text
    assert requests_counted(s)[("/probe/items/{item}", "GET", "500")] == 1
    [error] = [r for r in records(log_output) if r["message"].startswith("unexpected error")]
    assert error["request_id"] == "trace-500"
    assert error["exc"].startswith("Traceback")
    assert "RuntimeError: kaput: internal detail" in error["exc"]
    [access] = [r for r in access_records(log_output) if r["path"] == "/probe/items/boom"]
    assert (access["status"], access["route"], access["request_id"]) == (
        500,
        "/probe/items/{item}",
        "trace-500",
    )


# --- logs -----------------------------------------------------------------------------------


def test_access_log_record(client: TestClient, log_output: io.StringIO) -> None:
    client.get(
        "/healthz", params={"hub.verify_token": "in-the-query"}, headers={"X-Request-ID": "r1"}
    )
    [access] = access_records(log_output)
    assert set(access) == {
        "ts",
        "level",
        "logger",
        "message",
        "method",
        "route",
        "path",
        "status",
        "duration_ms",
        "client_ip",
        "request_id",
    }
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", access["ts"])
    assert access["level"] == "INFO"
    assert access["message"].startswith("GET /healthz 200 ")
    assert (access["method"], access["route"], access["path"], access["status"]) == (
        "GET",
        "/healthz",
        "/healthz",
        200,
    )
    assert isinstance(access["duration_ms"], float)
    assert access["duration_ms"] >= 0
    assert access["client_ip"] == "testclient"
    assert access["request_id"] == "r1"
    assert "in-the-query" not in server_log(log_output)


def test_a_log_inside_a_request_carries_its_request_id(
    database_url: str, clock: FakeClock, log_output: io.StringIO
) -> None:
    # Without the app secret the webhook handler logs an error while serving the request.
    app = create_app(make_settings(database_url, meta_app_secret=None), clock=clock)
    with TestClient(app) as client:
        response = client.post(WEBHOOK, content=b"{}")
    assert response.status_code == 503
    request_id = response.headers["x-request-id"]
    [refusal] = [r for r in records(log_output) if r["logger"] == "wastats.api.webhooks"]
    assert refusal["level"] == "ERROR"
    assert refusal["request_id"] == request_id
    [access] = access_records(log_output)
    assert access["request_id"] == request_id
    # Outside a request there is no request id.
    logging.getLogger("wastats.test").warning("between requests")
    assert "request_id" not in records(log_output)[-1]


def test_logs_never_contain_credentials_or_bodies(
    client: TestClient, settings: Settings, log_output: io.StringIO
) -> None:
    tenant = create_tenant(settings)
    add_number(settings, tenant, DISPLAY, PHONE_NUMBER_ID)
    token = get_token(client, tenant)
    assert client.get(NUMBERS, headers=bearer(token)).status_code == 200
    assert client.get(NUMBERS, headers=bearer("forged-token-0123456789")).status_code == 200
    wrong = client.post(TOKEN, json={"client_id": tenant.client_id, "client_secret": "guess-42"})
    assert wrong.json()["reason"] == 2
    raw = body(inbound(CUSTOMER, at("2026-01-10 10:00")))
    signature = sign(APP_SECRET.encode(), raw)
    assert post(client, raw) == 200
    handshake = {"hub.mode": "subscribe", "hub.verify_token": VERIFY_TOKEN, "hub.challenge": "7"}
    assert client.get(WEBHOOK, params=handshake).text == "7"
    settle(client)

    output = server_log(log_output)
    assert len(access_records(log_output)) == 6
    for secret in (
        tenant.client_secret,
        token,
        "forged-token-0123456789",
        "guess-42",
        "Bearer",
        APP_SECRET,
        VERIFY_TOKEN,
        SECRET_KEY,
        signature,
        CUSTOMER,
    ):
        assert secret not in output, secret


def test_json_format_of_extras_exceptions_and_masked_fields(
    settings: Settings, log_output: io.StringIO
) -> None:
    logger = logging.getLogger("wastats.test")
    logger.info("imported %d bodies", 3, extra={"file": Path("x.ndjson"), "bodies": 3})
    logger.info("careless", extra={"authorization": "Bearer abc", "client_secret": "s3"})
    try:
        _ = 1 / 0
    except ZeroDivisionError:
        logger.exception("failed")
    imported, careless, failed = records(log_output)[-3:]
    assert imported["message"] == "imported 3 bodies"
    assert (imported["file"], imported["bodies"]) == ("x.ndjson", 3)
    assert careless["authorization"] == careless["client_secret"] == "[redacted]"
    assert "Bearer abc" not in server_log(log_output)
    assert '"s3"' not in server_log(log_output)
    assert failed["level"] == "ERROR"
    assert "ZeroDivisionError: division by zero" in failed["exc"]


def test_text_format(client: TestClient, database_url: str) -> None:
    output = io.StringIO()
    root = logging.getLogger()
    level = root.level
    handler = configure_logging(make_settings(database_url, log_format="text"), stream=output)
    try:
        client.get("/healthz", headers={"X-Request-ID": "text-1"})
    finally:
        root.removeHandler(handler)
        root.setLevel(level)
    [line] = [ln for ln in output.getvalue().splitlines() if "wastats.access" in ln]
    assert re.fullmatch(
        r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z INFO wastats\.access: "
        r"GET /healthz 200 \d+\.\dms \[request_id=text-1\]",
        line,
    )


def test_configure_logging_replaces_its_own_handler_only(settings: Settings) -> None:
    root = logging.getLogger()
    level = root.level
    others = list(root.handlers)
    first = configure_logging(settings, stream=io.StringIO())
    second = configure_logging(settings, stream=io.StringIO())
    try:
        assert first not in root.handlers
        assert root.handlers == [*others, second]
        assert root.level == logging.INFO
        assert logging.getLogger("uvicorn.error").propagate
    finally:
        root.removeHandler(second)
        root.setLevel(level)


def test_a_real_serve_process_logs_each_request_once_and_never_the_query(
    database_url: str, tmp_path: Path
) -> None:
    """Issue 11, item 1: uvicorn's own access logger re-enabled by `configure_logging` wrote a
    second line per request, with the query string, so the handshake's verify token was in the
    log of every `wastats serve`."""
    from procs import Server

    server = Server(
        database_url,
        tmp_path / "served",
        env_extra={
            "WASTATS_LOG_LEVEL": "INFO",
            "WASTATS_LOG_FORMAT": "json",
            "WASTATS_META_VERIFY_TOKEN": VERIFY_TOKEN,
        },
    )
    server.start()
    try:
        handshake = httpx.get(
            f"{server.url}/webhooks/whatsapp",
            params={
                "hub.mode": "subscribe",
                "hub.verify_token": VERIFY_TOKEN,
                "hub.challenge": "4242",
            },
            headers={"X-Request-ID": "handshake-1"},
            timeout=15.0,
        )
        assert (handshake.status_code, handshake.text) == (200, "4242")
    finally:
        server.stop()
    log = server.logs()
    assert VERIFY_TOKEN not in log
    assert "hub.challenge" not in log
    assert "4242" not in log
    lines = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
    mentions = [line for line in lines if "/webhooks/whatsapp" in json.dumps(line)]
    [access] = mentions  # one line for the request, from our access log only
    assert access["logger"] == "wastats.access"
    assert (access["path"], access["status"], access["request_id"]) == (
        "/webhooks/whatsapp",
        200,
        "handshake-1",
    )
