"""Every worked example of spec/counting-rules.md, through the real webhook endpoint with signed
bodies and the real statistics API, on SQLite and PostgreSQL."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient

from helpers import Tenant, add_number, bearer, create_tenant, get_token
from wastats.settings import Settings
from webhooks import PHONE_NUMBER_ID, at, deliver, inbound, status

U1 = "972501111111"
U2 = "972502222222"
MKT = ("PMP", "marketing", "regular")


def months(client: TestClient, tenant: Tenant) -> dict[str, tuple[int, int, int]]:
    """{mmyyyy: (marketing, service, incoming)} from getConversationsStatistics."""
    answer = client.get(
        "/api/whatsapp/getConversationsStatistics", headers=bearer(get_token(client, tenant))
    ).json()
    assert answer["status"] == "OK", answer
    result = {}
    for row in answer["list"]:
        assert row["totalConversations"] == (
            row["totalMarketing"] + row["totalService"] + row["totalIncoming"]
        )
        result[row["monthYear"]] = (
            row["totalMarketing"],
            row["totalService"],
            row["totalIncoming"],
        )
    return result


def setup(settings: Settings, zone: str = "UTC") -> Tenant:
    tenant = create_tenant(settings, "N1 owner", zone)
    add_number(settings, tenant, "15550783881", PHONE_NUMBER_ID)
    return tenant


def test_example_1_one_session(client: TestClient, settings: Settings) -> None:
    tenant = setup(settings)
    deliver(
        client,
        inbound(U1, at("2025-03-10 10:00")),
        inbound(U1, at("2025-03-10 10:05")),
        inbound(U1, at("2025-03-11 09:59")),
    )
    assert months(client, tenant) == {"032025": (0, 0, 1)}


def test_example_2_exactly_at_the_end_opens_a_new_session(
    client: TestClient, settings: Settings
) -> None:
    tenant = setup(settings)
    deliver(client, inbound(U1, at("2025-03-10 10:00")), inbound(U1, at("2025-03-11 10:00")))
    assert months(client, tenant) == {"032025": (0, 0, 2)}


def test_example_3_order_does_not_matter(client: TestClient, settings: Settings) -> None:
    tenant = setup(settings)
    deliver(client, inbound(U1, at("2025-03-11 10:00")), inbound(U1, at("2025-03-10 10:00")))
    assert months(client, tenant) == {"032025": (0, 0, 2)}


def _template(wamid: str, sent: str, *later: tuple[str, str], pricing: Any = MKT) -> list[Any]:
    values = [status(wamid, "sent", at(sent), pricing=pricing)]
    values += [status(wamid, st, at(when)) for st, when in later]
    return values


def test_example_4_marketing_template(client: TestClient, settings: Settings) -> None:
    tenant = setup(settings)
    deliver(
        client,
        *_template(
            "wamid.m1",
            "2025-08-01 10:00",
            ("delivered", "2025-08-01 10:00:02"),
            ("read", "2025-08-01 10:05"),
        ),
    )
    assert months(client, tenant) == {"082025": (1, 0, 0)}


def test_example_5_delivered_three_times(client: TestClient, settings: Settings) -> None:
    tenant = setup(settings)
    delivered = status("wamid.m1", "delivered", at("2025-08-01 10:00:02"))
    deliver(
        client,
        status("wamid.m1", "sent", at("2025-08-01 10:00"), pricing=MKT),
        delivered,
        delivered,
        delivered,
        status("wamid.m1", "read", at("2025-08-01 10:05")),
    )
    assert months(client, tenant) == {"082025": (1, 0, 0)}


def test_example_6_sent_then_failed(client: TestClient, settings: Settings) -> None:
    tenant = setup(settings)
    deliver(client, *_template("wamid.m1", "2025-08-01 10:00", ("failed", "2025-08-01 10:01")))
    assert months(client, tenant) == {}


def test_example_7_free_utility_template(client: TestClient, settings: Settings) -> None:
    tenant = setup(settings)
    free = ("PMP", "utility", "free_customer_service")
    deliver(
        client,
        *_template("wamid.u1", "2025-08-01 10:00", ("delivered", "2025-08-01 10:01"), pricing=free),
    )
    assert months(client, tenant) == {}


def test_example_8_authentication_read_only(client: TestClient, settings: Settings) -> None:
    tenant = setup(settings)
    deliver(
        client,
        status("wamid.a1", "read", at("2025-09-01 10:00"),
               pricing=("PMP", "authentication", "regular")),
    )  # fmt: skip
    assert months(client, tenant) == {"092025": (0, 1, 0)}


def test_example_9_month_of_delivery(client: TestClient, settings: Settings) -> None:
    tenant = setup(settings)
    deliver(
        client,
        *_template("wamid.m1", "2026-01-31 23:59:50", ("delivered", "2026-02-01 00:00:05")),
    )
    assert months(client, tenant) == {"022026": (1, 0, 0)}


def test_example_10_month_in_the_account_zone(client: TestClient, settings: Settings) -> None:
    tenant = setup(settings, "Asia/Jerusalem")
    deliver(client, inbound(U1, at("2025-01-31 22:30")))
    assert months(client, tenant) == {"022025": (0, 0, 1)}


def test_example_11_cbp_one_conversation(client: TestClient, settings: Settings) -> None:
    tenant = setup(settings)
    t = at("2024-05-02 10:00")
    conv = ("c1", "marketing", t + 86400)
    pricing = ("CBP", "marketing", None)
    deliver(
        client,
        status("wamid.c1a", "sent", t, pricing=pricing, conversation=conv, billable=True),
        status("wamid.c1a", "delivered", t + 5, conversation=("c1", "marketing", None)),
        status("wamid.c1b", "sent", t + 60, pricing=pricing, conversation=conv, billable=True),
        status("wamid.c1b", "delivered", t + 65, conversation=("c1", "marketing", None)),
    )
    assert months(client, tenant) == {"052024": (1, 0, 0)}


def test_example_12_cbp_service_conversation(client: TestClient, settings: Settings) -> None:
    tenant = setup(settings)
    t = at("2024-05-02 09:00")
    deliver(
        client,
        inbound(U1, t, user_id=None),
        status("wamid.s1", "sent", t + 600, user=U1, pricing=("CBP", "service", None),
               conversation=("c2", "service", t + 600 + 86400), billable=False),
        status("wamid.s1", "delivered", t + 605, user=U1, conversation=("c2", "service", None)),
    )  # fmt: skip
    assert months(client, tenant) == {"052024": (0, 0, 1)}


def test_example_13_pricing_only_on_delivered(client: TestClient, settings: Settings) -> None:
    tenant = setup(settings)
    deliver(
        client,
        status("wamid.m1", "sent", at("2025-08-01 10:00")),
        status("wamid.m1", "delivered", at("2025-08-01 10:00:03"), pricing=MKT),
    )
    assert months(client, tenant) == {"082025": (1, 0, 0)}


def test_example_14_unregistered_number_is_counted_once_registered(
    client: TestClient, settings: Settings
) -> None:
    tenant = create_tenant(settings, "N2 owner")
    n2 = "109999999999999"
    deliver(
        client,
        inbound(U2, at("2025-03-10 10:00"), number=n2),
        *[
            {**v, "metadata": {"display_phone_number": "15550000002", "phone_number_id": n2}}
            for v in _template("wamid.n2", "2025-03-10 11:00", ("read", "2025-03-10 11:01"))
        ],
    )
    assert months(client, tenant) == {}
    add_number(settings, tenant, "15550000002", n2)
    assert months(client, tenant) == {"032025": (1, 0, 1)}
    # More events after registration add to the same counts, once.
    deliver(client, inbound(U2, at("2025-03-12 10:00"), number=n2))
    assert months(client, tenant) == {"032025": (1, 0, 2)}


@pytest.mark.parametrize("zone", ["Asia/Jerusalem", "America/New_York"])
def test_month_attribution_across_dst(client: TestClient, settings: Settings, zone: str) -> None:
    """Months are local calendar months on both sides of a DST change."""
    tenant = setup(settings, zone)
    if zone == "Asia/Jerusalem":
        # Summer time began 2025-03-28 (UTC+3); it ended 2025-10-26 (back to UTC+2).
        edges = ["2025-03-31 23:30", "2025-04-01 00:30", "2025-10-31 23:30", "2025-11-01 00:30"]
    else:
        # DST began 2025-03-09 (UTC-4) and ended 2025-11-02 (UTC-5).
        edges = ["2025-03-31 23:30", "2025-04-01 00:30", "2025-10-31 23:30", "2025-11-01 00:30"]
    users = ["972500000001", "972500000002", "972500000003", "972500000004"]
    deliver(client, *[inbound(u, at(e, zone)) for u, e in zip(users, edges, strict=True)])
    assert months(client, tenant) == {
        "032025": (0, 0, 1),
        "042025": (0, 0, 1),
        "102025": (0, 0, 1),
        "112025": (0, 0, 1),
    }
    # And one event the night the clocks change falls in its local day's month.
    night = "2025-10-26 01:30" if zone == "Asia/Jerusalem" else "2025-11-02 01:30"
    deliver(client, inbound("972500000005", at(night, zone)))
    assert months(client, tenant)[night[5:7] + "2025"][2] == 2
