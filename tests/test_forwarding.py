"""Forwarding to the customer's consumer, in-process: the real app (its delivery worker
running), real SQLite and PostgreSQL, and real HTTP destinations on 127.0.0.1
(`forward_servers`). The app's clock is the test's `FakeClock`, so retries and the 7-day window
are reached by moving it, never by waiting; waits are bounded polls of what the destination
received or the database holds."""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import json
import math
import random
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from hypothesis import given
from hypothesis import settings as settings_
from hypothesis import strategies as st
from sqlalchemy import select, update
from typer.testing import CliRunner

from conftest import APP_SECRET, FIXTURES, VERIFY_TOKEN, FakeClock, make_settings
from forward_servers import Destination
from helpers import TEST_SEALER, add_number, create_tenant, store_bodies
from wastats.app import create_app
from wastats.cli import app as cli
from wastats.forward.match import AcceptedBody, ForwardQueue, Handoff, addresses
from wastats.forward.service import Forwarding, forwarding_of
from wastats.forward.worker import RetryPolicy
from wastats.settings import Settings
from wastats.store import forwarding as store
from wastats.store import inbox as inbox_repo
from wastats.store.db import Database
from wastats.store.schema import forward_deliveries, inbox
from wastats.whatsapp.signature import sign
from webhooks import WEBHOOK, envelope, inbound, settle, status

runner = CliRunner()
DAY = 86400
ALL_STATES = (inbox_repo.PENDING, inbox_repo.PROCESSED, inbox_repo.REJECTED)


def poll(condition: Callable[[], bool], timeout: float = 30.0) -> bool:
    """Check `condition` until it holds or `timeout` passes (a bounded poll, not a sleep)."""
    deadline = time.monotonic() + timeout
    pause = threading.Event()
    while time.monotonic() < deadline:
        if condition():
            return True
        pause.wait(0.02)
    return condition()


def forward_cli(database_url: str, *args: str, **env: str) -> tuple[int, str, str]:
    result = runner.invoke(
        cli, ["forward", *args], env={"WASTATS_DATABASE_URL": database_url, **env}
    )
    return result.exit_code, result.stdout, result.stderr


def add_destination(database_url: str, url: str, *scope: str) -> int:
    code, out, err = forward_cli(database_url, "add", "--url", url, *scope)
    assert code == 0, err
    return int(out.split(":")[0].removeprefix("Destination "))


def meta_headers(raw: bytes) -> dict[str, str]:
    """The headers Meta sends with a body."""
    sha1 = hmac.new(APP_SECRET.encode(), raw, hashlib.sha1).hexdigest()
    return {
        "Content-Type": "application/json",
        "X-Hub-Signature-256": sign(APP_SECRET.encode(), raw),
        "X-Hub-Signature": f"sha1={sha1}",
    }


def send(client: TestClient, raw: bytes) -> None:
    response = client.post(WEBHOOK, content=raw, headers=meta_headers(raw))
    assert response.status_code == 200, response.text


@pytest.fixture
def make_app(settings: Settings, clock: FakeClock) -> Callable[..., FastAPI]:
    def build(**overrides: Any) -> FastAPI:
        app = create_app(make_settings(settings.database_url, **overrides), clock=clock)
        forwarding = forwarding_of(app.state.ctx.extras)
        assert forwarding is not None
        # Retries become due when the test moves the clock: look for them often.
        forwarding.worker.poll_seconds = 0.02
        return app

    return build


@pytest.fixture
def recorder() -> Iterator[Destination]:
    with Destination() as destination:
        yield destination


def forwarding(client: TestClient) -> Forwarding:
    found = forwarding_of(client.app.state.ctx.extras)  # type: ignore[attr-defined]
    assert found is not None
    return found


def deliveries(database_url: str) -> list[dict[str, Any]]:
    db = Database(database_url)
    try:
        with db.read() as conn:
            rows = conn.execute(select(forward_deliveries).order_by(forward_deliveries.c.id))
            return [dict(r._mapping) for r in rows]
    finally:
        db.dispose()


def bodies_of(n: int, *, start: int = 0) -> list[bytes]:
    return [
        json.dumps(envelope(status(f"wamid.f{i}", "sent", 1_767_000_000 + i))).encode()
        for i in range(start, start + n)
    ]


# --- storage and the command line --------------------------------------------------------------


