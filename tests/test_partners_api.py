"""The compatible partners API through the real app, on SQLite and PostgreSQL: every reason code
of spec/partners-api.md, each asserting the full answer."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from fastapi.testclient import TestClient

from conftest import FakeClock, make_settings
from helpers import Tenant, add_number, bearer, create_tenant, get_token, seed_units
from wastats.api.partners import mmyyyy, parse_mmyyyy
from wastats.app import create_app
from wastats.settings import Settings
from wastats.store import accounts as accounts_repo
from wastats.store.db import Database

STATS = "/api/whatsapp/getConversationsStatistics"
NUMBERS = "/api/whatsapp/getWhatsApp"
TOKEN = "/api/settings/accessToken"


def ts(text: str) -> int:
    return int(datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp())


def fail(reason: int, message: str) -> dict[str, object]:
    return {"status": "FAIL", "reason": reason, "message": message}


NO_TOKEN = fail(
    3, "access token does not exist or expired; get another one from /api/settings/accessToken"
)


@pytest.fixture
def tenant(settings: Settings) -> Tenant:
    return create_tenant(settings)


@pytest.fixture
def token(client: TestClient, tenant: Tenant) -> str:
    return get_token(client, tenant)


def stats(client: TestClient, token: str | None, body: object = None, **params: str) -> object:
    headers = bearer(token) if token else {}
    content = None if body is None else (body if isinstance(body, bytes) else json.dumps(body))
    response = client.request("GET", STATS, content=content, params=params, headers=headers)
    assert response.status_code == 200
    return response.json()


# --- accessToken --------------------------------------------------------------------------------


def test_access_token_ok(client: TestClient, tenant: Tenant, clock: FakeClock) -> None:
    answer = client.post(
        TOKEN, json={"client_id": tenant.client_id, "client_secret": tenant.client_secret}
    ).json()
    assert set(answer) == {"status", "access_token", "expiration_time", "token_type", "reason"}
    assert answer["status"] == "OK"
    assert answer["reason"] == 1
    assert answer["token_type"] == "Bearer"
    assert answer["expiration_time"] == str(int(clock.now) + 3600)
    assert len(answer["access_token"]) >= 43  # 256 bits, URL-safe base64


@pytest.mark.parametrize(
    "body",
    [
        {"client_id": "nope", "client_secret": "nope"},
        {"client_secret": "x"},
        {"client_id": 5, "client_secret": "x"},
        [],
        "not json",
        "",
    ],
)
def test_access_token_bad_credentials_or_body(
    client: TestClient, tenant: Tenant, body: object
) -> None:
    content = body if isinstance(body, str) else json.dumps(body)
    answer = client.post(TOKEN, content=content).json()
    assert answer["status"] == "FAIL"
    assert answer["reason"] == 2
    assert answer["message"]


def test_access_token_wrong_secret_for_real_client(client: TestClient, tenant: Tenant) -> None:
    answer = client.post(
        TOKEN, json={"client_id": tenant.client_id, "client_secret": tenant.client_secret + "x"}
    ).json()
    assert answer == fail(2, "client_id or client_secret is wrong")


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE", "PATCH"])
def test_access_token_wrong_method(client: TestClient, method: str) -> None:
    response = client.request(method, TOKEN)
    assert response.status_code == 200
    assert response.json() == fail(13, "you need to use POST method")


def test_lockout_after_repeated_failures_and_per_ip(database_url: str, clock: FakeClock) -> None:
    settings = make_settings(
        database_url, lockout_threshold=3, lockout_seconds=600, forwarded_allow_ips="*"
    )
    tenant = create_tenant(settings)
    good = {"client_id": tenant.client_id, "client_secret": tenant.client_secret}
    bad = {"client_id": tenant.client_id, "client_secret": "guess"}
    attacker = {"X-Forwarded-For": "203.0.113.7"}
    other = {"X-Forwarded-For": "198.51.100.9"}
    with TestClient(create_app(settings, clock=clock)) as client:
        for _ in range(3):
            assert client.post(TOKEN, json=bad, headers=attacker).json()["reason"] == 2
        locked = fail(
            3,
            "too many failed attempts from this address for this client id; try again in "
            "10 minutes",
        )
        # Locked out: even the right secret is refused, so guessing can't go on.
        assert client.post(TOKEN, json=good, headers=attacker).json() == locked
        # Another address is not affected.
        assert client.post(TOKEN, json=good, headers=other).json()["status"] == "OK"
        clock.advance(601)
        assert client.post(TOKEN, json=good, headers=attacker).json()["status"] == "OK"


def test_one_tenants_success_does_not_reset_the_guesses_at_another(
    database_url: str, clock: FakeClock
) -> None:
    """Issue 11, item 4: a successful sign-in of tenant A from an address reset the address's
    count, so an attacker holding A's credentials could guess B's secret without limit."""
    settings = make_settings(database_url, lockout_threshold=3, forwarded_allow_ips="*")
    mine, victim = create_tenant(settings), create_tenant(settings)
    mine_ok = {"client_id": mine.client_id, "client_secret": mine.client_secret}
    guess = {"client_id": victim.client_id, "client_secret": "guess"}
    attacker = {"X-Forwarded-For": "203.0.113.7"}
    with TestClient(create_app(settings, clock=clock)) as client:
        reasons = []
        for _ in range(4):
            reasons.append(client.post(TOKEN, json=guess, headers=attacker).json()["reason"])
            assert client.post(TOKEN, json=mine_ok, headers=attacker).json()["status"] == "OK"
        assert reasons == [2, 2, 2, 3]


def test_one_tenants_typos_do_not_lock_out_the_others_behind_the_address(
    database_url: str, clock: FakeClock
) -> None:
    """Issue 11, item 4: ten failures of one tenant locked out every tenant behind the same
    address. Now only that tenant is blocked; the whole address only at the address limit."""
    settings = make_settings(
        database_url,
        lockout_threshold=2,
        lockout_address_threshold=5,
        lockout_seconds=90,
        forwarded_allow_ips="*",
    )
    clumsy, other = create_tenant(settings), create_tenant(settings)
    other_ok = {"client_id": other.client_id, "client_secret": other.client_secret}
    office = {"X-Forwarded-For": "198.51.100.20"}
    with TestClient(create_app(settings, clock=clock)) as client:

        def attempt(body: dict[str, str]) -> dict[str, object]:
            return dict(client.post(TOKEN, json=body, headers=office).json())

        wrong = {"client_id": clumsy.client_id, "client_secret": "typo"}
        assert [attempt(wrong)["reason"] for _ in range(3)] == [2, 2, 3]
        assert attempt(other_ok)["status"] == "OK"
        # Spraying made-up client ids counts against the address: at 5 failures (the two
        # above and three more) everyone behind it is blocked, for the stated time.
        assert [
            attempt({"client_id": f"x{i}", "client_secret": "y"})["reason"] for i in range(4)
        ] == [2, 2, 2, 3]
        assert attempt(other_ok) == fail(
            3, "too many failed attempts from this address; try again in 2 minutes"
        )
        clock.advance(91)
        assert attempt(other_ok)["status"] == "OK"


@pytest.mark.parametrize(
    ("first", "second", "same"),
    [
        ("2001:db8:1:2::1", "2001:db8:1:2:ffff:ffff:ffff:fffe", True),  # one /64
        ("2001:db8:1:2::1", "2001:db8:1:3::1", False),  # the next /64
        ("::ffff:192.0.2.9", "192.0.2.9", True),  # IPv4-mapped is its IPv4 address
        ("192.0.2.9", "192.0.2.10", False),
        ("x" * 65, "not an address", True),  # both invalid: one bucket, counted
    ],
)
def test_failures_are_counted_per_network_and_bad_addresses_count_too(
    database_url: str, clock: FakeClock, first: str, second: str, same: bool
) -> None:
    """IPv6 by /64, IPv4-mapped as IPv4; a 65-character X-Forwarded-For gave a 500 on
    PostgreSQL (the address column holds 64) and was never counted."""
    settings = make_settings(database_url, lockout_threshold=2, forwarded_allow_ips="*")
    tenant = create_tenant(settings)
    bad = {"client_id": tenant.client_id, "client_secret": "guess"}
    good = {"client_id": tenant.client_id, "client_secret": tenant.client_secret}
    with TestClient(create_app(settings, clock=clock)) as client:
        for _ in range(2):
            answer = client.post(TOKEN, json=bad, headers={"X-Forwarded-For": first})
            assert (answer.status_code, answer.json()["reason"]) == (200, 2)
        answer = client.post(TOKEN, json=good, headers={"X-Forwarded-For": second})
        assert answer.status_code == 200
        assert answer.json()["reason"] == (3 if same else 1)


def test_old_failure_rows_expire(database_url: str, clock: FakeClock) -> None:
    settings = make_settings(
        database_url, lockout_window_seconds=60, lockout_seconds=60, forwarded_allow_ips="*"
    )
    tenant = create_tenant(settings)
    bad = {"client_id": tenant.client_id, "client_secret": "guess"}
    with TestClient(create_app(settings, clock=clock)) as client:
        for n in range(20):
            client.post(TOKEN, json=bad, headers={"X-Forwarded-For": f"192.0.2.{n}"})
        with Database(settings.database_url).read() as conn:
            assert len(accounts_repo.list_failures(conn)) == 40
        clock.advance(61)
        client.post(TOKEN, json=bad, headers={"X-Forwarded-For": "198.51.100.1"})
        with Database(settings.database_url).read() as conn:
            rows = accounts_repo.list_failures(conn)
        assert {(r.address, r.client_id) for r in rows} == {
            ("198.51.100.1", ""),
            ("198.51.100.1", tenant.client_id),
        }


def test_failures_outside_the_window_do_not_add_up(database_url: str, clock: FakeClock) -> None:
    settings = make_settings(database_url, lockout_threshold=2, lockout_window_seconds=60)
    tenant = create_tenant(settings)
    bad = {"client_id": tenant.client_id, "client_secret": "guess"}
    with TestClient(create_app(settings, clock=clock)) as client:
        assert client.post(TOKEN, json=bad).json()["reason"] == 2
        clock.advance(61)
        assert client.post(TOKEN, json=bad).json()["reason"] == 2
        assert get_token(client, tenant)


def test_token_expires_and_older_tokens_stay_valid(
    client: TestClient, tenant: Tenant, clock: FakeClock
) -> None:
    first = get_token(client, tenant)
    clock.advance(1800)
    second = get_token(client, tenant)
    assert stats(client, first)["status"] == "OK"  # type: ignore[index]
    clock.advance(1801)
    assert stats(client, first) == NO_TOKEN
    assert stats(client, second)["status"] == "OK"  # type: ignore[index]
    clock.advance(1800)
    assert stats(client, second) == NO_TOKEN


def test_secrets_and_tokens_are_stored_only_as_hashes(
    client: TestClient, tenant: Tenant, settings: Settings
) -> None:
    token = get_token(client, tenant)
    from sqlalchemy import text

    from wastats.store.db import Database

    db = Database(settings.database_url)
    try:
        with db.read() as conn:
            dump = repr(conn.execute(text("SELECT * FROM accounts")).all())
            dump += repr(conn.execute(text("SELECT * FROM access_tokens")).all())
    finally:
        db.dispose()
    assert tenant.client_secret not in dump
    assert token not in dump
    assert tenant.client_id in dump


# --- getConversationsStatistics ----------------------------------------------------------------


@pytest.fixture
def seeded(settings: Settings, tenant: Tenant) -> tuple[str, str]:
    a = add_number(settings, tenant, "972501234567")
    b = add_number(settings, tenant, "972507654321")
    seed_units(
        settings,
        a,
        [(ts("2024-12-03T10:00"), "marketing")] * 3
        + [(ts("2024-12-04T10:00"), "incoming")] * 2
        + [(ts("2025-01-10T10:00"), "service")]
        + [(ts("2025-03-01T00:00"), "marketing")],
    )
    seed_units(
        settings,
        b,
        [(ts("2025-01-20T10:00"), "incoming")] * 4 + [(ts("2025-01-20T11:00"), "none")] * 5,
    )
    return a, b


def item(month: str, marketing: int, service: int, incoming: int) -> dict[str, object]:
    return {
        "monthYear": month,
        "totalConversations": marketing + service + incoming,
        "totalMarketing": marketing,
        "totalService": service,
        "totalIncoming": incoming,
    }


def ok(total: int, whatsapp: str | None, items: list[dict[str, object]]) -> dict[str, object]:
    return {
        "status": "OK",
        "reason": 1,
        "totalWhatsApp": total,
        "whatsapp": whatsapp,
        "list": items,
    }


def test_statistics_all_numbers_newest_first(
    client: TestClient, token: str, seeded: object
) -> None:
    assert stats(client, token) == ok(
        2,
        None,
        [item("032025", 1, 0, 0), item("012025", 0, 1, 4), item("122024", 3, 0, 2)],
    )


def test_statistics_inclusive_bounds(client: TestClient, token: str, seeded: object) -> None:
    body = {"start_date": "012025", "end_date": "032025"}
    assert stats(client, token, body) == ok(
        2, None, [item("032025", 1, 0, 0), item("012025", 0, 1, 4)]
    )
    assert stats(client, token, {"start_date": "122024", "end_date": "122024"}) == ok(
        2, None, [item("122024", 3, 0, 2)]
    )
    assert stats(client, token, {"end_date": "122024"}) == ok(2, None, [item("122024", 3, 0, 2)])


@pytest.mark.parametrize("empty", [None, ""])
def test_statistics_null_and_empty_mean_no_bound(
    client: TestClient, token: str, seeded: object, empty: str | None
) -> None:
    body = {"start_date": empty, "end_date": empty, "whatsapp": empty}
    assert len(stats(client, token, body)["list"]) == 3  # type: ignore[index]


def test_statistics_empty_range(client: TestClient, token: str, seeded: object) -> None:
    assert stats(client, token, {"start_date": "022025", "end_date": "022025"}) == ok(2, None, [])


def test_statistics_no_numbers_at_all(client: TestClient, token: str) -> None:
    assert stats(client, token) == ok(0, None, [])


@pytest.mark.parametrize("spelling", ["+972-50-123-4567", "972 50 123 4567", "(972)501234567"])
def test_statistics_whatsapp_is_normalised(
    client: TestClient, token: str, seeded: object, spelling: str
) -> None:
    assert stats(client, token, {"whatsapp": spelling}) == ok(
        1,
        "972501234567",
        [item("032025", 1, 0, 0), item("012025", 0, 1, 0), item("122024", 3, 0, 2)],
    )


def test_statistics_query_parameters_and_body_wins(
    client: TestClient, token: str, seeded: object
) -> None:
    answer = stats(client, token, None, whatsapp="972507654321")
    assert answer == ok(1, "972507654321", [item("012025", 0, 0, 4)])
    answer = stats(client, token, {"whatsapp": "972501234567"}, whatsapp="972507654321")
    assert answer["whatsapp"] == "972501234567"  # type: ignore[index]


def test_statistics_sum_invariant(client: TestClient, token: str, seeded: object) -> None:
    for row in stats(client, token)["list"]:  # type: ignore[index]
        assert row["totalConversations"] == (
            row["totalMarketing"] + row["totalService"] + row["totalIncoming"]
        )


def test_statistics_months_follow_the_account_zone(client: TestClient, settings: Settings) -> None:
    # 31 Jan 22:30 UTC is already February in Jerusalem (UTC+2 in winter): worked example 10.
    tenant = create_tenant(settings, "Tel Aviv", "Asia/Jerusalem")
    number = add_number(settings, tenant, "972521111111")
    seed_units(settings, number, [(ts("2025-01-31T22:30"), "incoming")])
    seed_units(settings, number, [(ts("2025-01-31T21:59"), "marketing")])
    answer = stats(client, get_token(client, tenant))
    assert answer == ok(1, None, [item("022025", 0, 0, 1), item("012025", 1, 0, 0)])


BAD_WHATSAPP = fail(4, "whatsapp must be a phone number of 8 to 15 digits")
BAD_START = fail(40, "start_date must be a month written mmyyyy, e.g. 032025")
BAD_END = fail(41, "end_date must be a month written mmyyyy, e.g. 052025")


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b"{not json", fail(2, "the body is not a JSON object")),
        (b"[]", fail(2, "the body is not a JSON object")),
        ({"start_date": 122024}, fail(2, "start_date must be a string")),
        ({"whatsapp": 972501234567}, fail(2, "whatsapp must be a string")),
        ({"whatsapp": "12345"}, BAD_WHATSAPP),
        ({"whatsapp": "9725012345678901"}, BAD_WHATSAPP),
        ({"whatsapp": "97250abc4567"}, BAD_WHATSAPP),
        ({"start_date": "132025"}, BAD_START),
        ({"start_date": "2025-01"}, BAD_START),
        ({"end_date": "002025"}, BAD_END),
        ({"end_date": "12025"}, BAD_END),
        (
            {"start_date": "022025", "end_date": "012025"},
            fail(42, "start_date 022025 is after end_date 012025"),
        ),
        (
            {"start_date": "012026", "end_date": "122025"},
            fail(42, "start_date 012026 is after end_date 122025"),
        ),
        ({"whatsapp": "972509999999"}, fail(27, "972509999999 is not a number of this account")),
    ],
)
def test_statistics_reasons(
    client: TestClient, token: str, seeded: object, body: object, expected: object
) -> None:
    assert stats(client, token, body) == expected


def test_statistics_bad_date_in_query_string(client: TestClient, token: str) -> None:
    assert stats(client, token, None, end_date="x") == fail(
        41, "end_date must be a month written mmyyyy, e.g. 052025"
    )


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer nope"},
        {"Authorization": "Basic abc"},
        {"Authorization": "Bearer"},
    ],
)
def test_statistics_without_valid_token(client: TestClient, headers: dict[str, str]) -> None:
    response = client.request("GET", STATS, headers=headers)
    assert response.status_code == 200
    assert response.json() == NO_TOKEN


@pytest.mark.parametrize(
    "content", [b"[1]", b'{"start_date": "13-2025"}', b'{"whatsapp": "x", "end_date": 5}']
)
def test_a_bad_token_is_answered_before_a_bad_request(
    client: TestClient, token: str, content: bytes
) -> None:
    """The token is checked first (reason 3), whatever else is wrong; with a valid one, the
    request's own fault is answered (the token is checked in the same trip as the answer)."""
    headers = {"Authorization": "Bearer nope"}
    assert client.request("GET", STATS, headers=headers, content=content).json() == NO_TOKEN
    answer = client.request("GET", STATS, headers=bearer(token), content=content).json()
    assert answer["status"] == "FAIL"
    assert answer["reason"] != NO_TOKEN["reason"]


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE"])
def test_statistics_wrong_method(client: TestClient, token: str, method: str) -> None:
    response = client.request(method, STATS, headers=bearer(token))
    assert response.json() == fail(13, "you need to use GET method")


