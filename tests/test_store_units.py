"""The stored shapes of facts and units: what is written reads back as the same record.

Status rows in `message_facts.statuses` are positional JSON, so their layout is pinned here; the
units repository hides a unit's two homes (`counted_units`, a message's row) from its readers.
"""

from __future__ import annotations

import importlib.util
import itertools
from collections import Counter
from pathlib import Path
from random import Random
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import text

from test_counting_rules import ZONES as CALENDAR_ZONES
from wastats.counting.calendar import month_bounds, month_of
from wastats.counting.model import Bucket, CountedUnit, Era, StatusFact, UnitKind
from wastats.store import counts as counts_repo
from wastats.store import facts as facts_repo
from wastats.store import units as units_repo
from wastats.store.db import Database
from wastats.store.facts import InboundFact
from wastats.store.units import UnitInRange

STORED_STATUS_ROW = ("status", "timestamp", "conversation_id", "conversation_origin",
                     "expiration_timestamp", "pricing_model", "pricing_type", "pricing_category",
                     "billable", "user_key", "country")  # fmt: skip
"""The layout of every status row stored since migration 0004. Rows are positional: changing
this order (or adding a `StatusFact` field anywhere but at its end) misreads every stored row."""


def test_the_stored_status_row_is_the_record_s_fields_in_a_fixed_order() -> None:
    assert facts_repo.STATUS_FIELDS == STORED_STATUS_ROW, (
        "StatusFact's fields moved: stored rows would be misread. Add new fields at its end, "
        "with a default, or migrate the stored rows."
    )
    # Migration 0004 wrote the first rows, naming two fields as its old table's columns did.
    path = Path(facts_repo.__file__).parent / "migrations" / "versions" / "0004_message_facts.py"
    spec = importlib.util.spec_from_file_location("migration_0004", path)
    assert spec is not None
    assert spec.loader is not None
    migration = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(migration)
    columns = {"ts": "timestamp", "expiration_ts": "expiration_timestamp"}
    assert tuple(columns.get(name, name) for name in migration.FIELDS) == STORED_STATUS_ROW


def test_a_stored_status_row_reads_back_field_by_field() -> None:
    stored = (
        '[["sent",1750000000,null,null,null,null,null,null,null,"k1","IL"],'
        '["delivered",1750000009,"c1","marketing",1750086400,"CBP","regular","marketing",true,'
        '"k1","IL"]]'
    )
    sent, delivered = facts_repo.decode_statuses("m1", stored)
    assert sent == StatusFact("m1", "sent", 1750000000, user_key="k1", country="IL")
    assert delivered._asdict() == {
        "message_key": "m1",
        "status": "delivered",
        "timestamp": 1750000009,
        "conversation_id": "c1",
        "conversation_origin": "marketing",
        "expiration_timestamp": 1750086400,
        "pricing_model": "CBP",
        "pricing_type": "regular",
        "pricing_category": "marketing",
        "billable": True,
        "user_key": "k1",
        "country": "IL",
    }
    assert facts_repo.encode_statuses([delivered, sent, sent]) == stored


def test_an_inbound_fact_is_stored_as_it_is(database_url: str) -> None:
    fact = InboundFact("111", "w1", "phone-key", "phone-key", "bsuid-key", 1750000000, "IL")
    bsuid_only = InboundFact("111", "w2", "bsuid-key", None, "bsuid-key", 1750000001, None)
    db = Database(database_url)
    try:
        with db.write() as conn:
            facts_repo.insert_inbound(conn, [fact, bsuid_only])
            columns = ", ".join(facts_repo.INBOUND_COLUMNS)
            rows = conn.execute(text(f"SELECT {columns} FROM inbound_messages ORDER BY wamid"))
            assert [InboundFact(*row) for row in rows] == [fact, bsuid_only]
    finally:
        db.dispose()


# --- the units repository -------------------------------------------------------------------------

_numbers = itertools.count(1)
_short = st.text(alphabet="abcdefghij_", max_size=12)
_country = st.none() | st.sampled_from(["IL", "US", "DE"])
_ts = st.integers(min_value=0, max_value=2**33)


@st.composite
def _unit(draw: st.DrawFn, n: int) -> CountedUnit:
    """A unit of any kind; `n` makes its key unique in the example."""
    kind = draw(st.sampled_from(UnitKind))
    ts = draw(_ts)
    user = draw(st.none() | _short) if kind is not UnitKind.INCOMING_SESSION else f"u{n}"
    key = {
        UnitKind.INCOMING_SESSION: f"I:{user}:{ts}",
        UnitKind.BILLABLE_MESSAGE: f"P:m{n}",
        UnitKind.CBP_CONVERSATION: f"C:c{n}",
    }[kind]
    return CountedUnit(
        unit_key=key,
        kind=kind,
        timestamp=ts,
        bucket=draw(st.sampled_from(Bucket)),
        category=draw(_short),
        pricing_type=draw(_short),
        era=None if kind is UnitKind.INCOMING_SESSION else draw(st.sampled_from(Era)),
        user_key=user,
        country=draw(_country),
    )