def test_cli_adds_lists_pauses_resumes_and_removes_destinations(database_url: str) -> None:
    first = add_destination(database_url, "https://consumer.example/hook")
    waba = add_destination(database_url, "https://consumer.example/hook", "--waba", "102290")
    number = add_destination(
        database_url, "https://other.example/wa", "--number", "+972-50-123-4567"
    )
    code, out, err = forward_cli(database_url, "list", "--json")
    assert code == 0, err
    listed = [json.loads(line) for line in out.splitlines()]
    assert [(d["id"], d["scope"], d["scope_value"], d["paused"]) for d in listed] == [
        (first, "all", None, False),
        (waba, "waba", "102290", False),
        (number, "number", "972501234567", False),
    ]
    # The same destination twice is refused with a line naming the existing one.
    code, _, err = forward_cli(database_url, "add", "--url", "https://consumer.example/hook")
    assert code == 1
    assert f"destination {first} already forwards everything" in err
    assert forward_cli(database_url, "pause", str(waba))[0] == 0
    listed = [
        json.loads(line) for line in forward_cli(database_url, "list", "--json")[1].splitlines()
    ]
    assert [d["paused"] for d in listed] == [False, True, False]
    assert forward_cli(database_url, "resume", str(waba))[0] == 0
    assert forward_cli(database_url, "remove", str(number))[0] == 0
    code, _, err = forward_cli(database_url, "remove", str(number))
    assert code == 1
    assert f"no destination {number}" in err
    code, out, _ = forward_cli(database_url, "list")
    assert "consumer.example" in out
    assert "other.example" not in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--url", "ftp://x.example/"], "must start with https://"),
        (["--url", "not a url"], "must start with https://"),
        (["--url", "https://x.example/#frag"], "#fragment"),
        (["--url", "https://x.example/", "--waba", "12ab"], "a WABA id is digits"),
        (["--url", "https://x.example/", "--number", "12"], "6 to 15 digits"),
        (["--url", "https://x.example/", "--waba", "1", "--number", "972501234567"], "not both"),
    ],
)
def test_cli_refuses_bad_destinations_with_one_line(
    database_url: str, args: list[str], message: str
) -> None:
    code, _, err = forward_cli(database_url, "add", *args)
    assert code == 1
    assert message in err
    assert "Traceback" not in err


def test_configured_urls_are_destinations_that_the_cli_cannot_remove(database_url: str) -> None:
    env = {"WASTATS_FORWARD_URLS": "https://a.example/hook, https://b.example/hook"}
    code, out, err = forward_cli(database_url, "list", "--json", **env)
    assert code == 0, err
    listed = [json.loads(line) for line in out.splitlines()]
    assert [(d["url"], d["source"]) for d in listed] == [
        ("https://a.example/hook", "config"),
        ("https://b.example/hook", "config"),
    ]
    code, _, err = forward_cli(database_url, "remove", str(listed[0]["id"]), **env)
    assert code == 1
    assert "WASTATS_FORWARD_URLS" in err
    # Dropped from the setting: dropped from the destinations at the next start.
    env = {"WASTATS_FORWARD_URLS": "https://b.example/hook"}
    out = forward_cli(database_url, "list", "--json", **env)[1]
    assert [json.loads(line)["url"] for line in out.splitlines()] == ["https://b.example/hook"]


# --- enqueue: with the inbox row, for every matching destination -------------------------------


def test_every_accepted_body_is_forwarded_byte_exact_with_metas_headers(
    database_url: str, make_app: Callable[..., FastAPI], recorder: Destination
) -> None:
    add_destination(database_url, recorder.url)
    # Meta's real payloads (FIXTURES, or the shared copy when run from a worktree elsewhere).
    folder = FIXTURES if FIXTURES.exists() else Path("/work/shared/fixtures/webhooks")
    fixtures = sorted(folder.glob("*.json"))
    assert fixtures
    raws = [f.read_bytes() for f in fixtures] + bodies_of(20)
    # Signed but not understood: stored as rejected, and forwarded all the same.
    raws += [b'{"object": "page", "entry": 5}', b"not json at all \x00\xff", b"[]"]
    with TestClient(make_app()) as client:
        for raw in raws:
            send(client, raw)
        send(client, raws[0])  # Meta's retry of a stored body: not forwarded twice
        # The GET handshake is answered by wastats, not forwarded.
        handshake = client.get(
            WEBHOOK,
            params={"hub.mode": "subscribe", "hub.verify_token": VERIFY_TOKEN,
                    "hub.challenge": "42"},
        )  # fmt: skip
        assert handshake.text == "42"
        assert recorder.wait_for(lambda: len(recorder.received) >= len(raws))
        settle(client)
        states = inbox_repo.count_by_state
        with Database(database_url).read() as conn:
            assert states(conn).get(inbox_repo.REJECTED, 0) >= 3
    got = {r.body: r for r in recorder.received}
    assert len(recorder.received) == len(raws) == len(got)
    for raw in raws:
        r = got[raw]
        expected = meta_headers(raw)
        assert r.headers["content-type"] == expected["Content-Type"]
        assert r.headers["x-hub-signature-256"] == expected["X-Hub-Signature-256"]
        assert r.headers["x-hub-signature"] == expected["X-Hub-Signature"]
        assert r.signature_ok, "the consumer verifies Meta's signature as before"
        assert r.path == "/hook"
        assert r.headers["user-agent"].startswith("wastats-forwarder/")
        # Nothing of wastats' own secrets goes out.
        assert not {"authorization", "cookie"} & r.headers.keys()


