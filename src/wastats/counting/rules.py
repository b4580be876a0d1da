"""The rules of `spec/counting-rules.md` (version 1) as pure functions.

No I/O, no database, no clock: every function maps a set of stored facts to counted units. The
ingestion pipeline calls `incoming_sessions`, `message_unit` and `conversation_unit` for the
users, messages and conversations an event touched; `count_all` runs the whole rulebook over
every fact of one business number (`wastats recount`) and is the answer the incremental path must
match.

Every function depends only on the *set* of facts given: results never change with input order or
with repeated identical facts (webhooks are delivered at least once, in any order). Where the spec
says "the latest status wins", equal timestamps are settled by `_is_later`, a total order on all
fields of a `StatusFact`, so even contradictory facts give one answer.

`message_unit` runs for every status update (tens of thousands per second), so the per-message
scan is a single plain loop without intermediate collections.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence

from wastats.counting.model import (
    PMP_START,
    SESSION_SECONDS,
    Bucket,
    CountedUnit,
    Era,
    StatusFact,
    UnitKind,
)

__all__ = [
    "UNCLASSIFIED",
    "count_all",
    "conversation_unit",
    "incoming_sessions",
    "message_conversation_ids",
    "message_era",
    "message_unit",
    "user_country",
]

UNCLASSIFIED = "unclassified"

_DELIVERED = frozenset({"delivered", "read"})
"""Statuses that prove delivery (spec, "Delivered message"). `read` implies delivered (Meta may
skip `delivered`). `played` is not named by the spec, so it does not count on its own; a played
voice message normally has a `delivered` or `read` status too."""

_STATUS_RANK: dict[str, int] = {"sent": 1, "delivered": 2, "read": 3, "played": 4}
"""Lifecycle order, used only to settle "latest status" between statuses with equal timestamps:
a `read` stamped in the same second as its `delivered` is still the later one. Other statuses
(`failed`, unknown values) rank lowest."""

_MODEL_ERA: dict[str, Era] = {"CBP": Era.CBP, "NBP": Era.CBP, "PMP": Era.PMP}
"""Known `pricing_model` values. `NBP` (notification-based, before 2022) was billed per
conversation window like CBP. Unknown values are ignored, as if the status carried none."""

_PMP_BUCKETS: dict[str, Bucket] = {
    "marketing": Bucket.MARKETING,
    "marketing_lite": Bucket.MARKETING,
    "group_marketing": Bucket.MARKETING,
    "utility": Bucket.SERVICE,
    "authentication": Bucket.SERVICE,
    "authentication_international": Bucket.SERVICE,
    "group_utility": Bucket.SERVICE,
    "service": Bucket.NONE,
    "group_service": Bucket.NONE,
    "referral_conversion": Bucket.NONE,
}
"""Rule P table. A category missing here is `unclassified`."""

_CBP_BUCKETS: dict[str, Bucket] = {
    "marketing": Bucket.MARKETING,
    # Not in the spec's Rule C table, which predates it: Marketing Messages Lite conversations
    # (April-June 2025, still CBP) are marketing conversations; Rule P maps it the same way.
    "marketing_lite": Bucket.MARKETING,
    "utility": Bucket.SERVICE,
    "authentication": Bucket.SERVICE,
    "authentication_international": Bucket.SERVICE,
    "business_initiated": Bucket.SERVICE,
    "service": Bucket.NONE,
    "user_initiated": Bucket.NONE,
    "referral_conversion": Bucket.NONE,
}
"""Rule C table. A category missing here is `unclassified`."""


# --- total order on statuses ------------------------------------------------------------------

_TieKey = tuple[
    int,
    str,
    str,
    tuple[bool, str],
    tuple[bool, str],
    tuple[bool, int],
    tuple[bool, str],
    tuple[bool, str],
    tuple[bool, str],
    tuple[bool, bool],
    tuple[bool, str],
    tuple[bool, str],
]


def _tie_key(s: StatusFact) -> _TieKey:
    """Everything but the timestamp, as a comparable tuple: lifecycle rank, then the fields in
    declaration order with None below any value. Two facts with equal keys are equal facts, so
    the order is total and the choice never depends on which copy came first."""
    return (
        _STATUS_RANK.get(s.status, 0),
        s.status,
        s.message_key,
        (False, "") if s.conversation_id is None else (True, s.conversation_id),
        (False, "") if s.conversation_origin is None else (True, s.conversation_origin),
        (False, 0) if s.expiration_timestamp is None else (True, s.expiration_timestamp),
        (False, "") if s.pricing_model is None else (True, s.pricing_model),
        (False, "") if s.pricing_type is None else (True, s.pricing_type),
        (False, "") if s.pricing_category is None else (True, s.pricing_category),
        (False, False) if s.billable is None else (True, s.billable),
        (False, "") if s.user_key is None else (True, s.user_key),
        (False, "") if s.country is None else (True, s.country),
    )


def _is_later(a: StatusFact, b: StatusFact | None) -> bool:
    """True when `a` is the later status of the two ("latest status wins"); anything beats None.

    The timestamp decides; only exact ties build the full key (rare, so it costs nothing on the
    hot path)."""
    if b is None:
        return True
    if a.timestamp != b.timestamp:
        return a.timestamp > b.timestamp
    return _tie_key(a) > _tie_key(b)


# --- one message ------------------------------------------------------------------------------


class _Scan:
    """What one pass over the statuses of one message learns (plain slots, no dataclass
    machinery, because this runs for every status update)."""

    __slots__ = (
        "country",
        "delivered_at",
        "earliest",
        "has_conversation",
        "model",
        "pricing",
        "user",
    )

    def __init__(self) -> None:
        self.earliest: int | None = None
        self.delivered_at: int | None = None
        self.pricing: StatusFact | None = None
        """Latest status carrying any pricing field: the message's pricing object."""
        self.model: StatusFact | None = None
        """Latest status carrying a known pricing model: decides the era."""
        self.has_conversation = False
        self.user: StatusFact | None = None
        self.country: StatusFact | None = None

    def add(self, s: StatusFact) -> None:
        # Runs once per status update and was the largest pure-Python cost of live counting
        # (profiled: 12% of the counting child): `_has_pricing` is inlined, and `_is_later` is
        # only called when there is something to compare with (`x is None or _is_later(s, x)`
        # is exactly `_is_later(s, x)`, without a call for a message's first status).
        ts = s.timestamp
        earliest = self.earliest
        if earliest is None or ts < earliest:
            self.earliest = ts
        if s.status in _DELIVERED:
            delivered_at = self.delivered_at
            if delivered_at is None or ts < delivered_at:
                self.delivered_at = ts
        model = s.pricing_model
        if (
            model is not None
            or s.pricing_type is not None
            or s.pricing_category is not None
            or s.billable is not None
        ):
            pricing = self.pricing
            if pricing is None or _is_later(s, pricing):
                self.pricing = s
            if model in _MODEL_ERA:
                known = self.model
                if known is None or _is_later(s, known):
                    self.model = s
        if s.conversation_id is not None:
            self.has_conversation = True
        if s.user_key is not None:
            user = self.user
            if user is None or _is_later(s, user):
                self.user = s
        if s.country is not None:
            country = self.country
            if country is None or _is_later(s, country):
                self.country = s

    def era(self) -> Era:
        if self.model is not None and self.model.pricing_model is not None:
            return _MODEL_ERA[self.model.pricing_model]
        if self.earliest is not None and self.earliest < PMP_START:
            return Era.CBP
        return Era.PMP


