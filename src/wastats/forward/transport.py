"""How the delivery worker talks to destinations: one interface (`Transport.post`), two clients.

* **HTTP/1.1 through aiohttp**: `http://` destinations, and `https://` ones that do not offer
  HTTP/2. It costs a fraction of httpx's CPU per delivery (bench_forward's `sender_cpu`, on a
  loaded machine: 0.16 ms against 2.5 ms, 16 in flight); the worker shares its process (and
  the GIL) with the webhook route, so that CPU is taken from the webhook rate.
* **HTTP/2 through httpx + h2**: `https://` destinations that offer `h2` in the TLS handshake
  (ALPN). Which one an HTTPS origin offers is learnt from its first answer (httpx offers both
  and falls back to HTTP/1.1); from then on that origin goes through the client that fits.

Both: certificates verified (the system's authorities and Mozilla's, or
`WASTATS_FORWARD_CA_FILE`), redirects never followed, nothing taken from the environment (no
proxy, no netrc credentials), connections kept alive. The caller bounds each attempt with its
own deadline; a request that gets no answer raises `TransportError` with the reason.
"""

from __future__ import annotations

import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol
from urllib.parse import urlsplit

import certifi

from wastats import __version__

if TYPE_CHECKING:
    # Imported where a client is first made or used instead: aiohttp and httpx are a fifth of
    # the app's import time (0.2 s of CPU), which every server process, counting child aside,
    # paid at start whether or not it had a destination to forward to.
    import aiohttp
    import httpx

USER_AGENT = f"wastats-forwarder/{__version__}"
MAX_RESPONSE_BYTES = 64 * 1024
"""Of a destination's answer we read at most this (its status is all that matters); a longer
answer costs its connection."""

Headers = Sequence[tuple[str, str]]


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    retry_after: str | None
    """The `Retry-After` header, as sent."""
    http_version: str
    """"1.1" or "2"."""


class TransportError(Exception):
    """No answer: the connection, TLS or the protocol failed (the message says which)."""


class Transport(Protocol):
    async def post(self, url: str, body: bytes, headers: Headers) -> Answer:
        """POST `body` with exactly `headers` (and our User-Agent); the destination's answer."""
        ...

    async def aclose(self) -> None: ...


def ssl_context(ca_file: Path | None) -> ssl.SSLContext:
    """A verifying context: the private CA file when given, else the system's authorities and
    certifi's (what httpx trusted before: a container without the system bundle still works).
    Each client gets its own: httpx sets its ALPN list on the context it is given."""
    if ca_file is not None:
        return ssl.create_default_context(cafile=str(ca_file))
    context = ssl.create_default_context()
    context.load_verify_locations(cafile=certifi.where())
    return context