def test_scoped_destinations_get_only_their_waba_or_number(
    database_url: str, make_app: Callable[..., FastAPI], settings: Settings
) -> None:
    tenant = create_tenant(settings)
    add_number(settings, tenant, "972501234567", "500000000000001")
    with (
        Destination() as everything,
        Destination() as by_waba,
        Destination() as by_number,
        Destination() as by_display,
    ):
        add_destination(database_url, everything.url)
        add_destination(database_url, by_waba.url, "--waba", "900")
        add_destination(database_url, by_number.url, "--number", "972501234567")
        # Not registered in wastats: matched by the display number in the body's metadata.
        add_destination(database_url, by_display.url, "--number", "15550783881")
        waba_body = json.dumps(envelope(inbound("447700900123", 1_767_000_000), waba="900"))
        registered = json.dumps(
            envelope(inbound("447700900124", 1_767_000_001, number="500000000000001"))
        )
        unknown_shape = '{"entry": [{"id": 900, "changes": [{"value": {"metadata": 7}}]}]}'
        raws = [waba_body.encode(), registered.encode(), unknown_shape.encode(), b"junk"]
        with TestClient(make_app()) as client:
            for raw in raws:
                send(client, raw)
            assert everything.wait_for(lambda: len(everything.received) == 4)
            assert by_waba.wait_for(lambda: len(by_waba.received) == 2)
            assert by_number.wait_for(lambda: len(by_number.received) == 1)
            assert by_display.wait_for(lambda: len(by_display.received) == 2)
            assert poll(lambda: all(d["state"] == "delivered" for d in deliveries(database_url)))
        assert {r.body for r in by_waba.received} == {raws[0], raws[2]}
        assert {r.body for r in by_number.received} == {raws[1]}
        # The display number of the builder's metadata is 15550783881 for both JSON bodies.
        assert {r.body for r in by_display.received} == {raws[0], raws[1]}
    assert len(deliveries(database_url)) == 4 + 2 + 1 + 2


def test_deliveries_commit_with_the_inbox_row(
    database_url: str, make_app: Callable[..., FastAPI]
) -> None:
    """Every stored webhook body has its delivery row, written in the same transaction (a
    paused destination keeps them queued, so they are all still there to look at)."""
    destination = add_destination(database_url, "http://127.0.0.1:9/never")
    forward_cli(database_url, "pause", str(destination))
    raws = bodies_of(30)
    with TestClient(make_app()) as client:
        for raw in raws:
            send(client, raw)
    db = Database(database_url)
    try:
        with db.read() as conn:
            # Bodies are sealed at rest: opened as the service opens them.
            ids = [int(i) for (i,) in conn.execute(select(inbox.c.id))]
            stored = dict(inbox_repo.load_bodies(conn, ids, TEST_SEALER, states=ALL_STATES))
            queued = store.delivery_states(conn, destination)
    finally:
        db.dispose()
    assert sorted(stored.values()) == sorted(raws)
    assert queued == dict.fromkeys(stored, "pending")


def test_accepted_bodies_are_posted_from_memory_and_recorded_in_batches(
    database_url: str, make_app: Callable[..., FastAPI], recorder: Destination
) -> None:
    """With the worker's claim cycle out of the way (it would run once an hour), bodies still
    reach the destination right after their commit, handed over in memory, and their outcomes
    are written back without a claim."""
    add_destination(database_url, recorder.url)
    raws = bodies_of(50)
    app = make_app()
    forwarding_of(app.state.ctx.extras).worker.poll_seconds = 3600  # type: ignore[union-attr]
    with TestClient(app) as client:
        for raw in raws:
            send(client, raw)
        assert recorder.wait_for(lambda: len(recorder.received) == len(raws))
        assert poll(lambda: all(d["state"] == "delivered" for d in deliveries(database_url)))
    assert sorted(r.body for r in recorder.received) == sorted(raws)
    assert all(d["attempts"] == 1 for d in deliveries(database_url))


