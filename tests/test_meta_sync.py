"""The sync of Meta's record against the fake Graph API, on SQLite and PostgreSQL: idempotent,
chunked over Meta's window, resumable after a crash, every error recorded per WABA, and never in
the way of the webhooks."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from conftest import make_settings
from fakegraph import TOKEN, VERSION, client_for, fake_graph
from wastats.app import create_app
from wastats.meta.fake_graph import FakeGraph, FakeNumber, FakeWaba
from wastats.meta.sync import (
    CHUNK_SECONDS,
    LEASE_SECONDS,
    RECENT_SECONDS,
    SLOT,
    WINDOW_SECONDS,
    sync_all,
    sync_waba,
)
from wastats.settings import Settings
from wastats.store import meta as repo
from wastats.store.db import Database
from wastats.store.schema import meta_reported
from webhooks import body, inbound, post

WABA = "500100"
NOW = 1_796_212_800  # 2026-12-02T12:00:00Z
END = NOW - NOW % SLOT


def _state(per_day: int = 2, numbers: int = 2, wabas: tuple[str, ...] = (WABA,)) -> FakeGraph:
    state = FakeGraph(token=TOKEN, page_size=200)
    for w, waba_id in enumerate(wabas):
        waba = FakeWaba(waba_id, generated_per_day=per_day)
        for n in range(numbers):
            waba.numbers.append(FakeNumber(f"7{w}{n:04d}", f"+972 50-{w}{n:06d}", f"S{n}"))
        state.add_waba(waba)
    return state


def _snapshot(db: Database) -> list[tuple[object, ...]]:
    with db.read() as conn:
        rows = conn.execute(
            meta_reported.select().order_by(*[c for c in meta_reported.primary_key.columns])
        )
        return [tuple(r)[:-1] for r in rows]  # all but synced_at


def _spans(state: FakeGraph) -> list[tuple[int, int]]:
    spans = []
    for r in state.requests:
        query = r.replace("%28", "(").replace("%29", ")")
        if "start(" in query:
            start = int(query.split("start(")[1].split(")")[0])
            end = int(query.split("end(")[1].split(")")[0])
            spans.append((start, end))
    return spans


@pytest.fixture
def db(database_url: str) -> Database:
    database = Database(database_url)
    yield database  # type: ignore[misc]
    database.dispose()


def test_first_sync_reads_the_window_in_chunks_and_twice_is_once(db: Database) -> None:
    state = _state()
    with fake_graph(state) as url, client_for(url) as client:
        first = sync_waba(db, client, WABA, now=NOW)
        rows = _snapshot(db)
        second = sync_waba(db, client, WABA, now=NOW, force=True)
        assert _snapshot(db) == rows
    assert first.error is None
    assert first.rows == len(rows) > 0
    spans = _spans(state)
    # The first sync: contiguous chunks from the window's start to now, none too long.
    first_spans = spans[: first.chunks]
    assert first_spans[0][0] == END - WINDOW_SECONDS + SLOT
    assert first_spans[-1][1] == END
    assert all(b - a <= CHUNK_SECONDS for a, b in first_spans)
    assert all(first_spans[i][1] == first_spans[i + 1][0] for i in range(len(first_spans) - 1))
    # The second re-reads only the last 3 days.
    assert second.error is None
    assert min(a for a, _ in spans[first.chunks :]) == END - RECENT_SECONDS
    with db.read() as conn:
        st = repo.get_state(conn, WABA)
    assert st is not None
    assert (st.covered_from, st.covered_to, st.last_success) == (first_spans[0][0], END, NOW)
    # Rows are stored as Meta reports them, names in lower case, costs exact.
    assert {r[3] for r in rows} <= {"marketing", "utility", "authentication", "service"}
    assert sum(r[7] for r in rows) == sum(
        p.volume for w in state.wabas.values() for p in _generated(w, first_spans)
    )


def _generated(waba: FakeWaba, spans: list[tuple[int, int]]) -> list:  # type: ignore[type-arg]
    from wastats.meta.fake_graph import generated_points

    return [p for a, b in spans for p in generated_points(waba, a, b)]


def test_a_revised_slot_is_overwritten_not_added(db: Database) -> None:
    state = _state(per_day=0)
    from wastats.meta.fake_graph import FakePoint

    point = FakePoint(END - 3600, "972500000000", "IL", "MARKETING", "REGULAR", 5, 0.5, "0:MAX")
    state.wabas[WABA].points.append(point)
    with fake_graph(state) as url, client_for(url) as client:
        sync_waba(db, client, WABA, now=NOW)
        point.volume, point.cost = 7, 0.7
        sync_waba(db, client, WABA, now=NOW + 3600, force=True)
    assert [(r[6], r[7], r[8]) for r in _snapshot(db)] == [(WABA, 7, 700_000)]


@pytest.mark.parametrize(
    ("fault", "needle", "retry_in"),
    [
        ("expired_token", "token", 3600),
        ("permission", "permission", 3600),
        ("permission_10", "permission", 3600),
        ("unknown_waba", "unknown_waba", 3600),
        ("rate_limit", "rate_limit", 5 * 60),
        ("rate_limit_app", "rate_limit", 5 * 60),
        ("server_error", "server", 120),
        ("malformed", "malformed", 120),
    ],
)
def test_every_graph_error_is_recorded_with_its_next_try(
    db: Database, fault: str, needle: str, retry_in: int
) -> None:
    state = _state()
    state.fail(fault, regain_minutes=5)
    with fake_graph(state) as url, client_for(url, retries=1) as client:
        outcome = sync_waba(db, client, WABA, now=NOW, interval=3600)
        # Not due again before its next try, even when asked.
        assert sync_waba(db, client, WABA, now=NOW + 1, interval=3600).skipped
    assert outcome.error is not None
    assert needle in outcome.error
    with db.read() as conn:
        st = repo.get_state(conn, WABA)
        assert repo.count_reported(conn) == 0
    assert st is not None
    assert st.last_error is not None
    assert needle in st.last_error
    assert TOKEN not in st.last_error
    assert st.next_try == NOW + retry_in
    assert st.covered_to is None
    assert st.last_success is None


def test_a_hanging_graph_api_is_a_timeout_error(db: Database) -> None:
    state = _state()
    state.fail("hang")
    with fake_graph(state) as url, client_for(url, timeout=0.5, retries=0) as client:
        outcome = sync_waba(db, client, WABA, now=NOW)
    assert outcome.error is not None
    assert outcome.error.startswith("timeout")


def test_one_failing_waba_does_not_stop_the_others(db: Database) -> None:
    state = _state(wabas=("500100", "700200"))
    with db.write() as conn:
        # 600000 is not in the fake (an unknown WABA); WABAs are synced in id order, so one
        # good WABA comes before it and one after.
        for waba_id in ("500100", "600000", "700200"):
            repo.ensure_state(conn, waba_id, None, NOW)
    with fake_graph(state) as url, client_for(url) as client:
        outcomes = sync_all(db, client, now=lambda: NOW, interval=3600)
    by_waba = {o.waba_id: o for o in outcomes}
    assert list(by_waba) == ["500100", "600000", "700200"]
    assert by_waba["600000"].error is not None
    assert "unknown_waba" in by_waba["600000"].error
    assert by_waba["500100"].error is None
    assert by_waba["700200"].error is None
    assert by_waba["500100"].rows > 0
    assert by_waba["700200"].rows > 0


def test_an_error_mid_sync_keeps_the_stored_chunks_and_resumes_after_them(db: Database) -> None:
    state = _state()
    stored: list[tuple[int, int]] = []

    def fail_after_three(start: int, end: int) -> None:
        stored.append((start, end))
        if len(stored) == 3:
            state.fail("permission")

    with fake_graph(state) as url, client_for(url) as client:
        broken = sync_waba(db, client, WABA, now=NOW, on_chunk=fail_after_three)
        with db.read() as conn:
            st = repo.get_state(conn, WABA)
        assert broken.error is not None
        assert st is not None
        assert (st.covered_from, st.covered_to) == (stored[0][0], stored[2][1])
        assert st.last_success is None
        state.fail(None)
        requests_before = len(state.requests)
        resumed = sync_waba(db, client, WABA, now=NOW, force=True)
        assert resumed.error is None
        assert _spans(state)[len(_spans(state)) - resumed.chunks][0] == stored[2][1]
        assert len(state.requests) > requests_before
        interrupted = _snapshot(db)
    # The same as one uninterrupted sync of the same data.
    assert _clean_sync(db) == interrupted


def _clean_sync(db: Database) -> list[tuple[object, ...]]:
    with db.write() as conn:
        conn.execute(meta_reported.delete())
        conn.execute(repo.meta_sync_state.delete())
    with fake_graph(_state()) as url, client_for(url) as client:
        assert sync_waba(db, client, WABA, now=NOW).error is None
    return _snapshot(db)


_SYNC_SCRIPT = textwrap.dedent(
    """
    import sys
    from wastats.meta.graph import GraphClient
    from wastats.meta.sync import sync_waba
    from wastats.store.db import Database

    url, graph, token, waba, now = sys.argv[1:6]
    db = Database(url)
    with GraphClient(graph, "v24.0", token) as client:
        def progress(start, end):
            print(f"chunk {start} {end}", flush=True)
        sync_waba(db, client, waba, now=int(now), on_chunk=progress)
    print("done", flush=True)
    """
)


def test_a_killed_sync_resumes_where_it_stopped(db: Database, tmp_path: Path) -> None:
    """A real process syncing is killed (SIGKILL) after some chunks; the next sync, once the
    dead process' lease has run out, stores the rest, and the result equals an unbroken sync."""
    state = _state()
    with fake_graph(state) as url:
        process = subprocess.Popen(
            [sys.executable, "-c", _SYNC_SCRIPT, db.url, url, TOKEN, WABA, str(NOW)],
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
        )
        assert process.stdout is not None
        seen = 0
        for line in process.stdout:
            seen += line.startswith("chunk")
            if seen == 4:
                process.kill()
                break
        process.wait(30)
        assert seen == 4, "the sync ended before it could be killed"
        with db.read() as conn:
            st = repo.get_state(conn, WABA)
        assert st is not None
        assert st.last_success is None
        assert st.covered_to is not None
        assert st.covered_to - st.covered_from >= 4 * CHUNK_SECONDS  # type: ignore[operator]
        with client_for(url) as client:
            # The dead process still holds the WABA until its lease ends.
            assert sync_waba(db, client, WABA, now=NOW + 60, force=True).skipped
            later = NOW + LEASE_SECONDS + 1
            resumed = sync_waba(db, client, WABA, now=later)
        assert resumed.error is None
        assert _spans(state)[-resumed.chunks][0] == st.covered_to
    # Compared over the first run's window (the resumed run, later, also read a little more).
    resumed_rows = [r for r in _snapshot(db) if r[1] < END]  # type: ignore[operator]
    assert resumed_rows == _clean_sync(db)