def _scan(statuses: Iterable[StatusFact]) -> _Scan:
    scan = _Scan()
    for s in statuses:
        scan.add(s)
    return scan


def _pricing_type(pricing: StatusFact | None) -> str:
    """The breakdown's pricing type of a message; `regular` means billed (Rule P counts it).

    `type` wins over the deprecated `billable`; `billable` decides only when `type` is absent.
    """
    if pricing is None:
        return "unknown"
    if pricing.pricing_type is not None:
        return pricing.pricing_type
    if pricing.billable is True:
        return "regular"
    if pricing.billable is False:
        return "free"
    return "unknown"  # a pricing object with neither type nor billable: cannot say it is billed


def message_era(statuses: Sequence[StatusFact]) -> Era:
    """Era of one message: its pricing model (latest status carrying a known one wins), else CBP
    when its earliest status is before `PMP_START`, else PMP."""
    if not statuses:
        raise ValueError("a message has at least one status")
    return _scan(statuses).era()


def message_conversation_ids(statuses: Sequence[StatusFact]) -> frozenset[str]:
    """The conversation ids any status of one message carries (normally zero or one)."""
    return frozenset(s.conversation_id for s in statuses if s.conversation_id is not None)


def message_unit(statuses: Sequence[StatusFact]) -> CountedUnit | None:
    """Rule P for one message (all `statuses` share one `message_key`).

    None when the message was never delivered, or when it is a CBP message with a conversation
    id (Rule C counts it through its conversation). Otherwise one unit: counted in Marketing or
    Service when billed, else kept in the breakdown with bucket `none`.
    """
    scan = _scan(statuses)
    delivered_at = scan.delivered_at
    if delivered_at is None:
        return None
    era = scan.era()
    pricing = scan.pricing
    pricing_type = _pricing_type(pricing)
    if era is Era.CBP:
        if scan.has_conversation:
            return None
        # A CBP message outside any conversation is billed by no rule; keep it visible.
        category = UNCLASSIFIED
        bucket = Bucket.NONE
    else:
        raw = pricing.pricing_category if pricing is not None else None
        table_bucket = _PMP_BUCKETS.get(raw) if raw is not None else None
        if table_bucket is None or raw is None:
            category, bucket = UNCLASSIFIED, Bucket.NONE
        else:
            category = raw
            # Free, unknown-type or unpriced messages stay in the breakdown only.
            bucket = table_bucket if pricing_type == "regular" else Bucket.NONE
    first = statuses[0]
    return CountedUnit(
        unit_key=f"P:{first.message_key}",
        kind=UnitKind.BILLABLE_MESSAGE,
        timestamp=delivered_at,
        bucket=bucket,
        category=category,
        pricing_type=pricing_type,
        era=era,
        user_key=scan.user.user_key if scan.user is not None else None,
        country=scan.country.country if scan.country is not None else None,
    )