# --- getWhatsApp --------------------------------------------------------------------------------


def test_get_whatsapp_lists_numbers_with_this_months_counts(
    client: TestClient, settings: Settings, tenant: Tenant, token: str, clock: FakeClock
) -> None:
    clock.now = ts("2025-01-25T12:00")
    a = add_number(
        settings, tenant, "972501234567", display_name="Shop", business_name="Shop Ltd", now=100
    )
    b = add_number(settings, tenant, "+972 50 765 4321", coexistence=True, now=200)
    seed_units(settings, a, [(ts("2025-01-02T00:00"), "marketing")] * 3)
    seed_units(settings, a, [(ts("2025-01-03T00:00"), "service")] * 3)
    seed_units(settings, a, [(ts("2024-12-31T00:00"), "marketing")] * 7)  # last month
    seed_units(
        settings, b, [(ts("2025-01-05T00:00"), "incoming"), (ts("2025-01-05T00:00"), "service")]
    )
    answer = client.get(NUMBERS, headers=bearer(token)).json()
    assert answer == {
        "status": "OK",
        "reason": 1,
        "totalWhatsApp": 2,
        "totalConversationsThisMonth": 8,
        "totalMarketingThisMonth": 3,
        "totalServiceThisMonth": 4,
        "totalIncomingThisMonth": 1,
        "list": [
            {
                "create_time": 100,
                "whatsapp": "972501234567",
                "display_name": "Shop",
                "business_name": "Shop Ltd",
                "coexistence": 0,
                "conversationsThisMonth": 6,
                "marketingThisMonth": 3,
                "serviceThisMonth": 3,
                "incomingThisMonth": 0,
            },
            {
                "create_time": 200,
                "whatsapp": "972507654321",
                "display_name": "",
                "business_name": "",
                "coexistence": 1,
                "conversationsThisMonth": 2,
                "marketingThisMonth": 0,
                "serviceThisMonth": 1,
                "incomingThisMonth": 1,
            },
        ],
    }