def _reason(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class Http1(Transport):
    """HTTP/1.1 keep-alive through one aiohttp session (made in the worker's event loop on first
    use: an aiohttp session belongs to the loop it was made in)."""

    def __init__(self, *, ca_file: Path | None, timeout: float) -> None:
        self._ca_file = ca_file
        self._timeout = timeout
        self._session: aiohttp.ClientSession | None = None

    def _open(self) -> aiohttp.ClientSession:
        if self._session is None:
            import aiohttp

            # The TLS context (hundreds of authorities to load, tens of milliseconds) is made on
            # the first delivery, not at every start of a process that may have no destination.
            self._session = aiohttp.ClientSession(
                # The worker bounds requests per destination; the pool does not. Idle
                # connections are let go after 4 s, before the 5 s after which common servers
                # (uvicorn, Node) close them: reusing one the server is closing fails the POST.
                connector=aiohttp.TCPConnector(
                    limit=0, ssl=ssl_context(self._ca_file), keepalive_timeout=4.0
                ),
                headers={"User-Agent": USER_AGENT},
                # Nothing invented: no Content-Type when Meta sent none, no compression asked.
                skip_auto_headers=("Content-Type", "Accept-Encoding"),
                auto_decompress=False,
                trust_env=False,
                timeout=aiohttp.ClientTimeout(total=self._timeout),
            )
        return self._session

    async def post(self, url: str, body: bytes, headers: Headers) -> Answer:
        session = self._open()
        import aiohttp  # imported by _open already: this only names it here

        try:
            async with session.post(
                url, data=body, headers=list(headers), allow_redirects=False
            ) as response:
                total = 0
                while chunk := await response.content.readany():
                    total += len(chunk)
                    if total > MAX_RESPONSE_BYTES:
                        response.close()  # not worth reading: drop the connection instead
                        break
                version = response.version
                return Answer(
                    response.status,
                    response.headers.get("Retry-After"),
                    f"{version.major}.{version.minor}" if version else "1.1",
                )
        except aiohttp.ClientError as exc:
            raise TransportError(_reason(exc)) from exc

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


class Http2(Transport):
    """httpx with HTTP/2 (and HTTP/1.1 for a destination that does not offer it)."""

    def __init__(self, *, ca_file: Path | None, timeout: float) -> None:
        self._ca_file = ca_file
        self._timeout = timeout
        self._client: httpx.AsyncClient | None = None

    def _open(self) -> httpx.AsyncClient:
        if self._client is None:  # on first use, as Http1's session (its TLS context)
            import httpx

            self._client = httpx.AsyncClient(
                http2=True,
                verify=ssl_context(self._ca_file),
                follow_redirects=False,
                timeout=self._timeout,
                limits=httpx.Limits(max_connections=None, max_keepalive_connections=64),
                headers={"User-Agent": USER_AGENT},
                trust_env=False,
            )
        return self._client

    async def post(self, url: str, body: bytes, headers: Headers) -> Answer:
        client = self._open()
        import httpx  # imported by _open already: this only names it here

        try:
            async with client.stream("POST", url, content=body, headers=list(headers)) as response:
                total = 0
                async for chunk in response.aiter_raw():
                    total += len(chunk)
                    if total > MAX_RESPONSE_BYTES:
                        break
            return Answer(
                response.status_code,
                response.headers.get("retry-after"),
                response.http_version.removeprefix("HTTP/"),
            )
        except httpx.HTTPError as exc:
            raise TransportError(_reason(exc)) from exc

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None


class Transports(Transport):
    """The transport of each destination: aiohttp for `http://`; for `https://`, httpx until
    the origin's first answer says whether it speaks HTTP/2, then the client that fits."""

    def __init__(self, *, ca_file: Path | None, timeout: float) -> None:
        self.http1 = Http1(ca_file=ca_file, timeout=timeout)
        self.http2 = Http2(ca_file=ca_file, timeout=timeout)
        self._by_origin: dict[str, Transport] = {}

    def of(self, url: str) -> Transport | None:
        """The transport this origin was found to need (None: not known yet)."""
        return self._by_origin.get(_origin(url))

    async def post(self, url: str, body: bytes, headers: Headers) -> Answer:
        origin = _origin(url)
        known = self._by_origin.get(origin)
        if known is not None:
            return await known.post(url, body, headers)
        # The first delivery to an origin imports both clients, if not done yet, before any
        # request is in flight: the import (0.2 s, which holds the event loop) must not fall
        # between httpx's first answer and the HTTP/1.1 client's first use, where it would let
        # deliveries pile up and open a connection each.
        import aiohttp  # noqa: F401
        import httpx  # noqa: F401

        if not origin.startswith("https:"):
            self._by_origin[origin] = self.http1
            return await self.http1.post(url, body, headers)
        answer = await self.http2.post(url, body, headers)
        self._by_origin[origin] = self.http2 if answer.http_version == "2" else self.http1
        return answer

    async def aclose(self) -> None:
        await self.http1.aclose()
        await self.http2.aclose()


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme.lower()}://{parts.netloc.lower()}"