# --- CBP conversations ------------------------------------------------------------------------


class _Members:
    """What the member messages of one CBP conversation say, gathered one message at a time
    (`add`); `conversation_unit` turns it into the conversation's unit."""

    __slots__ = ("conversation_id", "country", "delivered", "earliest", "expiration", "origin",
                 "pricing", "user")  # fmt: skip

    def __init__(self, conversation_id: str) -> None:
        self.conversation_id = conversation_id
        self.delivered = False
        self.earliest: int | None = None
        self.expiration: int | None = None
        self.origin: StatusFact | None = None
        self.pricing: StatusFact | None = None
        self.user: StatusFact | None = None
        self.country: StatusFact | None = None

    def add(self, message: Sequence[StatusFact]) -> None:
        """One message's statuses: a member if it is a CBP message and carries the id."""
        scan = _scan(message)
        if scan.era() is not Era.CBP or not self._carried(message):
            return
        self.delivered = self.delivered or scan.delivered_at is not None
        if scan.earliest is not None and (self.earliest is None or scan.earliest < self.earliest):
            self.earliest = scan.earliest
        if scan.pricing is not None and _is_later(scan.pricing, self.pricing):
            self.pricing = scan.pricing
        if scan.user is not None and _is_later(scan.user, self.user):
            self.user = scan.user
        if scan.country is not None and _is_later(scan.country, self.country):
            self.country = scan.country

    def _carried(self, message: Sequence[StatusFact]) -> bool:
        """Whether any status of the message carries the id. Origin and expiration belong to the
        conversation object they arrived in, so only statuses carrying this id supply them."""
        carries_id = False
        for s in message:
            if s.conversation_id != self.conversation_id:
                continue
            carries_id = True
            if s.conversation_origin is not None and _is_later(s, self.origin):
                self.origin = s
            exp = s.expiration_timestamp
            if exp is not None and (self.expiration is None or exp < self.expiration):
                self.expiration = exp
        return carries_id

    def classified(self) -> tuple[str, Bucket]:
        """(category, bucket) by Rule C's table: the origin, else the pricing category."""
        raw: str | None = None
        if self.origin is not None:
            raw = self.origin.conversation_origin
        elif self.pricing is not None:
            raw = self.pricing.pricing_category
        table_bucket = _CBP_BUCKETS.get(raw) if raw is not None else None
        if table_bucket is None or raw is None:
            return UNCLASSIFIED, Bucket.NONE
        return raw, table_bucket


