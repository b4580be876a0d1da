"""Tests for `wastats.whatsapp.payload.parse_webhook`: real fixtures, targeted rules, fuzzing."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec.inspect as mi
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from wastats.whatsapp.events import IdentityLink, InboundMessage, ParseResult, StatusUpdate
from wastats.whatsapp.payload import MAX_UNIX_SECONDS, _Body, _parse_slow, parse_webhook

FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "webhooks"


def fixture_bytes(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


# --- Fixture table --------------------------------------------------------------------------


@dataclass(frozen=True)
class Expect:
    inbound: int = 0
    statuses: int = 0
    links: int = 0
    rejected: bool = False
    reason: str | None = None
    """A substring of `ParseResult.reason()`."""
    check: Callable[[ParseResult], None] | None = None
    link: IdentityLink | None = None
    """One link that must be among `ParseResult.links`."""


NOT_WEBHOOK = "not a WhatsApp webhook body"


def _one_status(**want: Any) -> Callable[[ParseResult], None]:
    def check(result: ParseResult) -> None:
        (status,) = result.statuses
        got = {key: getattr(status, key) for key in want}
        assert got == want

    return check


def _one_inbound(**want: Any) -> Callable[[ParseResult], None]:
    def check(result: ParseResult) -> None:
        (message,) = result.inbound
        got = {key: getattr(message, key) for key in want}
        assert got == want

    return check


def _check_typebot(result: ParseResult) -> None:
    (message,) = result.inbound
    assert (message.wamid, message.wa_id, message.timestamp) == (
        "incoming-message",
        "33600000000",
        1700000000,
    )
    got = [
        (s.wamid, s.status, s.conversation_id, s.conversation_origin, s.timestamp)
        for s in result.statuses
    ]
    assert got == [
        ("utility-status", "delivered", "utility-conversation", "utility", 1700000001),
        ("marketing-status", "read", "marketing-conversation", "marketing", 1700000002),
        ("failed-status", "failed", None, None, 1700000003),
    ]
    assert {s.phone_number_id for s in result.statuses} == {"phone-number-id"}


def _check_group(result: ParseResult) -> None:
    (status,) = result.statuses
    assert status.group_id == "fowefinoewcnw"
    assert status.recipient_wa_id == "<GROUP_PARTICIPANT_USER_PHONE_NUMBER>"
    assert status.recipient_user_id == "US.123456"
    assert status.status == "read"
    assert set(result.links) == {
        IdentityLink(
            phone_number_id="<BUSINESS_PHONE_NUMBER_ID>",
            wa_id="<GROUP_PARTICIPANT_USER_PHONE_NUMBER>",
            user_id="US.123456",
        ),
        IdentityLink(
            phone_number_id="<BUSINESS_PHONE_NUMBER_ID>",
            wa_id="<USER_PHONE_NUMBER>",
            user_id="US.123456",
        ),
    }


def _check_v25_sent(result: ParseResult) -> None:
    (status,) = result.statuses
    assert (status.pricing_model, status.pricing_type, status.pricing_category) == (
        "PMP",
        "regular",
        "marketing",
    )
    assert status.billable is True
    assert (status.recipient_wa_id, status.recipient_user_id) == (
        "16315551181",
        "US.13491208655302741918",
    )
    assert (status.conversation_id, status.conversation_origin, status.expiration_timestamp) == (
        "CONVERSATION_ID",
        "marketing",
        1504903988,
    )
    assert result.links == [V25_LINK]


def _check_n8n(result: ParseResult) -> None:
    assert [p.path for p in result.problems] == [
        f"$.entry[0].changes[{j}].value.metadata" for j in range(3)
    ]


def _check_two_changes(result: ParseResult) -> None:
    assert [m.timestamp for m in result.inbound] == [1669233778, 1669233779]
    assert {m.wa_id for m in result.inbound} == {"PHONE_NUMBER"}
    assert {m.phone_number_id for m in result.inbound} == {"PHONE_NUMBER_ID"}


def _check_v25_link(result: ParseResult) -> None:
    assert result.links == [V25_LINK]


V25_LINK = IdentityLink(
    phone_number_id="123456123", wa_id="16315551181", user_id="US.13491208655302741918"
)
PYWA_LINK = IdentityLink(
    phone_number_id="1122334455667", wa_id="972987654321", user_id="US.13491208655302741918"
)

CBP_2023_SENT = _one_status(
    wamid="wamid.nBgN6TUyN2k5NzAzM5kzNhUCABI8FDNFQjAxQkE5REI4NEUzQ5Y5QTNgAA==",
    status="sent",
    timestamp=1673020317,
    recipient_wa_id="15550100004",
    conversation_id="8eb644d2350611f3746e7f0985bddfc1",
    conversation_origin="business_initiated",
    expiration_timestamp=1673031000,
    pricing_model="CBP",
    pricing_type=None,
    pricing_category="business_initiated",
    billable=True,
    phone_number_id="409552778964973",
)

EXPECTED: dict[str, Expect] = {
    "ammar-bay-webhook__change-status-sent-cbp-user_initiated-2022.json": Expect(
        statuses=1,
        check=_one_status(
            phone_number_id="107287895522530",
            wamid="wamid.HBgMOTIzMDM2NTQ3MTg4FQIAERgSODRBNEVBMDAwRDlBNThCNUJGAA==",
            status="sent",
            timestamp=1668595349,
            recipient_wa_id="15550100002",
            conversation_origin="user_initiated",
            expiration_timestamp=1668676620,
            pricing_model="CBP",
            pricing_category="user_initiated",
            billable=True,
        ),
    ),
    "ammar-bay-webhook__incoming-text-2022.json": Expect(
        inbound=1,
        check=_one_inbound(
            wamid="wamid.HBgMOTIzMDM2NTQ3MTg4FQIAEhgUM0VCMEU3MjY5MDE5QjYwM0M2NDEA",
            timestamp=1666997481,
            type="text",
            wa_id="15550100002",
            user_id=None,
            phone_number_id="105677815657877",
        ),
    ),
    "bindambc-java__incoming-unsupported-131051-2023.json": Expect(
        inbound=1,
        check=_one_inbound(type="unsupported", wa_id="15550100004", timestamp=1673026174),
    ),
    "bindambc-java__status-delivered-cbp-business_initiated-2023.json": Expect(
        statuses=1,
        check=_one_status(
            status="delivered",
            timestamp=1673020317,
            conversation_origin="business_initiated",
            expiration_timestamp=None,
            pricing_model="CBP",
            pricing_category="business_initiated",
        ),
    ),
    "bindambc-java__status-failed-131047-2023.json": Expect(
        statuses=1,
        check=_one_status(
            status="failed",
            timestamp=1682651887,
            recipient_wa_id="15550100006",
            pricing_model=None,
            conversation_id=None,
        ),
    ),
    "bindambc-java__status-sent-cbp-business_initiated-2023.json": Expect(
        statuses=1, check=CBP_2023_SENT
    ),
    "django-crm__status-read-cbp-service-2023.json": Expect(
        statuses=1,
        check=_one_status(
            status="read",
            timestamp=1698903218,
            conversation_origin="service",
            expiration_timestamp=None,
            pricing_model="CBP",
            pricing_category="service",
        ),
    ),
    "django-crm__status-sent-cbp-service-2023.json": Expect(
        statuses=1,
        check=_one_status(
            status="sent",
            timestamp=1698903217,
            conversation_id="62d207825745e6597de71d002affa326",
            conversation_origin="service",
            expiration_timestamp=1698989640,
        ),
    ),
    "heyoo__incoming-text-2022.json": Expect(
        inbound=1, check=_one_inbound(wa_id="15550100009", timestamp=1653048643, type="text")
    ),
    "meta-docs__account-update-volume-tier.json": Expect(),
    "meta-docs__analytics-messaging-response.json": Expect(rejected=True, reason=NOT_WEBHOOK),
    "meta-docs__conversation-analytics-by-conversation-type-response.json": Expect(
        rejected=True, reason=NOT_WEBHOOK
    ),
    "meta-docs__conversation-analytics-monthly-all-dimensions-response.json": Expect(
        rejected=True, reason=NOT_WEBHOOK
    ),
    "meta-docs__errors-130429-rate-limit.json": Expect(),
    "meta-docs__incoming-text-ctwa-referral.json": Expect(
        inbound=1,
        check=_one_inbound(wa_id="16505551234", timestamp=1750275992),
    ),
    "meta-docs__incoming-text-message-business-button.json": Expect(
        inbound=1,
        check=_one_inbound(phone_number_id="106540352242922", timestamp=1750016800),
    ),
    "meta-docs__incoming-text.json": Expect(
        inbound=1,
        check=_one_inbound(
            wamid="wamid.HBgLMTY1MDM4Nzk0MzkVAgASGBQzQTRBNjU5OUFFRTAzODEwMTQ0RgA=",
            timestamp=1749416383,
            wa_id="16505551234",
            phone_number_id="106540352242922",
        ),
    ),
    "meta-docs__pricing-analytics-response.json": Expect(rejected=True, reason=NOT_WEBHOOK),
    "meta-docs__pricing-fragment-free-customer-service-service.json": Expect(
        rejected=True, reason=f"{NOT_WEBHOOK}: no `entry` array (top-level keys: `pricing`)"
    ),
    "meta-docs__pricing-fragment-free-customer-service-utility.json": Expect(
        rejected=True, reason=NOT_WEBHOOK
    ),
    "meta-docs__pricing-fragment-regular.json": Expect(rejected=True, reason=NOT_WEBHOOK),
    "meta-docs__status-delivered-cbp-service.json": Expect(
        statuses=1,
        check=_one_status(
            status="delivered",
            timestamp=1750263773,
            conversation_origin="service",
            pricing_model="CBP",
            pricing_category="service",
            billable=True,
        ),
    ),
    "meta-docs__status-failed-131049.json": Expect(
        statuses=1, check=_one_status(status="failed", timestamp=1751142888)
    ),
    "meta-docs__status-sent-pmp-marketing-with-conversation.json": Expect(
        statuses=1,
        check=_one_status(
            status="sent",
            timestamp=1750030073,
            conversation_origin="marketing",
            expiration_timestamp=1750116480,
            pricing_model="PMP",
            pricing_type="regular",
            pricing_category="marketing",
        ),
    ),
    "meta-docs__status-sent-v24-no-conversation-no-pricing.json": Expect(
        statuses=1,
        check=_one_status(
            status="sent",
            recipient_wa_id="16505551234",
            conversation_id=None,
            conversation_origin=None,
            pricing_model=None,
            pricing_category=None,
            billable=None,
        ),
    ),
    "n8n__one-entry-three-changes-statuses.json": Expect(
        rejected=True, reason="missing `metadata`", check=_check_n8n
    ),
    "netflie-php__incoming-bsuid-only-no-wa_id.json": Expect(
        inbound=1, check=_one_inbound(wa_id=None, user_id="BSUID_123", wamid="wamid.ID")
    ),
    "netflie-php__two-changes-in-one-entry.json": Expect(inbound=2, check=_check_two_changes),
    "pywa__incoming-referral.json": Expect(
        inbound=1,
        links=1,
        link=PYWA_LINK,
        check=_one_inbound(wa_id="972987654321", user_id="US.13491208655302741918"),
    ),
    "pywa__status-failed-130472.json": Expect(
        statuses=1,
        links=1,
        link=PYWA_LINK,
        check=_one_status(status="failed", recipient_wa_id="972987654321", recipient_user_id=None),
    ),
    "pywa__status-group-read.json": Expect(statuses=1, links=2, check=_check_group),
    "pywa__status-sent-cbp-service-bsuid.json": Expect(
        statuses=1,
        links=1,
        link=PYWA_LINK,
        check=_one_status(
            conversation_origin="service",
            expiration_timestamp=1698339900,
            pricing_model="CBP",
            pricing_category="service",
        ),
    ),
    "typebot__one-change-with-message-and-three-statuses.json": Expect(
        inbound=1, statuses=3, check=_check_typebot
    ),
    "whatsapp-api-js__v25-incoming-text-bsuid.json": Expect(
        inbound=1,
        links=1,
        check=_one_inbound(wa_id="16315551181", user_id="US.13491208655302741918"),
    ),
    "whatsapp-api-js__v25-status-delivered-bsuid.json": Expect(
        statuses=1,
        links=1,
        check=_one_status(
            status="delivered",
            recipient_user_id="US.13491208655302741918",
            conversation_origin="marketing",
            expiration_timestamp=1504903988,
            pricing_model=None,
        ),
    ),
    "whatsapp-api-js__v25-status-read-bsuid.json": Expect(
        statuses=1, links=1, check=_check_v25_link
    ),
    "whatsapp-api-js__v25-status-sent-pmp-marketing-bsuid.json": Expect(
        statuses=1, links=1, check=_check_v25_sent
    ),
}


def test_fixture_table_covers_every_fixture() -> None:
    on_disk = {p.name for p in FIXTURES.glob("*.json")}
    assert len(on_disk) >= 37
    assert on_disk == set(EXPECTED), "add new fixture files to EXPECTED"


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_fixture(name: str) -> None:
    expect = EXPECTED[name]
    result = parse_webhook(fixture_bytes(name))
    assert len(result.inbound) == expect.inbound
    assert len(result.statuses) == expect.statuses
    assert len(result.links) == expect.links
    assert result.rejected == expect.rejected, result.reason()
    if expect.reason is not None:
        assert expect.reason in result.reason()
    if expect.check is not None:
        expect.check(result)
    if expect.link is not None:
        assert expect.link in result.links


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_fixture_fast_and_slow_paths_agree(name: str) -> None:
    raw = fixture_bytes(name)
    assert parse_webhook(raw) == _parse_slow(raw)


@pytest.mark.parametrize(
    "raw",
    [
        b'{"entry": null, "value": {}}',
        b'{"value": {}}',
        b'{"object": null, "field": null, "value": {"metadata": {"phone_number_id": "P"}}}',
        b'{"entry": [], "field": "messages", "value": {}}',
        b'{"field": "history", "value": {"statuses": []}}',
    ],
)
def test_fast_and_slow_paths_agree_on_odd_shapes(raw: bytes) -> None:
    # Regressions found by the fuzz tests: the slow path must read exactly what the fast one
    # reads, or a body's result would depend on an unrelated type error elsewhere in it.
    assert parse_webhook(raw) == _parse_slow(raw)


# --- Builders for targeted tests ------------------------------------------------------------


def status(**fields: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "id": "wamid.S",
        "status": "delivered",
        "timestamp": "1750030073",
        "recipient_id": "16505551234",
    }
    return base | fields


def message(**fields: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "from": "16505551234",
        "id": "wamid.M",
        "timestamp": "1750030073",
        "type": "text",
        "text": {"body": "hi"},
    }
    return base | fields


def value(phone_number_id: Any = "PN", **parts: Any) -> dict[str, Any]:
    return {
        "messaging_product": "whatsapp",
        "metadata": {"display_phone_number": "15550783881", "phone_number_id": phone_number_id},
    } | parts


def change(val: Any, field: str = "messages") -> dict[str, Any]:
    return {"field": field, "value": val}


def body(*changes: Any, waba: Any = "WABA") -> bytes:
    return encode(
        {"object": "whatsapp_business_account", "entry": [{"id": waba, "changes": list(changes)}]}
    )


def encode(obj: Any) -> bytes:
    return json.dumps(obj).encode()


def problems(result: ParseResult) -> list[tuple[str, str]]:
    return [(p.path, p.message) for p in result.problems]


S0 = "$.entry[0].changes[0].value.statuses[0]"
M0 = "$.entry[0].changes[0].value.messages[0]"


# --- Rule 1: not JSON, not an object --------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "start"),
    [
        (b"", "invalid JSON: "),
        (b"{", "invalid JSON: "),
        (b"{}x", "invalid JSON: "),
        (b"\xff\xfe{}", "invalid JSON: "),
        (b'{"object": "\xff"}', "invalid JSON: not UTF-8"),
        (b"[" * 100_000, "invalid JSON: "),
        (b"[1, 2]", "expected a JSON object at the top level, got a list"),
        (b'"text"', "expected a JSON object at the top level, got 'text'"),
        (b"null", "expected a JSON object at the top level, got null"),
        (b"42", "expected a JSON object at the top level, got 42"),
    ],
)
def test_unparseable_body_is_one_problem_at_root(raw: bytes, start: str) -> None:
    result = parse_webhook(raw)
    assert len(result.problems) == 1
    assert result.problems[0].path == "$"
    assert result.problems[0].message.startswith(start)
    assert (result.inbound, result.statuses, result.links) == ([], [], [])


def test_truncated_fixture_is_invalid_json() -> None:
    raw = fixture_bytes("typebot__one-change-with-message-and-three-statuses.json")
    result = parse_webhook(raw[: len(raw) // 2])
    assert problems(result) == [("$", "invalid JSON: Input data was truncated")]
    assert result.statuses == []


# --- Rule 2: accepted shapes ----------------------------------------------------------------


def test_other_object_is_rejected_without_reading_entries() -> None:
    raw = encode({"object": "page", "entry": [{"id": "1", "changes": "not a list"}]})
    result = parse_webhook(raw)
    assert problems(result) == [
        (
            "$.object",
            "not a WhatsApp webhook body: `object` is 'page', expected 'whatsapp_business_account'",
        )
    ]


def test_envelope_without_object_is_accepted() -> None:
    raw = encode({"entry": [{"id": "W", "changes": [change(value(statuses=[status()]))]}]})
    result = parse_webhook(raw)
    assert not result.rejected
    assert len(result.statuses) == 1


def test_bare_change_is_read() -> None:
    result = parse_webhook(encode(change(value(statuses=[status()]))))
    assert not result.rejected
    (event,) = result.statuses
    assert event.phone_number_id == "PN"


def test_bare_change_paths_start_at_root() -> None:
    result = parse_webhook(encode(change(value(statuses=[status(timestamp="abc")]))))
    assert problems(result) == [
        ("$.value.statuses[0].timestamp", "expected Unix seconds, got 'abc'")
    ]


def test_bare_non_messages_change_is_ignored() -> None:
    result = parse_webhook(encode(change({"event": "X", "statuses": 5}, field="account_update")))
    assert (result.inbound, result.statuses, result.rejected) == ([], [], False)


def test_empty_object_is_not_a_webhook() -> None:
    result = parse_webhook(b"{}")
    assert problems(result) == [
        ("$", "not a WhatsApp webhook body: no `entry` array (top-level keys: none)")
    ]


def test_empty_entry_list_is_understood() -> None:
    result = parse_webhook(encode({"object": "whatsapp_business_account", "entry": []}))
    assert not result.rejected
    assert result.statuses == []


# --- Rule 3: every entry and change ---------------------------------------------------------


def test_every_entry_and_change_is_read() -> None:
    raw = encode(
        {
            "object": "whatsapp_business_account",
            "entry": [
                {
                    "id": "W1",
                    "changes": [
                        change(value("P1", statuses=[status(id="a"), status(id="b")])),
                        change({"event": "APPROVED"}, field="message_template_status_update"),
                        change(value("P2", messages=[message(id="m1")])),
                    ],
                },
                {
                    "id": "W2",
                    "changes": [
                        change(value("P3", statuses=[status(id="c")])),
                        change({"x": 1}, field="account_update"),
                    ],
                },
            ],
        }
    )
    result = parse_webhook(raw)
    assert not result.rejected
    assert [(s.phone_number_id, s.wamid) for s in result.statuses] == [
        ("P1", "a"),
        ("P1", "b"),
        ("P3", "c"),
    ]
    assert [(m.phone_number_id, m.wamid) for m in result.inbound] == [("P2", "m1")]


def test_integer_phone_number_id_becomes_a_string() -> None:
    result = parse_webhook(body(change(value(106540352242922, statuses=[status()])), waba=42))
    assert not result.rejected
    (event,) = result.statuses
    assert event.phone_number_id == "106540352242922"


@pytest.mark.parametrize(
    "odd",
    [
        {"entry_id": ["W"]},
        {"display_phone_number": 15550783881},
        {"display_phone_number": {"a": 1}},
        {"referral": "not an object"},
    ],
)
def test_fields_counting_does_not_use_are_not_read(odd: dict[str, Any]) -> None:
    """The WABA id, the display number and an ad referral are not read (nothing counts by them),
    so an odd value in one neither rejects the body nor loses its events."""
    msg = message(referral=odd["referral"]) if "referral" in odd else message()
    value_ = value(statuses=[status()], messages=[msg])
    if "display_phone_number" in odd:
        value_["metadata"]["display_phone_number"] = odd["display_phone_number"]
    raw = body(change(value_), waba=odd.get("entry_id", "WABA"))
    result = parse_webhook(raw)
    assert (len(result.statuses), len(result.inbound), result.rejected) == (1, 1, False)


def test_missing_phone_number_id_skips_only_that_change() -> None:
    no_id = {"metadata": {"display_phone_number": "1"}, "statuses": [status(id="lost")]}
    result = parse_webhook(body(change(no_id), change(value(statuses=[status(id="kept")]))))
    assert problems(result) == [
        (
            "$.entry[0].changes[0].value.metadata.phone_number_id",
            "missing business phone number id; change skipped",
        )
    ]
    assert [s.wamid for s in result.statuses] == ["kept"]


def test_display_phone_number_is_optional() -> None:
    result = parse_webhook(
        body(change({"metadata": {"phone_number_id": "P"}, "messages": [message()]}))
    )
    assert not result.rejected
    assert len(result.inbound) == 1


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ([None], [("$.entry[0].changes[0]", "expected an object, got null")]),
        ([{"value": {}}], [("$.entry[0].changes[0].field", "missing `field`; change skipped")]),
        (
            [{"field": "messages"}],
            [("$.entry[0].changes[0].value", "missing `value` object; change skipped")],
        ),
        ("x", [("$.entry[0].changes", "expected a list, got 'x'")]),
        (
            [{"field": "messages", "value": []}],
            [("$.entry[0].changes[0].value", "expected an object, got a list")],
        ),
    ],
)
def test_broken_changes(changes: Any, expected: list[tuple[str, str]]) -> None:
    raw = encode(
        {"object": "whatsapp_business_account", "entry": [{"id": "W", "changes": changes}]}
    )
    assert problems(parse_webhook(raw)) == expected


def test_entry_without_changes() -> None:
    raw = encode({"object": "whatsapp_business_account", "entry": [{"id": "W"}, None]})
    assert problems(parse_webhook(raw)) == [
        ("$.entry[0].changes", "missing `changes` array"),
        ("$.entry[1]", "expected an object, got null"),
    ]


# --- Rule 4: inbound messages ---------------------------------------------------------------


def test_message_fields() -> None:
    raw = body(change(value(messages=[message(id="m", timestamp=1750030073, type="image")])))
    (event,) = parse_webhook(raw).inbound
    assert (event.wamid, event.timestamp, event.type, event.wa_id, event.user_id) == (
        "m",
        1750030073,
        "image",
        "16505551234",
        None,
    )
    assert event.phone_number_id == "PN"


def test_missing_type_is_unknown_without_problem() -> None:
    msg = message()
    del msg["type"]
    result = parse_webhook(body(change(value(messages=[msg]))))
    assert not result.rejected
    assert result.inbound[0].type == "unknown"


@pytest.mark.parametrize("kind", ["system", "unsupported", "revoke", "brand_new_type"])
def test_every_message_type_is_emitted(kind: str) -> None:
    msg = message(type=kind, errors=[{"code": 131051}])
    result = parse_webhook(body(change(value(messages=[msg]))))
    assert not result.rejected
    assert result.inbound[0].type == kind


def test_contact_matching_with_several_contacts() -> None:
    contacts = [
        {"wa_id": "111", "profile": {"name": "A"}},
        {"wa_id": "222", "user_id": "US.2"},
        {"user_id": "US.3"},
    ]
    messages = [
        message(id="a", **{"from": "222"}),  # by wa_id: picks up US.2
        message(id="b", **{"from": "111"}),  # contact without user_id
        message(id="c", **{"from": "999"}),  # no matching contact
        {"id": "d", "timestamp": "1750000000", "type": "text", "from_user_id": "US.3"},
    ]
    result = parse_webhook(body(change(value(contacts=contacts, messages=messages))))
    assert not result.rejected
    got = [(m.wamid, m.wa_id, m.user_id) for m in result.inbound]
    assert got == [
        ("a", "222", "US.2"),
        ("b", "111", None),
        ("c", "999", None),
        ("d", None, "US.3"),
    ]
    assert result.links == [IdentityLink(phone_number_id="PN", wa_id="222", user_id="US.2")]


def test_single_contact_is_used_for_a_message_without_from() -> None:
    msg = message()
    del msg["from"]
    contacts = [{"wa_id": "555", "user_id": "US.5"}]
    (event,) = parse_webhook(body(change(value(contacts=contacts, messages=[msg])))).inbound
    assert (event.wa_id, event.user_id) == ("555", "US.5")


def test_from_and_from_user_id_win_over_contact_and_are_linked() -> None:
    msg = message(**{"from": "1", "from_user_id": "US.1"})
    contacts = [{"wa_id": "2", "user_id": "US.2"}]
    result = parse_webhook(body(change(value(contacts=contacts, messages=[msg]))))
    assert (result.inbound[0].wa_id, result.inbound[0].user_id) == ("1", "US.1")
    assert result.links == [
        IdentityLink(phone_number_id="PN", wa_id="2", user_id="US.2"),
        IdentityLink(phone_number_id="PN", wa_id="1", user_id="US.1"),
    ]


def test_message_without_identity_is_skipped() -> None:
    msg = message()
    del msg["from"]
    contacts = [{"wa_id": "1"}, {"wa_id": "2"}]
    result = parse_webhook(body(change(value(contacts=contacts, messages=[msg, message(id="ok")]))))
    assert [p.path for p in result.problems] == [M0]
    assert "no customer identity" in result.problems[0].message
    assert [m.wamid for m in result.inbound] == ["ok"]


def test_a_message_from_an_ad_counts_like_any_other() -> None:
    messages = [message(id="a", referral={"source_type": "ad"}), message(id="b")]
    result = parse_webhook(body(change(value(messages=messages))))
    assert not result.rejected
    assert [m.wamid for m in result.inbound] == ["a", "b"]


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"id": None}, [(f"{M0}.id", "missing `id`; message skipped")]),
        ({"id": ""}, [(f"{M0}.id", "empty `id`; message skipped")]),
        ({"id": 7}, [(f"{M0}.id", "expected a string, got 7")]),
        ({"timestamp": "abc"}, [(f"{M0}.timestamp", "expected Unix seconds, got 'abc'")]),
        ({"timestamp": -5}, [(f"{M0}.timestamp", "expected Unix seconds, got -5")]),
        ({"timestamp": 1.5}, [(f"{M0}.timestamp", "expected Unix seconds, got 1.5")]),
        ({"timestamp": [1]}, [(f"{M0}.timestamp", "expected Unix seconds, got a list")]),
        ({"timestamp": True}, [(f"{M0}.timestamp", "expected Unix seconds, got true")]),
        (
            {"from": 5},
            [
                (f"{M0}.from", "expected a string, got 5"),
                (
                    M0,
                    "no customer identity: no `from`/`from_user_id` and no matching contact;"
                    " message skipped",
                ),
            ],
        ),
    ],
)
def test_broken_message_is_reported_and_skipped(
    fields: dict[str, Any], expected: list[tuple[str, str]]
) -> None:
    msg = {k: v for k, v in (message() | fields).items() if v is not None}
    result = parse_webhook(body(change(value(messages=[msg, message(id="ok")]))))
    assert problems(result) == expected
    assert [m.wamid for m in result.inbound] == ["ok"]


def test_message_type_of_wrong_type_is_reported_and_unknown() -> None:
    result = parse_webhook(body(change(value(messages=[message(type=3)]))))
    assert problems(result) == [(f"{M0}.type", "expected a string, got 3")]
    assert result.inbound[0].type == "unknown"


# --- Rule 5: statuses -----------------------------------------------------------------------


def test_status_fields_and_normalisation() -> None:
    st_ = status(
        status="DELIVERED",
        timestamp=1750030073,
        recipient_user_id="US.1",
        conversation={
            "id": "C",
            "expiration_timestamp": 1750116480,
            "origin": {"type": "Authentication-International"},
        },
        pricing={
            "billable": False,
            "pricing_model": "pmp",
            "type": "FREE_ENTRY_POINT",
            "category": "authentication-international",
        },
    )
    result = parse_webhook(body(change(value(statuses=[st_]))))
    assert not result.rejected
    assert result.statuses == [
        StatusUpdate(
            phone_number_id="PN",
            wamid="wamid.S",
            status="delivered",
            timestamp=1750030073,
            recipient_wa_id="16505551234",
            recipient_user_id="US.1",
            conversation_id="C",
            conversation_origin="authentication_international",
            expiration_timestamp=1750116480,
            pricing_model="PMP",
            pricing_type="free_entry_point",
            pricing_category="authentication_international",
            billable=False,
        )
    ]


@pytest.mark.parametrize("value_", ["sent", "delivered", "read", "played", "failed", "deleted"])
def test_known_statuses(value_: str) -> None:
    result = parse_webhook(body(change(value(statuses=[status(status=value_)]))))
    assert not result.rejected
    assert result.statuses[0].status == value_


def test_unknown_status_is_kept_and_reported() -> None:
    result = parse_webhook(body(change(value(statuses=[status(status="Queued")]))))
    assert problems(result) == [(f"{S0}.status", "unknown status value 'Queued'")]
    assert result.statuses[0].status == "queued"


def test_unknown_pricing_model_and_type_are_kept_and_reported() -> None:
    pricing = {"pricing_model": "xyz", "type": "Brand_New", "category": "marketing"}
    result = parse_webhook(body(change(value(statuses=[status(pricing=pricing)]))))
    assert problems(result) == [
        (f"{S0}.pricing.pricing_model", "unknown pricing model 'xyz'"),
        (f"{S0}.pricing.type", "unknown pricing type 'Brand_New'"),
    ]
    (event,) = result.statuses
    assert (event.pricing_model, event.pricing_type, event.pricing_category) == (
        "XYZ",
        "brand_new",
        "marketing",
    )


@pytest.mark.parametrize("model", ["CBP", "PMP", "NBP", "cbp"])
def test_known_pricing_models(model: str) -> None:
    result = parse_webhook(body(change(value(statuses=[status(pricing={"pricing_model": model})]))))
    assert not result.rejected
    assert result.statuses[0].pricing_model == model.upper()


@pytest.mark.parametrize(
    "kind", ["regular", "free_customer_service", "free_entry_point", "free_group_customer_service"]
)
def test_known_pricing_types(kind: str) -> None:
    result = parse_webhook(body(change(value(statuses=[status(pricing={"type": kind})]))))
    assert not result.rejected
    assert result.statuses[0].pricing_type == kind


@pytest.mark.parametrize(
    ("category", "normalised"),
    [
        ("ai_bot", "ai_bot"),
        ("<PRICING_CATEGORY>", "<pricing_category>"),
        ("GROUP-MARKETING-LITE", "group_marketing_lite"),
        ("authentication-international", "authentication_international"),
    ],
)
def test_unknown_category_is_not_a_problem(category: str, normalised: str) -> None:
    result = parse_webhook(body(change(value(statuses=[status(pricing={"category": category})]))))
    assert not result.rejected
    assert result.statuses[0].pricing_category == normalised


def test_group_status() -> None:
    st_ = status(
        recipient_id="GROUP1",
        recipient_type="group",
        recipient_participant_id="111",
        recipient_participant_user_id="US.1",
        recipient_user_id="US.ignored",
    )
    result = parse_webhook(body(change(value(statuses=[st_]))))
    (event,) = result.statuses
    assert (event.group_id, event.recipient_wa_id, event.recipient_user_id) == (
        "GROUP1",
        "111",
        "US.1",
    )
    assert result.links == [IdentityLink(phone_number_id="PN", wa_id="111", user_id="US.1")]


def test_failed_status_errors_are_ignored_even_if_malformed() -> None:
    st_ = status(status="failed", errors="whatever")
    result = parse_webhook(body(change(value(statuses=[st_], errors=[{"code": 130429}, 5]))))
    assert not result.rejected
    assert result.statuses[0].status == "failed"


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"id": None}, [(f"{S0}.id", "missing `id`; status skipped")]),
        ({"status": None}, [(f"{S0}.status", "missing `status`; status skipped")]),
        ({"status": ""}, [(f"{S0}.status", "empty `status`; status skipped")]),
        ({"status": 1}, [(f"{S0}.status", "expected a string, got 1")]),
        ({"timestamp": None}, [(f"{S0}.timestamp", "missing `timestamp`; status skipped")]),
        ({"timestamp": "17e8"}, [(f"{S0}.timestamp", "expected Unix seconds, got '17e8'")]),
        ({"timestamp": " 1"}, [(f"{S0}.timestamp", "expected Unix seconds, got ' 1'")]),
        ({"timestamp": "\u00b2"}, [(f"{S0}.timestamp", "expected Unix seconds, got '\u00b2'")]),
        (
            {"timestamp": MAX_UNIX_SECONDS + 1},
            [(f"{S0}.timestamp", f"expected Unix seconds, got {MAX_UNIX_SECONDS + 1}")],
        ),
        (
            {"timestamp": "9" * 30},
            [(f"{S0}.timestamp", f"expected Unix seconds, got {'9' * 30!r}")],
        ),
        (
            {"timestamp": 2**70},
            [(f"{S0}.timestamp", "expected Unix seconds, got a very large integer")],
        ),
        (
            {"id": 5, "timestamp": {}},
            [
                (f"{S0}.id", "expected a string, got 5"),
                (f"{S0}.timestamp", "expected Unix seconds, got an object"),
            ],
        ),
    ],
)
def test_broken_status_is_reported_and_skipped(
    fields: dict[str, Any], expected: list[tuple[str, str]]
) -> None:
    st_ = {k: v for k, v in (status() | fields).items() if v is not None}
    result = parse_webhook(body(change(value(statuses=[st_, status(id="ok")]))))
    assert problems(result) == expected
    assert [s.wamid for s in result.statuses] == ["ok"]


@pytest.mark.parametrize(
    ("fields", "expected", "check"),
    [
        (
            {"pricing": "PMP"},
            (f"{S0}.pricing", "expected an object, got 'PMP'"),
            {"pricing_model": None},
        ),
        (
            {"pricing": {"billable": "true", "pricing_model": "PMP"}},
            (f"{S0}.pricing.billable", "expected a boolean, got 'true'"),
            {"billable": None, "pricing_model": "PMP"},
        ),
        (
            {"conversation": {"id": "C", "expiration_timestamp": "soon"}},
            (f"{S0}.conversation.expiration_timestamp", "expected Unix seconds, got 'soon'"),
            {"conversation_id": "C", "expiration_timestamp": None},
        ),
        (
            {"conversation": {"id": "C", "origin": "marketing"}},
            (f"{S0}.conversation.origin", "expected an object, got 'marketing'"),
            {"conversation_id": "C", "conversation_origin": None},
        ),
        (
            {"recipient_id": 16505551234},
            (f"{S0}.recipient_id", "expected a string, got 16505551234"),
            {"recipient_wa_id": None},
        ),
    ],
)
def test_broken_optional_part_keeps_the_status(
    fields: dict[str, Any], expected: tuple[str, str], check: dict[str, Any]
) -> None:
    result = parse_webhook(body(change(value(statuses=[status(**fields)]))))
    assert problems(result) == [expected]
    (event,) = result.statuses
    assert {key: getattr(event, key) for key in check} == check


def test_the_example_path_from_the_brief() -> None:
    statuses = [status(id=str(i)) for i in range(4)]
    statuses[3]["timestamp"] = "abc"
    raw = body(change(value(messages=[message()])), change(value(statuses=statuses)))
    result = parse_webhook(raw)
    assert result.reason() == (
        "$.entry[0].changes[1].value.statuses[3].timestamp: expected Unix seconds, got 'abc'"
    )
    assert [s.wamid for s in result.statuses] == ["0", "1", "2"]
    assert len(result.inbound) == 1


# --- Rule 8: wrong container types ----------------------------------------------------------


def test_statuses_not_a_list_keeps_the_rest_of_the_change() -> None:
    result = parse_webhook(body(change(value(statuses="x", messages=[message()]))))
    assert problems(result) == [
        ("$.entry[0].changes[0].value.statuses", "expected a list, got 'x'")
    ]
    assert len(result.inbound) == 1


def test_broken_list_elements_keep_their_index() -> None:
    statuses = [status(id="a"), None, "s", status(id="d", timestamp="x")]
    result = parse_webhook(body(change(value(statuses=statuses))))
    path = "$.entry[0].changes[0].value.statuses"
    # Order is discovery order: JSON-type problems (slow path) come before rule problems.
    assert sorted(problems(result)) == [
        (f"{path}[1]", "expected an object, got null"),
        (f"{path}[2]", "expected an object, got 's'"),
        (f"{path}[3].timestamp", "expected Unix seconds, got 'x'"),
    ]
    assert [s.wamid for s in result.statuses] == ["a"]


def test_broken_contacts_are_reported() -> None:
    contacts = [{"wa_id": 5, "user_id": "US.1"}, None]
    result = parse_webhook(body(change(value(contacts=contacts, statuses=[status()]))))
    path = "$.entry[0].changes[0].value.contacts"
    assert problems(result) == [
        (f"{path}[0].wa_id", "expected a string, got 5"),
        (f"{path}[1]", "expected an object, got null"),
    ]
    assert result.links == []
    assert len(result.statuses) == 1


def test_long_strings_are_shortened_in_messages() -> None:
    result = parse_webhook(body(change(value(statuses=[status(timestamp="x" * 500)]))))
    message_ = result.problems[0].message
    assert len(message_) < 100
    assert message_.endswith("...")


def test_non_messages_change_with_foreign_shape_is_not_a_problem() -> None:
    odd = change({"statuses": 5, "metadata": [], "messages": {"a": 1}}, field="history")
    result = parse_webhook(body(odd, change(value(statuses=[status()]))))
    assert not result.rejected
    assert len(result.statuses) == 1


# --- Rule 7: identity links -----------------------------------------------------------------


def test_links_are_deduplicated_and_empty_ids_ignored() -> None:
    contacts = [{"wa_id": "1", "user_id": "US.1"}, {"wa_id": "", "user_id": "US.2"}]
    statuses = [
        status(id="a", recipient_id="1", recipient_user_id="US.1"),
        status(id="b", recipient_id="1", recipient_user_id="US.1"),
        status(id="c", recipient_id="3", recipient_user_id=""),
    ]
    messages = [message(**{"from": "1", "from_user_id": "US.1"})]
    result = parse_webhook(
        body(
            change(value(contacts=contacts, statuses=statuses, messages=messages)),
            change(value("OTHER", statuses=[status(recipient_id="1", recipient_user_id="US.1")])),
        )
    )
    assert not result.rejected
    assert result.links == [
        IdentityLink(phone_number_id="PN", wa_id="1", user_id="US.1"),
        IdentityLink(phone_number_id="OTHER", wa_id="1", user_id="US.1"),
    ]
    assert result.statuses[2].recipient_user_id is None


# --- Fuzzing --------------------------------------------------------------------------------


def _model_keys(t: mi.Type) -> set[str]:
    """Every JSON key the parser's models read, so fuzzed objects often hit real fields."""
    if isinstance(t, mi.UnionType):
        return set().union(*(_model_keys(m) for m in t.types))
    if isinstance(t, mi.ListType):
        return _model_keys(t.item_type)
    if isinstance(t, mi.StructType):
        return {f.encode_name for f in t.fields}.union(*(_model_keys(f.type) for f in t.fields))
    return set()


