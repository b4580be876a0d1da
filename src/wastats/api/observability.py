"""Operations: `GET /metrics` (Prometheus), request ids and the access log.

Everything is per app: `install_observability` makes a `CollectorRegistry` for the app it is
given (never the process-wide default one), so any number of apps in one process, as in the
tests, keep their own counts. The process-wide part, logging, is `configure_logging`
(`wastats.logs`), called by `wastats serve`.

Metrics come from two places:

* the request middleware counts every HTTP request by route *template*, method and status and
  times it, and the `OperationalError` handler counts database errors (`count_database_error`);
* at scrape time, a collector reads the ingestion service's counters (`IngestService.stats`)
  and one indexed query measures the age of the oldest body still waiting to be counted.

Docs for operators: docs/operations.md.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import fastapi.routing
from fastapi import FastAPI
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy.exc import SQLAlchemyError
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from wastats.api.context import AppContext, context_of
from wastats.api.middleware import BodyTooLarge
from wastats.api.problems import problem
from wastats.domain import inbox
from wastats.forward.destinations import DestinationStatus, display_url, statuses
from wastats.forward.service import forwarding_of
from wastats.logs import accept_request_id, bound_request_id, configure_logging
from wastats.meta.observe import MetaSyncCollector

__all__ = [
    "METRICS_PATH",
    "UNMATCHED",
    "Metrics",
    "configure_logging",
    "count_database_error",
    "install_observability",
    "request_id_of",
]

log = logging.getLogger(__name__)
access_log = logging.getLogger("wastats.access")

METRICS_PATH = "/metrics"
UNMATCHED = "unmatched"
"""The `route` label of requests no route matched (404s): never the raw path, which any client
could vary without bound and so blow up the number of time series."""

REQUEST_ID_HEADER = b"x-request-id"
_METRICS_KEY = "metrics"  # in AppContext.extras

# Methods outside this set are labelled "other", for the same reason as UNMATCHED.
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


# --- the metrics ----------------------------------------------------------------------------


class Metrics:
    """One app's metrics, in its own registry."""

    def __init__(self, ctx: AppContext) -> None:
        self.ctx = ctx
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "wastats_http_requests_total",
            "HTTP requests answered, by route template, method and status code.",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.duration = Histogram(
            "wastats_http_request_duration_seconds",
            "Time from receiving a request to the end of its response, by route template.",
            ["route"],
            registry=self.registry,
        )
        self.database_errors = Counter(
            "wastats_database_errors_total",
            "Database operations that failed: requests answered 503 because the database was "
            "unavailable, and failed queries of /metrics itself.",
            registry=self.registry,
        )
        self.registry.register(_IngestCollector(ctx))
        self.registry.register(MetaSyncCollector(ctx.db))  # per-WABA sync state (Meta's record)

    def observe(self, route: str, method: str, status: int, seconds: float) -> None:
        self.requests.labels(route, method, str(status)).inc()
        self.duration.labels(route).observe(seconds)

    def render(self, encoder: Callable[[Collector], bytes]) -> bytes:
        """The exposition, with the ingest lag measured now (blocking: run it in the pool)."""
        # Measured before encoding, so a failure is already in database_errors_total of the
        # very scrape that hit it.
        lag = self._ingest_lag()
        # Forwarding (issue 15): asked only when the database answered, so that one scrape
        # counts one database error, as before.
        forward = self._forward_status() if lag is not None else []
        return encoder(_Scrape(self.registry, lag, forward))

    def _forward_status(self) -> list[DestinationStatus]:
        """Forwarding (issue 15): each destination's backlog, measured for this scrape."""
        if forwarding_of(self.ctx.extras) is None:
            return []
        try:
            with self.ctx.db.read() as conn:
                return statuses(conn, int(self.ctx.clock()))
        except SQLAlchemyError as exc:
            self.database_errors.inc()
            log.warning("metrics: could not read the forwarding status: %s", _reason(exc))
            return []

    def _ingest_lag(self) -> float | None:
        """Age in seconds of the oldest pending inbox body (0 if none); None if the database
        could not be asked, in which case the gauge is left out of this scrape."""
        try:
            with self.ctx.db.read() as conn:
                oldest = inbox.oldest_pending_received_at(conn)
        except SQLAlchemyError as exc:
            self.database_errors.inc()
            log.warning("metrics: could not measure the ingest lag: %s", _reason(exc))
            return None
        if oldest is None:
            return 0.0
        return max(0.0, self.ctx.clock() - oldest)