def conversation_unit(conversation_id: str, statuses: Sequence[StatusFact]) -> CountedUnit | None:
    """Rule C for one conversation id of one business number.

    `statuses`: all statuses of the messages that carry `conversation_id` on at least one status.
    Only CBP messages that carry it are members (a PMP message sharing the id, as per-message or
    free-entry-point ids do after July 2025, is counted by Rule P instead). None when no member
    was delivered.
    """
    by_message: dict[str, list[StatusFact]] = defaultdict(list)
    for s in statuses:
        by_message[s.message_key].append(s)
    members = _Members(conversation_id)
    for message in by_message.values():
        members.add(message)
    if not members.delivered or members.earliest is None:
        return None
    category, bucket = members.classified()
    # Expiration is exact (Meta's own window); the first status seen is only an estimate.
    expiration, pricing = members.expiration, members.pricing
    start = expiration - SESSION_SECONDS if expiration is not None else members.earliest
    return CountedUnit(
        unit_key=f"C:{conversation_id}",
        kind=UnitKind.CBP_CONVERSATION,
        timestamp=start,
        bucket=bucket,
        category=category,
        pricing_type="free" if pricing is not None and pricing.billable is False else "regular",
        era=Era.CBP,
        user_key=members.user.user_key if members.user is not None else None,
        country=members.country.country if members.country is not None else None,
    )


# --- incoming sessions ------------------------------------------------------------------------


def incoming_sessions(
    user_key: str, timestamps: Iterable[int], country: str | None
) -> list[CountedUnit]:
    """Rule I for one (business number, user): one unit per 24-hour session, ordered by start.

    The set of times decides, so a duplicate or a late, older message simply gives the sessions
    the complete set implies (which may move later sessions)."""
    units: list[CountedUnit] = []
    end: int | None = None
    for ts in sorted(set(timestamps)):
        if end is None or ts >= end:
            units.append(
                CountedUnit(
                    unit_key=f"I:{user_key}:{ts}",
                    kind=UnitKind.INCOMING_SESSION,
                    timestamp=ts,
                    bucket=Bucket.INCOMING,
                    category="incoming",
                    pricing_type="",
                    era=None,
                    user_key=user_key,
                    country=country,
                )
            )
            end = ts + SESSION_SECONDS
    return units


def user_country(messages: Iterable[tuple[int, str | None]]) -> str | None:
    """The country shown for a user's sessions, from (timestamp, country) of their inbound
    messages: the one on the latest message that has one (ties: the greater code).

    A country derives from the phone number, so one user normally has one; the rule only makes
    the choice independent of order when that does not hold."""
    best: tuple[int, str] | None = None
    for ts, country in messages:
        if country is not None and (best is None or (ts, country) > best):
            best = (ts, country)
    return best[1] if best is not None else None


# --- the whole rulebook -----------------------------------------------------------------------


def count_all(
    inbound: Iterable[tuple[str, int, str | None]], statuses: Iterable[StatusFact]
) -> list[CountedUnit]:
    """Every counted unit of one business number from all its facts, sorted by `unit_key`.

    `inbound`: (user_key, timestamp, country) of its non-system inbound messages."""
    per_user: dict[str, set[tuple[int, str | None]]] = defaultdict(set)
    for user_key, ts, country in inbound:
        per_user[user_key].add((ts, country))

    per_message: dict[str, list[StatusFact]] = defaultdict(list)
    for s in set(statuses):  # identical facts are one fact
        per_message[s.message_key].append(s)

    members: dict[str, list[str]] = defaultdict(list)
    units: list[CountedUnit] = []
    for user_key, seen in per_user.items():
        units.extend(incoming_sessions(user_key, (ts for ts, _ in seen), user_country(seen)))
    for message_key, group in per_message.items():
        unit = message_unit(group)
        if unit is not None:
            units.append(unit)
        for conversation_id in message_conversation_ids(group):
            members[conversation_id].append(message_key)
    for conversation_id, keys in members.items():
        unit = conversation_unit(conversation_id, [s for k in keys for s in per_message[k]])
        if unit is not None:
            units.append(unit)
    units.sort(key=lambda u: u.unit_key)
    return units