def test_webhooks_are_answered_while_the_graph_api_hangs(database_url: str) -> None:
    """The service's own sync runs in its thread: with every Graph request hanging, webhooks
    are still accepted and counted."""
    state = _state()
    state.fail("hang")
    reached = threading.Event()
    with fake_graph(state) as url:
        settings: Settings = make_settings(
            database_url,
            meta_access_token=TOKEN,
            meta_graph_url=url,
            meta_graph_version=VERSION,
            meta_sync_interval=3600,
        )
        database = Database(database_url)
        with database.write() as conn:
            repo.ensure_state(conn, WABA, None, 0)
        database.dispose()
        app = create_app(settings)
        with TestClient(app, raise_server_exceptions=False) as client:
            # Wait (bounded) until the background sync is inside a hanging request.
            for _ in range(3000):
                if state.requests:
                    reached.set()
                    break
                threading.Event().wait(0.01)
            assert reached.is_set(), "the background sync never called the Graph API"
            statuses = [
                post(client, body(inbound(f"97250{k:07d}", NOW - 60 + k))) for k in range(20)
            ]
            assert statuses == [200] * 20
            ingest = client.app.state.ctx.ingest  # type: ignore[attr-defined]
            assert ingest.wait_idle(30)
            assert len(state.requests) == 1  # still the one hanging request
            state.unhang.set()


