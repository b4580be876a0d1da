"""Failures from outside: a process killed mid-stream, the database going away, a brute-force
attack on the token endpoint, and garbage on every endpoint that parses a body.

The first two run real `wastats serve` processes (`procs.py`); the others the in-process app.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Protocol

import httpx
import psycopg
import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from sqlalchemy import text

from conftest import (
    APP_SECRET,
    FIXTURES,
    FakeClock,
    drop_postgres_database,
    make_settings,
    new_postgres_database,
)
from helpers import TEST_SEALER, Tenant, add_number, bearer, create_tenant, get_token
from live import live_server
from pgcluster import PostgresCluster
from procs import (
    NUMBERS,
    ZONE,
    Delivery,
    Server,
    expected_months,
    generate_events,
    months_of,
    pack,
    post_webhook,
    run_cli,
    statistics,
    token,
)
from wastats.app import create_app
from wastats.settings import Settings
from wastats.store.db import SQLITE_WAL_AUTOCHECKPOINT_PAGES, Database
from wastats.whatsapp.signature import sign
from webhooks import PHONE_NUMBER_ID, WEBHOOK, at, post, settle
from webhooks import body as body_of
from webhooks import inbound as webhook_inbound
from webhooks import status as webhook_status


def register(database_url: str) -> Tenant:
    settings_ = make_settings(database_url)
    tenant = create_tenant(settings_, "Failures", ZONE)
    for phone_number_id, digits in NUMBERS.items():
        add_number(settings_, tenant, digits, phone_number_id)
    return tenant


def inbox_rows(database_url: str) -> list[tuple[bytes, str]]:
    """(body, state) of every inbox row, read straight from the database (and opened: bodies
    are sealed at rest with the key the servers derive from the test secret key)."""
    db = Database(database_url, pool_size=1)
    try:
        with db.read() as conn:
            rows = conn.execute(
                text(
                    "SELECT body, body_key, body_sha256, state "
                    "FROM inbox JOIN inbox_bodies USING (id) ORDER BY id"
                )
            ).all()
        return [
            (TEST_SEALER.open(bytes(body), key_id, sha), str(state))
            for body, key_id, sha, state in rows
        ]
    finally:
        db.dispose()


def events_of(deliveries: list[Delivery]) -> list[Any]:
    return [e for d in deliveries for e in d.events]


def assert_counts(server: Server, tenant: Tenant, deliveries: list[Delivery]) -> None:
    """The service's statistics equal the reference over the events of `deliveries`."""
    access = token(server.url, tenant.client_id, tenant.client_secret)
    assert months_of(statistics(server.url, access)) == expected_months(events_of(deliveries))


def assert_recount_finds_nothing(database_url: str, cwd: Path) -> None:
    recount = run_cli(["recount"], database_url, cwd)
    assert recount.returncode == 0, recount.stdout + recount.stderr
    assert "No difference" in recount.stdout, recount.stdout


# --- kill -9 mid-stream --------------------------------------------------------------------------