def test_a_delivery_posted_from_memory_is_leased_to_its_process(
    database_url: str, make_app: Callable[..., FastAPI], clock: FakeClock
) -> None:
    """The row handed over in memory is written already claimed: no other process takes it
    while this one posts it, and any process does once the lease has run out (this one died)."""
    with Destination(hang=True) as hanging:
        destination = add_destination(database_url, hanging.url)
        app = make_app(forward_timeout_seconds=30)
        worker = forwarding_of(app.state.ctx.extras).worker  # type: ignore[union-attr]
        worker.poll_seconds = 3600
        db = Database(database_url)
        try:
            with TestClient(app) as client:
                send(client, bodies_of(1)[0])
                assert hanging.wait_for(lambda: hanging.hanging == 1)  # in flight, from memory
                (row,) = deliveries(database_url)
                assert (row["state"], row["attempts"]) == ("pending", 0)
                assert row["next_attempt_at"] == int(clock.now) + worker.lease_seconds

                def claim_as_another_process() -> list[store.Claimed]:
                    now = int(clock.now)
                    with db.write() as conn:
                        return store.claim(
                            conn, destination, 10, now=now, lease_until=now + 60,
                            sealer=TEST_SEALER,
                        )  # fmt: skip

                assert claim_as_another_process() == []
                clock.advance(worker.lease_seconds)
                (taken,) = claim_as_another_process()
                assert taken.id == row["id"]
                assert taken.body == bodies_of(1)[0]
                hanging.close()  # release the hung request so the app can stop
        finally:
            db.dispose()


def test_a_body_whose_deliveries_cannot_be_queued_is_not_acknowledged(
    database_url: str, make_app: Callable[..., FastAPI], recorder: Destination
) -> None:
    """One transaction: when the delivery rows cannot be written, the inbox row is not kept
    either and Meta gets 503 (and retries), rather than a 200 for a body never forwarded."""
    add_destination(database_url, recorder.url)
    raw = bodies_of(1)[0]
    db = Database(database_url)
    try:
        with TestClient(make_app()) as client:
            with db.write() as conn:
                conn.exec_driver_sql("ALTER TABLE forward_deliveries RENAME TO deliveries_away")
            try:
                answer = client.post(WEBHOOK, content=raw, headers=meta_headers(raw))
            finally:
                with db.write() as conn:
                    conn.exec_driver_sql("ALTER TABLE deliveries_away RENAME TO forward_deliveries")
            assert answer.status_code == 503
            with db.read() as conn:
                assert conn.execute(select(inbox.c.id)).all() == []
            send(client, raw)  # Meta's retry
            assert recorder.wait_for(lambda: len(recorder.received) == 1)
    finally:
        db.dispose()
    assert recorder.received[0].body == raw


# --- retries ------------------------------------------------------------------------------------


def test_a_destination_failing_n_times_gets_the_body_with_growing_backoff(
    database_url: str, make_app: Callable[..., FastAPI], clock: FakeClock
) -> None:
    with Destination(fail_first=4) as flaky:
        add_destination(database_url, flaky.url)
        raw = bodies_of(1)[0]
        waits = []
        with TestClient(make_app()) as client:
            send(client, raw)
            for attempt in range(1, 5):
                assert poll(lambda a=attempt: deliveries(database_url)[0]["attempts"] == a)
                row = deliveries(database_url)[0]
                assert row["state"] == "pending"
                assert row["last_error"] == "HTTP 500"
                waits.append(row["next_attempt_at"] - int(clock.now))
                # Not due yet: nothing is sent before the backoff is over.
                assert len(flaky.attempts) == attempt
                clock.advance(row["next_attempt_at"] - clock.now)
            assert flaky.wait_for(lambda: len(flaky.received) == 1)
            assert poll(lambda: deliveries(database_url)[0]["state"] == "delivered")
        assert flaky.received[0].body == raw
        assert flaky.received[0].signature_ok
        assert len(flaky.attempts) == 5
        # Exponential with jitter: the n-th wait is within [base 2^(n-1) / 2, base 2^(n-1)].
        base = forwarding_of(client.app.state.ctx.extras).worker.policy.base_seconds  # type: ignore[union-attr, attr-defined]
        for n, wait in enumerate(waits, start=1):
            assert base * 2 ** (n - 1) / 2 <= wait <= base * 2 ** (n - 1) + 1, waits


def test_retry_after_of_a_429_is_honoured(
    database_url: str, make_app: Callable[..., FastAPI], clock: FakeClock
) -> None:
    with Destination(fail_first=1, fail_status=429, retry_after="120") as limited:
        add_destination(database_url, limited.url)
        with TestClient(make_app()) as client:
            send(client, bodies_of(1)[0])
            assert poll(lambda: deliveries(database_url)[0]["attempts"] == 1)
            row = deliveries(database_url)[0]
            assert row["last_error"] == "HTTP 429"
            assert row["next_attempt_at"] == int(clock.now) + 120
            clock.advance(119)
            forwarding(client).worker.wake()
            # Not before: one cycle later still one attempt.
            assert not limited.wait_for(lambda: len(limited.attempts) > 1, timeout=0.3)
            clock.advance(1)
            assert limited.wait_for(lambda: len(limited.received) == 1)


