"""Forwarding to real HTTPS destinations on 127.0.0.1: certificates made by `trustme` (a CA of
the test's own), served by hypercorn (HTTP/2 through ALPN, or HTTP/1.1 only), the real app and
its delivery worker. What the destination saw (the HTTP version of each request included) is
recorded by the destination itself, so "it went over HTTP/2" is the server's word, not the
client's. A CA the app was not told to trust, or a certificate for another name, leaves the
delivery pending with the certificate error, and nothing reaches the destination.

SQLite only: the transport does not depend on the database (tests/test_forwarding.py runs the
rest on both)."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trustme
from fastapi import FastAPI
from fastapi.testclient import TestClient
from hypercorn.asyncio import serve
from hypercorn.config import Config
from pydantic import ValidationError

from conftest import APP_SECRET, FakeClock, make_settings
from test_forwarding import add_destination, bodies_of, deliveries, poll, send
from wastats.app import create_app
from wastats.forward.service import forwarding_of
from wastats.forward.transport import Transports
from wastats.whatsapp.signature import verify_signature


@dataclass(frozen=True)
class Arrival:
    http_version: str
    client: tuple[str, int]
    """The sender's address and port: one per connection."""
    scheme: str
    path: str
    headers: dict[str, str]
    body: bytes


class TlsDestination:
    """An HTTPS consumer (hypercorn in a thread of its own) that answers 200 and records every
    request with the HTTP version it came over."""

    def __init__(self, cert: trustme.LeafCert, folder: Path, *, offer_h2: bool) -> None:
        pem = folder / "destination.pem"
        cert.private_key_and_cert_chain_pem.write_to_path(str(pem))
        with socket.socket() as probe:  # a free port (hypercorn binds by address)
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        config = Config()
        config.bind = [f"127.0.0.1:{self.port}"]
        config.certfile = config.keyfile = str(pem)
        config.alpn_protocols = ["h2", "http/1.1"] if offer_h2 else ["http/1.1"]
        config.accesslog = None
        config.errorlog = None
        self.arrivals: list[Arrival] = []
        self.changed = threading.Condition()
        self._loop = asyncio.new_event_loop()
        self._stop: asyncio.Event | None = None
        started = threading.Event()

        async def main() -> None:
            self._stop = asyncio.Event()
            started.set()
            await serve(self._app, config, shutdown_trigger=self._stop.wait)  # type: ignore[arg-type]

        self._thread = threading.Thread(
            target=self._loop.run_until_complete, args=(main(),), daemon=True
        )
        self._thread.start()
        assert started.wait(10)
        assert poll(self._listening, 10), "the TLS destination did not start"

    def _listening(self) -> bool:
        try:
            socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
            return True
        except OSError:
            return False

    @property
    def url(self) -> str:
        # 127.0.0.1 is what the certificate names (trustme: an IP address SAN).
        return f"https://127.0.0.1:{self.port}/hook"

    async def _app(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        body = b""
        more = True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        arrival = Arrival(
            http_version=scope["http_version"],
            client=tuple(scope["client"]),
            scheme=scope["scheme"],
            path=scope["path"],
            headers={k.decode().lower(): v.decode() for k, v in scope["headers"]},
            body=body,
        )
        with self.changed:
            self.arrivals.append(arrival)
            self.changed.notify_all()
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json")]})  # fmt: skip
        await send({"type": "http.response.body", "body": b"{}"})

    def wait_for(self, condition: Callable[[], bool], timeout: float = 30.0) -> bool:
        with self.changed:
            return self.changed.wait_for(condition, timeout)

    def close(self) -> None:
        if self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)
        self._loop.close()


@pytest.fixture
def sqlite_url(tmp_path: Path, sqlite_template: Path) -> str:
    target = tmp_path / "wastats.db"
    target.write_bytes(sqlite_template.read_bytes())
    return f"sqlite:///{target}"


@pytest.fixture
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def ca_file(ca: trustme.CA, tmp_path: Path) -> Path:
    path = tmp_path / "private-ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return path


@pytest.fixture
def h2_destination(ca: trustme.CA, tmp_path: Path) -> Iterator[TlsDestination]:
    destination = TlsDestination(ca.issue_cert("127.0.0.1"), tmp_path, offer_h2=True)
    yield destination
    destination.close()


def make_app(database_url: str, **overrides: Any) -> FastAPI:
    app = create_app(make_settings(database_url, **overrides), clock=FakeClock())
    forwarding = forwarding_of(app.state.ctx.extras)
    assert forwarding is not None
    forwarding.worker.poll_seconds = 0.02
    return app


def transports_of(client: TestClient) -> Transports:
    forwarding = forwarding_of(client.app.state.ctx.extras)  # type: ignore[attr-defined]
    assert forwarding is not None
    transport = forwarding.worker.transport
    assert isinstance(transport, Transports)
    return transport