KEYS = sorted(_model_keys(mi.type_info(_Body))) + ["errors", "text"]
WORDS = ["whatsapp_business_account", "messages", "group", "sent", "PMP", "1700000000", ""]

leaves = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12)
    | st.sampled_from(WORDS)
)
json_values = st.recursive(
    leaves,
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=6), children, max_size=5)
    ),
    max_leaves=40,
)

FIXTURE_DOCS = [json.loads(fixture_bytes(name)) for name in sorted(EXPECTED)]

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def assert_sane(result: ParseResult) -> None:
    """What every result must satisfy, whatever the input."""
    assert isinstance(result, ParseResult)
    for problem in result.problems:
        assert not problem.message.startswith("internal parser error"), problem
        assert problem.path.startswith("$")
    events: list[StatusUpdate | InboundMessage] = [*result.statuses, *result.inbound]
    for event in events:
        assert event.wamid
        assert event.phone_number_id
        assert 0 <= event.timestamp <= MAX_UNIX_SECONDS
        assert type(event.timestamp) is int
    for inbound in result.inbound:
        assert inbound.wa_id or inbound.user_id
    for update in result.statuses:
        assert update.status
        assert update.status == update.status.lower()
    for link in result.links:
        assert all((link.phone_number_id, link.wa_id, link.user_id))
    assert len(set(result.links)) == len(result.links)


