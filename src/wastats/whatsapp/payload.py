"""Parse a WhatsApp Cloud API webhook body into typed events.

`parse_webhook` never raises: whatever arrives, the caller gets every event that could be
understood plus a `Problem` (with a JSONPath-like location) for everything that could not.

Two paths, one set of rules:

* Fast path: the body is decoded straight into the permissive models below (every field
  optional, unknown fields ignored, loose unions where Meta has been seen to vary). This is
  the path real traffic takes and the one that has to keep up with tens of thousands of
  status updates a second.
* Slow path: when that decode fails (bad JSON, or a value of the wrong JSON type somewhere),
  the body is decoded untyped and `_walk.clean` rebuilds the same models, reporting each
  mismatched value at its exact path and dropping it.

Either way `_Emitter` then walks the models and applies the rules that need more than JSON
types (required fields, timestamps, known values, identity links).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, Final

import msgspec

from wastats.whatsapp._walk import Problems, clean, describe
from wastats.whatsapp.events import (
    IdentityLink,
    InboundMessage,
    ParseResult,
    Problem,
    StatusUpdate,
)

__all__ = ["KNOWN_PRICING_MODELS", "KNOWN_PRICING_TYPES", "KNOWN_STATUSES", "parse_webhook"]

KNOWN_STATUSES: Final = frozenset({"sent", "delivered", "read", "played", "failed", "deleted"})
KNOWN_PRICING_MODELS: Final = frozenset({"CBP", "PMP", "NBP"})
KNOWN_PRICING_TYPES: Final = frozenset(
    {"regular", "free_customer_service", "free_entry_point", "free_group_customer_service"}
)

WABA_OBJECT: Final = "whatsapp_business_account"

MAX_UNIX_SECONDS: Final = 253_402_300_799
"""9999-12-31T23:59:59Z. Anything later cannot become a `datetime`, so a timestamp beyond it
would only fail later, far from the body that carried it."""


# --- Models ---------------------------------------------------------------------------------
# Everything is optional so that a missing field never fails the fast decode; whether a field
# is required is decided (and reported) by `_Emitter`. Lists hold `X | None` so that a JSON
# null element is reported at its index instead of failing the whole body. `gc=False`: decoded
# trees cannot form reference cycles, and skipping GC tracking makes the decode ~10% faster.


class _Origin(msgspec.Struct, gc=False):
    type: str | None = None


class _Conversation(msgspec.Struct, gc=False):
    id: str | None = None
    expiration_timestamp: str | int | None = None
    origin: _Origin | None = None


class _Pricing(msgspec.Struct, gc=False):
    billable: bool | None = None
    pricing_model: str | None = None
    type: str | None = None
    category: str | None = None


class _Status(msgspec.Struct, gc=False):
    id: str | None = None
    status: str | None = None
    timestamp: str | int | None = None
    recipient_id: str | None = None
    recipient_type: str | None = None
    recipient_user_id: str | None = None
    recipient_participant_id: str | None = None
    recipient_participant_user_id: str | None = None
    conversation: _Conversation | None = None
    pricing: _Pricing | None = None


class _Message(msgspec.Struct, gc=False):
    id: str | None = None
    from_: str | None = msgspec.field(default=None, name="from")
    from_user_id: str | None = None
    timestamp: str | int | None = None
    type: str | None = None


class _Contact(msgspec.Struct, gc=False):
    wa_id: str | None = None
    user_id: str | None = None


class _Metadata(msgspec.Struct, gc=False):
    phone_number_id: str | int | None = None


class _Value(msgspec.Struct, gc=False):
    metadata: _Metadata | None = None
    contacts: list[_Contact | None] | None = None
    messages: list[_Message | None] | None = None
    statuses: list[_Status | None] | None = None


class _Change(msgspec.Struct, gc=False):
    field: str | None = None
    value: _Value | None = None


class _Entry(msgspec.Struct, gc=False):
    changes: list[_Change | None] | None = None


class _Body(msgspec.Struct, gc=False):
    object: str | None = None
    entry: list[_Entry | None] | None = None
    # A bare `changes[]` element, as stored by some tools and replayed in backfills.
    field: str | None = None
    value: _Value | None = None


_BODY_DECODER: Final = msgspec.json.Decoder(_Body)


def _gate(cls: type[msgspec.Struct], data: dict[str, Any]) -> Iterable[str]:
    """Keys the slow path must not read: only `messages` values have our shape."""
    if cls is _Change and data.get("field") != "messages":
        return ("value",)
    if cls is _Body:
        if data.get("object") not in (None, WABA_OBJECT):
            # Another product's webhook: only the `object` mismatch is worth reporting.
            return ("entry", "field", "value")
        if data.get("entry") is not None:
            return ("field", "value")
        # A `value` without `field` still marks a bare change (reported as missing `field`).
        if data.get("field") not in (None, "messages"):
            return ("value",)
    return ()


# --- Entry point ----------------------------------------------------------------------------


def parse_webhook(raw: bytes) -> ParseResult:
    """Parse one webhook body (the exact bytes received) into events and problems."""
    try:
        return _parse(raw)
    except Exception as exc:
        # Last line of defence: a parser bug must cost one body, not the ingest loop. The
        # fuzz tests assert this message never appears.
        return ParseResult(
            problems=[Problem(path="$", message=f"internal parser error: {exc!r}"[:300])]
        )


def _parse(raw: bytes) -> ParseResult:
    try:
        body = _BODY_DECODER.decode(raw)
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
        # msgspec.ValidationError is a DecodeError: a wrong JSON type lands here too.
        return _parse_slow(raw)
    return _Emitter().run(body, lambda: _top_level_keys(raw))


def _parse_slow(raw: bytes) -> ParseResult:
    # UTF-8 is checked here, not left to msgspec: its versions disagree on how they report it
    # (a UnicodeDecodeError up to 0.22, a DecodeError without the position since 0.23), and
    # the operator is owed the byte where the body went wrong.
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return _reject(f"invalid JSON: not UTF-8 ({exc.reason} at byte {exc.start})")
    try:
        data = msgspec.json.decode(raw)
    except msgspec.DecodeError as exc:
        return _reject(f"invalid JSON: {exc}")
    except RecursionError:
        return _reject("invalid JSON: nested too deeply")
    if type(data) is not dict:
        return _reject(f"expected a JSON object at the top level, got {describe(data)}")
    emitter = _Emitter()
    body = clean(data, _Body, "$", emitter.problems, _gate)
    keys = list(data)
    return emitter.run(body, lambda: keys)


def _reject(message: str) -> ParseResult:
    return ParseResult(problems=[Problem(path="$", message=message)])


def _top_level_keys(raw: bytes) -> list[str]:
    # Only for the rejection message of a non-webhook body; the typed decode kept no keys.
    try:
        data = msgspec.json.decode(raw)
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
        return []
    return list(data) if type(data) is dict else []


# --- Value helpers --------------------------------------------------------------------------


def _unix(value: str | int | None) -> int | None:
    """Unix seconds from Meta's digit string (or an integer); None if it is not one."""
    if type(value) is str:
        # isascii: str.isdigit also accepts digits such as '²' that int() rejects. The length
        # cap keeps int() away from absurd inputs; the range check below does the real work.
        if not (len(value) <= 20 and value.isdigit() and value.isascii()):
            return None
        seconds = int(value)
    elif type(value) is int:
        seconds = value
    else:
        return None
    return seconds if 0 <= seconds <= MAX_UNIX_SECONDS else None