def _reason(exc: SQLAlchemyError) -> str:
    # The driver's message only: SQLAlchemy's own text adds the statement and its parameters.
    return str(getattr(exc, "orig", None) or type(exc).__name__)


class _IngestCollector(Collector):
    """The ingestion service's counters, read when scraped (they are plain ints the service's
    threads bump; a scrape may see one batch half-recorded, never a wrong total)."""

    def __init__(self, ctx: AppContext) -> None:
        self.ctx = ctx

    def collect(self) -> Iterator[Metric]:
        ingest = self.ctx.ingest
        running = GaugeMetricFamily(
            "wastats_ingest_running",
            "1 if this process's ingestion threads (inbox writer, processor) are running.",
            value=1 if ingest is not None and ingest.running else 0,
        )
        yield running
        if ingest is None:
            return
        s = ingest.stats
        yield _labelled(
            "wastats_webhook_bodies",
            "Signed webhook bodies by outcome: accepted (stored, new), duplicate (already "
            "stored), store_failed (could not be stored; answered 503, Meta retries), rejected "
            "(stored and processed but not understood, see `wastats events rejected`).",
            "outcome",
            {
                "accepted": s.accepted,
                "duplicate": s.duplicates,
                "rejected": s.rejected_bodies,
                "store_failed": s.store_errors,
            },
        )
        yield _labelled(
            "wastats_events_counted",
            "Events taken into the counts, by kind: status (message status updates) and "
            "inbound (customer messages).",
            "kind",
            {"status": s.statuses, "inbound": s.inbound},
        )
        yield CounterMetricFamily(
            "wastats_ingest_bodies_processed",
            "Inbox bodies this process ran through the counting pipeline.",
            value=s.processed_bodies,
        )
        yield CounterMetricFamily(
            "wastats_ingest_store_errors",
            "Webhook bodies that could not be stored in the inbox (database error).",
            value=s.store_errors,
        )
        yield CounterMetricFamily(
            "wastats_ingest_process_errors",
            "Inbox bodies whose processing failed with an error (retried alone, then parked "
            "as rejected).",
            value=s.process_errors,
        )
        yield GaugeMetricFamily(
            "wastats_ingest_newest_event_timestamp_seconds",
            "Unix time of the newest event counted by this process (0 before the first).",
            value=s.newest_event,
        )


def _labelled(name: str, documentation: str, label: str, values: dict[str, int]) -> Metric:
    family = CounterMetricFamily(name, documentation, labels=[label])
    for value_label, value in values.items():
        family.add_metric([value_label], value)
    return family


@dataclass
class _Scrape(Collector):
    """One scrape: the app's registry plus what was measured for this scrape only."""

    registry: CollectorRegistry
    lag: float | None
    forward: list[DestinationStatus]

    def collect(self) -> Iterable[Metric]:
        yield from self.registry.collect()
        if self.forward:
            yield from _forward_metrics(self.forward)
        if self.lag is not None:
            yield GaugeMetricFamily(
                "wastats_ingest_lag_seconds",
                "Age of the oldest webhook body stored but not yet counted (0 when none).",
                value=self.lag,
            )


