"""Typed events extracted from a WhatsApp Cloud API webhook body.

These are the only things the rest of wastats learns from Meta's JSON: the parser
(`wastats.whatsapp.payload`) turns a raw body into a `ParseResult`, and ingestion turns the
events into stored facts. They carry what counting uses and nothing else (no display number,
WABA id or ad referral: a feature that needs them reads them from the raw body). Identifiers
are kept exactly as Meta sent them here; ingestion hashes customer identifiers before anything
is stored.
"""

from __future__ import annotations

import msgspec


class InboundMessage(msgspec.Struct, frozen=True, kw_only=True):
    """A message a customer sent to a business number (`value.messages[]`)."""

    phone_number_id: str
    """`value.metadata.phone_number_id`: the business number the message was sent to."""
    wamid: str
    """`messages[].id`: unique per message, the idempotency key."""
    timestamp: int
    """`messages[].timestamp` as Unix seconds (Meta sends a string)."""
    type: str
    """`messages[].type` (`text`, `image`, ..., `system`, `unsupported`); unknown types kept."""
    wa_id: str | None
    """The customer's phone number: `messages[].from`, else the matching `contacts[].wa_id`."""
    user_id: str | None
    """Business-scoped user id (BSUID): `messages[].from_user_id`, else the matching contact's
    `user_id`."""


class StatusUpdate(msgspec.Struct, frozen=True, kw_only=True):
    """A status of a message the business sent (`value.statuses[]`)."""

    phone_number_id: str
    wamid: str
    """`statuses[].id`: the business message this status is about."""
    status: str
    """`sent`, `delivered`, `read`, `played`, `failed`; unknown values kept as sent (lower case)."""
    timestamp: int
    recipient_wa_id: str | None
    """The customer's phone number: `recipient_id` for 1:1 messages, `recipient_participant_id`
    for group messages."""
    recipient_user_id: str | None
    """Business-scoped user id: `recipient_user_id` (1:1) or `recipient_participant_user_id`
    (group)."""
    group_id: str | None = None
    """`recipient_id` when `recipient_type` is `group`, else None."""
    conversation_id: str | None = None
    conversation_origin: str | None = None
    """`conversation.origin.type`, normalised (lower case, `-` → `_`)."""
    expiration_timestamp: int | None = None
    pricing_model: str | None = None
    """`pricing.pricing_model` upper-cased: `CBP`, `PMP` (or another value, kept)."""
    pricing_type: str | None = None
    """`pricing.type` lower-cased: `regular`, `free_customer_service`, `free_entry_point`, ..."""
    pricing_category: str | None = None
    """`pricing.category`, normalised (lower case, `-` → `_`)."""
    billable: bool | None = None


class IdentityLink(msgspec.Struct, frozen=True, kw_only=True):
    """A phone number and a business-scoped user id seen for the same person in one payload."""

    phone_number_id: str
    wa_id: str
    user_id: str


class Problem(msgspec.Struct, frozen=True, kw_only=True):
    """Something in a body that was not understood; `path` points into the JSON."""

    path: str
    """A JSONPath-like location such as `$.entry[0].changes[1].value.statuses[3].timestamp`."""
    message: str


class ParseResult(msgspec.Struct, kw_only=True):
    """Everything one webhook body says, plus what could not be understood in it."""

    inbound: list[InboundMessage] = msgspec.field(default_factory=list)
    statuses: list[StatusUpdate] = msgspec.field(default_factory=list)
    links: list[IdentityLink] = msgspec.field(default_factory=list)
    problems: list[Problem] = msgspec.field(default_factory=list)

    @property
    def rejected(self) -> bool:
        """A body with any problem is marked rejected so an operator sees it; the events that
        were understood are still counted (counting is idempotent, so a replay is safe)."""
        return bool(self.problems)

    def reason(self) -> str:
        """One line for the operator: the first problems, with their paths."""
        shown = "; ".join(f"{p.path}: {p.message}" for p in self.problems[:3])
        more = len(self.problems) - 3
        return shown + (f" (and {more} more)" if more > 0 else "")
