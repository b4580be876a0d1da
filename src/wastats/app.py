"""The ASGI application factory. Nothing is built at import time: `create_app(settings)` makes
the database engine and everything else, so tests build as many independent apps as they like.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any, cast

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Receive, Scope, Send
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

from wastats import __version__
from wastats.api import dashboard_meta, health, partners, reconciliation, v1
from wastats.api.context import AppContext
from wastats.api.dashboard import install_dashboard
from wastats.api.docs import install_api_docs
from wastats.api.limits import install_limits
from wastats.api.middleware import BodyLimitMiddleware
from wastats.api.observability import (
    count_database_error,
    install_observability,
    request_id_of,
)
from wastats.api.problems import problem
from wastats.api.webhooks import WEBHOOK_PATH, WebhookEndpoint, whatsapp_webhook
from wastats.forward.service import Forwarding
from wastats.ingest.counter import CounterConfig, CounterProcess
from wastats.ingest.identity import (
    CustomerHasher,
    body_secrets,
    load_body_sealer,
    load_secret_key,
)
from wastats.ingest.pipeline import Pipeline
from wastats.ingest.service import IngestService
from wastats.logs import configure_logging
from wastats.meta.sync import SyncRunner
from wastats.settings import Settings, load_settings
from wastats.store.db import DATABASE_WAIT_SECONDS, Database, first_line
from wastats.store.migrate import check_schema_current

log = logging.getLogger("wastats")

__all__ = ["WEBHOOK_PATH", "WastatsApp", "create_app", "create_app_from_environment"]


class WastatsApp(FastAPI):
    """FastAPI, with `POST`/`GET /webhooks/whatsapp` dispatched before its routing and
    middleware to a raw ASGI endpoint that does their duties itself (`api/webhooks.py`): the
    framework's stack cost four times the webhook's own work (issue 13). Everything else, the
    lifespan included, goes through FastAPI as usual."""

    webhook: ASGIApp | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            self.webhook is not None
            and scope["type"] == "http"
            and scope["method"] in ("POST", "GET")
            and _route_path(scope) == WEBHOOK_PATH
        ):
            scope["app"] = self
            await self.webhook(scope, receive, send)
            return
        await super().__call__(scope, receive, send)


def _route_path(scope: Scope) -> str:
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    # As the router sees it: without the root path the app is mounted under.
    if root and path.startswith(root) and path[len(root) : len(root) + 1] in ("", "/"):
        return path[len(root) :] or "/"
    return path


def create_app(settings: Settings, *, clock: Callable[[], float] = time.time) -> WastatsApp:
    db = Database(settings.database_url)
    sealer = load_body_sealer(settings)  # raw bodies are sealed at rest (docs/security.md)
    forwarding = Forwarding(db, settings, sealer, clock=clock)  # docs/forwarding.md
    hash_key = load_secret_key(settings)
    ingest = IngestService(
        db,
        Pipeline(CustomerHasher(hash_key)),
        sealer,
        clock=clock,
        retention_days=settings.raw_retention_days,
        forward=forwarding.queue,
        counter=_counter(settings, hash_key, clock),
    )
    ctx = AppContext(settings=settings, db=db, clock=clock, ingest=ingest)
    ctx.extras[Forwarding.KEY] = forwarding

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Refuse to serve on an old schema rather than fail request by request.
        await _check_schema_waiting(ctx, db)
        for problem_ in health.configuration_problems(ctx):
            log.warning("configuration: %s", problem_)
        await ctx.run(forwarding.start)
        ingest.start()
        # What is imported and built by now lives as long as the process: moved out of the
        # cyclic collector's sight, a full collection no longer walks it. It is about 130,000
        # objects, and each full collection was a 110-210 ms pause of every request and
        # delivery (docs/benchmarks.md, "Forwarding"). Once per process: a second app in the
        # same process (tests) would otherwise pin the first one's garbage for good.
        if gc.get_freeze_count() == 0:
            gc.freeze()
        # Meta's record syncs in its own thread: a slow Graph API never delays a webhook.
        meta_sync = SyncRunner(db, settings, clock, sealer) if SyncRunner.wanted(settings) else None
        if meta_sync is not None:
            meta_sync.start()
        try:
            yield
        finally:
            if meta_sync is not None:
                await ctx.run(meta_sync.stop)
            await ctx.run(ingest.stop)
            await ctx.run(forwarding.stop)
            db.dispose()

    app = WastatsApp(
        title="wastats",
        version=__version__,
        summary="Statistics for WhatsApp Business numbers: Marketing, Service and Incoming "
        "conversations per number and month.",
        lifespan=lifespan,
        # /docs is our own page (Swagger UI from the package, under the CSP); no ReDoc.
        docs_url=None,
        redoc_url=None,
        openapi_url="/openapi.json" if settings.docs == "on" else None,
    )
    app.state.ctx = ctx
    app.include_router(health.router)
    app.include_router(partners.router)
    app.include_router(v1.router)
    app.include_router(reconciliation.router)  # Meta's record
    install_dashboard(app)
    if app.openapi_url is not None:
        install_api_docs(app)
    app.include_router(dashboard_meta.router)  # Meta's record page
    app.add_route(WEBHOOK_PATH, whatsapp_webhook, methods=["GET", "POST"], include_in_schema=False)
    _install_error_handlers(app)
    app.add_middleware(
        BodyLimitMiddleware,
        default_limit=settings.max_body_bytes,
        limits={WEBHOOK_PATH: settings.max_webhook_body_bytes},
        timeout_seconds=settings.body_timeout_seconds,
    )
    # Per-token rate and concurrency (429), outside the body limit, inside observability.
    install_limits(app, ctx)
    # Outside the body limit, so a refused 413 also gets a request id, a log line and metrics;
    # inside the proxy headers, so it logs the real client IP.
    install_observability(app, ctx)
    trusted = [h.strip() for h in settings.forwarded_allow_ips.split(",") if h.strip()]
    app.add_middleware(ProxyHeadersMiddleware, trusted_hosts=trusted)
    # The fast path (class docstring); the route above still serves HEAD and answers 405.
    endpoint = WebhookEndpoint(
        ctx, limit=settings.max_webhook_body_bytes, timeout_seconds=settings.body_timeout_seconds
    )
    # uvicorn's middleware is typed with its own ASGI types; Starlette's are the same protocol.
    proxied = ProxyHeadersMiddleware(cast(Any, endpoint), trusted_hosts=trusted)
    app.webhook = cast(ASGIApp, proxied)
    return app


async def _check_schema_waiting(ctx: AppContext, db: Database) -> None:
    deadline = time.monotonic() + (0.0 if ctx.settings.is_sqlite else DATABASE_WAIT_SECONDS)
    waiting = False
    while True:
        try:
            await ctx.run(check_schema_current, db)
            return
        except OperationalError as exc:
            if time.monotonic() >= deadline:
                raise
            if not waiting:
                log.warning("the database cannot be reached yet (%s): trying again for up to "
                            "%.0f s", first_line(exc.orig), DATABASE_WAIT_SECONDS)  # fmt: skip
                waiting = True
            # A retry a second, as `wastats db upgrade --wait`: a database starts in seconds.
            await asyncio.sleep(1)


def _counter(
    settings: Settings, hash_key: bytes, clock: Callable[[], float]
) -> CounterProcess | None:
    """The counting child (WASTATS_COUNTING=process), unless counting stays in a thread: by
    setting, or because the app runs on an injected clock (tests), which a child reading the
    real time could not follow."""
    if settings.counting != "process" or clock is not time.time:
        return None
    config = CounterConfig(
        database_url=settings.database_url,
        hash_key=hash_key,
        body_secrets=body_secrets(settings),
        retention_days=settings.raw_retention_days,
        log_level=settings.log_level,
        log_format=settings.log_format,
    )
    return CounterProcess(config)


def create_app_from_environment() -> WastatsApp:
    """Entry point for `uvicorn --factory` (used by `wastats serve --workers N`)."""
    # uvicorn starts each worker as a fresh process: each configures its own logging.
    settings = load_settings()
    configure_logging(settings)
    return create_app(settings)


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        detail = str(exc.detail)
        if exc.status_code == 404:
            detail = f"no such path: {request.url.path}"
        response = problem(exc.status_code, detail.split(":")[0].title(), detail)
        # Keep what the exception says about the protocol, e.g. `Allow` on a 405.
        response.headers.update(exc.headers or {})
        return response

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        where = ".".join(str(p) for p in first.get("loc", ()))
        return problem(422, "Invalid request", f"{where}: {first.get('msg')}")

    @app.exception_handler(OperationalError)
    async def database_down(request: Request, exc: OperationalError) -> JSONResponse:
        count_database_error(request)
        log.error("database error on %s: %s", request.url.path, exc.orig)
        return problem(503, "Service Unavailable", "the database is unavailable; retry later")

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        # Logged in full for the operator; the client gets no stack trace, but the request id
        # to quote. Starlette runs this handler outside the request-id middleware, so the id
        # is passed and the header added here.
        request_id = request_id_of(request)
        log.exception(
            "unexpected error on %s %s",
            request.method,
            request.url.path,
            extra={"request_id": request_id},
        )
        response = problem(500, "Internal Server Error", "unexpected error; it has been logged")
        if request_id:
            response.headers["X-Request-ID"] = request_id
        return response