def _forward_metrics(found: list[DestinationStatus]) -> Iterator[Metric]:
    """Per forwarding destination, labelled by id and URL (without credentials or query)."""
    labels = ["destination", "url"]
    families: dict[str, CounterMetricFamily | GaugeMetricFamily] = {
        "delivered": CounterMetricFamily(
            "wastats_forward_delivered",
            "Bodies delivered to the destination (answered 2xx), by every process.",
            labels=labels,
        ),
        "failed": CounterMetricFamily(
            "wastats_forward_failed_attempts",
            "Forwarding attempts that failed (non-2xx, timeout, connection error); retried.",
            labels=labels,
        ),
        "pending": GaugeMetricFamily(
            "wastats_forward_pending",
            "Deliveries waiting for the destination (not yet delivered, not dead).",
            labels=labels,
        ),
        "failing": GaugeMetricFamily(
            "wastats_forward_failing",
            "Pending deliveries that failed at least once.",
            labels=labels,
        ),
        "dead": GaugeMetricFamily(
            "wastats_forward_dead_letters",
            "Deliveries given up after the retry window (`wastats forward replay`).",
            labels=labels,
        ),
        "age": GaugeMetricFamily(
            "wastats_forward_oldest_pending_age_seconds",
            "Age of the destination's oldest pending delivery (0 when none).",
            labels=labels,
        ),
        "paused": GaugeMetricFamily(
            "wastats_forward_paused", "1 if the destination is paused.", labels=labels
        ),
    }
    for s in found:
        d, b = s.destination, s.backlog
        key = [str(d.id), display_url(d.url)]
        families["delivered"].add_metric(key, d.delivered_total)
        families["failed"].add_metric(key, d.failed_attempts_total)
        families["pending"].add_metric(key, b.pending)
        families["failing"].add_metric(key, b.failing)
        families["dead"].add_metric(key, b.dead)
        families["age"].add_metric(key, s.oldest_pending_age)
        families["paused"].add_metric(key, 1 if d.paused else 0)
    yield from families.values()


def metrics_of(ctx: AppContext) -> Metrics | None:
    metrics = ctx.extras.get(_METRICS_KEY)
    return metrics if isinstance(metrics, Metrics) else None


def count_database_error(request: Request) -> None:
    """Count one database error (called by the app's `OperationalError` handler)."""
    metrics = metrics_of(context_of(request))
    if metrics is not None:
        metrics.database_errors.inc()


def request_id_of(request: Request) -> str | None:
    """The id the middleware gave this request. For code outside the middleware (Starlette
    runs the 500 handler outside it); inside, `wastats.logs.current_request_id()` has it too."""
    value = request.scope.get("state", {}).get("request_id")
    return value if isinstance(value, str) else None


async def metrics_endpoint(request: Request) -> Response:
    ctx = context_of(request)
    metrics = metrics_of(ctx)
    if metrics is None:  # pragma: no cover - the route is only mounted with its metrics
        return Response(status_code=404)
    if ctx.settings.metrics_access() == "token" and not _metrics_token_ok(request, ctx):
        return problem(
            401,
            "Unauthorized",
            "/metrics needs the header Authorization: Bearer <WASTATS_METRICS_TOKEN>",
            headers={"WWW-Authenticate": 'Bearer realm="metrics"'},
        )
    # Plain text 0.0.4 unless the scraper asks for OpenMetrics.
    encoder, content_type = choose_encoder(request.headers.get("accept", ""))
    payload = await ctx.run(metrics.render, encoder)
    return Response(payload, headers={"Content-Type": content_type})


def _metrics_token_ok(request: Request, ctx: AppContext) -> bool:
    expected = ctx.settings.metrics_token
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    if expected is None or scheme.lower() != "bearer":
        return False
    # Digests of equal length, compared in constant time: neither the token nor its length
    # can be found by timing the answers.
    return hmac.compare_digest(
        hashlib.sha256(given.strip().encode()).digest(),
        hashlib.sha256(expected.get_secret_value().encode()).digest(),
    )


# --- route templates ------------------------------------------------------------------------


class RouteTemplates:
    """Maps a request to the template of the route that serves it (`/v1/numbers/{number}`).

    Starlette leaves the matched route in the scope only for some route kinds, and FastAPI's
    nested routers record it without their prefixes, so we match against the app's flattened
    route list ourselves: a handful of regular expressions per request, after the response."""

    def __init__(self, app: FastAPI) -> None:
        self.app = app
        self._table: list[tuple[re.Pattern[str], str, frozenset[str] | None]] | None = None

    def _build(self) -> list[tuple[re.Pattern[str], str, frozenset[str] | None]]:
        # Recent FastAPI keeps included routers nested in app.routes; iter_route_contexts
        # flattens them, with their full paths. Older versions flatten app.routes themselves.
        expand = getattr(fastapi.routing, "iter_route_contexts", None)
        routes: Iterable[Any] = expand(self.app.routes) if expand else self.app.routes
        table = []
        for route in routes:
            regex = getattr(route, "path_regex", None)
            template = getattr(route, "path_format", None)
            if regex is None or template is None:
                continue
            methods = getattr(route, "methods", None)
            table.append((regex, str(template), frozenset(methods) if methods else None))
        return table

    def template(self, path: str, method: str) -> str:
        if self._table is None:
            # Built on the first request, when every route has been added.
            self._table = self._build()
        fallback = None
        for regex, template, methods in self._table:
            if regex.match(path):
                if methods is None or method in methods:
                    return template
                # Same path, other method: Starlette answers 405 from this route.
                fallback = fallback or template
        return fallback or UNMATCHED


