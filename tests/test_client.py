"""The Python client and `wastats stats` against a real uvicorn server running the real app on
SQLite and PostgreSQL. Data goes in through signed webhooks; every typed answer is compared
with the raw JSON the service gives a plain HTTP client."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from typer.testing import CliRunner

from conftest import FakeClock, make_settings
from helpers import Tenant, add_number, create_tenant
from live import _free_port, live_server
from wastats.app import create_app
from wastats.cli import app as cli_app
from wastats.client import (
    ApiFailure,
    AuthenticationError,
    Client,
    ProblemError,
    WastatsError,
)
from wastats.settings import Settings
from webhooks import at, body, inbound, post, status

A, A_ID = "972501111111", "20100000001"
B, B_ID = "972502222222", "20100000002"
STATS = "/api/whatsapp/getConversationsStatistics"
WHATSAPP = "/api/whatsapp/getWhatsApp"

runner = CliRunner()


@dataclass
class Served:
    url: str
    app: FastAPI
    tenant: Tenant
    settings: Settings
    clock: FakeClock


def _marketing(wamid: str, ts: int, number: str) -> dict[str, Any]:
    return status(wamid, "delivered", ts, number=number, pricing=("PMP", "marketing", "regular"))


def _utility(wamid: str, ts: int, number: str) -> dict[str, Any]:
    return status(wamid, "delivered", ts, number=number, pricing=("PMP", "utility", "regular"))


def _free(wamid: str, ts: int, number: str) -> dict[str, Any]:
    pricing = ("PMP", "service", "free_customer_service")
    return status(wamid, "delivered", ts, number=number, pricing=pricing)


# The FakeClock's "now" is 2026-01-15, so January 2026 is getWhatsApp's "this month".
EVENTS = [
    _marketing("wamid.m1", at("2025-11-03 10:00"), A_ID),
    _marketing("wamid.m2", at("2025-11-20 10:00"), A_ID),
    _utility("wamid.u1", at("2025-11-21 10:00"), A_ID),
    inbound("972531000001", at("2025-11-05 09:00"), number=A_ID),
    _marketing("wamid.m3", at("2025-12-01 08:00"), B_ID),
    inbound("972531000002", at("2025-12-02 09:00"), number=B_ID),
    inbound("972531000003", at("2025-12-03 09:00"), number=B_ID),
    _free("wamid.f1", at("2025-12-03 09:30"), B_ID),
    inbound("972531000001", at("2026-01-10 12:00"), number=A_ID),
    _utility("wamid.u2", at("2026-01-12 12:00"), B_ID),
]

EXPECTED_MONTHS = [  # newest first, as the compatible API lists them
    {"monthYear": "012026", "totalConversations": 2, "totalMarketing": 0, "totalService": 1,
     "totalIncoming": 1},
    {"monthYear": "122025", "totalConversations": 3, "totalMarketing": 1, "totalService": 0,
     "totalIncoming": 2},
    {"monthYear": "112025", "totalConversations": 4, "totalMarketing": 2, "totalService": 1,
     "totalIncoming": 1},
]  # fmt: skip


@contextmanager
def serve(settings: Settings, clock: FakeClock) -> Iterator[Served]:
    tenant = create_tenant(settings)
    add_number(settings, tenant, A, A_ID, display_name="Shop A")
    add_number(settings, tenant, B, B_ID)
    app = create_app(settings, clock=clock)
    with live_server(app) as url, httpx.Client(base_url=url) as http:
        for value in EVENTS:
            # A plain HTTP client has the TestClient's `post` signature, so the helper fits.
            assert post(http, body(value)) == 200  # type: ignore[arg-type]
        assert app.state.ctx.ingest.wait_idle(30), "ingestion did not finish"
        yield Served(url, app, tenant, settings, clock)


@pytest.fixture
def served(settings: Settings, clock: FakeClock) -> Iterator[Served]:
    with serve(settings, clock) as running:
        yield running


def client_of(served: Served, secret: str | None = None, **kwargs: Any) -> Client:
    secret = served.tenant.client_secret if secret is None else secret
    return Client(served.url, served.tenant.client_id, secret, **kwargs)


def raw_token(served: Served) -> str:
    answer = httpx.post(
        served.url + "/api/settings/accessToken",
        json={"client_id": served.tenant.client_id, "client_secret": served.tenant.client_secret},
    ).json()
    assert answer["status"] == "OK", answer
    return str(answer["access_token"])


def raw_get(served: Served, path: str, **kwargs: Any) -> httpx.Response:
    headers = {"Authorization": f"Bearer {raw_token(served)}", **kwargs.pop("headers", {})}
    response = httpx.request("GET", served.url + path, headers=headers, **kwargs)
    return response


def dumped(model: Any) -> Any:
    """A parsed answer back as the JSON it came from (only the fields the service sent), with
    times as datetimes: `2025-01-01T00:00:00+00:00` and `…Z` are the same instant."""
    return instants(model.model_dump(mode="json", by_alias=True, exclude_unset=True))


def instants(value: Any) -> Any:
    """JSON with the v1 answer's time fields parsed, to compare instants, not spellings."""
    if isinstance(value, list):
        return [instants(v) for v in value]
    if isinstance(value, dict):
        return {
            k: datetime.fromisoformat(v) if k in TIMES and isinstance(v, str) else instants(v)
            for k, v in value.items()
        }
    return value