def test_redirects_are_not_followed(
    database_url: str, make_app: Callable[..., FastAPI], recorder: Destination
) -> None:
    with Destination(redirect_to=recorder.url) as moved:
        add_destination(database_url, moved.url)
        with TestClient(make_app()) as client:
            send(client, bodies_of(1)[0])
            assert poll(lambda: deliveries(database_url)[0]["attempts"] == 1)
    assert deliveries(database_url)[0]["last_error"].startswith("HTTP 307 (a redirect")
    assert recorder.attempts == []


def test_a_hanging_destination_does_not_delay_another(
    database_url: str, make_app: Callable[..., FastAPI], recorder: Destination
) -> None:
    with Destination(hang=True) as hanging:
        add_destination(database_url, hanging.url)
        add_destination(database_url, recorder.url)
        raws = bodies_of(40)
        with TestClient(make_app(forward_timeout_seconds=120, forward_concurrency=4)) as client:
            for raw in raws:
                send(client, raw)
            # Everything reaches the healthy one while the hanging one holds every slot it
            # has (and nothing more) with requests it never answers.
            assert recorder.wait_for(lambda: len(recorder.received) == len(raws))
            assert hanging.wait_for(lambda: hanging.hanging == 4)
            assert hanging.hanging == 4  # the per-destination concurrency bound
            assert {r.body for r in recorder.received} == set(raws)
            hanging.close()  # release the hung requests so the app can stop


def test_a_failed_attempt_hands_what_waited_behind_it_back_at_once(
    database_url: str, make_app: Callable[..., FastAPI]
) -> None:
    """One slot: the first body hangs, the next ones wait in memory behind it; when the first
    fails, those are handed back due now (not left until their lease runs out) and delivered
    by the next claim, while the failed one waits for its backoff. The clock does not move."""
    with Destination(hang=True) as blip:
        add_destination(database_url, blip.url)
        raws = bodies_of(12)
        with TestClient(make_app(forward_concurrency=1)) as client:
            for raw in raws:
                send(client, raw)
            assert blip.wait_for(lambda: blip.hanging == 1)
            blip.release()  # the hung request fails (no answer); the rest will be answered
            assert blip.wait_for(lambda: len(blip.received) == len(raws) - 1)
            first = raws.index(blip.attempts[0].body)
            assert poll(
                lambda: (
                    [d["state"] for d in deliveries(database_url)].count("delivered")
                    == len(raws) - 1
                )
            )
    assert sorted(r.body for r in blip.received) == sorted(raws[:first] + raws[first + 1 :])
    row = next(d for d in deliveries(database_url) if d["state"] == "pending")
    assert row["attempts"] == 1


def test_dead_letter_after_seven_days_then_replay(
    database_url: str, make_app: Callable[..., FastAPI], clock: FakeClock
) -> None:
    with Destination(fail_first=10**9) as down:
        destination = add_destination(database_url, down.url)
        raw = bodies_of(1)[0]
        app = make_app()
        # Backoff up to a day, not an hour: fewer attempts to walk through to the 7th day.
        forwarding_of(app.state.ctx.extras).worker.policy = RetryPolicy(max_delay_seconds=DAY)  # type: ignore[union-attr]
        with TestClient(app) as client:
            send(client, raw)
            sent_at = int(clock.now)
            for attempt in range(1, 100):
                assert poll(lambda a=attempt: deliveries(database_url)[0]["attempts"] == a)
                row = deliveries(database_url)[0]
                if row["state"] != "pending":
                    break
                assert row["next_attempt_at"] <= sent_at + 7 * DAY
                clock.advance(row["next_attempt_at"] - clock.now)
            assert len(down.attempts) == row["attempts"]
            assert row["state"] == "dead"
            assert row["dead_at"] == sent_at + 7 * DAY  # a last try at the end of the window
            code, out, _ = forward_cli(database_url, "dead", "--json")
            dead = [json.loads(line) for line in out.splitlines()]
            assert [(d["id"], d["destination"], d["last_error"]) for d in dead] == [
                (row["id"], destination, "HTTP 500")
            ]
            code, out, _ = forward_cli(database_url, "dead")
            assert code == 0
            assert "500" in out
            # The raw body outlives the retention while a delivery waits for it (dead letters
            # wait for replay).
            forward_cli(database_url, "pause", str(destination))
            client.app.state.ctx.ingest.retention_days = 1  # type: ignore[attr-defined]
            client.app.state.ctx.ingest.purge()  # type: ignore[attr-defined]
            down.fail_first = 0
            code, out, _ = forward_cli(database_url, "replay", "--destination", str(destination))
            assert "Queued 1 dead letters again." in out
            # The command queued it at the machine's time: the app's clock catches up.
            clock.now = time.time() + 1
            forward_cli(database_url, "resume", str(destination))
            assert down.wait_for(lambda: len(down.received) == 1)
        assert down.received[0].body == raw


