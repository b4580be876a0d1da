"""Property tests of the whole ingestion path on a real database.

Generated streams of inbound messages and statuses (several customers, named by phone number,
by business-scoped user id or by both, messages, conversations,
both pricing eras, times clustered at month ends, 24-hour edges and the PMP switch) are packed
into webhook bodies, shuffled, duplicated, split into arbitrary batches and run through the real
parser, pipeline and storage. The monthly counts must equal those of the independent reference
implementation of the rules over the *set* of events, and a full recount must find nothing to
repair. The number is registered before, during or after ingestion (spec: nothing dropped).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import shutil
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import SECRET_KEY, drop_postgres_database, make_settings, new_postgres_database
from helpers import add_number, count_batch, create_tenant
from pgcluster import PostgresCluster
from reference_counting import reference_monthly_counts
from wastats.domain import numbers
from wastats.ingest.identity import CustomerHasher
from wastats.ingest.pipeline import Pipeline
from wastats.ingest.recount import recount_number
from wastats.store import counts as counts_repo
from wastats.store import numbers as numbers_repo
from wastats.store import units as units_repo
from wastats.store.db import Database
from webhooks import PHONE_NUMBER_ID, at, envelope, generated_inbound, generated_status

PMP_START = at("2025-07-01 00:00")
DAY = 86400
BASES = [PMP_START - 3 * DAY, PMP_START - 3600, PMP_START, at("2025-01-31 22:00"),
         at("2025-08-31 23:00")]  # fmt: skip
OFFSETS = [0, 1, 59, 3600, DAY - 1, DAY, DAY + 1, 2 * DAY, 7200 + DAY]

times = st.builds(lambda b, o: b + o, st.sampled_from(BASES), st.sampled_from(OFFSETS))
users = st.sampled_from(["972501111111", "972502222222", "14155550100"])
categories = st.sampled_from(["marketing", "utility", "authentication", "service",
                              "marketing_lite", "referral_conversion", "business_initiated",
                              "user_initiated", "group_marketing", "ai_bot"])  # fmt: skip
pricing = st.one_of(
    st.none(),
    st.tuples(
        st.sampled_from(["PMP", "CBP", None]),
        categories,
        st.sampled_from(["regular", "free_customer_service", "free_entry_point", None]),
        st.sampled_from([True, False, None]),
    ),
)
conversation = st.one_of(
    st.none(),
    st.tuples(
        st.sampled_from(["c1", "c2", "c3"]),
        st.one_of(st.none(), categories),
        st.one_of(st.none(), times),
    ),  # fmt: skip
)
# Meta never reuses a wamid, but a placeholder-filled test payload does (the fixtures hold two
# different messages both called `wamid.ID`): a reused wamid must not make counts depend on order.
inbound_wamids = st.sampled_from([None, None, "wamid.ID", "wamid.ID2"])
# How the customer is named: by phone number, by business-scoped user id (BSUID) only, or by
# both, which links the two (spec: the same user from then on, whatever arrived before).
BSUIDS = {"972501111111": "IL.1111", "972502222222": "IL.2222", "14155550100": "US.0100"}
identities = st.sampled_from(["phone", "phone", "bsuid", "both"])
inbound_event = st.tuples(st.just("in"), users, times, inbound_wamids, identities)
status_event = st.tuples(
    st.just("st"),
    st.sampled_from(["m1", "m2", "m3", "m4", "m5"]),
    st.sampled_from(["sent", "delivered", "read", "failed"]),
    times,
    conversation,
    pricing,
    users,
    identities,
)
event_lists = st.lists(st.one_of(inbound_event, status_event), min_size=1, max_size=25)


def to_value(event: tuple[Any, ...]) -> dict[str, Any]:
    metadata = {"display_phone_number": "15550783881", "phone_number_id": PHONE_NUMBER_ID}
    if event[0] == "in":
        _, user, ts, wamid, identity = event
        value = generated_inbound(metadata, user, ts, wamid or f"wamid.in.{user}.{ts}")
        contact, message = value["contacts"][0], value["messages"][0]
        if identity != "phone":
            contact["user_id"] = BSUIDS[user]
        if identity == "bsuid":
            del contact["wa_id"], message["from"]
        return value
    _, wamid, state, ts, conv, price, user, identity = event
    value = generated_status(metadata, wamid, state, ts, user, conv, price)
    entry = value["statuses"][0]
    if identity != "phone":
        entry["recipient_user_id"] = BSUIDS[user]
    if identity == "bsuid":
        del entry["recipient_id"]
    return value


def to_reference(events: list[tuple[Any, ...]]) -> tuple[list[Any], list[Any]]:
    # A BSUID-only customer is their phone number's if any event links the two, else their own.
    linked = {e[1] if e[0] == "in" else e[6] for e in events if e[-1] == "both"}

    def who(user: str, identity: str) -> str:
        return BSUIDS[user] if identity == "bsuid" and user not in linked else user

    inbound = [(who(e[1], e[4]), e[2]) for e in events if e[0] == "in"]
    statuses = []
    for _, wamid, state, ts, conv, price, user, _ in (e for e in events if e[0] == "st"):
        c_id, origin, expiration = conv if conv else (None, None, None)
        model, category, type_, billable = price if price else (None, None, None, None)
        statuses.append((wamid, state, ts, c_id, origin, expiration, model, type_, category,
                         billable, user))  # fmt: skip
    return inbound, statuses


@st.composite
def deliveries(draw: st.DrawFn) -> tuple[list[tuple[Any, ...]], list[list[bytes]], int, bool]:
    """(events, batches of raw bodies, when to register: 0 before, 1 midway, 2 after, whether
    batches are drafted as `wastats import` does)."""
    events = draw(event_lists)
    copies = list(events) + draw(st.lists(st.sampled_from(events), max_size=6))  # duplicates
    order = draw(st.permutations(range(len(copies))))
    raws: list[bytes] = []
    i = 0
    while i < len(order):
        size = draw(st.integers(1, 4))  # several changes per body, as Meta batches them
        values = [to_value(copies[j]) for j in order[i : i + size]]
        # Vary the encoding so a duplicated event is a different body, not an inbox duplicate.
        raws.append(json.dumps(envelope(*values), indent=draw(st.sampled_from([None, 1]))).encode())
        i += size
    cuts = sorted(set(draw(st.lists(st.integers(1, max(1, len(raws) - 1)), max_size=3))))
    batches = [raws[a:b] for a, b in zip([0, *cuts], [*cuts, len(raws)], strict=True) if raws[a:b]]
    return events, batches, draw(st.integers(0, 2)), draw(st.booleans())


def run_case(url: str, case: tuple[list[tuple[Any, ...]], list[list[bytes]], int, bool]) -> None:
    events, batches, register_at, draft = case
    config = make_settings(url)
    tenant = create_tenant(config, "Prop", "Asia/Jerusalem")
    pipeline = Pipeline(CustomerHasher(SECRET_KEY.encode()))
    db = Database(url, pool_size=1)
    try:
        if register_at == 0:
            add_number(config, tenant, "15550783881", PHONE_NUMBER_ID)
        for index, batch in enumerate(batches):
            if register_at == 1 and index == len(batches) // 2:
                add_number(config, tenant, "15550783881", PHONE_NUMBER_ID)
            with db.write() as conn:
                count_batch(conn, pipeline, batch, draft=draft)
        if register_at == 2:
            add_number(config, tenant, "15550783881", PHONE_NUMBER_ID)

        inbound, statuses = to_reference(events)
        expected = reference_monthly_counts(inbound, statuses, ZoneInfo("Asia/Jerusalem"))
        with db.read() as conn:
            account_id = numbers_repo.get_number(conn, PHONE_NUMBER_ID).account_id  # type: ignore[union-attr]
            totals = counts_repo.monthly_bucket_totals(
                conn, account_id=account_id, phone_number_id=None, first_month=None, last_month=None
            )
        got = {(m, b): n for m, buckets in totals.items() for b, n in buckets.items() if n}
        assert got == {k: v for k, v in expected.items() if v}
        with db.write() as conn:
            assert not recount_number(conn, PHONE_NUMBER_ID, repair=False).differs
    finally:
        db.dispose()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=deliveries())
def test_any_order_duplication_and_batching_give_the_reference_counts_sqlite(
    sqlite_template: Path, case: Any
) -> None:
    directory = Path(tempfile.mkdtemp(prefix="wastats-prop-"))
    try:
        target = directory / "wastats.db"
        shutil.copyfile(sqlite_template, target)
        run_case(f"sqlite:///{target}", case)
    finally:
        shutil.rmtree(directory, ignore_errors=True)


@pytest.mark.postgres
@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=deliveries())
def test_any_order_duplication_and_batching_give_the_reference_counts_postgresql(
    pg_cluster: PostgresCluster, case: Any
) -> None:
    name = new_postgres_database(pg_cluster)
    try:
        run_case(pg_cluster.url(name), case)
    finally:
        drop_postgres_database(pg_cluster, name)


def run_move_case(
    url: str, case: tuple[list[tuple[Any, ...]], list[list[bytes]], int, bool], moved_at: int
) -> None:
    """The number moves from one account to another in the middle of ingestion (a time among
    the events' own, so units sit exactly on the edge): the new owner's rollups, built partly
    at registration and partly by the pipeline, must be exactly those a full recount builds
    from the units since the move, and the former owner keeps no rollup."""
    _, batches, _, draft = case
    config = make_settings(url)
    before = create_tenant(config, "Before", "Asia/Jerusalem")
    after = create_tenant(config, "After", "UTC")
    pipeline = Pipeline(CustomerHasher(SECRET_KEY.encode()))
    db = Database(url, pool_size=1)
    try:
        add_number(config, before, "15550783881", PHONE_NUMBER_ID, now=at("2024-01-01 00:00"))
        for index, batch in enumerate(batches):
            if index == len(batches) // 2:
                with db.write() as conn:
                    numbers.remove_number(conn, PHONE_NUMBER_ID, now=moved_at - 60)
                add_number(config, after, "15550783881", PHONE_NUMBER_ID, now=moved_at)
            with db.write() as conn:
                count_batch(conn, pipeline, batch, draft=draft)
        with db.write() as conn:
            number = numbers_repo.get_number(conn, PHONE_NUMBER_ID)
            assert number is not None
            moved = len(batches) // 2 < len(batches)
            assert number.counts_from == (moved_at if moved else None)
            assert not recount_number(conn, PHONE_NUMBER_ID, repair=False).differs
            if moved:
                # The new account is in UTC: no rollup of a month before the move's.
                rows = counts_repo.rollup_rows(conn, PHONE_NUMBER_ID)
                first = int(datetime.fromtimestamp(moved_at, UTC).strftime("%Y%m"))
                assert all(key.month >= first for key in rows)
                units = units_repo.all_of(conn, PHONE_NUMBER_ID).values()
                assert sum(rows.values()) == sum(1 for u in units if u.timestamp >= moved_at)
    finally:
        db.dispose()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=deliveries(), moved_at=times)
def test_a_number_moved_mid_stream_counts_from_the_move_sqlite(
    sqlite_template: Path, case: Any, moved_at: int
) -> None:
    directory = Path(tempfile.mkdtemp(prefix="wastats-prop-"))
    try:
        target = directory / "wastats.db"
        shutil.copyfile(sqlite_template, target)
        run_move_case(f"sqlite:///{target}", case, moved_at)
    finally:
        shutil.rmtree(directory, ignore_errors=True)


@pytest.mark.postgres
@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=deliveries(), moved_at=times)
def test_a_number_moved_mid_stream_counts_from_the_move_postgresql(
    pg_cluster: PostgresCluster, case: Any, moved_at: int
) -> None:
    name = new_postgres_database(pg_cluster)
    try:
        run_move_case(pg_cluster.url(name), case, moved_at)
    finally:
        drop_postgres_database(pg_cluster, name)


@settings(max_examples=200, deadline=None)
@given(key=st.binary(min_size=16, max_size=200), value=st.text())
def test_customer_keys_are_hmac_sha256_of_the_secret(key: bytes, value: str) -> None:
    """The hasher computes HMAC by hand from precomputed pads (for speed): it must be exactly
    HMAC-SHA256, for short keys and for keys longer than SHA-256's block (hashed first), or
    stored keys would stop matching after a change of implementation."""
    hasher = CustomerHasher(key)
    raw = value.encode("utf-8", "surrogatepass")
    expected = {
        kind: hmac.new(key, kind + raw, hashlib.sha256).hexdigest()[:32]
        for kind in (b"bsuid:", b"wamid:")
    }
    assert hasher.bsuid_key(value) == expected[b"bsuid:"]
    assert hasher.message_id(value) == expected[b"wamid:"]