TIMES = {"start", "end", "as_of"}


class Recorder(httpx.HTTPTransport):
    """A real transport that also notes each request's path and answer, to see renewals."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[str, int, str]] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = super().handle_request(request)
        response.read()
        self.calls.append((request.url.path, response.status_code, response.text[:200]))
        return response

    def paths(self) -> list[str]:
        return [path for path, _, _ in self.calls]


# --- the compatible API -------------------------------------------------------------------------


def test_conversations_statistics_equal_the_raw_answer(served: Served) -> None:
    with client_of(served) as client:
        every = client.conversations_statistics()
        window = client.conversations_statistics(start="122025", end=date(2026, 1, 31))
        one = client.conversations_statistics(whatsapp="+972-50-111-1111")
    assert dumped(every) == raw_get(served, STATS, json={}).json()
    assert dumped(every) == {
        "status": "OK", "reason": 1, "totalWhatsApp": 2, "whatsapp": None, "list": EXPECTED_MONTHS,
    }  # fmt: skip
    assert [m.total_conversations for m in every.months] == [2, 3, 4]
    assert every.months[0].month == date(2026, 1, 1)

    raw_window = raw_get(served, STATS, json={"start_date": "122025", "end_date": "012026"})
    assert dumped(window) == raw_window.json()
    assert [m.month_year for m in window.months] == ["012026", "122025"]

    raw_one = raw_get(served, STATS, json={"whatsapp": "+972-50-111-1111"}).json()
    assert dumped(one) == raw_one
    assert (one.whatsapp, one.total_whatsapp) == (A, 1)
    assert [(m.month_year, m.total_marketing, m.total_incoming) for m in one.months] == [
        ("012026", 0, 1),
        ("112025", 2, 1),
    ]


def test_whatsapp_numbers_equal_the_raw_answer(served: Served) -> None:
    with client_of(served) as client:
        answer = client.whatsapp_numbers()
    assert dumped(answer) == raw_get(served, WHATSAPP).json()
    assert [n.whatsapp for n in answer.numbers] == [A, B]
    assert answer.numbers[0].display_name == "Shop A"
    assert [(n.incoming_this_month, n.service_this_month) for n in answer.numbers] == [
        (1, 0),
        (0, 1),
    ]
    assert answer.total_conversations_this_month == 2


# --- /v1 ----------------------------------------------------------------------------------------


def test_stats_equal_the_raw_answer(served: Served) -> None:
    query = {"from": "2025-11", "to": "2026-01", "group_by": "number", "unique": "true"}
    with client_of(served) as client:
        grouped = client.stats(from_="2025-11", to=date(2026, 1, 31), group_by=["number"],
                               unique=True)  # fmt: skip
        plain = client.stats(from_=date(2025, 11, 1), to="2026-01", tz="Asia/Jerusalem")
        days = client.stats(from_="2025-12-01", to="2025-12-03", granularity="day", numbers=[B])
    assert dumped(grouped) == instants(raw_get(served, "/v1/stats", params=query).json())
    assert (grouped.from_, grouped.to) == (date(2025, 11, 1), date(2026, 1, 31))
    assert grouped.numbers == (A, B)
    totals = grouped.totals
    assert (totals.marketing, totals.service, totals.incoming, totals.total) == (3, 2, 4, 9)
    assert totals.uncounted >= 1  # the free service message
    assert totals.unique_customers is not None
    by_row = {(r.period, r.number): (r.marketing, r.service, r.incoming) for r in grouped.rows}
    assert by_row[("2025-11", A)] == (2, 1, 1)
    assert by_row[("2025-12", B)] == (1, 0, 2)
    assert by_row[("2026-01", B)] == (0, 1, 0)

    raw_plain = raw_get(
        served, "/v1/stats", params={"from": "2025-11-01", "to": "2026-01", "tz": "Asia/Jerusalem"}
    ).json()
    assert dumped(plain) == instants(raw_plain)
    assert plain.tz == "Asia/Jerusalem"
    assert [r.period for r in plain.rows] == ["2025-11", "2025-12", "2026-01"]
    assert plain.rows[0].start.utcoffset() is not None  # an aware datetime in the zone

    raw_days = raw_get(
        served,
        "/v1/stats",
        params={"from": "2025-12-01", "to": "2025-12-03", "granularity": "day", "numbers": B},
    ).json()
    assert dumped(days) == instants(raw_days)
    assert [(r.period, r.total) for r in days.rows] == [
        ("2025-12-01", 1),
        ("2025-12-02", 1),
        ("2025-12-03", 1),
    ]


def test_stats_csv_and_numbers_equal_the_raw_answers(served: Served) -> None:
    with client_of(served) as client:
        text = client.stats_csv(from_="2025-11", to="2026-01", group_by=("number", "category"))
        numbers = client.numbers()
    raw = raw_get(
        served,
        "/v1/stats",
        params={"from": "2025-11", "to": "2026-01", "group_by": "number,category", "format": "csv"},
    )
    assert text == raw.text
    assert text.splitlines()[0].startswith("period,start,end,final,number,category,pricing,")
    assert [dumped(n) for n in numbers] == raw_get(served, "/v1/numbers").json()["numbers"]
    assert [(n.whatsapp, n.phone_number_id, n.display_name) for n in numbers] == [
        (A, A_ID, "Shop A"),
        (B, B_ID, None),
    ]


# --- errors -------------------------------------------------------------------------------------


def test_wrong_credentials(served: Served) -> None:
    for client_id, secret in (
        (served.tenant.client_id, "wrong"),
        ("no-such-client", served.tenant.client_secret),
    ):
        with Client(served.url, client_id, secret) as client:
            with pytest.raises(AuthenticationError) as caught:
                client.conversations_statistics()
            with pytest.raises(AuthenticationError):
                client.stats()
        assert caught.value.reason == 2
        assert not caught.value.locked_out
        assert caught.value.message == "client_id or client_secret is wrong"


def test_lockout(database_url: str, clock: FakeClock) -> None:
    settings = make_settings(database_url, lockout_threshold=1, forwarded_allow_ips="*")
    with serve(settings, clock) as served:
        with client_of(served, "guess") as guessing, pytest.raises(AuthenticationError) as first:
            guessing.whatsapp_numbers()
        assert (first.value.reason, first.value.locked_out) == (2, False)
        # From now on even the right secret is refused from this address.
        with client_of(served) as client, pytest.raises(AuthenticationError) as locked:
            client.numbers()
        assert (locked.value.reason, locked.value.locked_out) == (3, True)
        assert "too many failed attempts" in str(locked.value)


def test_in_band_failures_and_problems(served: Served) -> None:
    with client_of(served) as client:
        cases = [
            (lambda: client.conversations_statistics(start="132025"), 40),
            (lambda: client.conversations_statistics(end="2025"), 41),
            (lambda: client.conversations_statistics(start="022025", end="012025"), 42),
            (lambda: client.conversations_statistics(whatsapp="12"), 4),
            (lambda: client.conversations_statistics(whatsapp="972509999999"), 27),
        ]
        for call, reason in cases:
            with pytest.raises(ApiFailure) as failure:
                call()
            assert failure.value.reason == reason
            assert failure.value.message
        with pytest.raises(ProblemError) as problem:
            client.stats(granularity="fortnight")
        assert problem.value.status == 422
        assert problem.value.title == "Invalid parameter"
        assert [e.parameter for e in problem.value.errors] == ["granularity"]
        with pytest.raises(ProblemError) as problem:
            client.stats_csv(numbers=["972509999999"])
        assert (problem.value.status, problem.value.errors[0].parameter) == (422, "numbers")
        with pytest.raises(ProblemError) as problem:
            client.stats(from_="2025-06", to="2025-01")
        assert problem.value.status == 422
    # All of these are WastatsErrors, so one `except` is enough for callers that don't care.
    assert issubclass(ApiFailure, WastatsError)
    assert issubclass(ProblemError, WastatsError)
    assert issubclass(AuthenticationError, WastatsError)


def test_unusable_token_without_credentials(served: Served) -> None:
    with Client.from_token(served.url, "not-a-token") as client:
        with pytest.raises(AuthenticationError) as partners:
            client.conversations_statistics()
        with pytest.raises(AuthenticationError) as v1:
            client.stats()
    assert partners.value.reason == 3
    assert v1.value.status == 401
    assert v1.value.message.startswith("a valid bearer token is required")
    with Client.from_token(served.url, raw_token(served)) as client:
        assert client.whatsapp_numbers().total_whatsapp == 2
        assert client.stats(from_="2025-11", to="2026-01").totals.total == 9


def test_unreachable_server_raises_httpx_errors() -> None:
    unreachable = f"http://127.0.0.1:{_free_port()}"
    with Client(unreachable, "id", "secret") as client, pytest.raises(httpx.ConnectError):
        client.stats()


# --- tokens -------------------------------------------------------------------------------------


def test_expired_token_is_renewed_once_on_rejection(served: Served) -> None:
    # The client's own clock (real time) is far from the service's FakeClock, so it cannot know
    # when the token expires: the service's rejection is what triggers the renewal.
    recorder = Recorder()
    with client_of(served, transport=recorder) as client:
        assert client.conversations_statistics().total_whatsapp == 2
        assert client.stats(from_="2025-11", to="2026-01").totals.total == 9
        served.clock.advance(3601)
        assert client.whatsapp_numbers().total_whatsapp == 2
        served.clock.advance(3601)
        assert client.stats(from_="2025-11", to="2026-01").totals.total == 9
    token = "/api/settings/accessToken"
    assert recorder.paths() == [
        token, STATS, "/v1/stats",
        WHATSAPP, token, WHATSAPP,  # rejected in band (reason 3), renewed, retried
        "/v1/stats", token, "/v1/stats",  # 401, renewed, retried
    ]  # fmt: skip
    assert '"reason":3' in recorder.calls[3][2]
    assert recorder.calls[6][1] == 401


def test_token_is_renewed_before_it_expires(served: Served) -> None:
    # With the service's clock, the client renews ahead of expiry: no request is rejected.
    recorder = Recorder()
    with client_of(served, transport=recorder, clock=served.clock) as client:
        client.numbers()
        served.clock.advance(3600 - 30)  # within the renewal margin, not yet expired
        client.numbers()
        client.numbers()
    token = "/api/settings/accessToken"
    assert recorder.paths() == [token, "/v1/numbers", token, "/v1/numbers", "/v1/numbers"]
    assert all(code == 200 for _, code, _ in recorder.calls)


def test_secret_and_tokens_are_never_logged(
    served: Served, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    recorder = Recorder()
    with client_of(served, transport=recorder) as client:
        client.conversations_statistics()
        client.stats()
        served.clock.advance(3601)
        client.numbers()
        text = caplog.text + repr(client)
    tokens = [body for path, _, body in recorder.calls if path.endswith("accessToken")]
    assert len(tokens) == 2
    assert served.tenant.client_secret not in text
    for answer in tokens:
        token = httpx.Response(200, content=answer).json()["access_token"]
        assert token not in text


# --- wastats stats ------------------------------------------------------------------------------


def cli(served: Served, *args: str, **env: str) -> tuple[int, str, str]:
    # The command's "now" (which periods are final, the default range) is the service's clock.
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("wastats.cli.stats.now", lambda: int(served.clock()))
        result = runner.invoke(
            cli_app,
            ["stats", "--account", served.tenant.client_id, *args],
            env={"WASTATS_DATABASE_URL": served.settings.database_url, **env},
        )
    return result.exit_code, result.stdout, result.stderr


def test_cli_table(served: Served) -> None:
    # Read from the database the service uses, through the same answer model as /v1/stats.
    code, out, err = cli(served, "--from", "2025-11", "--to", "2026-01", "--by", "number")
    assert code == 0, err
    lines = {f"{line.split('│')[1].strip()} {line.split('│')[2].strip()}".strip(): line
             for line in out.splitlines() if line.count("│") > 3}  # fmt: skip
    cells = {key: [c.strip() for c in line.split("│")[3:-1]] for key, line in lines.items()}
    # marketing, service, incoming, total, final
    assert cells[f"2025-11 {A}"] == ["2", "1", "1", "4", "yes"]
    assert cells[f"2025-12 {B}"] == ["1", "0", "2", "3", "yes"]
    assert cells[f"2026-01 {B}"][:4] == ["0", "1", "0", "1"]
    assert cells["total"][:4] == ["3", "2", "4", "9"]


@pytest.mark.parametrize(
    "args",
    [
        ["--from", "2025-11", "--to", "2026-01", "--by", "number,category", "--unique"],
        ["--from", "2025-11-15", "--to", "2026-01-10", "--granularity", "week", "--by",
         "country", "--tz", "America/New_York"],
        ["--from", "2025-12", "--to", "2025-12", "--granularity", "day", "--number", A],
    ],
)  # fmt: skip
def test_cli_csv_equals_the_download(served: Served, args: list[str]) -> None:
    params: dict[str, str] = {"format": "csv"}
    names = {"--from": "from", "--to": "to", "--by": "group_by", "--granularity": "granularity",
             "--tz": "tz", "--number": "numbers"}  # fmt: skip
    for name, value in zip(args, args[1:], strict=False):
        if name in names:
            params[names[name]] = value
    if "--unique" in args:
        params["unique"] = "true"
    raw = raw_get(served, "/v1/stats", params=params)
    assert raw.status_code == 200, raw.text
    code, out, err = cli(served, *args, "--csv")
    assert (code, err) == (0, "")
    assert out == raw.text


def one_red_line(code: int, out: str, err: str) -> str:
    assert code == 1
    assert "Traceback" not in out + err
    assert len(err.strip().splitlines()) == 1, err
    return err.strip()


def test_cli_errors(served: Served) -> None:
    unknown = runner.invoke(
        cli_app,
        ["stats", "--account", "nobody"],
        env={"WASTATS_DATABASE_URL": served.settings.database_url},
    )
    message = one_red_line(unknown.exit_code, unknown.stdout, unknown.stderr)
    assert message == "error: no account with client id 'nobody'"

    message = one_red_line(*cli(served, "--granularity", "fortnight"))
    assert message == "error: granularity must be day, week or month"
    message = one_red_line(*cli(served, "--number", "972509999999"))
    assert message == "error: 972509999999 is not one of this account's numbers"


def test_cli_needs_no_server_and_ignores_the_old_options(served: Served) -> None:
    # --url and --secret belonged to the version that asked the service over HTTP: a script
    # that still passes them works (nothing listens on that port), with a note on stderr.
    port = _free_port()
    code, out, err = cli(
        served, "--from", "2025-12", "--to", "2025-12", "--url", f"http://127.0.0.1:{port}",
        "--secret", "wrong",
    )  # fmt: skip
    assert code == 0, err
    assert "2025-12" in out
    assert err.strip() == (
        "note: --url and --secret are ignored: wastats stats reads the database "
        "(WASTATS_DATABASE_URL) directly"
    )
