"""The wastats app plus one bare endpoint, for the HTTP benchmark's baseline.

`POST /bench/bare` reads the body and answers 200, on exactly the same server stack (uvicorn,
FastAPI, wastats' middleware), so the ratio of the webhook's rate to it is the cost of what the
webhook does: signature, durable group commit, counting.
"""

from __future__ import annotations

import os

from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import Response

from wastats.app import create_app
from wastats.ingest.pipeline import BatchReport
from wastats.settings import load_settings


async def bare_get(request: Request) -> Response:
    return Response(b'{"status":"ok"}', media_type="application/json")


async def bare(request: Request) -> Response:
    await request.body()
    return Response(b'{"status":"ok"}', media_type="application/json")


def create() -> FastAPI:
    app = create_app(load_settings())
    app.add_route("/bench/bare", bare, methods=["POST"])
    app.add_route("/bench/bare-get", bare_get, methods=["GET"])
    if os.environ.get("WASTATS_BENCH_ACCEPT_ONLY") == "1":
        # Diagnosis only: store bodies but never count them, to separate the two costs.
        app.state.ctx.ingest.pipeline.process = lambda conn, bodies, now: BatchReport()
    return app
