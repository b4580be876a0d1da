"""`/webhooks/whatsapp`: Meta's verification handshake (GET) and event delivery (POST).

The hot path (thousands of requests per second in a campaign), so `WebhookEndpoint` is a raw ASGI
app the outer app dispatches to *before* FastAPI's routing and middleware (`wastats.app`): the
framework's stack cost about four times what the webhook itself does (issue 13, measured). It
keeps, itself, what that stack gives every request: the request id, the access log line and the
metrics (`RequestMiddleware`), the body's size and time limits and a quiet 499 for clients that
hang up (`BodyLimitMiddleware`), the 500 problem with the request id and never a stack trace, and
the answers byte for byte (the same response objects). Proxy headers are applied by wrapping it
in the same `ProxyHeadersMiddleware` as the app.

The signature is checked on the raw body before anything parses it. `whatsapp_webhook`, the plain
Starlette endpoint, still serves what the fast path leaves to FastAPI (HEAD, other methods' 405).
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
import weakref
from typing import Any

from prometheus_client import Counter, Histogram
from sqlalchemy.exc import OperationalError
from starlette.datastructures import QueryParams
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.types import Message, Receive, Scope, Send

from wastats.api.context import AppContext, context_of
from wastats.api.middleware import CLIENT_CLOSED, refusal, too_large, too_slow
from wastats.api.observability import REQUEST_ID_HEADER, Metrics, metrics_of
from wastats.api.problems import problem
from wastats.forward.match import FORWARDED_HEADERS, Headers, kept_headers
from wastats.ingest.service import IngestUnavailable
from wastats.logs import accept_request_id, bound_request_id
from wastats.whatsapp.signature import verify_signature

log = logging.getLogger(__name__)
service_log = logging.getLogger("wastats")  # the middleware's and error handlers' logger
access_log = logging.getLogger("wastats.access")

WEBHOOK_PATH = "/webhooks/whatsapp"

_ACCEPTED = Response(b'{"status":"ok"}', media_type="application/json")
_SIGNATURE = b"x-hub-signature-256"
_FORWARDED = {name.encode("latin-1"): sent_as for name, sent_as in FORWARDED_HEADERS.items()}


async def whatsapp_webhook(request: Request) -> Response:
    """The Starlette endpoint, for what reaches FastAPI's router (HEAD)."""
    ctx = context_of(request)
    if request.method == "GET":
        return _verify(ctx, request.query_params)
    if not ctx.meta_app_secrets:
        return _no_secret()
    raw = await request.body()
    return await _accept(ctx, raw, request.headers.get("x-hub-signature-256"),
                         kept_headers(request.headers.get))  # fmt: skip


def _no_secret() -> Response:
    # Not 401: nothing is wrong with Meta's request. 503 makes Meta retry (for up to 7
    # days) until the operator sets the secret, so no event is lost meanwhile.
    log.error("webhook refused: WASTATS_META_APP_SECRET is not set")
    return problem(503, "Service Unavailable", "the webhook secret is not configured")


async def _accept(ctx: AppContext, raw: bytes, signature: str | None, headers: Headers) -> Response:
    # Each secret is checked in constant time; which one matched is no secret worth keeping.
    if not any(verify_signature(secret, raw, signature) for secret in ctx.meta_app_secrets):
        what = "missing" if not signature else "invalid"
        return problem(401, "Unauthorized", f"{what} X-Hub-Signature-256 signature")
    ingest = ctx.ingest
    if ingest is None:
        return problem(503, "Service Unavailable", "ingestion is not running")
    try:
        # Meta's signature and content type go with the body to forwarding destinations.
        await ingest.accept(raw, headers)
    except IngestUnavailable as exc:
        return problem(503, "Service Unavailable", f"{exc}; retry later")
    return _ACCEPTED