def test_get_whatsapp_reasons(client: TestClient, token: str) -> None:
    assert client.get(NUMBERS).json() == NO_TOKEN
    assert client.post(NUMBERS, headers=bearer(token)).json() == fail(
        13, "you need to use GET method"
    )


# --- tenant isolation ---------------------------------------------------------------------------


def test_tenants_never_see_each_other(
    client: TestClient, settings: Settings, seeded: tuple[str, str], token: str
) -> None:
    other = create_tenant(settings, "Other")
    theirs = add_number(settings, other, "14155550100")
    seed_units(settings, theirs, [(ts("2025-01-01T12:00"), "marketing")] * 50)
    other_token = get_token(client, other)

    # Each sees only its own numbers and counts, on every endpoint.
    mine = stats(client, token)
    assert all(row["totalMarketing"] < 50 for row in mine["list"])  # type: ignore[index]
    assert stats(client, other_token) == ok(1, None, [item("012025", 50, 0, 0)])
    listed = client.get(NUMBERS, headers=bearer(other_token)).json()
    assert [n["whatsapp"] for n in listed["list"]] == ["14155550100"]

    # Another account's number is answered exactly like a number that exists nowhere.
    foreign = stats(client, token, {"whatsapp": "14155550100"})
    nowhere = stats(client, token, {"whatsapp": "14155550199"})
    assert foreign == fail(27, "14155550100 is not a number of this account")
    assert nowhere == fail(27, "14155550199 is not a number of this account")
    assert stats(client, other_token, {"whatsapp": "972501234567"})["reason"] == 27  # type: ignore[index]


