"""The counting rules against `spec/counting-rules.md`: worked examples, every branch, and
properties (order, duplicates, an independent reference) over generated event streams."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterable
from datetime import date, datetime
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from reference_counting import Status, reference_monthly_counts
from wastats.counting import (
    PMP_START,
    SESSION_SECONDS,
    Bucket,
    CountedUnit,
    Era,
    StatusFact,
    UnitKind,
    conversation_unit,
    count_all,
    day_of,
    incoming_sessions,
    message_conversation_ids,
    message_era,
    message_unit,
    month_bounds,
    month_of,
    user_country,
)

UTC = ZoneInfo("UTC")
JERUSALEM = ZoneInfo("Asia/Jerusalem")
DAY = SESSION_SECONDS


def at(text: str) -> int:
    """Unix seconds of a UTC wall time such as "2025-03-10 10:00"."""
    return int(datetime.fromisoformat(text + "+00:00").timestamp())


def fact(key: str, status: str, ts: int, **fields: object) -> StatusFact:
    return StatusFact(message_key=key, status=status, timestamp=ts, **fields)  # type: ignore[arg-type]


PMP_MARKETING = {
    "pricing_model": "PMP",
    "pricing_type": "regular",
    "pricing_category": "marketing",
    "billable": True,
}


def priced(category: str, ptype: str | None = "regular", **extra: object) -> dict[str, object]:
    return {"pricing_model": "PMP", "pricing_type": ptype, "pricing_category": category, **extra}


def delivered_pmp(**pricing: object) -> list[StatusFact]:
    """A PMP message sent and delivered in September 2025, pricing on `sent`."""
    t = at("2025-09-10 12:00")
    return [fact("m1", "sent", t, **pricing), fact("m1", "delivered", t + 5)]


def buckets(units: Iterable[CountedUnit], zone: ZoneInfo = UTC) -> dict[tuple[int, str], int]:
    """The three compatible buckets per month, as the API would report them."""
    return dict(
        Counter(
            (month_of(u.timestamp, zone), str(u.bucket))
            for u in units
            if u.bucket is not Bucket.NONE
        )
    )


# --- worked examples 1-13 ---------------------------------------------------------------------


def test_example_01_messages_inside_first_24h_are_one_session() -> None:
    times = [at("2025-03-10 10:00"), at("2025-03-10 10:05"), at("2025-03-11 09:59")]
    units = incoming_sessions("U1", times, None)
    assert [(u.unit_key, u.bucket) for u in units] == [
        (f"I:U1:{at('2025-03-10 10:00')}", Bucket.INCOMING)
    ]
    assert buckets(units) == {(202503, "incoming"): 1}


def test_example_02_message_exactly_at_session_end_opens_new_session() -> None:
    units = incoming_sessions("U1", [at("2025-03-10 10:00"), at("2025-03-11 10:00")], None)
    assert [u.timestamp for u in units] == [at("2025-03-10 10:00"), at("2025-03-11 10:00")]
    assert buckets(units) == {(202503, "incoming"): 2}


def test_example_03_arrival_order_does_not_matter() -> None:
    forward = incoming_sessions("U1", [at("2025-03-10 10:00"), at("2025-03-11 10:00")], None)
    backward = incoming_sessions("U1", [at("2025-03-11 10:00"), at("2025-03-10 10:00")], None)
    assert backward == forward
    assert len(backward) == 2


def example_04_statuses() -> list[StatusFact]:
    t = at("2025-09-10 12:00")
    return [
        fact("m1", "sent", t, **PMP_MARKETING),
        fact("m1", "delivered", t + 3),
        fact("m1", "read", t + 60),
    ]


def test_example_04_marketing_template_counts_one_marketing() -> None:
    unit = message_unit(example_04_statuses())
    assert unit is not None
    assert (unit.unit_key, unit.bucket, unit.category, unit.pricing_type, unit.era) == (
        "P:m1",
        Bucket.MARKETING,
        "marketing",
        "regular",
        Era.PMP,
    )
    assert unit.timestamp == at("2025-09-10 12:00") + 3
    assert buckets(count_all([], example_04_statuses())) == {(202509, "marketing"): 1}


def test_example_05_repeated_delivered_webhook_counts_once() -> None:
    statuses = example_04_statuses()
    delivered = statuses[1]
    repeated = [*statuses, delivered, delivered]
    assert message_unit(repeated) == message_unit(statuses)
    assert count_all([], repeated) == count_all([], statuses)
    assert buckets(count_all([], repeated)) == {(202509, "marketing"): 1}


def test_example_06_sent_then_failed_counts_nothing() -> None:
    t = at("2025-09-10 12:00")
    statuses = [fact("m1", "sent", t, **PMP_MARKETING), fact("m1", "failed", t + 2)]
    assert message_unit(statuses) is None
    assert count_all([], statuses) == []


def test_example_07_free_customer_service_utility_counts_nothing() -> None:
    unit = message_unit(delivered_pmp(**priced("utility", "free_customer_service")))
    assert unit is not None
    assert (unit.bucket, unit.category, unit.pricing_type) == (
        Bucket.NONE,
        "utility",
        "free_customer_service",
    )
    assert buckets([unit]) == {}


def test_example_08_authentication_read_without_delivered_counts_service() -> None:
    t = at("2025-09-10 12:00")
    statuses = [fact("m1", "sent", t, **priced("authentication")), fact("m1", "read", t + 9)]
    unit = message_unit(statuses)
    assert unit is not None
    assert (unit.bucket, unit.category, unit.timestamp) == (Bucket.SERVICE, "authentication", t + 9)
    assert buckets([unit]) == {(202509, "service"): 1}


def test_example_09_month_of_delivery_not_of_sending() -> None:
    statuses = [
        fact("m1", "sent", at("2026-01-31 23:59:50"), **PMP_MARKETING),
        fact("m1", "delivered", at("2026-02-01 00:00:05")),
    ]
    unit = message_unit(statuses)
    assert unit is not None
    assert unit.timestamp == at("2026-02-01 00:00:05")
    assert buckets([unit]) == {(202602, "marketing"): 1}


def test_example_10_month_in_account_zone() -> None:
    units = incoming_sessions("U1", [at("2025-01-31 22:30")], "IL")
    assert buckets(units, JERUSALEM) == {(202502, "incoming"): 1}
    assert buckets(units, UTC) == {(202501, "incoming"): 1}


def test_example_11_cbp_two_templates_in_one_conversation_count_once() -> None:
    t = at("2024-05-10 08:00")
    conv = {"conversation_id": "c1", "conversation_origin": "marketing"}
    cbp = {"pricing_model": "CBP", "pricing_category": "marketing", "billable": True}
    statuses = [
        fact("m1", "sent", t, expiration_timestamp=t + DAY + 7, **conv, **cbp),
        fact("m1", "delivered", t + 2, **conv, **cbp),
        fact("m2", "sent", t + 600, expiration_timestamp=t + DAY + 7, **conv, **cbp),
        fact("m2", "delivered", t + 603, **conv, **cbp),
    ]
    assert message_unit(statuses[:2]) is None  # counted through its conversation
    units = count_all([], statuses)
    assert [(u.unit_key, u.kind, u.bucket) for u in units] == [
        ("C:c1", UnitKind.CBP_CONVERSATION, Bucket.MARKETING)
    ]
    assert buckets(units) == {(202405, "marketing"): 1}


def test_example_12_cbp_service_conversation_counts_only_the_incoming_session() -> None:
    t = at("2024-05-10 09:00")
    conv = {"conversation_id": "c2", "conversation_origin": "service"}
    statuses = [
        fact("m1", "sent", t + 300, expiration_timestamp=t + 300 + DAY, **conv),
        fact("m1", "delivered", t + 301, **conv),
    ]
    units = count_all([("U1", t, "IL")], statuses)
    by_key = {u.unit_key: u for u in units}
    assert set(by_key) == {f"I:U1:{t}", "C:c2"}
    assert (by_key["C:c2"].bucket, by_key["C:c2"].category) == (Bucket.NONE, "service")
    assert buckets(units) == {(202405, "incoming"): 1}


def test_example_13_pricing_only_on_delivered() -> None:
    t = at("2025-09-10 12:00")
    statuses = [fact("m1", "sent", t), fact("m1", "delivered", t + 4, **PMP_MARKETING)]
    unit = message_unit(statuses)
    assert unit is not None
    assert (unit.bucket, unit.pricing_type) == (Bucket.MARKETING, "regular")


# --- Rule I -----------------------------------------------------------------------------------


def test_incoming_session_unit_fields() -> None:
    (unit,) = incoming_sessions("U9", [50, 40, 40], "DE")
    assert unit == CountedUnit(
        unit_key="I:U9:40",
        kind=UnitKind.INCOMING_SESSION,
        timestamp=40,
        bucket=Bucket.INCOMING,
        category="incoming",
        pricing_type="",
        era=None,
        user_key="U9",
        country="DE",
    )


def test_late_older_message_moves_following_sessions() -> None:
    # 10:00 and next day 11:00 are two sessions; a late 09:00 message makes 09:00 and 11:00.
    base = at("2025-03-10 10:00")
    assert [u.timestamp for u in incoming_sessions("U", [base, base + DAY + 3600], None)] == [
        base,
        base + DAY + 3600,
    ]
    late = incoming_sessions("U", [base, base + DAY + 3600, base - 3600], None)
    assert [u.timestamp for u in late] == [base - 3600, base + DAY + 3600]
    assert incoming_sessions("U", [], None) == []


def test_user_country_is_latest_and_order_independent() -> None:
    assert user_country([(1, "IL"), (2, None), (0, "US")]) == "IL"
    assert user_country([(5, "US"), (5, "IL")]) == user_country([(5, "IL"), (5, "US")]) == "US"
    assert user_country([(1, None)]) is None


# --- era --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("earliest", "era"),
    [(PMP_START - 1, Era.CBP), (PMP_START, Era.PMP), (PMP_START + 1, Era.PMP)],
)
def test_era_fallback_on_earliest_status(earliest: int, era: Era) -> None:
    statuses = [fact("m", "delivered", earliest + 10), fact("m", "sent", earliest)]
    assert message_era(statuses) is era


def test_era_from_pricing_model_beats_time_and_nbp_is_cbp() -> None:
    before, after = PMP_START - 100, PMP_START + 100
    assert message_era([fact("m", "sent", before, pricing_model="PMP")]) is Era.PMP
    assert message_era([fact("m", "sent", after, pricing_model="CBP")]) is Era.CBP
    assert message_era([fact("m", "sent", after, pricing_model="NBP")]) is Era.CBP
    # An unknown model is ignored: the time decides.
    assert message_era([fact("m", "sent", before, pricing_model="XYZ")]) is Era.CBP
    assert message_era([fact("m", "sent", after, pricing_model="XYZ")]) is Era.PMP


def test_era_conflicting_models_latest_status_wins() -> None:
    statuses = [
        fact("m", "sent", PMP_START + 1, pricing_model="CBP"),
        fact("m", "delivered", PMP_START + 2, pricing_model="PMP"),
    ]
    assert message_era(statuses) is Era.PMP
    assert message_era(statuses[::-1]) is Era.PMP
    # Same second: the later lifecycle status (read over delivered) wins.
    tied = [
        fact("m", "read", PMP_START, pricing_model="CBP"),
        fact("m", "delivered", PMP_START, pricing_model="PMP"),
    ]
    assert message_era(tied) is message_era(tied[::-1]) is Era.CBP


def test_era_needs_a_status() -> None:
    with pytest.raises(ValueError, match="at least one status"):
        message_era([])


def test_message_conversation_ids() -> None:
    statuses = [
        fact("m", "sent", 1, conversation_id="c1"),
        fact("m", "delivered", 2),
        fact("m", "read", 3, conversation_id="c1"),
    ]
    assert message_conversation_ids(statuses) == frozenset({"c1"})
    assert message_conversation_ids([fact("m", "sent", 1)]) == frozenset()


# --- Rule P -----------------------------------------------------------------------------------


def test_not_delivered_is_none() -> None:
    t = at("2025-09-10 12:00")
    assert message_unit([]) is None
    assert message_unit([fact("m", "sent", t, **PMP_MARKETING)]) is None
    # `played` alone is not proof of delivery in the spec (a played voice note is also read).
    assert message_unit([fact("m", "played", t, **PMP_MARKETING)]) is None


def test_delivery_time_is_earliest_of_delivered_and_read() -> None:
    t = at("2025-09-10 12:00")
    statuses = [
        fact("m", "read", t + 50, **PMP_MARKETING),
        fact("m", "delivered", t + 70),  # a late, inconsistent delivered still counts as seen
        fact("m", "sent", t),
    ]
    unit = message_unit(statuses)
    assert unit is not None
    assert unit.timestamp == t + 50


def test_conflicting_pricing_latest_status_wins() -> None:
    t = at("2025-09-10 12:00")
    statuses = [
        fact("m", "sent", t, **priced("utility", "free_customer_service")),
        fact("m", "delivered", t + 5, **priced("marketing")),
    ]
    for order in (statuses, statuses[::-1]):
        unit = message_unit(order)
        assert unit is not None
        assert (unit.bucket, unit.category, unit.pricing_type) == (
            Bucket.MARKETING,
            "marketing",
            "regular",
        )


def test_conflicting_pricing_at_same_second_is_order_independent() -> None:
    t = at("2025-09-10 12:00")
    a = fact("m", "delivered", t, **priced("marketing"))
    b = fact("m", "delivered", t, **priced("utility"))
    read = fact("m", "read", t, **priced("utility", "free_customer_service"))
    assert message_unit([a, b]) == message_unit([b, a])
    # Lifecycle first: read beats delivered at the same second.
    unit = message_unit([a, read])
    assert unit is not None
    assert unit.pricing_type == "free_customer_service"
    assert message_unit([read, a]) == unit


@pytest.mark.parametrize(
    ("category", "bucket"),
    [
        ("marketing", Bucket.MARKETING),
        ("marketing_lite", Bucket.MARKETING),
        ("group_marketing", Bucket.MARKETING),
        ("utility", Bucket.SERVICE),
        ("authentication", Bucket.SERVICE),
        ("authentication_international", Bucket.SERVICE),
        ("group_utility", Bucket.SERVICE),
        ("service", Bucket.NONE),
        ("group_service", Bucket.NONE),
        ("referral_conversion", Bucket.NONE),
    ],
)
def test_pmp_category_table(category: str, bucket: Bucket) -> None:
    unit = message_unit(delivered_pmp(**priced(category)))
    assert unit is not None
    assert (unit.bucket, unit.category, unit.pricing_type) == (bucket, category, "regular")


@pytest.mark.parametrize("category", ["ai_bot", "marketing_lite_dynamic", "business_initiated"])
def test_pmp_unknown_category_is_unclassified(category: str) -> None:
    unit = message_unit(delivered_pmp(**priced(category)))
    assert unit is not None
    assert (unit.bucket, unit.category, unit.pricing_type) == (
        Bucket.NONE,
        "unclassified",
        "regular",
    )


@pytest.mark.parametrize(
    "ptype", ["free_customer_service", "free_entry_point", "free_group_customer_service"]
)
def test_pmp_free_types_are_kept_but_not_counted(ptype: str) -> None:
    unit = message_unit(delivered_pmp(**priced("marketing", ptype, billable=False)))
    assert unit is not None
    assert (unit.bucket, unit.category, unit.pricing_type) == (Bucket.NONE, "marketing", ptype)


def test_pmp_unknown_type_is_kept_as_sent_and_type_beats_billable() -> None:
    unit = message_unit(delivered_pmp(**priced("marketing", "paid_exempt", billable=True)))
    assert unit is not None
    assert (unit.bucket, unit.pricing_type) == (Bucket.NONE, "paid_exempt")
    unit = message_unit(delivered_pmp(**priced("marketing", "regular", billable=False)))
    assert unit is not None
    assert (unit.bucket, unit.pricing_type) == (Bucket.MARKETING, "regular")


@pytest.mark.parametrize(
    ("billable", "bucket", "ptype"),
    [
        (True, Bucket.SERVICE, "regular"),
        (False, Bucket.NONE, "free"),
        (None, Bucket.NONE, "unknown"),
    ],
)
def test_pmp_billable_fallback_without_type(
    billable: bool | None, bucket: Bucket, ptype: str
) -> None:
    unit = message_unit(delivered_pmp(**priced("utility", None, billable=billable)))
    assert unit is not None
    assert (unit.bucket, unit.category, unit.pricing_type) == (bucket, "utility", ptype)


def test_pmp_without_any_pricing_is_unclassified_unknown() -> None:
    unit = message_unit(delivered_pmp())
    assert unit is not None
    assert (unit.bucket, unit.category, unit.pricing_type, unit.era) == (
        Bucket.NONE,
        "unclassified",
        "unknown",
        Era.PMP,
    )


def test_pmp_message_with_per_message_conversation_id_is_still_rule_p() -> None:
    unit = message_unit(delivered_pmp(conversation_id="per-message-id", **PMP_MARKETING))
    assert unit is not None
    assert unit.bucket is Bucket.MARKETING


def test_unit_user_and_country_from_latest_status_having_them() -> None:
    t = at("2025-09-10 12:00")
    statuses = [
        fact("m", "sent", t, user_key="old", country="IL", **PMP_MARKETING),
        fact("m", "delivered", t + 1, user_key="new"),
        fact("m", "read", t + 2),
    ]
    unit = message_unit(statuses)
    assert unit is not None
    assert (unit.user_key, unit.country) == ("new", "IL")


def test_cbp_message_with_conversation_is_left_to_rule_c() -> None:
    t = at("2024-05-10 08:00")
    statuses = [fact("m", "sent", t), fact("m", "delivered", t + 1, conversation_id="c1")]
    assert message_unit(statuses) is None


def test_cbp_message_without_conversation_is_kept_unclassified() -> None:
    t = at("2024-05-10 08:00")
    statuses = [
        fact("m", "sent", t, pricing_model="CBP", pricing_category="marketing", billable=True),
        fact("m", "delivered", t + 1),
    ]
    unit = message_unit(statuses)
    assert unit is not None
    assert (unit.unit_key, unit.bucket, unit.category, unit.pricing_type, unit.era) == (
        "P:m",
        Bucket.NONE,
        "unclassified",
        "regular",
        Era.CBP,
    )
    assert buckets(count_all([], statuses)) == {}


# --- Rule C -----------------------------------------------------------------------------------


def cbp_message(key: str, t: int, cid: str = "c1", **sent: object) -> list[StatusFact]:
    return [
        fact(key, "sent", t, conversation_id=cid, **sent),
        fact(key, "delivered", t + 2, conversation_id=cid),
    ]


def test_conversation_start_from_expiration() -> None:
    t = at("2024-01-31 23:00")
    statuses = [
        *cbp_message("m1", t, expiration_timestamp=t + DAY + 7200, conversation_origin="utility"),
        *cbp_message("m2", t + 60, expiration_timestamp=t + DAY + 3600),
    ]
    unit = conversation_unit("c1", statuses)
    assert unit is not None
    # min(expiration) - 24 h, not the first status: lands in February.
    assert unit.timestamp == t + 3600
    assert (unit.bucket, unit.category, unit.era, unit.kind) == (
        Bucket.SERVICE,
        "utility",
        Era.CBP,
        UnitKind.CBP_CONVERSATION,
    )
    assert buckets([unit]) == {(202402, "service"): 1}


def test_conversation_start_from_min_timestamp_without_expiration() -> None:
    t = at("2024-01-31 23:00")
    statuses = [
        fact("m1", "sent", t + 30),  # no conversation on this status, still a member's status
        fact("m1", "delivered", t + 40, conversation_id="c1", conversation_origin="marketing"),
        *cbp_message("m2", t + 100),
    ]
    unit = conversation_unit("c1", statuses)
    assert unit is not None
    assert unit.timestamp == t + 30
    assert (unit.unit_key, unit.bucket) == ("C:c1", Bucket.MARKETING)


def test_conversation_not_delivered_is_none() -> None:
    t = at("2024-05-10 08:00")
    statuses = [
        fact("m1", "sent", t, conversation_id="c1", conversation_origin="marketing"),
        fact("m1", "failed", t + 1),
    ]
    assert conversation_unit("c1", statuses) is None


@pytest.mark.parametrize(
    ("origin", "category", "bucket"),
    [
        ("marketing", "marketing", Bucket.MARKETING),
        ("utility", "utility", Bucket.SERVICE),
        ("authentication", "authentication", Bucket.SERVICE),
        ("authentication_international", "authentication_international", Bucket.SERVICE),
        ("business_initiated", "business_initiated", Bucket.SERVICE),
        ("service", "service", Bucket.NONE),
        ("user_initiated", "user_initiated", Bucket.NONE),
        ("referral_conversion", "referral_conversion", Bucket.NONE),
        ("marketing_lite", "marketing_lite", Bucket.MARKETING),
        ("group_marketing", "unclassified", Bucket.NONE),
    ],
)
def test_cbp_category_table(origin: str, category: str, bucket: Bucket) -> None:
    unit = conversation_unit("c1", cbp_message("m1", 1_700_000_000, conversation_origin=origin))
    assert unit is not None
    assert (unit.category, unit.bucket) == (category, bucket)


def test_conversation_category_falls_back_to_pricing_then_unclassified() -> None:
    t = 1_700_000_000
    unit = conversation_unit("c1", cbp_message("m1", t, pricing_category="utility", billable=True))
    assert unit is not None
    assert (unit.category, unit.bucket, unit.pricing_type) == ("utility", Bucket.SERVICE, "regular")
    unit = conversation_unit("c1", cbp_message("m1", t))
    assert unit is not None
    assert (unit.category, unit.bucket) == ("unclassified", Bucket.NONE)


def test_conversation_origin_latest_wins_and_free_pricing() -> None:
    t = 1_700_000_000
    statuses = [
        *cbp_message("m1", t, conversation_origin="utility", billable=False),
        *cbp_message("m2", t + 100, conversation_origin="marketing"),
    ]
    unit = conversation_unit("c1", statuses)
    assert unit is not None
    assert (unit.category, unit.pricing_type) == ("marketing", "free")
    assert conversation_unit("c1", statuses[::-1]) == unit


def test_mixed_cbp_and_pmp_messages_sharing_an_id() -> None:
    # Transition edge case: a conversation opened in June, a PMP message with the same id later.
    t = PMP_START - 3600
    cbp = cbp_message("m1", t, conversation_origin="utility", expiration_timestamp=t + DAY)
    pmp = [
        fact("m2", "sent", PMP_START + 60, conversation_id="c1", **PMP_MARKETING),
        fact("m2", "delivered", PMP_START + 61, conversation_id="c1"),
    ]
    units = count_all([], cbp + pmp)
    by_key = {u.unit_key: u for u in units}
    assert set(by_key) == {"C:c1", "P:m2"}
    assert (by_key["C:c1"].bucket, by_key["C:c1"].timestamp) == (Bucket.SERVICE, t)
    assert by_key["P:m2"].bucket is Bucket.MARKETING
    # Only the PMP message delivered: no conversation (the PMP message is not a member).
    assert conversation_unit("c1", [cbp[0], *pmp]) is None
    # A CBP-model message sent after July 1 into the open conversation is a member.
    late_cbp = cbp_message("m3", PMP_START + 120, pricing_model="CBP", billable=False)
    unit = conversation_unit("c1", [cbp[0], *late_cbp])
    assert unit is not None
    assert unit.timestamp == t  # expiration from m1 still sets the start


def test_conversation_ignores_messages_without_its_id() -> None:
    t = 1_700_000_000
    other = cbp_message("m9", t - 5000, cid="c2", conversation_origin="marketing")
    unit = conversation_unit("c1", [*cbp_message("m1", t), *other])
    assert unit is not None
    assert (unit.timestamp, unit.category) == (t, "unclassified")


# --- count_all --------------------------------------------------------------------------------


def test_count_all_combines_rules_sorted_by_key() -> None:
    t = at("2025-09-10 12:00")
    statuses = [
        *delivered_pmp(**PMP_MARKETING),
        *cbp_message("m0", at("2024-05-10 08:00"), conversation_origin="marketing"),
    ]
    units = count_all([("U2", t, None), ("U1", t, "IL"), ("U1", t + 10, "IL")], statuses)
    assert [u.unit_key for u in units] == ["C:c1", f"I:U1:{t}", f"I:U2:{t}", "P:m1"]
    assert buckets(units) == {
        (202405, "marketing"): 1,
        (202509, "incoming"): 2,
        (202509, "marketing"): 1,
    }


# --- properties -------------------------------------------------------------------------------

ANCHORS = (at("2024-02-01 00:00"), at("2025-02-01 00:00"), PMP_START, at("2025-08-01 00:00"))
NEAR = (-DAY, -10_800, -7_200, -3_600, -1, 0, 1, 3_599, 7_199, DAY - 1, DAY, DAY + 1)
times = st.builds(
    int.__add__,
    st.sampled_from(ANCHORS),
    st.one_of(st.sampled_from(NEAR), st.integers(-3 * DAY, 3 * DAY)),
)
USERS = ("u1", "u2", "u3")
STATUSES = ("sent", "delivered", "read", "played", "failed", "deleted")
ORIGINS = (None, "marketing", "utility", "service", "user_initiated", "business_initiated")
MODELS = (None, "CBP", "PMP", "NBP", "XYZ")
TYPES = (None, "regular", "free_customer_service", "free_entry_point", "paid_exempt")
CATEGORIES = (
    None,
    "marketing",
    "marketing_lite",
    "group_marketing",
    "utility",
    "authentication_international",
    "group_utility",
    "service",
    "referral_conversion",
    "user_initiated",
    "business_initiated",
    "ai_bot",
)


@st.composite
def inbound_events(draw: st.DrawFn) -> list[tuple[str, int, str | None]]:
    """Inbound messages of a few users, often in chains that hit a session end exactly."""
    events: list[tuple[str, int, str | None]] = []
    for _ in range(draw(st.integers(0, 6))):
        user, ts = draw(st.sampled_from(USERS)), draw(times)
        country = draw(st.sampled_from((None, "IL", "US")))
        events.append((user, ts, country))
        for step in draw(st.lists(st.sampled_from((1, 60, DAY - 1, DAY, DAY + 1)), max_size=3)):
            ts += step
            events.append((user, ts, country))
    return events


# Anything goes: contradictory pricing, several conversation ids per message, odd statuses.
chaotic_facts = st.lists(
    st.builds(
        StatusFact,
        message_key=st.sampled_from(("m1", "m2", "m3", "m4")),
        status=st.sampled_from(STATUSES),
        timestamp=times,
        conversation_id=st.sampled_from((None, None, "c1", "c2")),
        conversation_origin=st.sampled_from(ORIGINS),
        expiration_timestamp=st.none() | times,
        pricing_model=st.sampled_from(MODELS),
        pricing_type=st.sampled_from(TYPES),
        pricing_category=st.sampled_from(CATEGORIES),
        billable=st.none() | st.booleans(),
        user_key=st.sampled_from((None, *USERS)),
        country=st.sampled_from((None, "IL", "US")),
    ),
    max_size=14,
)


@st.composite
def realistic_facts(draw: st.DrawFn) -> list[StatusFact]:
    """Messages shaped like real webhooks: one pricing object, shared conversation ids,
    expiration only on `sent`, statuses in lifecycle order (possibly in the same second)."""
    facts: list[StatusFact] = []
    for n in range(draw(st.integers(0, 5))):
        key = f"m{n}"
        sent_at = draw(times)
        cid = draw(st.sampled_from((None, "c1", "c2", "c3")))
        origin = draw(st.sampled_from(ORIGINS))
        expiration = draw(st.sampled_from((None, sent_at + DAY, sent_at + 3_600)))
        # Weighted towards billed, delivered messages so every bucket is reached often.
        pricing = {
            "pricing_model": draw(st.sampled_from((None, "CBP", "PMP", "PMP"))),
            "pricing_type": draw(st.sampled_from(("regular", "regular", *TYPES))),
            "pricing_category": draw(st.sampled_from(CATEGORIES)),
            "billable": draw(st.sampled_from((None, True, True, False))),
        }
        user = draw(st.sampled_from(USERS))
        lifecycle = draw(
            st.sampled_from((["sent"], ["sent", "failed"], ["sent", "delivered"], ["delivered"]))
        )
        lifecycle = lifecycle + draw(st.sampled_from(([], ["read"])))
        ts = sent_at
        for status in lifecycle:
            ts += draw(st.sampled_from((0, 1, 30, DAY)))
            with_conv = cid is not None and draw(st.booleans())
            facts.append(
                StatusFact(
                    message_key=key,
                    status=status,
                    timestamp=ts,
                    conversation_id=cid if with_conv else None,
                    conversation_origin=origin if with_conv else None,
                    expiration_timestamp=expiration if with_conv and status == "sent" else None,
                    user_key=user,
                    **(pricing if draw(st.booleans()) else {}),  # type: ignore[arg-type]
                )
            )
    return facts


status_streams = st.one_of(chaotic_facts, realistic_facts())


def as_reference(s: StatusFact) -> Status:
    return (
        s.message_key,
        s.status,
        s.timestamp,
        s.conversation_id,
        s.conversation_origin,
        s.expiration_timestamp,
        s.pricing_model,
        s.pricing_type,
        s.pricing_category,
        s.billable,
        s.user_key,
    )


@settings(deadline=None)
@given(inbound=inbound_events(), statuses=status_streams, rnd=st.randoms(use_true_random=False))
def test_count_all_is_order_independent(
    inbound: list[tuple[str, int, str | None]], statuses: list[StatusFact], rnd: random.Random
) -> None:
    expected = count_all(inbound, statuses)
    rnd.shuffle(inbound)
    rnd.shuffle(statuses)
    assert count_all(inbound, statuses) == expected


@settings(deadline=None)
@given(inbound=inbound_events(), statuses=status_streams, rnd=st.randoms(use_true_random=False))
def test_count_all_ignores_duplicates(
    inbound: list[tuple[str, int, str | None]], statuses: list[StatusFact], rnd: random.Random
) -> None:
    expected = count_all(inbound, statuses)
    more_inbound = inbound + [e for e in inbound if rnd.random() < 0.5] * 2
    more_statuses = statuses + [s for s in statuses if rnd.random() < 0.5] * 3
    rnd.shuffle(more_inbound)
    rnd.shuffle(more_statuses)
    assert count_all(more_inbound, more_statuses) == expected


@settings(deadline=None)
@given(
    inbound=inbound_events(),
    statuses=status_streams,
    zone=st.sampled_from((UTC, JERUSALEM)),
)
def test_count_all_matches_reference(
    inbound: list[tuple[str, int, str | None]], statuses: list[StatusFact], zone: ZoneInfo
) -> None:
    units = count_all(inbound, statuses)
    expected = reference_monthly_counts(
        [(user, ts) for user, ts, _ in inbound], [as_reference(s) for s in statuses], zone
    )
    assert buckets(units, zone) == expected


@settings(deadline=None)
@given(inbound=inbound_events(), statuses=status_streams)
def test_totals_and_unit_shapes(
    inbound: list[tuple[str, int, str | None]], statuses: list[StatusFact]
) -> None:
    units = count_all(inbound, statuses)
    assert len({u.unit_key for u in units}) == len(units)
    per_month: dict[int, Counter[Bucket]] = {}
    for u in units:
        per_month.setdefault(month_of(u.timestamp, UTC), Counter())[u.bucket] += 1
        # Incoming comes only from Rule I, and Rule I only gives Incoming.
        assert (u.kind is UnitKind.INCOMING_SESSION) == (u.bucket is Bucket.INCOMING)
        assert (u.era is None) == (u.kind is UnitKind.INCOMING_SESSION)
        if u.bucket in (Bucket.MARKETING, Bucket.SERVICE):
            assert u.pricing_type == "regular" or u.kind is UnitKind.CBP_CONVERSATION
    for counts in per_month.values():
        total = sum(n for bucket, n in counts.items() if bucket is not Bucket.NONE)
        assert total == counts[Bucket.MARKETING] + counts[Bucket.SERVICE] + counts[Bucket.INCOMING]


@settings(deadline=None)
@given(statuses=chaotic_facts, rnd=st.randoms(use_true_random=False))
def test_message_functions_are_order_and_duplicate_independent(
    statuses: list[StatusFact], rnd: random.Random
) -> None:
    one = [s for s in statuses if s.message_key == "m1"]
    again = one + one[: len(one) // 2]
    rnd.shuffle(again)
    assert message_unit(again) == message_unit(one)
    assert message_conversation_ids(again) == message_conversation_ids(one)
    if one:
        assert message_era(again) is message_era(one)
    shuffled = statuses + statuses[:3]
    rnd.shuffle(shuffled)
    for cid in ("c1", "c2"):
        assert conversation_unit(cid, shuffled) == conversation_unit(cid, statuses)


@settings(deadline=None)
@given(stamps=st.lists(st.one_of(times, st.integers(0, 5 * DAY)), max_size=30))
def test_incoming_sessions_partition_the_messages(stamps: list[int]) -> None:
    units = incoming_sessions("U", stamps, None)
    starts = [u.timestamp for u in units]
    assert starts == sorted(starts)
    # Sessions never overlap, and each opens at a message.
    assert all(b >= a + DAY for a, b in zip(starts, starts[1:], strict=False))
    assert set(starts) <= set(stamps)
    # Every message is in exactly one session.
    for ts in stamps:
        assert sum(start <= ts < start + DAY for start in starts) == 1
    assert incoming_sessions("U", list(reversed(stamps)) + stamps, None) == units


# --- calendar ---------------------------------------------------------------------------------


def test_month_and_day_of() -> None:
    ts = at("2025-01-31 22:30")
    assert (month_of(ts, UTC), month_of(ts, JERUSALEM)) == (202501, 202502)
    assert (day_of(ts, UTC), day_of(ts, JERUSALEM)) == (date(2025, 1, 31), date(2025, 2, 1))


def test_month_bounds_across_dst() -> None:
    # Israel moved clocks forward on 28 March 2025 and back on 26 October 2025.
    start, end = month_bounds(202503, JERUSALEM)
    assert (start, end) == (at("2025-02-28 22:00"), at("2025-03-31 21:00"))
    assert end - start == 31 * DAY - 3600
    start, end = month_bounds(202510, JERUSALEM)
    assert end - start == 31 * DAY + 3600
    assert month_bounds(202512, UTC) == (at("2025-12-01 00:00"), at("2026-01-01 00:00"))
    # Midnight of 1 October 2023 did not exist in Asuncion: the month starts at the change.
    asuncion = ZoneInfo("America/Asuncion")
    start, _ = month_bounds(202310, asuncion)
    assert (month_of(start - 1, asuncion), month_of(start, asuncion)) == (202309, 202310)
    assert datetime.fromtimestamp(start, asuncion).hour == 1


def test_month_bounds_range_and_errors() -> None:
    assert month_bounds(197001, UTC)[0] == 0
    start, end = month_bounds(999912, UTC)
    assert end - start == 31 * DAY
    for bad in (196912, 202513, 202500, 1000001):
        with pytest.raises(ValueError, match="not a month"):
            month_bounds(bad, UTC)


ZONES = tuple(
    ZoneInfo(name)
    for name in (
        "UTC",
        "Asia/Jerusalem",
        "America/New_York",
        "America/Asuncion",
        "Australia/Lord_Howe",
        "Asia/Kathmandu",
        "Pacific/Kiritimati",
        "Pacific/Apia",
    )
)


@settings(deadline=None)
@given(ts=st.integers(2 * DAY, at("2100-01-01 00:00")), zone=st.sampled_from(ZONES))
def test_month_bounds_contain_exactly_the_month(ts: int, zone: ZoneInfo) -> None:
    month = month_of(ts, zone)
    start, end = month_bounds(month, zone)
    assert start <= ts < end
    assert month_of(start, zone) == month_of(end - 1, zone) == month
    assert month_of(start - 1, zone) != month
    assert month_of(end, zone) != month
