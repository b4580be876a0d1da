"""The wastats app plus two baselines for the HTTP benchmark, in the same server process.

* `POST /bench/bare` reads the body and answers 200 on exactly the same stack as every other
  route (uvicorn, FastAPI, wastats' middleware): the webhook's rate against it is the cost of
  what the webhook does beyond the framework.
* `POST /bench/raw` is a raw ASGI app (no framework at all) dispatched before the wastats app:
  the stack's limit, what issue 13 measures the webhook against (target: 0.2 of it).
"""

from __future__ import annotations

import os

from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Message, Receive, Scope, Send

from wastats.app import create_app
from wastats.ingest.pipeline import BatchReport
from wastats.settings import load_settings


async def bare_get(request: Request) -> Response:
    return Response(b'{"status":"ok"}', media_type="application/json")


async def bare(request: Request) -> Response:
    await request.body()
    return Response(b'{"status":"ok"}', media_type="application/json")


_RAW_HEADERS = [(b"content-length", b"15"), (b"content-type", b"application/json")]


async def raw(receive: Receive, send: Send) -> None:
    more = True
    while more:
        message: Message = await receive()
        more = message.get("more_body", False)
    await send({"type": "http.response.start", "status": 200, "headers": _RAW_HEADERS})
    await send({"type": "http.response.body", "body": b'{"status":"ok"}'})


class WithRaw:
    def __init__(self, app: FastAPI) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] == "/bench/raw":
            await raw(receive, send)
        else:
            await self.app(scope, receive, send)


def create() -> WithRaw:
    app = create_app(load_settings())
    app.add_route("/bench/bare", bare, methods=["POST"])
    app.add_route("/bench/bare-get", bare_get, methods=["GET"])
    if os.environ.get("WASTATS_BENCH_ACCEPT_ONLY") == "1":
        # Diagnosis only: store bodies but never count them, to separate the two costs.
        app.state.ctx.ingest.pipeline.process = lambda conn, bodies, now: BatchReport()
    return WithRaw(app)