def test_kill_9_mid_stream_loses_no_acknowledged_body(database_url: str, tmp_path: Path) -> None:
    seed = 9
    deliveries = pack(generate_events(seed, 600), seed)
    by_raw = {d.raw: d for d in deliveries}
    assert len(by_raw) == len(deliveries)
    tenant = register(database_url)
    # Two workers on PostgreSQL: the kill must take the supervisor and both workers down.
    workers = 1 if database_url.startswith("sqlite") else 2
    server = Server(database_url, tmp_path / "serve", workers=workers).start()
    try:
        acked: set[int] = set()
        refused: dict[int, int] = {}
        progress = threading.Condition()
        stop = threading.Event()
        indexes = iter(range(len(deliveries)))
        url = server.url  # the first run's port: a restart listens elsewhere

        finished: list[int] = []

        def sender() -> None:
            try:
                send_until_stopped()
            finally:
                with progress:
                    finished.append(1)
                    progress.notify_all()

        def send_until_stopped() -> None:
            with httpx.Client(base_url=url, timeout=30.0) as http:
                while not stop.is_set():
                    with progress:
                        i = next(indexes, None)
                    if i is None:
                        return
                    try:
                        code: int | None = post_webhook(http, deliveries[i].raw)
                    except httpx.TransportError:
                        code = None  # no answer: may or may not have been stored
                    with progress:
                        if code == 200:
                            acked.add(i)
                            progress.notify_all()
                        elif code is not None:
                            refused[i] = code

        senders = [threading.Thread(target=sender, daemon=True) for _ in range(4)]
        for thread in senders:
            thread.start()
        with progress:
            progress.wait_for(lambda: len(acked) >= 40 or len(finished) == 4, timeout=120)
            assert len(acked) >= 40, (
                f"{len(acked)} acknowledged; refused: {refused}\n{server.logs()}"
            )
        server.kill()  # while the four clients are still sending
        stop.set()
        for thread in senders:
            thread.join(60)
            assert not thread.is_alive()
        assert not refused, f"answered, but not 200: {refused}"
        assert len(acked) < len(deliveries), "the kill must come before the stream ends"

        server.start()  # same database; the start-up sweep counts what was left pending
        health = server.wait_no_pending()
        rows = inbox_rows(database_url)
        stored = {body for body, _ in rows}
        assert {state for _, state in rows} <= {"processed"}, health
        assert stored <= by_raw.keys(), "the inbox holds only bodies that were sent"
        lost = [i for i in acked if deliveries[i].raw not in stored]
        assert not lost, f"acknowledged with 200 but not stored: {sorted(lost)}"
        assert_counts(server, tenant, [by_raw[raw] for raw in stored])

        # Meta retries what got no 200: then everything is counted, each event once.
        with httpx.Client(base_url=server.url, timeout=30.0) as http:
            for delivery in deliveries:
                if delivery.raw not in stored:
                    assert post_webhook(http, delivery.raw) == 200
        server.wait_no_pending()
        assert len(inbox_rows(database_url)) == len(deliveries)
        assert_counts(server, tenant, deliveries)
        server.stop()
        assert_recount_finds_nothing(database_url, tmp_path)
    finally:
        server.stop()


# --- the database goes away ----------------------------------------------------------------------


def ensure_cluster_up(cluster: PostgresCluster) -> None:
    """The cluster is shared by the whole session: leave it running, whatever happened."""
    try:
        with psycopg.connect(cluster.url().replace("+psycopg", ""), connect_timeout=10) as conn:
            conn.execute("SELECT 1")
    except psycopg.OperationalError:
        cluster.resume()


@pytest.mark.postgres
def test_database_outage_is_503_then_recovers_without_restart(
    pg_cluster: PostgresCluster, tmp_path: Path
) -> None:
    seed = 17
    deliveries = pack(generate_events(seed, 90), seed)
    before, during, after = deliveries[:10], deliveries[10:20], deliveries[20:30]
    assert after
    name = new_postgres_database(pg_cluster)
    url = pg_cluster.url(name)
    server = Server(url, tmp_path / "serve")
    try:
        tenant = register(url)
        server.start()
        with httpx.Client(base_url=server.url, timeout=30.0) as http:
            for delivery in before:
                assert post_webhook(http, delivery.raw) == 200
        server.wait_no_pending()

        pg_cluster.stop("fast")
        try:
            # A bounded answer, not a hang: the timeout turns a hang into a failure.
            with httpx.Client(base_url=server.url, timeout=30.0) as http:
                for delivery in during:
                    assert post_webhook(http, delivery.raw) == 503
                health = http.get("/healthz")
                assert health.status_code == 503, health.text
                assert health.json()["database"] == "unreachable"
        finally:
            ensure_cluster_up(pg_cluster)

        server.wait_healthy(60)  # recovers by itself: same process, same pool
        with httpx.Client(base_url=server.url, timeout=30.0) as http:
            for delivery in after:
                assert post_webhook(http, delivery.raw) == 200
            server.wait_no_pending()
            stored = {body for body, _ in inbox_rows(url)}
            assert stored == {d.raw for d in before + after}, "a 503'd body must not be stored"
            assert_counts(server, tenant, before + after)
            # Meta retries the 503s: counted once, like the others.
            for delivery in during:
                assert post_webhook(http, delivery.raw) == 200
        server.wait_no_pending()
        rows = inbox_rows(url)
        assert len(rows) == 30
        assert {state for _, state in rows} == {"processed"}
        assert_counts(server, tenant, deliveries[:30])
    finally:
        server.stop()
        ensure_cluster_up(pg_cluster)
        drop_postgres_database(pg_cluster, name)


