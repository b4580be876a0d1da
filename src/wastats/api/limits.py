"""Bounded cost per client: a rate and a concurrency limit per access token, and a cap on the
statistics computed at once per process.

Why each exists (issue 11: one tenant could stall the service):

* **Rate** (a token bucket: `WASTATS_API_BURST` at once, refilled at
  `WASTATS_API_RATE_PER_MINUTE`) and **concurrency** (`WASTATS_API_CONCURRENCY` requests in
  progress) per access token, on the statistics APIs. Over either, HTTP 429 with `Retry-After`:
  an RFC 9457 problem on `/v1`, the compatible API's own envelope on `/api/whatsapp` (reason
  429, a code the reference provider does not use; docs/api.md). The key is a hash of the bearer
  token or the dashboard's session cookie, or the client IP when there is neither, so it costs
  no database trip: a flood is refused before it reaches the database.
* **Statistics workers**: at most `WASTATS_STATS_WORKERS` statistics answers are computed at
  once per process, in threads; others wait their turn. Many tenants (or many tokens of one)
  then queue behind each other instead of taking every thread and core from the webhooks.

The state is in memory, per process: with N processes a token gets up to N times the limits.
That is the price of not writing to the database on every request; the limits bound what one
process can be made to do, which is what keeps it responsive.

Not a library (`limits`, `slowapi`, `aiolimiter`): none combines a concurrency slot with the
rate, and they read the system clock, where the tests drive the app's injectable clock.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import math
import threading
import weakref
from asyncio import AbstractEventLoop, get_running_loop
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import anyio.to_thread
from anyio import CapacityLimiter
from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from wastats.api.context import SESSION_COOKIE, AppContext
from wastats.api.problems import problem

log = logging.getLogger(__name__)

T = TypeVar("T")

LIMITED_PREFIXES = ("/v1/", "/api/whatsapp/")
"""The statistics APIs; the dashboard's data comes from /v1 with its session cookie. The token
endpoint has its own lockout; webhooks are Meta's and must never be refused for load."""

RATE_LIMITED_REASON = 429
"""The compatible API's reason code for "too many requests" (the contract has none)."""

_MAX_KEYS = 10_000
"""Past this many remembered clients, idle ones with a full bucket are forgotten (they would
start full anyway), so a scan with random tokens cannot grow memory without bound."""


@dataclass
class _Client:
    tokens: float
    updated: float
    in_flight: int = 0


class RequestLimiter:
    """Per-key token bucket plus in-flight count. Thread-safe (cheap enough to lock: it is a
    few arithmetic operations)."""

    def __init__(
        self, *, rate_per_minute: int, burst: int, concurrency: int, clock: Callable[[], float]
    ) -> None:
        self.rate = rate_per_minute / 60.0
        self.burst = float(burst)
        self.concurrency = concurrency
        self.clock = clock
        self._clients: dict[str, _Client] = {}
        self._lock = threading.Lock()

    def acquire(self, key: str) -> float | None:
        """Take a slot for `key`: None if granted (call `release` when done), else the seconds
        after which a retry can succeed."""
        now = self.clock()
        with self._lock:
            client = self._clients.get(key)
            if client is None:
                if len(self._clients) >= _MAX_KEYS:
                    self._forget_idle(now)
                client = self._clients[key] = _Client(tokens=self.burst, updated=now)
            client.tokens = min(self.burst, client.tokens + (now - client.updated) * self.rate)
            client.updated = now
            if client.in_flight >= self.concurrency:
                # A slot frees when a request ends; one second is an honest, short hint.
                return 1.0
            if client.tokens < 1.0:
                return (1.0 - client.tokens) / self.rate
            client.tokens -= 1.0
            client.in_flight += 1
            return None

    def release(self, key: str) -> None:
        with self._lock:
            client = self._clients.get(key)
            if client is not None and client.in_flight > 0:
                client.in_flight -= 1

    def _forget_idle(self, now: float) -> None:
        for key, client in list(self._clients.items()):
            refilled = client.tokens + (now - client.updated) * self.rate
            if client.in_flight == 0 and refilled >= self.burst:
                del self._clients[key]


def client_key(scope: Scope) -> str:
    """Who a request counts against: its bearer token or session cookie (hashed: no secret is
    kept in memory longer than the request), else its client IP."""
    request = Request(scope)
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    token = token.strip() if scheme.lower() == "bearer" else ""
    token = token or request.cookies.get(SESSION_COOKIE, "").strip()
    if token:
        return "t:" + hashlib.sha256(token.encode("utf-8", "replace")).hexdigest()
    client = scope.get("client")
    return "ip:" + (client[0] if client else "unknown")


def too_many_requests(path: str, retry_after: float) -> JSONResponse:
    seconds = max(1, math.ceil(retry_after))
    headers = {"Retry-After": str(seconds)}
    message = (
        f"too many requests for this access token: retry after {seconds} s "
        "(limits per token: docs/configuration.md)"
    )
    if path.startswith("/api/"):
        # Transport-level, like 413: a real HTTP status, the body in the API's own envelope.
        return JSONResponse(
            {"status": "FAIL", "reason": RATE_LIMITED_REASON, "message": message},
            status_code=429,
            headers=headers,
        )
    return problem(429, "Too Many Requests", message, headers=headers)


class RequestLimitMiddleware:
    """Refuse a statistics request over its token's rate or concurrency, before any work."""

    def __init__(self, app: ASGIApp, *, limiter: RequestLimiter) -> None:
        self.app = app
        self.limiter = limiter

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope.get("path", "")
        if scope["type"] != "http" or not path.startswith(LIMITED_PREFIXES):
            await self.app(scope, receive, send)
            return
        key = client_key(scope)
        retry_after = self.limiter.acquire(key)
        if retry_after is not None:
            await too_many_requests(path, retry_after)(scope, receive, send)
            return
        try:
            await self.app(scope, receive, send)
        finally:
            self.limiter.release(key)


# --- statistics workers -------------------------------------------------------------------


class StatsWorkers:
    """At most `size` statistics answers computed at once. An anyio limiter belongs to one
    event loop, and tests run an app under several in turn: one limiter per loop."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._limiters: weakref.WeakKeyDictionary[AbstractEventLoop, CapacityLimiter] = (
            weakref.WeakKeyDictionary()
        )

    def limiter(self) -> CapacityLimiter:
        loop = get_running_loop()
        limiter = self._limiters.get(loop)
        if limiter is None:
            limiter = self._limiters[loop] = CapacityLimiter(self.size)
        return limiter


_WORKERS_KEY = "stats_workers"


async def run_stats(ctx: AppContext, fn: Callable[..., T], *args: Any) -> T:
    """Run a statistics computation (blocking: database reads, grouping, encoding) in a thread,
    after waiting for one of the process' statistics workers."""
    workers = ctx.extras.get(_WORKERS_KEY)
    if not isinstance(workers, StatsWorkers):
        return await ctx.run(fn, *args)
    return await anyio.to_thread.run_sync(functools.partial(fn, *args), limiter=workers.limiter())


def install_limits(app: FastAPI, ctx: AppContext) -> None:
    """Add the per-token limit middleware and the statistics workers to `app`."""
    s = ctx.settings
    ctx.extras[_WORKERS_KEY] = StatsWorkers(s.stats_workers)
    limiter = RequestLimiter(
        rate_per_minute=s.api_rate_per_minute,
        burst=s.api_burst,
        concurrency=s.api_concurrency,
        clock=ctx.clock,
    )
    app.add_middleware(RequestLimitMiddleware, limiter=limiter)
