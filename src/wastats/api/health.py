"""GET /healthz: is the database reachable (and, once ingestion runs, how is the inbox)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from sqlalchemy.exc import SQLAlchemyError

from wastats.api.context import AppContext, context_of
from wastats.domain import inbox
from wastats.forward.service import forwarding_of
from wastats.meta import observe as meta_observe

router = APIRouter(tags=["operations"])


@router.get("/healthz", summary="Liveness and database reachability")
async def healthz(request: Request) -> JSONResponse:
    ctx = context_of(request)
    try:
        body = await ctx.run(_check, ctx)
    except SQLAlchemyError:
        return JSONResponse({"status": "fail", "database": "unreachable"}, status_code=503)
    return JSONResponse(body)


def configuration_problems(ctx: AppContext) -> list[str]:
    """What in the configuration keeps the service from doing its job, one line each: logged as
    a warning at start-up and reported by /healthz, so a service that answers but refuses every
    webhook is not mistaken for a healthy one."""
    problems: list[str] = []
    if not ctx.meta_app_secrets:
        problems.append(
            "WASTATS_META_APP_SECRET is not set: every webhook POST is refused with 503"
        )
    return problems


def _check(ctx: AppContext) -> dict[str, Any]:
    forwarding = forwarding_of(ctx.extras)
    with ctx.db.read() as conn:
        states = inbox.states(conn)
        meta_sync = meta_observe.health(conn)
        # Forwarding (issue 15): only shown once a destination is set.
        forward = forwarding.health(conn) if forwarding is not None else None
    running = ctx.ingest is not None and ctx.ingest.running
    problems = configuration_problems(ctx)
    healthy = running and not problems and (forward is None or forward["status"] == "ok")
    body: dict[str, Any] = {
        "status": "ok" if healthy else "degraded",
        "problems": problems,
        "database": "ok",
        "ingest": "running" if running else "stopped",
        "inbox": {
            "pending": states.pending,
            "rejected": states.rejected,
            "processed": states.processed,
        },
    }
    if meta_sync:  # once any WABA is linked (docs/meta-record.md)
        body["meta_sync"] = meta_sync
    if forward is not None:
        body["forwarding"] = forward
    return body