# --- brute force on the token endpoint -----------------------------------------------------------

TOKEN_PATH = "/api/settings/accessToken"
LOCKED = {
    "status": "FAIL",
    "reason": 3,
    "message": "too many failed attempts from this address for this client id; try again in "
    "10 minutes",
}


def test_brute_force_locks_the_address_at_the_threshold_even_when_concurrent(
    database_url: str,
) -> None:
    threshold = 6
    config = make_settings(
        database_url, lockout_threshold=threshold, lockout_seconds=600, forwarded_allow_ips="*"
    )
    tenant = create_tenant(config)
    good = {"client_id": tenant.client_id, "client_secret": tenant.client_secret}
    bad = {"client_id": tenant.client_id, "client_secret": "guess"}
    app = create_app(config, clock=FakeClock())
    with live_server(app) as base, httpx.Client(base_url=base, timeout=30.0) as http:

        def attempt(body: dict[str, str], ip: str) -> dict[str, Any]:
            answer = http.post(TOKEN_PATH, json=body, headers={"X-Forwarded-For": ip})
            assert answer.status_code == 200
            return dict(answer.json())

        def concurrently(body: dict[str, str], ip: str, n: int) -> list[dict[str, Any]]:
            start = threading.Barrier(n)

            def one(_: int) -> dict[str, Any]:
                start.wait(30)
                return attempt(body, ip)

            with ThreadPoolExecutor(n) as pool:
                return list(pool.map(one, range(n)))

        # Many guesses from one address: the threshold-th locks it, even for the right secret.
        attacker = "203.0.113.7"
        reasons = [attempt(bad, attacker)["reason"] for _ in range(threshold + 4)]
        assert reasons == [2] * threshold + [3] * 4
        assert attempt(good, attacker) == LOCKED
        # Only that client id is blocked from there: other tenants behind the address are not.
        assert attempt({"client_id": "nobody", "client_secret": "x"}, attacker)["reason"] == 2
        # Another address is not affected.
        assert attempt(good, "198.51.100.9")["status"] == "OK"

        # `threshold` failures at once from several threads: every one is counted.
        burst = concurrently(bad, "203.0.113.50", threshold)
        assert [a["reason"] for a in burst] == [2] * threshold
        assert attempt(good, "203.0.113.50") == LOCKED
        # One fewer does not lock.
        burst = concurrently(bad, "203.0.113.51", threshold - 1)
        assert [a["reason"] for a in burst] == [2] * (threshold - 1)
        assert attempt(good, "203.0.113.51")["status"] == "OK"
        # Far more at once than the threshold: locked all the same.
        burst = concurrently(bad, "203.0.113.52", 3 * threshold)
        assert {a["reason"] for a in burst} <= {2, 3}
        assert attempt(good, "203.0.113.52") == LOCKED


# --- fuzz: the webhook endpoint ------------------------------------------------------------------

FIXTURE_DOCUMENTS = [json.loads(p.read_bytes()) for p in sorted(FIXTURES.glob("*.json"))]

