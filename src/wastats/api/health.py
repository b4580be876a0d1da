"""GET /healthz: is the database reachable (and, once ingestion runs, how is the inbox)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from sqlalchemy.exc import SQLAlchemyError

from wastats.api.context import AppContext, context_of
from wastats.domain import inbox

router = APIRouter(tags=["operations"])


@router.get("/healthz", summary="Liveness and database reachability")
async def healthz(request: Request) -> JSONResponse:
    ctx = context_of(request)
    try:
        body = await ctx.run(_check, ctx)
    except SQLAlchemyError:
        return JSONResponse({"status": "fail", "database": "unreachable"}, status_code=503)
    return JSONResponse(body)


def _check(ctx: AppContext) -> dict[str, Any]:
    with ctx.db.read() as conn:
        states = inbox.states(conn)
    running = ctx.ingest is not None and ctx.ingest.running
    return {
        "status": "ok" if running else "degraded",
        "database": "ok",
        "ingest": "running" if running else "stopped",
        "inbox": {
            "pending": states.pending,
            "rejected": states.rejected,
            "processed": states.processed,
        },
    }
