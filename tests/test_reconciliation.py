"""Reconciliation on generated data where the truth is known.

End to end: the same delivered messages are posted as webhooks and reported by the fake Graph
API, the service syncs, and `/v1/reconciliation` and `wastats reconcile` are read; withholding
the webhooks of a stretch must give `collection gap` there and only there. The pure function
is checked on its own for the verdict table and, with hypothesis, for exact re-bucketing of
half-hour slots into the days of whole- and half-hour zones across DST changes."""

from __future__ import annotations

import csv
import io
import random
import time
from collections import Counter
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import httpx
import pytest
from fastapi.responses import JSONResponse
from fastapi.testclient import TestClient
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from typer.testing import CliRunner

from conftest import APP_SECRET, FakeClock, make_settings
from fakegraph import TOKEN, client_for, fake_graph
from helpers import add_number, bearer, create_tenant, get_token
from live import live_server
from wastats.app import create_app
from wastats.cli.common import console
from wastats.cli.main import app as cli_app
from wastats.client import Client as WastatsClient
from wastats.domain import answers
from wastats.domain.history import Cost
from wastats.domain.reconciliation import (
    DIFFERS,
    GAP,
    MATCH,
    NOT_YET,
    OUTSIDE,
    Answer,
    Coverage,
    NumberSummary,
    Row,
    reconcile,
)
from wastats.domain.reporting import Question, periods_of
from wastats.meta.fake_graph import FakeGraph, FakeNumber, FakePoint, FakeWaba
from wastats.meta.sync import sync_waba
from wastats.store.db import Database
from wastats.whatsapp.signature import sign
from webhooks import WEBHOOK, body, post, settle, status

NOW = 1_796_212_800  # 2026-12-02T12:00:00Z
DAY = 86400
WABA = "31337"
PNID = "8000001"
DIGITS = "972507654321"
CATEGORIES = (
    ("marketing", "MARKETING"),
    ("utility", "UTILITY"),
    ("authentication", "AUTHENTICATION"),
)
FIRST_DAY = date(2026, 11, 20)  # days 2026-11-20 .. 2026-12-01 (UTC)


def _messages(seed: int = 7) -> list[tuple[int, str, str]]:
    """(delivery time, category, wamid): a few messages in most hours of 12 days."""
    rng = random.Random(seed)
    out = []
    start = int(datetime(2026, 11, 20, tzinfo=ZoneInfo("UTC")).timestamp())
    for hour in range(12 * 24):
        for k in range(rng.randint(1, 3)):
            ts = start + hour * 3600 + rng.randrange(3600)
            out.append((ts, rng.choice(CATEGORIES)[0], f"wamid.r{hour}.{k}"))
    return out


def _reported(messages: list[tuple[int, str, str]]) -> list[FakePoint]:
    """What Meta reports for those messages: volume per half-hour slot and category."""
    upper = dict(CATEGORIES)
    volume: Counter[tuple[int, str]] = Counter()
    for ts, category, _ in messages:
        volume[(ts - ts % 1800, category)] += 1
    return [
        FakePoint(slot, DIGITS, "IL", upper[c], "REGULAR", v, round(v * 0.01, 4), "0:MAX")
        for (slot, c), v in sorted(volume.items())
    ]


def _withheld(ts: int) -> bool:
    # 2026-11-25 09:00-12:00 UTC: three hours in which no webhook reached the service.
    start = int(datetime(2026, 11, 25, 9, tzinfo=ZoneInfo("UTC")).timestamp())
    return start <= ts < start + 3 * 3600