def test_healthz_and_metrics_report_each_waba(db: Database, database_url: str) -> None:
    state = _state(wabas=("500100",))
    with db.write() as conn:
        repo.ensure_state(conn, "500100", None, NOW)
        repo.ensure_state(conn, "600000", None, NOW)  # unknown to the fake: fails
    with fake_graph(state) as url, client_for(url) as client:
        sync_all(db, client, now=lambda: NOW, interval=3600)
    with TestClient(create_app(make_settings(database_url))) as http:
        health = http.get("/healthz").json()
        metrics = http.get("/metrics").text
    by_waba = {w["waba_id"]: w for w in health["meta_sync"]}
    assert by_waba["500100"]["last_success"] == "2026-12-02T12:00:00Z"
    assert by_waba["500100"]["last_error"] is None
    assert "unknown_waba" in by_waba["600000"]["last_error"]
    assert by_waba["600000"]["next_try"] == "2026-12-02T13:00:00Z"
    assert health["status"] == "ok"  # Meta's troubles never make the service unhealthy
    assert f'wastats_meta_sync_last_success_timestamp_seconds{{waba="500100"}} {NOW:.1f}' in (
        metrics.replace("1.7962128e+09", f"{NOW:.1f}")
    )
    assert 'wastats_meta_sync_consecutive_failures{waba="600000"} 1.0' in metrics
    assert TOKEN not in metrics
