"""Counting: the rules of `spec/counting-rules.md` as pure functions over stored facts.

`model` holds the types (facts in, counted units out), `rules` the three rules (incoming sessions,
billable PMP messages, CBP conversations) and `count_all` for a full recount, `calendar` the
attribution of a unit's UTC time to a month or day in the account's time zone.
"""

from wastats.counting.calendar import UnknownZone, day_of, load_zone, month_bounds, month_of
from wastats.counting.model import (
    PMP_START,
    RULES_VERSION,
    SESSION_SECONDS,
    Bucket,
    CountedUnit,
    Era,
    StatusFact,
    UnitKind,
)
from wastats.counting.rules import (
    UNCLASSIFIED,
    conversation_unit,
    count_all,
    incoming_sessions,
    message_conversation_ids,
    message_era,
    message_unit,
    user_country,
)

__all__ = [
    "PMP_START",
    "RULES_VERSION",
    "SESSION_SECONDS",
    "UNCLASSIFIED",
    "UnknownZone",
    "Bucket",
    "CountedUnit",
    "Era",
    "StatusFact",
    "UnitKind",
    "conversation_unit",
    "count_all",
    "day_of",
    "incoming_sessions",
    "load_zone",
    "message_conversation_ids",
    "message_era",
    "message_unit",
    "month_bounds",
    "month_of",
    "user_country",
]