def _category(value: str) -> str:
    # Meta writes `authentication-international` in pricing but `_` everywhere else. The
    # table saves the string work for the values real traffic carries; it is not extended at
    # run time so hostile input cannot grow it.
    return _CATEGORIES.get(value) or value.lower().replace("-", "_")


_CATEGORIES: Final[dict[str, str]] = {
    name: name.lower().replace("-", "_")
    for base in (
        "authentication",
        "authentication-international",
        "authentication_international",
        "marketing",
        "marketing_lite",
        "utility",
        "service",
        "referral_conversion",
        "business_initiated",
        "user_initiated",
        "group_marketing",
        "group_utility",
        "group_service",
    )
    for name in (base, base.upper())
}


def _id(value: str | int | None) -> str | None:
    # Graph ids are strings, but tools that re-serialise stored bodies turn them into numbers.
    return str(value) if isinstance(value, int) else value


# --- Event building -------------------------------------------------------------------------


class _Emitter:
    """Walks decoded models, applies the parsing rules and collects the result."""

    __slots__ = ("inbound", "links", "problems", "statuses")

    def __init__(self) -> None:
        self.problems = Problems()
        self.inbound: list[InboundMessage] = []
        self.statuses: list[StatusUpdate] = []
        # Keyed by (phone_number_id, wa_id, user_id): one link per pair per body.
        self.links: dict[tuple[str, str, str], IdentityLink] = {}

    def run(self, body: _Body, top_keys: Callable[[], list[str]]) -> ParseResult:
        if body.object is not None and body.object != WABA_OBJECT:
            # Another product's webhook (Page, Instagram, ...): nothing in it is ours.
            self.problems.add(
                "$.object",
                f"not a WhatsApp webhook body: `object` is {describe(body.object)}, "
                f"expected {WABA_OBJECT!r}",
            )
        elif body.entry is not None:
            for i, entry in enumerate(body.entry):
                self._entry(entry, f"$.entry[{i}]")
        elif body.field is not None or body.value is not None:
            self._change(_Change(field=body.field, value=body.value), "$")
        elif not self.problems.items:
            keys = ", ".join(f"`{k[:40]}`" for k in top_keys()[:8]) or "none"
            self.problems.add(
                "$", f"not a WhatsApp webhook body: no `entry` array (top-level keys: {keys})"
            )
        return ParseResult(
            inbound=self.inbound,
            statuses=self.statuses,
            links=list(self.links.values()),
            problems=self.problems.items,
        )

    def _entry(self, entry: _Entry | None, path: str) -> None:
        if entry is None:
            self.problems.add(path, "expected an object, got null")
            return
        if entry.changes is None:
            self.problems.add(f"{path}.changes", "missing `changes` array")
            return
        for j, change in enumerate(entry.changes):
            self._change(change, f"{path}.changes[{j}]")

    def _change(self, change: _Change | None, path: str) -> None:
        if change is None:
            self.problems.add(path, "expected an object, got null")
            return
        if change.field != "messages":
            # Another field (account updates, template updates, ...): understood, kept with the
            # body, not counted.
            if change.field is None:
                self.problems.add(f"{path}.field", "missing `field`; change skipped")
            return
        value = change.value
        vpath = f"{path}.value"
        if value is None:
            self.problems.add(vpath, "missing `value` object; change skipped")
            return
        metadata = value.metadata
        phone_number_id = _id(metadata.phone_number_id) if metadata is not None else None
        if not phone_number_id:
            if metadata is None:
                self.problems.add(
                    f"{vpath}.metadata",
                    "missing `metadata` (business phone number id); change skipped",
                )
            else:
                self.problems.add(
                    f"{vpath}.metadata.phone_number_id",
                    "missing business phone number id; change skipped",
                )
            return
        contacts = value.contacts or []
        if contacts:
            self._contacts(contacts, phone_number_id, vpath)
        if value.messages:
            self._messages(value.messages, contacts, phone_number_id, vpath)
        if value.statuses:
            self._statuses(value.statuses, phone_number_id, vpath)

    def _link(self, phone_number_id: str, wa_id: str, user_id: str) -> None:
        key = (phone_number_id, wa_id, user_id)
        if key not in self.links:
            self.links[key] = IdentityLink(
                phone_number_id=phone_number_id, wa_id=wa_id, user_id=user_id
            )

    def _contacts(self, contacts: list[_Contact | None], phone_number_id: str, vpath: str) -> None:
        for k, contact in enumerate(contacts):
            if contact is None:
                self.problems.add(f"{vpath}.contacts[{k}]", "expected an object, got null")
            elif contact.wa_id and contact.user_id:
                self._link(phone_number_id, contact.wa_id, contact.user_id)

    def _messages(
        self,
        messages: list[_Message | None],
        contacts: list[_Contact | None],
        phone_number_id: str,
        vpath: str,
    ) -> None:
        for k, msg in enumerate(messages):
            if msg is None:
                self.problems.add(f"{vpath}.messages[{k}]", "expected an object, got null")
                continue
            timestamp = _unix(msg.timestamp)
            if not msg.id or timestamp is None:
                self._report_required(f"{vpath}.messages[{k}]", msg.id, msg.timestamp, "message")
                continue
            # Empty strings carry no identity; treating them as absent keeps them out of links.
            wa_id = msg.from_ or None
            user_id = msg.from_user_id or None
            if wa_id and user_id:
                self._link(phone_number_id, wa_id, user_id)
            if wa_id is None or user_id is None:
                contact = _matching_contact(contacts, wa_id, user_id)
                if contact is not None:
                    wa_id = wa_id or contact.wa_id or None
                    user_id = user_id or contact.user_id or None
            if wa_id is None and user_id is None:
                self.problems.add(
                    f"{vpath}.messages[{k}]",
                    "no customer identity: no `from`/`from_user_id` and no matching contact;"
                    " message skipped",
                )
                continue
            self.inbound.append(
                InboundMessage(
                    phone_number_id=phone_number_id,
                    wamid=msg.id,
                    timestamp=timestamp,
                    type=msg.type if msg.type is not None else "unknown",
                    wa_id=wa_id,
                    user_id=user_id,
                )
            )

    def _report_required(
        self, path: str, id_: str | None, timestamp: str | int | None, what: str
    ) -> None:
        if id_ is None:
            self.problems.add(f"{path}.id", f"missing `id`; {what} skipped")
        elif not id_:
            self.problems.add(f"{path}.id", f"empty `id`; {what} skipped")
        if timestamp is None:
            self.problems.add(f"{path}.timestamp", f"missing `timestamp`; {what} skipped")
        elif _unix(timestamp) is None:
            self.problems.add(
                f"{path}.timestamp", f"expected Unix seconds, got {describe(timestamp)}"
            )

    def _report_status_required(self, path: str, st: _Status) -> None:
        self._report_required(path, st.id, st.timestamp, "status")
        if st.status is None:
            self.problems.add(f"{path}.status", "missing `status`; status skipped")
        elif not st.status:
            self.problems.add(f"{path}.status", "empty `status`; status skipped")

    def _unknown(self, normal: str, known: frozenset[str], path: str, problem: str) -> str:
        """A value not written as Meta documents it, in the documented case (`normal`): kept
        either way (a new value from Meta must not vanish), and reported if still unknown so
        someone looks."""
        if normal not in known:
            self.problems.add(path, problem)
        return normal

    def _statuses(
        self,
        statuses: list[_Status | None],
        phone_number_id: str,
        vpath: str,
    ) -> None:
        """One `StatusUpdate` per status that has an id, a status and a timestamp.

        One function, on purpose (cyclomatic complexity 27): this loop runs for every status
        update the service receives, and a helper call per conversation or pricing object
        would add its call overhead to each of them. The rare paths (a required field missing,
        a value outside the known ones) are helpers; only the common ones are inline."""
        append = self.statuses.append
        links = self.links
        for k, st in enumerate(statuses):
            if st is None:
                self.problems.add(f"{vpath}.statuses[{k}]", "expected an object, got null")
                continue
            status = st.status
            # `_unix` inline for what Meta sends, up to 11 ASCII digits (always in range): one
            # call less per status update; anything else goes through `_unix`.
            raw_time = st.timestamp
            timestamp: int | None
            if type(raw_time) is str and len(raw_time) <= 11 and raw_time.isdigit():
                timestamp = int(raw_time) if raw_time.isascii() else None
            else:
                timestamp = _unix(raw_time)
            if not st.id or not status or timestamp is None:
                self._report_status_required(f"{vpath}.statuses[{k}]", st)
                continue
            if status not in KNOWN_STATUSES:
                status = self._unknown(
                    status.lower(), KNOWN_STATUSES, f"{vpath}.statuses[{k}].status",
                    f"unknown status value {describe(st.status)}",
                )  # fmt: skip

            if st.recipient_type == "group":
                group_id = st.recipient_id or None
                wa_id = st.recipient_participant_id or None
                user_id = st.recipient_participant_user_id or None
            else:
                group_id = None
                wa_id = st.recipient_id or None
                user_id = st.recipient_user_id or None
            if wa_id and user_id:
                # `_link` inlined: this loop is the hot path of the whole service.
                key = (phone_number_id, wa_id, user_id)
                if key not in links:
                    links[key] = IdentityLink(
                        phone_number_id=phone_number_id, wa_id=wa_id, user_id=user_id
                    )

            conversation_id = origin = expiration = None
            conversation = st.conversation
            if conversation is not None:
                conversation_id = conversation.id
                if conversation.origin is not None and conversation.origin.type is not None:
                    origin = _category(conversation.origin.type)
                if conversation.expiration_timestamp is not None:
                    expiration = _unix(conversation.expiration_timestamp)
                    if expiration is None:
                        self.problems.add(
                            f"{vpath}.statuses[{k}].conversation.expiration_timestamp",
                            "expected Unix seconds, got "
                            + describe(conversation.expiration_timestamp),
                        )

            model = pricing_type = category = billable = None
            pricing = st.pricing
            if pricing is not None:
                billable = pricing.billable
                model = pricing.pricing_model
                if model is not None and model not in KNOWN_PRICING_MODELS:
                    model = self._unknown(
                        model.upper(), KNOWN_PRICING_MODELS,
                        f"{vpath}.statuses[{k}].pricing.pricing_model",
                        f"unknown pricing model {describe(pricing.pricing_model)}",
                    )  # fmt: skip
                pricing_type = pricing.type
                if pricing_type is not None and pricing_type not in KNOWN_PRICING_TYPES:
                    pricing_type = self._unknown(
                        pricing_type.lower(), KNOWN_PRICING_TYPES,
                        f"{vpath}.statuses[{k}].pricing.type",
                        f"unknown pricing type {describe(pricing.type)}",
                    )  # fmt: skip
                if pricing.category is not None:
                    # An unknown category is not a problem: counting files it as unclassified.
                    category = _category(pricing.category)

            # Every field by keyword (14): keep it so. At 16 keyword arguments CPython stops
            # passing them on the stack and builds a dict, which made this call about 4x slower
            # (~0.9 us instead of ~0.25 us per status, measured).
            append(
                StatusUpdate(
                    phone_number_id=phone_number_id,
                    wamid=st.id,
                    status=status,
                    timestamp=timestamp,
                    recipient_wa_id=wa_id,
                    recipient_user_id=user_id,
                    group_id=group_id,
                    conversation_id=conversation_id,
                    conversation_origin=origin,
                    expiration_timestamp=expiration,
                    pricing_model=model,
                    pricing_type=pricing_type,
                    pricing_category=category,
                    billable=billable,
                )
            )


def _matching_contact(
    contacts: list[_Contact | None], wa_id: str | None, user_id: str | None
) -> _Contact | None:
    """The contact a message belongs to: the only one, else the one sharing an identifier."""
    if len(contacts) == 1:
        return contacts[0]
    for contact in contacts:
        if contact is None:
            continue
        if (wa_id is not None and contact.wa_id == wa_id) or (
            user_id is not None and contact.user_id == user_id
        ):
            return contact
    return None
