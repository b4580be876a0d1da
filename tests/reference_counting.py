"""A deliberately naive reference for `spec/counting-rules.md`, written from the spec alone.

It does not import `wastats.counting.rules` (nor the model's constants): it re-reads the spec and
counts the three buckets by brute force over raw events, so a test comparing it with the real
rules compares two independent readings of the contract. Clarity over speed everywhere.

Where the spec leaves a choice open, this file follows the decisions recorded for rules version 1
(see the release note): "latest status" ties are broken by lifecycle rank, then by every other
field with "absent" lowest; unknown pricing models are ignored; a conversation's origin and
expiration come only from statuses carrying its id; a message is in a conversation only if it is
a CBP message carrying that id.

Events:
- inbound: (user, ts)
- status: (message_key, status, ts, conversation_id, origin, expiration, pricing_model,
  pricing_type, category, billable, user)
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from datetime import datetime
from zoneinfo import ZoneInfo

Status = tuple[
    str,  # 0 message_key
    str,  # 1 status
    int,  # 2 ts
    str | None,  # 3 conversation_id
    str | None,  # 4 origin
    int | None,  # 5 expiration
    str | None,  # 6 pricing_model
    str | None,  # 7 pricing_type
    str | None,  # 8 category
    bool | None,  # 9 billable
    str | None,  # 10 user
]

DAY = 24 * 60 * 60
PMP_STARTS_AT = int(datetime.fromisoformat("2025-07-01T00:00:00+00:00").timestamp())

MARKETING, SERVICE, INCOMING = "marketing", "service", "incoming"

P_TABLE = {
    "marketing": MARKETING,
    "marketing_lite": MARKETING,
    "group_marketing": MARKETING,
    "utility": SERVICE,
    "authentication": SERVICE,
    "authentication_international": SERVICE,
    "group_utility": SERVICE,
    # service, group_service, referral_conversion and anything else: no bucket
}
C_TABLE = {
    "marketing": MARKETING,
    "marketing_lite": MARKETING,  # wastats' reading: the spec's table predates it
    "utility": SERVICE,
    "authentication": SERVICE,
    "authentication_international": SERVICE,
    "business_initiated": SERVICE,
    # service, user_initiated, referral_conversion and anything else: no bucket
}
LIFECYCLE = ["sent", "delivered", "read", "played"]


def month(ts: int, zone: ZoneInfo) -> int:
    local = datetime.fromtimestamp(ts, zone)
    return local.year * 100 + local.month


def latest(statuses: Iterable[Status]) -> Status:
    """The latest status: by time, then lifecycle, then every other field (absent lowest)."""

    def key(ev: Status) -> tuple[object, ...]:
        rank = LIFECYCLE.index(ev[1]) + 1 if ev[1] in LIFECYCLE else 0
        rest = tuple((x is not None, x if x is not None else 0) for x in ev[3:])
        return (ev[2], rank, ev[1], ev[0], *rest)

    return max(statuses, key=key)


def carries_pricing(ev: Status) -> bool:
    return any(x is not None for x in ev[6:10])


def pricing_of(statuses: list[Status]) -> Status | None:
    priced = [ev for ev in statuses if carries_pricing(ev)]
    return latest(priced) if priced else None


def era_of(statuses: list[Status]) -> str:
    with_model = [ev for ev in statuses if ev[6] in ("CBP", "NBP", "PMP")]
    if with_model:
        return "PMP" if latest(with_model)[6] == "PMP" else "CBP"
    return "CBP" if min(ev[2] for ev in statuses) < PMP_STARTS_AT else "PMP"


def delivery_time(statuses: list[Status]) -> int | None:
    times = [ev[2] for ev in statuses if ev[1] in ("delivered", "read")]
    return min(times) if times else None


def reference_monthly_counts(
    inbound_events: Iterable[tuple[str, int]],
    status_events: Iterable[Status],
    zone: ZoneInfo,
) -> dict[tuple[int, str], int]:
    """(month YYYYMM, bucket) → count, for the buckets marketing, service and incoming only."""
    counts: Counter[tuple[int, str]] = Counter()
    inbound = list(inbound_events)

    # Rule I: per user, walk the sorted distinct times; a time at/after the session end opens one.
    for user in {user for user, _ in inbound}:
        times = sorted({ts for u, ts in inbound if u == user})
        session_end = None
        for ts in times:
            if session_end is None or ts >= session_end:
                counts[(month(ts, zone), INCOMING)] += 1
                session_end = ts + DAY

    statuses = set(status_events)
    messages = {ev[0] for ev in statuses}
    of_message = {m: [ev for ev in statuses if ev[0] == m] for m in messages}

    # Rule P: delivered PMP messages, billed (regular, or no type and billable true).
    for m in messages:
        evs = of_message[m]
        if era_of(evs) != "PMP":
            continue
        delivered = delivery_time(evs)
        pricing = pricing_of(evs)
        if delivered is None or pricing is None:
            continue
        billed = pricing[7] == "regular" or (pricing[7] is None and pricing[9] is True)
        bucket = P_TABLE.get(pricing[8] or "")
        if billed and bucket is not None:
            counts[(month(delivered, zone), bucket)] += 1

    # Rule C: one per conversation id among CBP messages, if any member was delivered.
    cbp = [m for m in messages if era_of(of_message[m]) == "CBP"]
    conversation_ids = {ev[3] for m in cbp for ev in of_message[m] if ev[3] is not None}
    for cid in conversation_ids:
        members = [m for m in cbp if any(ev[3] == cid for ev in of_message[m])]
        if all(delivery_time(of_message[m]) is None for m in members):
            continue
        member_statuses = [ev for m in members for ev in of_message[m]]
        own = [ev for ev in member_statuses if ev[3] == cid]
        with_origin = [ev for ev in own if ev[4] is not None]
        if with_origin:
            category = latest(with_origin)[4]
        else:
            pricing = pricing_of(member_statuses)
            category = pricing[8] if pricing is not None else None
        expirations = [ev[5] for ev in own if ev[5] is not None]
        start = min(expirations) - DAY if expirations else min(ev[2] for ev in member_statuses)
        bucket = C_TABLE.get(category or "")
        if bucket is not None:
            counts[(month(start, zone), bucket)] += 1

    return dict(counts)