def test_inbox_purge_keeps_bodies_with_pending_deliveries(
    database_url: str, make_app: Callable[..., FastAPI], clock: FakeClock
) -> None:
    destination = add_destination(database_url, "http://127.0.0.1:9/paused")
    forward_cli(database_url, "pause", str(destination))
    waiting, other = bodies_of(2)
    with TestClient(make_app(raw_retention_days=1)) as client:
        send(client, waiting)
        forward_cli(database_url, "remove", str(destination))
        add_destination(database_url, "http://127.0.0.1:9/other", "--waba", "1")
        send(client, other)  # no destination matches: nothing waits for it
        db = Database(database_url)
        try:
            with db.write() as conn:
                conn.execute(update(inbox).values(state="processed"))
            destination = add_destination(database_url, "http://127.0.0.1:9/again")
            forward_cli(database_url, "pause", str(destination))
            with db.write() as conn:
                sha = hashlib.sha256(waiting).hexdigest()
                first = conn.execute(select(inbox.c.id).where(inbox.c.body_sha256 == sha)).scalar()
                store.enqueue(conn, [store.NewDelivery(int(first), destination, ())], 0)
            clock.advance(2 * DAY)
            client.app.state.ctx.ingest.purge()  # type: ignore[attr-defined]
            with db.read() as conn:
                ids = [int(i) for (i,) in conn.execute(select(inbox.c.id))]
                kept = {
                    b for _, b in inbox_repo.load_bodies(conn, ids, TEST_SEALER, states=ALL_STATES)
                }
        finally:
            db.dispose()
    assert kept == {waiting}


# --- observable -------------------------------------------------------------------------------


def test_status_health_and_metrics_show_each_destination(
    database_url: str, make_app: Callable[..., FastAPI], clock: FakeClock, recorder: Destination
) -> None:
    with Destination(fail_first=10**9) as down:
        good = add_destination(database_url, recorder.url)
        bad = add_destination(database_url, down.url.replace("/hook", "/hook?token=s3cret"))
        with TestClient(make_app(forward_degraded_after_seconds=600)) as client:
            for raw in bodies_of(3):
                send(client, raw)
            assert recorder.wait_for(lambda: len(recorder.received) == 3)
            assert poll(lambda: all(d["attempts"] for d in deliveries(database_url)))
            health = client.get("/healthz").json()
            assert health["status"] == "ok"
            clock.advance(601)
            health = client.get("/healthz").json()
            assert health["status"] == "degraded"
            by_id = {d["id"]: d for d in health["forwarding"]["destinations"]}
            assert by_id[good]["delivered"] == 3
            assert by_id[good]["pending"] == 0
            assert by_id[bad] | {"oldest_pending_seconds": None} == {
                "id": bad, "url": down.url, "state": "failing", "delivered": 0, "pending": 3,
                "failing": 3, "dead": 0, "oldest_pending_seconds": None,
                "last_error": "HTTP 500",
            }  # fmt: skip
            assert by_id[bad]["oldest_pending_seconds"] >= 601
            assert "s3cret" not in json.dumps(health)
            metrics = client.get("/metrics").text
            assert f'wastats_forward_pending{{destination="{bad}",url="{down.url}"}} 3.0' in (
                metrics
            )
            assert f'wastats_forward_delivered_total{{destination="{good}"' in metrics
            assert "s3cret" not in metrics
            code, out, _ = forward_cli(database_url, "status", "--json")
            status_rows = {row["id"]: row for row in map(json.loads, out.splitlines())}
            assert status_rows[bad]["failing"] == 3
            assert status_rows[bad]["last_error"] == "HTTP 500"
            assert status_rows[good]["delivered"] == 3
            # The table (its width is the console's, fixed when the CLI was imported).
            code, out, _ = forward_cli(database_url, "status")
            assert code == 0
            assert "500" in out
            # A paused destination is the operator's choice, not a fault.
            forward_cli(database_url, "pause", str(bad))
            assert client.get("/healthz").json()["status"] == "ok"


def test_no_destination_leaves_health_as_it_was(client: TestClient) -> None:
    assert "forwarding" not in client.get("/healthz").json()


def test_help_of_every_forward_command() -> None:
    for command in ("add", "list", "remove", "pause", "resume", "status", "dead", "replay"):
        result = runner.invoke(cli, ["forward", command, "--help"])
        assert result.exit_code == 0, result.output
    add_help = runner.invoke(cli, ["forward", "add", "--help"], env={"COLUMNS": "200"}).output
    for metavar in ("URL", "WABA_ID", "DIGITS"):
        assert metavar in add_help