def _verify(ctx: AppContext, params: QueryParams) -> Response:
    expected = ctx.settings.meta_verify_token
    given = params.get("hub.verify_token", "")
    if (
        params.get("hub.mode") == "subscribe"
        and expected is not None
        and hmac.compare_digest(given.encode(), expected.get_secret_value().encode())
    ):
        return PlainTextResponse(params.get("hub.challenge", ""))
    return PlainTextResponse("verification failed", status_code=403)


class _ClientGone(Exception):
    pass


class _BodyWatch:
    """The body time limit of every request of one event loop, kept by one timer that ticks
    while bodies are being read, instead of a timer per request (`asyncio.timeout` was a tenth
    of the webhook's own time). A request over its deadline has its task cancelled, and sees
    `expired`; the 408 then goes out within a tick (a quarter of the limit, at most 1 s) of it."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.tick = min(1.0, seconds / 4)
        self.reading: dict[asyncio.Task[Any], float] = {}
        self.overdue: set[asyncio.Task[Any]] = set()
        self.armed = False

    def add(self, task: asyncio.Task[Any]) -> None:
        loop = task.get_loop()
        self.reading[task] = loop.time() + self.seconds
        if not self.armed:
            self.armed = True
            loop.call_later(self.tick, self._check, loop)

    def discard(self, task: asyncio.Task[Any]) -> None:
        self.reading.pop(task, None)
        self.overdue.discard(task)

    def expired(self, task: asyncio.Task[Any]) -> bool:
        """True (once) if the watch cancelled `task`: the cancellation is then taken back."""
        if task not in self.overdue:
            return False
        self.overdue.discard(task)
        task.uncancel()
        return True

    def _check(self, loop: asyncio.AbstractEventLoop) -> None:
        now = loop.time()
        for task, deadline in list(self.reading.items()):
            if deadline <= now:
                del self.reading[task]
                self.overdue.add(task)
                task.cancel()
        if self.reading:
            loop.call_later(self.tick, self._check, loop)
        else:
            self.armed = False


class WebhookEndpoint:
    """`GET`/`POST /webhooks/whatsapp` as a raw ASGI app, with the middleware's duties (module)."""

    def __init__(self, ctx: AppContext, *, limit: int, timeout_seconds: float | None) -> None:
        self.ctx = ctx
        self.limit = limit
        self.timeout_seconds = timeout_seconds
        # prometheus_client's `labels()` takes a lock and hashes the labels: cached per
        # (method, status), the few pairs this route answers.
        self._observers: dict[tuple[str, int], tuple[Counter, Histogram]] = {}
        self._watches: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _BodyWatch] = (
            weakref.WeakKeyDictionary()
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        incoming = None
        for name, value in scope["headers"]:
            if name == REQUEST_ID_HEADER:
                incoming = bytes(value).decode("latin-1")
                break
        request_id = accept_request_id(incoming)
        # In the scope too, as RequestMiddleware does, for anything reading it from there.
        scope.setdefault("state", {})["request_id"] = request_id
        method: str = scope["method"]
        status = 500
        with bound_request_id(request_id):
            try:
                response = await self._answer(scope, receive)
            except _ClientGone:
                service_log.info("client closed the connection before the whole body of %s arrived",
                         WEBHOOK_PATH)  # fmt: skip
                # Sent nowhere (uvicorn drops it), but logged and counted as what happened.
                response = refusal(WEBHOOK_PATH, CLIENT_CLOSED, "Client Closed Request", "", 2)
            except OperationalError as exc:
                metrics = metrics_of(self.ctx)
                if metrics is not None:
                    metrics.database_errors.inc()
                service_log.error("database error on %s: %s", WEBHOOK_PATH, exc.orig)
                response = problem(
                    503, "Service Unavailable", "the database is unavailable; retry later"
                )
            except Exception:
                # Logged in full for the operator; the client gets the request id to quote.
                service_log.exception(
                    "unexpected error on %s %s", method, WEBHOOK_PATH,
                    extra={"request_id": request_id},
                )  # fmt: skip
                response = problem(500, "Internal Server Error",
                                   "unexpected error; it has been logged")  # fmt: skip
            status = response.status_code
            try:
                headers = [h for h in response.raw_headers if h[0] != REQUEST_ID_HEADER]
                headers.append((REQUEST_ID_HEADER, request_id.encode("ascii")))
                await send({"type": "http.response.start", "status": status, "headers": headers})
                await send({"type": "http.response.body", "body": response.body})
            finally:
                self._observe(scope, method, status, time.perf_counter() - started, request_id)

    async def _answer(self, scope: Scope, receive: Receive) -> Response:
        limit = self.limit
        found: dict[bytes, str] = {}
        for name, value in scope["headers"]:
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = limit + 1
                if declared > limit:
                    return too_large(WEBHOOK_PATH, limit)
            elif name in _FORWARDED and name not in found:
                # The first of repeated headers, as Starlette's `headers.get` gives.
                found[name] = bytes(value).decode("latin-1")
        ctx = self.ctx
        if scope["method"] == "GET":
            return _verify(ctx, QueryParams(scope.get("query_string", b"")))
        if not ctx.meta_app_secrets:
            return _no_secret()
        raw = await self._body(receive, limit)
        if isinstance(raw, Response):
            return raw
        # What `kept_headers` gives: FORWARDED_HEADERS' order, whatever the request's.
        forwarded = tuple((sent_as, found[n]) for n, sent_as in _FORWARDED.items() if n in found)
        return await _accept(ctx, raw, found.get(_SIGNATURE), forwarded)

    async def _body(self, receive: Receive, limit: int) -> bytes | Response:
        """The whole body, or the refusal to send instead (413, 408); _ClientGone on a hang-up."""
        chunks: list[bytes] = []
        received = 0
        seconds = self.timeout_seconds
        task = asyncio.current_task()
        watch = None
        if seconds is not None and task is not None:
            watch = self._watches.get(task.get_loop())
            if watch is None:
                watch = self._watches[task.get_loop()] = _BodyWatch(seconds)
            watch.add(task)
        try:
            while True:
                message: Message = await receive()
                if message["type"] == "http.disconnect":
                    raise _ClientGone
                chunk: bytes = message.get("body", b"")
                received += len(chunk)
                if received > limit:
                    return too_large(WEBHOOK_PATH, limit)
                chunks.append(chunk)
                if not message.get("more_body", False):
                    break
        except asyncio.CancelledError:
            if watch is None or task is None or not watch.expired(task):
                raise
            service_log.info("request body of POST %s too slow: answered 408", WEBHOOK_PATH)
            assert seconds is not None
            return too_slow(WEBHOOK_PATH, seconds)
        finally:
            if watch is not None and task is not None:
                watch.discard(task)
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    def _observe(
        self, scope: Scope, method: str, status: int, seconds: float, request_id: str
    ) -> None:
        metrics = metrics_of(self.ctx)
        if metrics is not None:
            _observe_metrics(metrics, self._observers, method, status, seconds)
        if access_log.isEnabledFor(logging.INFO):
            client = scope.get("client")
            access_log.info(
                "%s %s %d %.1fms", method, WEBHOOK_PATH, status, seconds * 1000,
                extra={
                    "method": method,
                    "route": WEBHOOK_PATH,
                    "path": WEBHOOK_PATH,
                    "status": status,
                    "duration_ms": round(seconds * 1000, 3),
                    "client_ip": client[0] if client else "unknown",
                    "request_id": request_id,
                },
            )  # fmt: skip


def _observe_metrics(
    metrics: Metrics,
    cache: dict[tuple[str, int], tuple[Counter, Histogram]],
    method: str,
    status: int,
    seconds: float,
) -> None:
    children = cache.get((method, status))
    if children is None:
        children = (
            metrics.requests.labels(WEBHOOK_PATH, method, str(status)),
            metrics.duration.labels(WEBHOOK_PATH),
        )
        cache[(method, status)] = children
    counter, histogram = children
    counter.inc()
    histogram.observe(seconds)