_units = st.integers(min_value=0, max_value=10).flatmap(
    lambda size: st.tuples(*(_unit(n) for n in range(size)))
)


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(units=_units)
def test_every_unit_reads_back_as_written_whichever_its_home(
    database_url: str, units: tuple[CountedUnit, ...]
) -> None:
    number = f"n{next(_numbers)}"  # each example its own number, in the same database
    messages = [u for u in units if u.kind is UnitKind.BILLABLE_MESSAGE]
    others = [u for u in units if u.kind is not UnitKind.BILLABLE_MESSAGE]
    db = Database(database_url)
    try:
        with db.write() as conn:
            # A message's unit lives in its message's row, which must exist first.
            facts_repo.write_messages(
                conn, [(number, u.unit_key[2:], "[]", None) for u in messages]
            )
            units_repo.replace_all(conn, number, {u.unit_key: u for u in units})

            assert units_repo.all_of(conn, number) == {u.unit_key: u for u in units}
            in_range = units_repo.between(conn, [number], 0, 2**40)
            assert Counter(in_range) == Counter(
                UnitInRange(number, u.timestamp, u.bucket.value, u.category, u.pricing_type,
                            u.user_key, u.country)
                for u in units
            )  # fmt: skip
            # The homes: message units in their rows, the others in counted_units.
            in_table = conn.execute(
                text("SELECT unit_key FROM counted_units WHERE phone_number_id = :n"), {"n": number}
            ).scalars()
            assert set(in_table) == {u.unit_key for u in others}
            keys = [(number, u.unit_key) for u in units]
            assert units_repo.by_key(conn, keys) == {(number, u.unit_key): u for u in others}
            sessions = [u for u in others if u.kind is UnitKind.INCOMING_SESSION]
            customers = [(number, u.user_key or "") for u in units]
            assert units_repo.sessions_of(conn, customers) == {
                (number, u.unit_key): u for u in sessions
            }
    finally:
        db.dispose()


@pytest.mark.parametrize("home", ["counted_units", "message row"])
def test_write_replaces_and_deletes_units(database_url: str, home: str) -> None:
    number = "222"
    kind = UnitKind.CBP_CONVERSATION if home == "counted_units" else UnitKind.BILLABLE_MESSAGE
    key = "C:c1" if kind is UnitKind.CBP_CONVERSATION else "P:m1"
    unit = CountedUnit(key, kind, 1750000000, Bucket.MARKETING, "marketing", "regular", Era.CBP,
                       "k1", "IL")  # fmt: skip
    moved = unit._replace(timestamp=1750000999, bucket=Bucket.NONE, era=Era.PMP, country=None)
    db = Database(database_url)
    try:
        with db.write() as conn:
            if kind is UnitKind.BILLABLE_MESSAGE:
                facts_repo.write_messages(conn, [(number, "m1", "[]", unit)])
            else:
                units_repo.write(conn, [(number, unit)], [])
            assert units_repo.all_of(conn, number) == {key: unit}
            if kind is UnitKind.BILLABLE_MESSAGE:
                facts_repo.write_messages(conn, [(number, "m1", "[]", moved)])
            else:
                units_repo.write(conn, [(number, moved)], [])
            assert units_repo.all_of(conn, number) == {key: moved}
            if kind is UnitKind.BILLABLE_MESSAGE:
                facts_repo.write_messages(conn, [(number, "m1", "[]", None)])
            else:
                units_repo.write(conn, [], [(number, key)])
            assert units_repo.all_of(conn, number) == {}
    finally:
        db.dispose()


# The calendar tests' zones, and one whose months began off the quarter hour (-0:44:30 until 1972).
_ROLLUP_ZONES = (*CALENDAR_ZONES, ZoneInfo("Africa/Monrovia"))


@settings(deadline=None)
@given(
    zone=st.sampled_from(_ROLLUP_ZONES),
    months=st.lists(st.integers(1970 * 12, 2100 * 12 + 11), min_size=1, max_size=4),
    seconds=st.lists(st.integers(0, 86_399), min_size=1, max_size=30),
    anywhere=st.lists(st.integers(0, 10**10 - 1), max_size=10),
    rnd=st.randoms(use_true_random=False),
)
def test_zone_months_answer_as_month_of(
    zone: ZoneInfo, months: list[int], seconds: list[int], anywhere: list[int], rnd: Random
) -> None:
    """The pipeline's remembered months (`counts.ZoneMonths`) give `month_of`'s month for any
    sequence of times, whatever was asked before: mostly times of the UTC days on which a local
    month starts, where a remembered day would answer for the wrong month."""
    stamps = list(anywhere)
    for index in months:
        start = month_bounds((index // 12) * 100 + index % 12 + 1, zone)[0]
        day = start - start % 86_400
        stamps += [day + second for second in seconds] + [start - 1, start]
    rnd.shuffle(stamps)
    remembered = counts_repo.ZoneMonths(zone)
    for ts in stamps + stamps[::-1]:
        if ts >= 0:
            assert remembered(ts) == month_of(ts, zone), ts