# --- pure parts: the retry schedule and what a body is addressed to ---------------------------


@settings_(max_examples=300, deadline=None)
@given(
    failures=st.integers(1, 200),
    created=st.integers(0, 2_000_000_000),
    elapsed=st.integers(0, 8 * DAY),
    retry_after=st.none() | st.floats(0, 30 * DAY),
    seed=st.integers(0, 2**32),
)
def test_retries_stay_inside_the_window_and_never_come_sooner_than_a_second(
    failures: int, created: int, elapsed: int, retry_after: float | None, seed: int
) -> None:
    policy = RetryPolicy()
    now = created + elapsed
    when = policy.next_attempt(
        failures=failures, created_at=created, now=now, retry_after=retry_after,
        rng=random.Random(seed),
    )  # fmt: skip
    end = created + policy.window_seconds
    if now >= end:
        assert when is None  # a dead letter, never a retry after the window
        return
    assert when is not None
    assert now < when <= end
    if retry_after is None:
        full = min(policy.max_delay_seconds, policy.base_seconds * 2.0 ** (failures - 1))
        assert when - now <= max(1.0, full) + 1
        assert when >= min(end, now + max(1.0, full / 2))
    else:
        assert when == min(end, math.ceil(now + max(1.0, retry_after)))


json_ids = st.one_of(st.text(alphabet="0123456789", min_size=1, max_size=8), st.integers(0, 10**9))
junk = st.one_of(
    st.none(), st.booleans(), st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=5)
)


@st.composite
def webhook_like(draw: st.DrawFn) -> Any:
    def meta() -> Any:
        if draw(st.booleans()):
            return draw(junk)
        found = {}
        if draw(st.booleans()):
            found["phone_number_id"] = draw(json_ids | junk)
        if draw(st.booleans()):
            found["display_phone_number"] = draw(st.sampled_from(["+1 555-0100", "15550100"]))
        return found

    entries = [
        draw(junk)
        if draw(st.integers(0, 5)) == 0
        else {
            "id": draw(json_ids | junk),
            "changes": [{"value": {"metadata": meta()}} for _ in range(draw(st.integers(0, 3)))],
        }
        for _ in range(draw(st.integers(0, 3)))
    ]
    return {"object": "whatsapp_business_account", "entry": entries}


def reference_addresses(doc: Any) -> tuple[set[str], set[str]]:
    """The WABA ids and phone-number ids of a body, the plain way."""
    wabas, numbers = set(), set()
    for entry in doc.get("entry") or []:
        if not isinstance(entry, dict):
            continue
        if isinstance(entry.get("id"), str | int) and not isinstance(entry.get("id"), bool):
            wabas.add(str(entry["id"]))
        for change in entry.get("changes") or []:
            meta = (change.get("value") or {}).get("metadata")
            if isinstance(meta, dict):
                number = meta.get("phone_number_id")
                if isinstance(number, str | int) and not isinstance(number, bool):
                    numbers.add(str(number))
    return wabas, numbers


@settings_(max_examples=300, deadline=None)
@given(doc=webhook_like())
def test_the_ids_a_body_is_addressed_to_are_found_whatever_else_it_holds(doc: Any) -> None:
    found = addresses(json.dumps(doc).encode())
    assert (set(found.wabas), set(found.numbers)) == reference_addresses(doc)


class RecordingTaker:
    """The enqueue hook's view of a delivery worker, answering as the example says and keeping
    what it was handed (a recorder, not a stand-in for anything the service runs)."""

    def __init__(self, running: bool, wanted: set[int], lease: int) -> None:
        self.running, self.wanted, self.lease = running, wanted, lease
        self.taken: list[Handoff] = []

    def lease_until(self, now: int) -> int | None:
        return now + self.lease if self.running else None

    def wants(self, destination_id: int) -> bool:
        return destination_id in self.wanted

    def take(self, handoffs: Sequence[Handoff]) -> None:
        self.taken.extend(handoffs)