@FUZZ
@given(st.binary(max_size=2000))
def test_fuzz_arbitrary_bytes(raw: bytes) -> None:
    assert_sane(parse_webhook(raw))


@FUZZ
@given(json_values)
def test_fuzz_arbitrary_json(doc: Any) -> None:
    raw = json.dumps(doc).encode()
    result = parse_webhook(raw)
    assert_sane(result)
    if isinstance(doc, dict):
        assert result == _parse_slow(raw)


def _paths(doc: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [prefix]
    if isinstance(doc, dict):
        for key, item in doc.items():
            found += _paths(item, (*prefix, key))
    elif isinstance(doc, list):
        for index, item in enumerate(doc):
            found += _paths(item, (*prefix, index))
    return found


def _replace(doc: Any, path: tuple[Any, ...], new: Any) -> Any:
    if not path:
        return new
    copy = doc.copy()
    copy[path[0]] = _replace(doc[path[0]], path[1:], new)
    return copy


@FUZZ
@given(st.data())
def test_fuzz_mutated_fixtures(data: st.DataObject) -> None:
    doc = data.draw(st.sampled_from(FIXTURE_DOCS))
    for _ in range(data.draw(st.integers(min_value=1, max_value=3))):
        path = data.draw(st.sampled_from(_paths(doc)))
        doc = _replace(doc, path, data.draw(json_values))
    raw = json.dumps(doc).encode()
    result = parse_webhook(raw)
    assert_sane(result)
    if isinstance(doc, dict):
        assert result == _parse_slow(raw)