# --- transport faults -------------------------------------------------------------------------


def test_body_over_the_limit_is_refused_before_parsing(database_url: str) -> None:
    settings = make_settings(database_url, max_body_bytes=2048)
    with TestClient(create_app(settings)) as client:
        response = client.post(TOKEN, content=b"{" + b" " * 5000 + b"}")
        assert response.status_code == 413
        assert response.json() == fail(2, "request body too large: the limit is 2048 bytes")


def test_unknown_path_is_a_404_problem(client: TestClient) -> None:
    response = client.get("/api/whatsapp/nothing")
    assert response.status_code == 404
    assert response.json()["detail"] == "no such path: /api/whatsapp/nothing"


def test_healthz_and_openapi(client: TestClient) -> None:
    assert client.get("/healthz").json() == {
        "status": "ok",
        "problems": [],
        "database": "ok",
        "ingest": "running",
        "inbox": {"pending": 0, "rejected": 0, "processed": 0},
    }
    spec = client.get("/openapi.json").json()
    assert STATS in spec["paths"]
    assert client.get("/docs").status_code == 200


# --- months, written mmyyyy (the API's own format) ---------------------------------------


@pytest.mark.parametrize(
    ("text", "month"),
    [("022025", 202502), ("121970", 197012), ("019999", 999901), ("072025", 202507)],
)
def test_mmyyyy_round_trip(text: str, month: int) -> None:
    assert parse_mmyyyy(text) == month
    assert mmyyyy(month) == text


@pytest.mark.parametrize(
    "text",
    ["", "22025", "0220250", "132025", "002025", "021969", " 22025", "+12025", "02-025", "٠٢٢٠٢٥"],
)
def test_parse_mmyyyy_rejects(text: str) -> None:
    assert parse_mmyyyy(text) is None


def test_mmyyyy_rejects_invalid_months() -> None:
    with pytest.raises(ValueError, match="not a month"):
        mmyyyy(202513)
