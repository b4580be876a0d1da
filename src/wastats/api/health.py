"""GET /healthz: is the database reachable (and, once ingestion runs, how is the inbox)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from sqlalchemy.exc import SQLAlchemyError

from wastats.api.context import AppContext, context_of
from wastats.forward.service import forwarding_of
from wastats.store import inbox as inbox_repo

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
    forwarding = forwarding_of(ctx.extras)
    with ctx.db.read() as conn:
        states = inbox_repo.count_by_state(conn)
        # Forwarding (issue 15): only shown once a destination is set.
        forward = forwarding.health(conn) if forwarding is not None else None
    running = ctx.ingest is not None and ctx.ingest.running
    healthy = running and (forward is None or forward["status"] == "ok")
    answer: dict[str, Any] = {
        "status": "ok" if healthy else "degraded",
        "database": "ok",
        "ingest": "running" if running else "stopped",
        "inbox": {
            "pending": states.get(inbox_repo.PENDING, 0),
            "rejected": states.get(inbox_repo.REJECTED, 0),
            "processed": states.get(inbox_repo.PROCESSED, 0),
        },
    }
    if forward is not None:
        answer["forwarding"] = forward
    return answer