def test_an_h2_destination_behind_a_private_ca_gets_every_body_over_http2(
    sqlite_url: str, h2_destination: TlsDestination, ca_file: Path
) -> None:
    add_destination(sqlite_url, h2_destination.url)
    raws = bodies_of(40)
    with TestClient(make_app(sqlite_url, forward_ca_file=ca_file)) as client:
        for raw in raws:
            send(client, raw)
        assert h2_destination.wait_for(lambda: len(h2_destination.arrivals) >= len(raws))
        assert poll(lambda: all(d["state"] == "delivered" for d in deliveries(sqlite_url)))
        transports = transports_of(client)
        assert transports.of(h2_destination.url) is transports.http2
    arrivals = h2_destination.arrivals
    assert sorted(a.body for a in arrivals) == sorted(raws)
    # The server's own record: every request came over HTTP/2, on TLS.
    assert {a.http_version for a in arrivals} == {"2"}
    assert {a.scheme for a in arrivals} == {"https"}
    # Connections reused: at most one per request in flight (16), not one per body.
    assert len({a.client for a in arrivals}) <= 16
    for a in arrivals:
        assert a.path == "/hook"
        assert verify_signature(APP_SECRET.encode(), a.body, a.headers["x-hub-signature-256"])
        assert a.headers["content-type"] == "application/json"


def test_an_https_destination_without_h2_gets_http11(
    sqlite_url: str, ca: trustme.CA, ca_file: Path, tmp_path: Path
) -> None:
    destination = TlsDestination(ca.issue_cert("127.0.0.1"), tmp_path, offer_h2=False)
    try:
        add_destination(sqlite_url, destination.url)
        raws = bodies_of(40)
        with TestClient(make_app(sqlite_url, forward_ca_file=ca_file)) as client:
            for raw in raws:
                send(client, raw)
            assert destination.wait_for(lambda: len(destination.arrivals) >= len(raws))
            assert poll(lambda: all(d["state"] == "delivered" for d in deliveries(sqlite_url)))
            # Learnt from its first answer: the rest went through the HTTP/1.1 client.
            transports = transports_of(client)
            assert transports.of(destination.url) is transports.http1
    finally:
        destination.close()
    assert sorted(a.body for a in destination.arrivals) == sorted(raws)
    assert {a.http_version for a in destination.arrivals} == {"1.1"}
    assert len({a.client for a in destination.arrivals}) <= 16  # kept alive


def _stays_pending_with_a_certificate_error(
    database_url: str, destination: TlsDestination, **overrides: Any
) -> str:
    add_destination(database_url, destination.url)
    with TestClient(make_app(database_url, **overrides)) as client:
        send(client, bodies_of(1)[0])
        assert poll(lambda: deliveries(database_url)[0]["attempts"] >= 1)
    (row,) = deliveries(database_url)
    assert row["state"] == "pending"  # retried later, never delivered
    assert destination.arrivals == []
    error: str = row["last_error"]
    assert "certificate" in error.lower(), error
    return error


def test_a_destination_whose_ca_is_not_trusted_is_never_delivered_to(
    sqlite_url: str, h2_destination: TlsDestination, tmp_path: Path
) -> None:
    # Without WASTATS_FORWARD_CA_FILE, the test CA is not among the trusted authorities...
    _stays_pending_with_a_certificate_error(sqlite_url, h2_destination)


def test_a_ca_file_of_another_authority_does_not_help(
    sqlite_url: str, h2_destination: TlsDestination, tmp_path: Path
) -> None:
    # ... nor does a private CA file of some other authority.
    other = tmp_path / "other-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(other))
    _stays_pending_with_a_certificate_error(sqlite_url, h2_destination, forward_ca_file=other)


def test_a_certificate_for_another_name_is_refused(
    sqlite_url: str, ca: trustme.CA, ca_file: Path, tmp_path: Path
) -> None:
    # A trusted CA, but a certificate for another host: verification includes the name.
    destination = TlsDestination(ca.issue_cert("consumer.example"), tmp_path, offer_h2=True)
    try:
        _stays_pending_with_a_certificate_error(sqlite_url, destination, forward_ca_file=ca_file)
    finally:
        destination.close()


@pytest.mark.parametrize("where", ["missing.pem", "."])
def test_a_ca_file_that_cannot_be_read_is_refused_at_the_start(
    sqlite_url: str, tmp_path: Path, where: str
) -> None:
    # The file is read at the first HTTPS delivery, which may come hours later: a wrong path
    # (or a directory) must stop the start with the path named, not fail deliveries then.
    with pytest.raises(ValidationError, match="no readable file at"):
        make_settings(sqlite_url, forward_ca_file=tmp_path / where)
