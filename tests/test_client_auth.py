"""The client's token handling (`wastats.client.BearerTokenAuth`, an httpx.Auth flow) against a
real uvicorn server running the real app: a revoked token is renewed once and the call
succeeds; a service that keeps rejecting even a new token (here a real proxy in front of it
that drops the Authorization header) is reported as such after exactly one renewal, never
looped; threads sharing a client renew once between them."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pytest
from starlette.types import ASGIApp, Receive, Scope, Send

from live import _free_port, live_server
from test_client import STATS, WHATSAPP, Recorder, Served, client_of, served
from wastats.app import create_app
from wastats.client import AuthenticationError, BearerTokenAuth, Client
from wastats.domain import auth
from wastats.store.db import Database

__all__ = ["served"]  # the fixture, imported

TOKEN = "/api/settings/accessToken"


def issued_tokens(recorder: Recorder) -> list[str]:
    return [
        str(httpx.Response(200, content=text).json()["access_token"])
        for path, _status, text in recorder.calls
        if path == TOKEN
    ]


def revoke(served: Served, token: str) -> None:
    db = Database(served.settings.database_url)
    try:
        with db.write() as conn:
            auth.revoke_token(conn, token)
    finally:
        db.dispose()


@pytest.mark.parametrize("api", ["v1", "partners"])
def test_a_revoked_token_is_renewed_once_and_the_call_succeeds(served: Served, api: str) -> None:
    recorder = Recorder()
    # The service's clock: the client would renew ahead of expiry, so only the revocation can
    # make the service reject the token.
    with client_of(served, transport=recorder, clock=served.clock) as client:

        def call() -> int:
            if api == "v1":
                return client.stats(from_="2025-11", to="2026-01").totals.total
            return client.whatsapp_numbers().total_whatsapp

        first = call()
        [token] = issued_tokens(recorder)
        revoke(served, token)
        assert call() == first
        assert call() == first  # the new token is kept
    path = "/v1/stats" if api == "v1" else WHATSAPP
    assert recorder.paths() == [TOKEN, path, path, TOKEN, path, path]
    rejected = recorder.calls[2]
    if api == "v1":
        assert rejected[1] == 401
    else:
        assert (rejected[1], '"reason":3' in rejected[2]) == (200, True)
    first_token, second_token = issued_tokens(recorder)
    assert first_token != second_token


class DropsAuthorization:
    """A misconfigured reverse proxy: it forwards every request without its Authorization."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            headers = [(k, v) for k, v in scope["headers"] if k.lower() != b"authorization"]
            scope = {**scope, "headers": headers}
        await self.app(scope, receive, send)


@contextmanager
def behind_a_bad_proxy(served: Served) -> Iterator[str]:
    app = create_app(served.settings, clock=served.clock)
    with live_server(DropsAuthorization(app)) as url:  # type: ignore[arg-type]
        yield url


@pytest.mark.parametrize("api", ["v1", "partners"])
def test_a_persistent_rejection_is_reported_after_one_renewal(served: Served, api: str) -> None:
    recorder = Recorder()
    with (
        behind_a_bad_proxy(served) as url,
        Client(
            url, served.tenant.client_id, served.tenant.client_secret, transport=recorder
        ) as client,
    ):
        call = client.stats if api == "v1" else client.conversations_statistics
        with pytest.raises(AuthenticationError) as caught:
            call()
        path = "/v1/stats" if api == "v1" else STATS
        assert recorder.paths() == [TOKEN, path, TOKEN, path]  # renewed once, not looped
    error = caught.value
    if api == "v1":
        assert (error.status, error.reason) == (401, None)
        assert error.message.startswith("a valid bearer token is required")
    else:
        assert (error.status, error.reason, error.locked_out) == (None, 3, False)
    assert "also with a newly issued token" in error.message
    assert "Authorization header" in error.message
    for token in issued_tokens(recorder):
        assert token not in str(error)


def test_threads_sharing_a_client_renew_once(served: Served) -> None:
    recorder = Recorder()
    threads = 4
    results: list[Any] = []
    with client_of(served, transport=recorder, clock=served.clock) as client:
        client.numbers()
        served.clock.advance(3600 - 30)  # within the renewal margin: the next call renews
        start = threading.Barrier(threads)

        def work() -> None:
            start.wait()
            results.append(len(client.numbers()))

        workers = [threading.Thread(target=work) for _ in range(threads)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
    assert results == [2] * threads
    assert recorder.paths().count(TOKEN) == 2  # the first token and one renewal
    assert all(status == 200 for _path, status, _text in recorder.calls)


def test_wrong_credentials_are_not_retried(served: Served) -> None:
    recorder = Recorder()
    with (
        client_of(served, "wrong", transport=recorder) as client,
        pytest.raises(AuthenticationError) as caught,
    ):
        client.stats()
    assert caught.value.reason == 2
    assert recorder.paths() == [TOKEN]


def test_the_flow_refuses_an_async_client() -> None:
    # Its thread lock would block an event loop; it says so before any request is sent.
    async def fetch() -> None:
        flow = BearerTokenAuth(None, None, time.time)
        async with httpx.AsyncClient(auth=flow) as client:
            await client.get(f"http://127.0.0.1:{_free_port()}/v1/stats")

    with pytest.raises(TypeError, match="synchronous httpx.Client only"):
        asyncio.run(fetch())