def test_reconciliation_end_to_end(database_url: str) -> None:
    settings = make_settings(database_url)
    tenant = create_tenant(settings, timezone="UTC")
    add_number(settings, tenant, DIGITS, PNID, waba_id=WABA)
    messages = _messages()
    state = FakeGraph(token=TOKEN, page_size=300)
    state.add_waba(
        FakeWaba(WABA, numbers=[FakeNumber(PNID, f"+{DIGITS}", "Shop")], points=_reported(messages))
    )
    db = Database(database_url)
    try:
        with fake_graph(state) as url, client_for(url) as client:
            assert sync_waba(db, client, WABA, now=NOW).error is None
    finally:
        db.dispose()
    app = create_app(settings, clock=FakeClock(NOW))
    with TestClient(app, raise_server_exceptions=False) as http:
        for ts, category, wamid in messages:
            if not _withheld(ts):
                value = status(wamid, "delivered", ts, number=PNID,
                               pricing=("PMP", category, "regular"))  # fmt: skip
                assert post(http, body(value)) == 200
        settle(http)
        token = get_token(http, tenant)
        answer = http.get(
            "/v1/reconciliation",
            params={"from": "2026-11-20", "to": "2026-12-01", "granularity": "day"},
            headers=bearer(token),
        )
        assert answer.status_code == 200, answer.text
        doc = answer.json()
        as_csv = http.get(
            "/v1/reconciliation",
            params={"from": "2026-11-20", "to": "2026-12-01", "granularity": "day",
                    "format": "csv"},
            headers=bearer(token),
        )  # fmt: skip
        assert http.get("/v1/reconciliation").status_code == 401
        bad = http.get("/v1/reconciliation", params={"granularity": "week"}, headers=bearer(token))
        assert bad.status_code == 422
        assert bad.json()["errors"][0]["parameter"] == "granularity"
    verdicts: dict[str, set[str]] = {}
    for row in doc["rows"]:
        verdicts.setdefault(row["period"], set()).add(row["verdict"])
        assert row["difference"] == row["observed"] - row["reported"]
        assert row["number"] == DIGITS
    # The withheld day: a collection gap (only there); the last 48 hours: not yet reported;
    # every other day: a match in every category.
    assert verdicts.pop("2026-11-25") >= {GAP}
    assert verdicts.pop("2026-12-01") == {NOT_YET}
    assert verdicts.pop("2026-11-30") == {NOT_YET}  # ends 2026-12-01 00:00, < 48 h before NOW
    assert set(verdicts) == {f"2026-11-{d}" for d in range(20, 30) if d != 25}
    assert all(v == {MATCH} for v in verdicts.values()), verdicts
    gap_rows = [r for r in doc["rows"] if r["verdict"] == GAP]
    withheld = sum(1 for ts, _, _ in messages if _withheld(ts))
    assert sum(r["reported"] - r["observed"] for r in gap_rows) == withheld
    summary = doc["summary"]["numbers"][0]
    assert summary["number"] == DIGITS
    assert summary["periods"] == 10  # the two not yet reported are not comparable
    assert summary["matching_periods"] == 9
    assert 0 < summary["coverage"] < 1
    assert doc["last_sync"] == "2026-12-02T12:00:00Z"
    # Each row says what Meta's reported volume cost (the fake reports 0.01 a message).
    assert all(
        r["cost"]["source"] == "meta" and r["cost"]["amount"] == pytest.approx(r["reported"] * 0.01)
        for r in doc["rows"]
    )
    rows = list(csv.DictReader(io.StringIO(as_csv.text)))
    assert len(rows) == len(doc["rows"])
    assert rows[0]["verdict"] == doc["rows"][0]["verdict"]
    # The CLI shows the same rows (it runs on the machine's clock, so the verdicts are
    # checked only when that clock is past the days asked about by 48 hours).
    result = CliRunner().invoke(
        cli_app,
        ["reconcile", "--account", tenant.client_id, "--from", "2026-11-24", "--to",
         "2026-11-26", "--granularity", "day"],
        env={"WASTATS_DATABASE_URL": database_url, "COLUMNS": "200"},
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert DIGITS in result.output
    assert "2026-11-25" in result.output
    if time.time() > NOW:
        assert "collection gap" in result.output
        assert "match" in result.output


def _period(day: date, zone: str = "UTC") -> list:  # type: ignore[type-arg]
    return periods_of(day, day, "day", ZoneInfo(zone))


def test_verdict_table() -> None:
    day = date(2026, 11, 1)
    (p,) = _period(day)
    slot = p.start + 10 * 1800
    numbers = [("n1", "972500000001")]
    covered = {"n1": Coverage(p.start - 100 * DAY, p.end + 10 * DAY)}
    now = p.end + 30 * DAY

    def verdict(observed: int, reported: int, events: list[int], coverage=covered, at=now):  # type: ignore[no-untyped-def]
        result = reconcile(
            [p], numbers,
            [("n1", slot + 5, "marketing", "regular")] * observed,
            [("n1", slot, "marketing", "regular", reported)],
            [("n1", t) for t in events], coverage, at,
        )  # fmt: skip
        return result.rows[0].verdict

    assert verdict(3, 3, [slot]) == MATCH
    # Reported more, and an hour around the slot without any webhook: collection gap.
    assert verdict(0, 3, []) == GAP
    assert verdict(1, 3, [slot - 1800]) == GAP  # the slot itself and the next one: silent
    # Webhooks arrived in the slot and on both sides: not a gap, a difference.
    assert verdict(2, 3, [slot - 1800, slot, slot + 1800]) == DIFFERS
    assert verdict(4, 3, []) == DIFFERS  # more observed than reported
    # Not yet reported: young, or after what the sync covered, or never synced.
    assert verdict(0, 3, [], at=p.end + 47 * 3600) == NOT_YET
    assert verdict(0, 3, [], coverage={"n1": Coverage(p.start - DAY, p.end - 1)}) == NOT_YET
    assert verdict(0, 3, [], coverage={}) == NOT_YET
    # Older than Meta's window and never synced.
    assert verdict(3, 0, [], coverage={}, at=p.end + 400 * DAY) == OUTSIDE
    assert verdict(3, 3, [slot], coverage=covered, at=p.end + 400 * DAY) == MATCH  # we kept it


ZONES = ["Europe/Berlin", "America/New_York", "Asia/Kolkata", "Australia/Adelaide",
         "Asia/Jerusalem", "America/St_Johns", "UTC"]  # fmt: skip
DST_2026 = int(datetime(2026, 3, 20, tzinfo=ZoneInfo("UTC")).timestamp())


@hsettings(max_examples=40, deadline=None)
@given(
    zone=st.sampled_from(ZONES),
    offsets=st.lists(st.integers(0, 30 * DAY), min_size=1, max_size=60),
)
def test_half_hour_slots_rebucket_exactly_across_dst(zone: str, offsets: list[int]) -> None:
    """Messages around the March/April 2026 DST changes: the reported volume (per UTC
    half-hour slot) lands in the same local day as the messages themselves, in every zone whose
    offset is a whole or half hour, so every row matches and nothing is approximate."""
    tz = ZoneInfo(zone)
    times = [DST_2026 + o for o in offsets]
    first = min(datetime.fromtimestamp(t, tz).date() for t in times)
    last = max(datetime.fromtimestamp(t, tz).date() for t in times)
    periods = periods_of(first, last, "day", tz)
    reported = Counter((t - t % 1800) for t in times)
    result = reconcile(
        periods, [("n", "1")],
        [("n", t, "marketing", "regular") for t in times],
        [("n", s, "marketing", "regular", v) for s, v in reported.items()],
        [("n", t) for t in times],
        {"n": Coverage(DST_2026 - 100 * DAY, DST_2026 + 100 * DAY)},
        DST_2026 + 200 * DAY,
    )  # fmt: skip
    truth = Counter(datetime.fromtimestamp(t, tz).date().isoformat() for t in times)
    assert {r.period.label: r.reported for r in result.rows} == dict(truth)
    assert all(r.verdict == MATCH for r in result.rows)
    assert not result.approximate


def test_a_quarter_hour_zone_is_flagged_approximate() -> None:
    periods = periods_of(date(2026, 11, 1), date(2026, 11, 2), "day", ZoneInfo("Asia/Kathmandu"))
    result = reconcile(periods, [], [], [], [], {}, NOW)
    assert result.approximate
    assert timedelta(0) < timedelta(seconds=periods[0].start % 1800)


# --- the answer model: the same bytes as the hand-built answer it replaced ----------------------


def _old_cost(cost: Cost) -> dict[str, object] | None:
    """`history.Cost.as_dict` before `answers.Cost` existed, verbatim."""
    if not (cost.has_meta or cost.has_estimate):
        return None
    if cost.has_meta and cost.has_estimate:
        return {
            "source": "meta+estimate",
            "meta": round(cost.meta_micros / 1_000_000, 6),
            "estimate": round(cost.estimate, 6),
            "currency": cost.currency,
        }
    if cost.has_meta:
        return {"source": "meta", "amount": round(cost.meta_micros / 1_000_000, 6),
                "currency": None}  # fmt: skip
    return {"source": "estimate", "amount": round(cost.estimate, 6), "currency": cost.currency}


def _old_json(answer: Answer, costs: dict[tuple[str, str, str, str], Cost]) -> bytes:
    """What `/v1/reconciliation` sent before its answer was a model: the hand-built dict of
    `reconciliation.Answer.as_dict`, verbatim, rendered by Starlette's JSONResponse."""

    def iso(ts: int | None) -> str | None:
        if ts is None:
            return None
        return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")

    def summary(s: NumberSummary) -> dict[str, object]:
        return {
            "number": s.number,
            "observed": s.observed,
            "reported": s.reported,
            "coverage": s.coverage,
            "absolute_difference": s.absolute_difference,
            "matching_rows": s.matching_rows,
            "rows": s.rows,
            "matching_periods": len(s.periods - s.unmatched_periods),
            "periods": len(s.periods),
        }

    def row(r: Row) -> dict[str, object]:
        cost = costs.get((r.period.label, r.number, r.category, r.pricing_type))
        return {
            "period": r.period.label,
            "start": r.period.local_start.isoformat(),
            "end": r.period.local_end.isoformat(),
            "number": r.number,
            "category": r.category,
            "pricing_type": r.pricing_type,
            "observed": r.observed,
            "reported": r.reported,
            "difference": r.difference,
            "verdict": r.verdict,
            "cost": None if cost is None else _old_cost(cost),
        }

    q = answer.question
    account = summary(answer.result.account)
    account.pop("number")
    doc = {
        "tz": q.zone.key,
        "from": q.first.isoformat(),
        "to": q.last.isoformat(),
        "granularity": q.granularity,
        "as_of": iso(answer.as_of),
        "last_sync": iso(answer.last_sync),
        "approximate": answer.result.approximate,
        "rows": [row(r) for r in answer.result.rows],
        "summary": {"numbers": [summary(s) for s in answer.result.numbers], "account": account},
    }
    return JSONResponse(doc).body


_SLOT_RANGE = st.integers(min_value=0, max_value=4 * 48 - 1)  # four days of half-hour slots
_CATEGORY = st.sampled_from(["marketing", "utility", "service", "=cmd", "ünïcode"])
_PRICING = st.sampled_from(["regular", "free_customer_service"])


@st.composite
def _costs(draw: st.DrawFn) -> Cost:
    cost = Cost()
    if draw(st.booleans()):
        cost.meta_micros = draw(st.integers(min_value=0, max_value=10**12))
        cost.has_meta = True
    if draw(st.booleans()):
        # Tiny, huge and awkward floats: where two JSON writers could disagree (`1e-06`).
        cost.estimate = draw(st.floats(min_value=0, max_value=1e9, allow_nan=False))
        cost.has_estimate = True
        cost.currency = draw(st.sampled_from(["USD", "EUR", "INR"]))
    return cost


@hsettings(max_examples=150, deadline=None)
@given(
    zone=st.sampled_from(["UTC", "Asia/Jerusalem", "Asia/Kathmandu", "America/St_Johns"]),
    granularity=st.sampled_from(["day", "month"]),
    observed=st.lists(st.tuples(st.sampled_from(["p1", "p2"]), _SLOT_RANGE, _CATEGORY, _PRICING)),
    reported=st.lists(
        st.tuples(
            st.sampled_from(["p1", "p2"]),
            _SLOT_RANGE,
            _CATEGORY,
            _PRICING,
            st.integers(min_value=0, max_value=50),
        )  # fmt: skip
    ),
    events=st.lists(st.tuples(st.sampled_from(["p1", "p2"]), _SLOT_RANGE)),
    covered=st.booleans(),
    last_sync=st.none() | st.integers(min_value=1_700_000_000, max_value=1_900_000_000),
    cost_values=st.lists(_costs(), min_size=1, max_size=8),
    data=st.data(),
)
def test_reconciliation_model_sends_the_bytes_of_the_hand_built_answer(
    zone: str,
    granularity: str,
    observed: list[tuple[str, int, str, str]],
    reported: list[tuple[str, int, str, str, int]],
    events: list[tuple[str, int]],
    covered: bool,
    last_sync: int | None,
    cost_values: list[Cost],
    data: st.DataObject,
) -> None:
    first = date(2026, 10, 30)
    start = int(datetime(2026, 10, 30, tzinfo=UTC).timestamp())
    tz = ZoneInfo(zone)
    last = first + timedelta(days=3)
    periods = periods_of(first, last, granularity, tz)
    numbers = [("p1", "972500000001"), ("p2", "972500000002")]
    now = start + 40 * DAY
    coverage = {"p1": Coverage(start - DAY, now)} if covered else {}
    result = reconcile(
        periods,
        numbers,
        [(n, start + s * 1800 + 7, c, p) for n, s, c, p in observed],
        [(n, start + s * 1800, c, p, v) for n, s, c, p, v in reported],
        [(n, start + s * 1800) for n, s in events],
        coverage,
        now,
    )
    costs = {
        (r.period.label, r.number, r.category, r.pricing_type): data.draw(
            st.sampled_from(cost_values)
        )
        for r in result.rows
    }
    question = Question(
        first=first, last=last, granularity=granularity, zone=tz, numbers=(), group_by=(),
        unique=False, all_numbers=True,
    )  # fmt: skip
    answer = Answer(question, result, now, last_sync, {k: c.model() for k, c in costs.items()})
    model = answer.model()
    assert model.wire_json() == _old_json(answer, costs)
    # The client reads back exactly what was sent.
    assert answers.Reconciliation.model_validate_json(model.wire_json()) == model


def test_api_cli_and_client_give_the_same_reconciliation(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One model behind `/v1/reconciliation`, `wastats reconcile --json/--csv` and
    `Client.reconciliation()`: the same bytes everywhere, and every CSV cell through csvsafe
    (a pricing type is whatever a webhook says)."""
    settings = make_settings(database_url)
    tenant = create_tenant(settings, timezone="UTC")
    add_number(settings, tenant, DIGITS, PNID, waba_id=WABA)
    oct3 = int(datetime(2026, 10, 3, 10, tzinfo=UTC).timestamp())
    state = FakeGraph(token=TOKEN)
    points = [FakePoint(oct3, DIGITS, "IL", "MARKETING", "REGULAR", 3, None, "0:MAX")]
    state.add_waba(FakeWaba(WABA, numbers=[FakeNumber(PNID, f"+{DIGITS}", "S")], points=points))
    db = Database(database_url)
    try:
        with fake_graph(state) as url, client_for(url) as client:
            assert sync_waba(db, client, WABA, now=NOW).error is None
    finally:
        db.dispose()
    values = [
        status(f"wamid.c{k}", "delivered", oct3 + k, number=PNID,
               pricing=("PMP", "marketing", "regular" if k else "=HYPERLINK(1)"))
        for k in range(3)
    ]  # fmt: skip
    app = create_app(settings, clock=FakeClock(NOW))
    params = {"from": "2026-10", "to": "2026-10"}
    with live_server(app) as base, httpx.Client(base_url=base) as http:  # type: ignore[arg-type]
        raw = body(*values)
        signature = sign(APP_SECRET.encode(), raw)
        answer = http.post(WEBHOOK, content=raw, headers={"X-Hub-Signature-256": signature})
        assert answer.status_code == 200
        assert app.state.ctx.ingest.wait_idle(60)
        with WastatsClient(base, tenant.client_id, tenant.client_secret) as client:
            parsed = client.reconciliation(from_="2026-10", to="2026-10")
            client_csv = client.reconciliation_csv(from_="2026-10", to="2026-10")
        token = http.post(
            "/api/settings/accessToken",
            json={"client_id": tenant.client_id, "client_secret": tenant.client_secret},
        ).json()["access_token"]
        as_json = http.get("/v1/reconciliation", params=params, headers=bearer(token))
        as_csv = http.get(
            "/v1/reconciliation", params=params | {"format": "csv"}, headers=bearer(token)
        )
    assert as_json.status_code == as_csv.status_code == 200
    assert as_csv.headers["content-type"].startswith("text/csv")
    assert parsed.wire_json() == as_json.content
    assert client_csv == as_csv.text
    by_pricing = {r.pricing_type: r for r in parsed.rows}
    cost = by_pricing["regular"].cost
    assert cost is not None
    assert (cost.source, cost.currency) == ("estimate", "USD")
    assert cost.amount == pytest.approx(3 * 0.025)
    # The injected pricing type is written as text, not as a formula.
    rows = list(csv.reader(io.StringIO(as_csv.text)))
    assert rows[0][-4:] == ["cost_source", "cost_meta", "cost_estimate", "cost_estimate_currency"]
    assert [r[5] for r in rows[1:] if "hyperlink" in r[5]] == ["'=hyperlink(1)"]
    monkeypatch.setattr("wastats.cli.reconcile.now", lambda: NOW)  # the API's clock
    # Wide enough for every column: the console's width is fixed when it is first built.
    monkeypatch.setattr(console, "width", 250)
    env = {"WASTATS_DATABASE_URL": database_url, "COLUMNS": "200"}
    command = ["reconcile", "--account", tenant.client_id, "--from", "2026-10", "--to", "2026-10"]
    cli_json = CliRunner().invoke(cli_app, [*command, "--json"], env=env)
    assert cli_json.exit_code == 0, cli_json.output
    assert cli_json.stdout.encode() == as_json.content + b"\n"
    cli_csv = CliRunner().invoke(cli_app, [*command, "--csv"], env=env)
    assert cli_csv.exit_code == 0, cli_csv.output
    assert cli_csv.stdout == as_csv.text
    table = CliRunner().invoke(cli_app, command, env=env)
    assert table.exit_code == 0, table.output
    assert "(estimate)" in table.stdout
    assert "differs" in table.stdout
    both = CliRunner().invoke(cli_app, [*command, "--json", "--csv"], env=env)
    assert both.exit_code != 0