def _route_path(scope: Scope) -> str:
    # The path as the router sees it: without the root path the app is mounted under.
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    if root and path.startswith(root) and path[len(root) : len(root) + 1] in ("", "/"):
        return path[len(root) :] or "/"
    return path


# --- the middleware -------------------------------------------------------------------------


class RequestMiddleware:
    """Request id, timing, metrics and the access log, for every HTTP request.

    Pure ASGI (not BaseHTTPMiddleware): it only watches the messages go by, so streamed
    responses (CSV exports) are never buffered and the duration covers the whole body."""

    def __init__(self, app: ASGIApp, *, metrics: Metrics, routes: RouteTemplates) -> None:
        self.app = app
        self.metrics = metrics
        self.routes = routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        request_id = accept_request_id(_header(scope, REQUEST_ID_HEADER))
        # Also in the scope, for the 500 handler, which Starlette runs outside this middleware.
        scope.setdefault("state", {})["request_id"] = request_id
        # Read now: routing rewrites parts of the scope (a Mount extends root_path).
        path = _route_path(scope)
        raw_method: str = scope["method"]
        method = raw_method if raw_method in _METHODS else "other"
        client = scope.get("client")
        client_ip = client[0] if client else "unknown"
        id_header = (REQUEST_ID_HEADER, request_id.encode("ascii"))
        status = 500  # what the client gets if the app fails before answering
        responded = False

        async def send_with_id(message: Message) -> None:
            nonlocal status, responded
            if message["type"] == "http.response.start":
                status, responded = message["status"], True
                headers = [h for h in message.get("headers", ()) if h[0] != REQUEST_ID_HEADER]
                message = {**message, "headers": [*headers, id_header]}
            await send(message)

        with bound_request_id(request_id):
            try:
                await self.app(scope, receive, send_with_id)
            except BodyTooLarge:
                if not responded:
                    status = 413  # BodyLimitMiddleware, outside us, answers it
                raise
            finally:
                seconds = time.perf_counter() - started
                route = self.routes.template(path, raw_method)
                self.metrics.observe(route, method, status, seconds)
                access_log.info(
                    "%s %s %d %.1fms",
                    method,
                    path,
                    status,
                    seconds * 1000,
                    extra={
                        "method": method,
                        "route": route,
                        # The path only: query strings can carry secrets (hub.verify_token).
                        "path": path,
                        "status": status,
                        "duration_ms": round(seconds * 1000, 3),
                        "client_ip": client_ip,
                        "request_id": request_id,
                    },
                )


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return bytes(value).decode("latin-1")
    return None


# --- installation ---------------------------------------------------------------------------


def install_observability(app: FastAPI, ctx: AppContext) -> None:
    """Add the request-id / access-log / metrics middleware and the /metrics route to `app`."""
    metrics = Metrics(ctx)
    ctx.extras[_METRICS_KEY] = metrics
    access = ctx.settings.metrics_access()
    if access != "off":  # WASTATS_METRICS: public, token (checked in the endpoint) or off
        app.add_route(METRICS_PATH, metrics_endpoint, methods=["GET"], include_in_schema=False)
    if access == "public" and ctx.settings.metrics is None:
        log.warning(
            "/metrics is open to anyone who can reach this port: set WASTATS_METRICS_TOKEN "
            "(Prometheus sends it as a bearer token), or WASTATS_METRICS=off, or "
            "WASTATS_METRICS=public to keep it open and silence this warning"
        )
    app.add_middleware(RequestMiddleware, metrics=metrics, routes=RouteTemplates(app))