# Numbers as strings, non-ASCII digits, NUL, lone surrogates (valid JSON escapes, not valid
# Unicode), and words the parser looks for.
ODD_STRINGS = ["", "-1", "0", "1e10", "99999999999999999999", "1735689600", "NaN", "1.5", " 17",
               "\u0661\u0662\u0663", "\u0000", "a\u0000b", "\ud800", "x\udfff", "sent",
               "delivered", "PMP", "CBP", "marketing"]  # fmt: skip
json_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
    | st.sampled_from(ODD_STRINGS)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=10), inner, max_size=3)
    ),
    max_leaves=8,
)


def to_json(value: Any, *, ascii_only: bool = True) -> bytes:
    # surrogatepass: a lone surrogate written raw is invalid UTF-8, garbage worth sending too.
    return json.dumps(value, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass")


def _slots(node: Any) -> Iterator[tuple[Any, Any]]:
    """Every (container, key or index) in a JSON document."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield node, key
            yield from _slots(value)
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield node, index
            yield from _slots(value)


@st.composite
def mutated_fixtures(draw: st.DrawFn) -> bytes:
    """A real webhook payload with a few values replaced or removed, or bytes garbled."""
    document = copy.deepcopy(draw(st.sampled_from(FIXTURE_DOCUMENTS)))
    for _ in range(draw(st.integers(1, 3))):
        slots = list(_slots(document))
        if not slots:
            break
        parent, key = draw(st.sampled_from(slots))
        if draw(st.booleans()):
            parent[key] = draw(json_values)
        else:
            del parent[key]
    raw = to_json(document, ascii_only=draw(st.booleans()))
    if draw(st.integers(0, 4)) == 0 and raw:
        at = draw(st.integers(0, len(raw) - 1))
        raw = raw[:at] + draw(st.binary(min_size=1, max_size=3)) + raw[at + 1 :]
    return raw


webhook_bodies = st.one_of(st.binary(max_size=300), json_values.map(to_json), mutated_fixtures())


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(raw=webhook_bodies)
@example(raw=b"")
@example(raw=b"\xff\xfe")
@example(
    raw=b'{"object": "whatsapp_business_account", "entry": [{"changes": [{"value": "\\ud800"}]}]}'
)
def test_fuzz_signed_webhooks_are_always_stored_never_5xx(
    client: TestClient, settings: Settings, raw: bytes
) -> None:
    # A NUL on PostgreSQL is a known bug, pinned by test_nul_in_a_webhook_* below.
    signature = sign(APP_SECRET.encode(), raw)
    response = client.post(WEBHOOK, content=raw, headers={"X-Hub-Signature-256": signature})
    assert response.status_code == 200, response.text
    # Wrongly signed, or signed and then changed: 401, whatever the body.
    wrong = sign(b"another-secret", raw)
    response = client.post(WEBHOOK, content=raw, headers={"X-Hub-Signature-256": wrong})
    assert response.status_code == 401
    tampered = raw + b" "
    response = client.post(WEBHOOK, content=tampered, headers={"X-Hub-Signature-256": signature})
    assert response.status_code == 401
    settle(client)
    state, reason = inbox_row(client, raw)
    assert inbox_row(client, tampered) is None, "a 401 stores nothing"
    # Garbage is kept as rejected with the parser's reason; it never breaks the counting itself.
    assert state in ("processed", "rejected")
    assert not (reason or "").startswith("internal error"), reason


def inbox_row(client: TestClient, raw: bytes) -> Any:
    """(state, reason) of the inbox row of this body, or None."""
    db: Database = client.app.state.ctx.db  # type: ignore[attr-defined]
    with db.read() as conn:
        return conn.execute(
            text("SELECT state, reason FROM inbox WHERE body_sha256 = :sha"),
            {"sha": hashlib.sha256(raw).hexdigest()},
        ).one_or_none()


@pytest.mark.parametrize(
    "where", ["pricing category", "conversation id", "status", "an unknown key"]
)
def test_nul_in_a_webhook_does_not_lose_the_bodys_other_events(
    request: pytest.FixtureRequest,
    client: TestClient,
    settings: Settings,
    where: str,
) -> None:
    tenant = create_tenant(settings, "Nul", "UTC")
    add_number(settings, tenant, "15550783881", PHONE_NUMBER_ID)
    valid = webhook_inbound("972501111111", at("2025-08-10 10:00"))
    odd = webhook_status("wamid.x", "delivered", at("2025-08-10 11:00"),
                         pricing=("PMP", "marketing", "regular"))  # fmt: skip
    entry = odd["statuses"][0]
    if where == "pricing category":
        entry["pricing"]["category"] = "market\u0000ing"
    elif where == "conversation id":
        entry["conversation"] = {"id": "conv\u00001"}
    elif where == "status":
        entry["status"] = "deliv\u0000ered"
    else:
        entry["\u0000"] = "?"
    raw = body_of(valid, odd)
    assert post(client, raw) == 200
    settle(client)
    _, reason = inbox_row(client, raw)
    assert not (reason or "").startswith("internal error"), reason
    answer = client.get(STATS_PATH, headers=bearer(get_token(client, tenant))).json()
    # The customer's message in the same body is counted whatever its neighbour holds.
    assert [(m["monthYear"], m["totalIncoming"]) for m in answer["list"]] == [("082025", 1)]


def test_nul_in_the_reason_of_a_rejected_body_is_kept_as_that_reason(client: TestClient) -> None:
    # The parser's reason quotes the unknown key, NUL included; PostgreSQL text refuses NUL.
    raw = b'{"\\u0000": 1}'
    assert post(client, raw) == 200
    settle(client)
    state, reason = inbox_row(client, raw)
    assert state == "rejected"
    assert reason.startswith("$: not a WhatsApp webhook body"), reason


# --- fuzz: the compatible API's body parsing -----------------------------------------------------

STATS_PATH = "/api/whatsapp/getConversationsStatistics"
TOKEN_REASONS = {1, 2, 3, 13}
STATS_REASONS = {1, 2, 3, 4, 13, 27, 40, 41, 42}


def _keyed(keys: list[str]) -> st.SearchStrategy[bytes]:
    """JSON objects with the endpoint's own keys holding anything, other JSON, raw bytes."""
    values = st.one_of(json_values, st.text(max_size=20), st.sampled_from(["", "012025", "132025"]))
    objects = st.dictionaries(st.sampled_from([*keys, "other"]), values, max_size=4)
    return st.one_of(objects.map(to_json), json_values.map(to_json), st.binary(max_size=100))


class Answer(Protocol):
    """A response of httpx or of the TestClient (which may use another httpx)."""

    @property
    def status_code(self) -> int: ...
    @property
    def text(self) -> str: ...
    def json(self) -> Any: ...


def assert_in_band(response: Answer, reasons: set[int]) -> dict[str, Any]:
    assert response.status_code == 200, response.text
    assert "Traceback" not in response.text
    answer = response.json()
    assert answer["status"] in ("OK", "FAIL"), answer
    assert answer["reason"] in reasons, answer
    assert (answer["status"] == "OK") == (answer["reason"] == 1), answer
    if answer["status"] == "FAIL":
        assert isinstance(answer["message"], str), answer
        assert "\n" not in answer["message"], answer
    return dict(answer)


@pytest.fixture
def stats_token(client: TestClient, settings: Settings) -> str:
    tenant = create_tenant(settings, "Fuzz", ZONE)
    add_number(settings, tenant, "15550783881", PHONE_NUMBER_ID)
    return get_token(client, tenant)


@settings(
    max_examples=80,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    raw=_keyed(["start_date", "end_date", "whatsapp"]),
    query=st.dictionaries(
        st.sampled_from(["start_date", "end_date", "whatsapp"]), st.text(max_size=16), max_size=3
    ),
)
@example(raw=b'{"whatsapp": "\\u0661\\u0662\\u0663\\u0664\\u0665\\u0666\\u0667\\u0668"}', query={})
@example(raw=b'{"start_date": "\\ud800", "whatsapp": "\\u0000"}', query={})
def test_fuzz_statistics_bodies_are_answered_in_band(
    client: TestClient, stats_token: str, raw: bytes, query: dict[str, str]
) -> None:
    response = client.request(
        "GET", STATS_PATH, content=raw, params=query, headers=bearer(stats_token)
    )
    assert_in_band(response, STATS_REASONS)


@settings(
    max_examples=80,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(raw=_keyed(["client_id", "client_secret"]))
def test_fuzz_access_token_bodies_are_answered_in_band(
    client: TestClient, settings: Settings, raw: bytes
) -> None:
    assert_in_band(client.post(TOKEN_PATH, content=raw), TOKEN_REASONS)


@pytest.mark.parametrize(
    ("raw", "bug"),
    [
        (b'{"client_id": "\\u0000", "client_secret": "x"}', "nul"),
        (b'{"client_id": "abc\\u0000def", "client_secret": "guess"}', "nul"),
        (b'{"client_id": "\\ud800", "client_secret": "x"}', "surrogate"),
        (b'{"client_id": "abc", "client_secret": "\\udfff"}', "surrogate"),
    ],
)
def test_odd_characters_in_credentials_are_wrong_credentials(
    request: pytest.FixtureRequest, client: TestClient, settings: Settings, raw: bytes, bug: str
) -> None:
    answer = assert_in_band(client.post(TOKEN_PATH, content=raw), TOKEN_REASONS)
    assert answer["reason"] == 2


def test_sqlite_commits_reach_the_disk_before_they_return(tmp_path: Path) -> None:
    # Durable before 200 means a power loss too, not only a crash of the process: every
    # connection wastats opens on SQLite fsyncs its commits (synchronous=FULL is 2; WAL's
    # usual NORMAL, 1, may lose the last commits on a power loss).
    db = Database(f"sqlite:///{tmp_path / 'w.db'}", pool_size=2)
    try:
        with db.write() as writer, db.read() as reader:
            for conn in (writer, reader):
                assert conn.execute(text("PRAGMA synchronous")).scalar() == 2
                assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"
                # Every connection, or the one left at SQLite's 1,000 would checkpoint after
                # each of the others' large commits (the inbox writer, on the webhook's path).
                checkpoint_at = conn.execute(text("PRAGMA wal_autocheckpoint")).scalar()
                assert checkpoint_at == SQLITE_WAL_AUTOCHECKPOINT_PAGES
    finally:
        db.dispose()


@pytest.mark.postgres
def test_a_start_waits_for_a_database_that_is_not_there_yet(
    pg_cluster: PostgresCluster, caplog: pytest.LogCaptureFixture
) -> None:
    # In compose the database may be a moment behind the service (its name not resolving yet):
    # the start keeps trying for a while instead of exiting at the first refusal.
    name = f"late_{uuid.uuid4().hex[:12]}"
    app = create_app(make_settings(pg_cluster.url(name)), clock=FakeClock())
    answers: list[int] = []

    def start() -> None:
        with TestClient(app) as client:
            answers.append(client.get("/healthz").status_code)

    caplog.set_level(logging.WARNING, "wastats")
    starting = threading.Thread(target=start)
    starting.start()
    deadline = time.monotonic() + 30
    while not any("cannot be reached yet" in r.getMessage() for r in caplog.records):
        assert time.monotonic() < deadline, "no 'waiting for the database' warning"
        assert starting.is_alive(), "the start gave up at once"
        starting.join(0.05)
    with psycopg.connect(pg_cluster.url().replace("+psycopg", ""), autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}" TEMPLATE wastats_template')
    try:
        starting.join(30)
        assert not starting.is_alive()
        assert answers == [200]
    finally:
        drop_postgres_database(pg_cluster, name)