@settings_(max_examples=40, deadline=None)
@given(
    destinations=st.lists(st.tuples(st.booleans(), st.booleans()), min_size=1, max_size=4),
    count=st.integers(1, 6),
    running=st.booleans(),
)
def test_each_queued_delivery_is_either_handed_over_leased_or_left_due_for_any_process(
    sqlite_template: Path, destinations: list[tuple[bool, bool]], count: int, running: bool
) -> None:
    """Whatever the destinations (paused or not, wanted by the worker or not) and whether the
    worker runs: every (body, destination) pair gets one row; the rows handed over in memory
    are exactly those leased to this process (active destinations the worker wants, while it
    runs), carry the body and Meta's headers as received, and are handed over only after the
    commit; every other row is due now, for any process."""
    now, lease = 1_767_000_000, 25
    raws = bodies_of(count)
    headers = (("Content-Type", "application/json"), ("X-Hub-Signature-256", "sha256=00"))
    with tempfile.TemporaryDirectory() as folder:
        target = Path(folder) / "wastats.db"
        shutil.copyfile(sqlite_template, target)
        db = Database(f"sqlite:///{target}")
        try:
            queue = ForwardQueue()
            with db.write() as conn:
                ids = []
                for i, (paused, _) in enumerate(destinations):
                    found = store.add_destination(
                        conn, url=f"http://127.0.0.1:9/{i}", scope=store.ALL, scope_value="",
                        source=store.FROM_CLI, now=now,
                    )  # fmt: skip
                    assert found is not None
                    store.set_paused(conn, found, paused)
                    ids.append(found)
            wanted = {d for d, (_, wants) in zip(ids, destinations, strict=True) if wants}
            taker = RecordingTaker(running, wanted, lease)
            queue.attach(taker)
            with db.write() as conn:
                new = store_bodies(conn, raws, now=now)
                by_sha = {hashlib.sha256(r).hexdigest(): r for r in raws}
                raw_of = {i: by_sha[sha] for sha, i in new.items()}
                queued = queue.enqueue(
                    conn, [AcceptedBody(i, raw_of[i], headers) for i in new.values()], now
                )
                assert taker.taken == []  # nothing before the commit
            queue.committed(queued)
            with db.read() as conn:
                rows = conn.execute(select(forward_deliveries)).all()
        finally:
            db.dispose()
    active = {d for d, (paused, _) in zip(ids, destinations, strict=True) if not paused}
    handed = active & wanted if running else set()
    assert queued.count == len(rows) == len(raws) * len(ids)
    leased = {r.id for r in rows if r.next_attempt_at == now + lease}
    due = {r.id for r in rows if r.next_attempt_at == now}
    assert leased | due == {r.id for r in rows}
    assert not leased & due
    assert leased == {r.id for r in rows if r.destination_id in handed}
    assert sorted(h.delivery.id for h in taker.taken) == sorted(leased)
    for h in taker.taken:
        assert h.delivery.body == raw_of[h.delivery.inbox_id]
        assert tuple(h.delivery.headers) == headers
        assert (h.delivery.attempts, h.lease_until) == (0, now + lease)
        assert h.url.endswith(f"/{ids.index(h.delivery.destination_id)}")


@pytest.mark.parametrize("stale", ["failed", "dead", "handed back"])
def test_an_outcome_written_after_its_lease_ran_out_does_not_free_another_process_claim(
    database_url: str, stale: str
) -> None:
    """Process A's lease on a delivery runs out (a slow outcome write, a stalled process) and
    process B claims it and posts it. A's outcome, written late, must not make the row due
    again (or dead) under B: a third claim would post the body a second time while B does,
    and a dead row would be replayed although B delivered it. B's own outcome counts."""
    now, lease = 1_767_000_000, 25
    raw = bodies_of(1)[0]
    db = Database(database_url)
    try:
        with db.write() as conn:
            destination = store.add_destination(
                conn, url="http://127.0.0.1:9/hook", scope=store.ALL, scope_value="",
                source=store.FROM_CLI, now=now,
            )  # fmt: skip
            assert destination is not None
            new = store_bodies(conn, [raw], now=now)
            (inbox_id,) = new.values()
            store.enqueue(conn, [store.NewDelivery(inbox_id, destination, ())], now)

        def claim(at: int) -> list[store.Claimed]:
            with db.write() as conn:
                return store.claim(
                    conn, destination, 10, now=at, lease_until=at + lease, sealer=TEST_SEALER
                )

        (by_a,) = claim(now)
        assert claim(now + lease - 1) == []  # A's lease holds
        (by_b,) = claim(now + lease)  # ... then runs out: B takes the row
        assert by_b.id == by_a.id
        late = {
            "failed": store.Result(by_a.id, destination, False, now + lease + 1, "HTTP 500"),
            "dead": store.Result(by_a.id, destination, False, None, "HTTP 500"),
            "handed back": store.Result(by_a.id, destination, False, None),
        }[stale]
        with db.write() as conn:
            store.record_results(
                conn, [dataclasses.replace(late, lease_until=now + lease)], now + lease + 1
            )
        assert claim(now + lease + 2) == [], "B still holds it: no third claim"
        with db.write() as conn:
            store.record_results(
                conn,
                [store.Result(by_b.id, destination, True, lease_until=now + 2 * lease)],
                now + lease + 3,
            )
            states = store.delivery_states(conn, destination)
        assert claim(now + 10 * lease) == []
    finally:
        db.dispose()
    assert states == {inbox_id: "delivered"}
