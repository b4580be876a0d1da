"""ASGI middleware around every handler's reading of the request body: a size limit, a time
limit, and a quiet end for clients that hang up half-way.

* **Size**: bodies over the limit get 413 before anything is parsed (by Content-Length up
  front, or while streaming a chunked upload, so a huge body is never buffered).
* **Time**: a client that starts a body must finish it within `WASTATS_BODY_TIMEOUT_SECONDS`,
  else 408 and the connection is closed, so a slow (or malicious) client cannot hold a
  connection and a worker forever (uvicorn itself has no body timeout; header timeouts are the
  TLS proxy's job: docs/security.md, "Limits and exposure").
* **Disconnects**: a client that closes the connection mid-body is not a server error: an
  INFO line and status 499 (nginx's "client closed request") in the access log and metrics,
  not a 500 with a traceback.

Every refusal is in the format of its route family: the compatible API's envelope under
`/api/`, an RFC 9457 problem everywhere else, rendered by the same response classes as the
handlers' own answers.
"""

from __future__ import annotations

import asyncio
import logging

from starlette.requests import ClientDisconnect
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from wastats.api.problems import problem

log = logging.getLogger("wastats")

CLIENT_CLOSED = 499
"""Status recorded (never sent: nobody is listening) for a client that hung up mid-body."""


class BodyTooLarge(Exception):
    pass


class BodyTimeout(Exception):
    pass


def refusal(path: str, status: int, title: str, message: str, reason: int) -> JSONResponse:
    """A transport-level refusal in the route family's own format."""
    headers = {"Connection": "close"}
    if path.startswith("/api/"):
        # The compatible API answers in its own envelope even for transport faults.
        return JSONResponse(
            {"status": "FAIL", "reason": reason, "message": message},
            status_code=status,
            headers=headers,
        )
    return problem(status, title, message, headers=headers)


def too_large(path: str, limit: int) -> JSONResponse:
    message = f"request body too large: the limit is {limit} bytes"
    return refusal(path, 413, "Payload Too Large", message, reason=2)


def too_slow(path: str, seconds: float) -> JSONResponse:
    message = f"request body not received within {seconds:g} seconds"
    return refusal(path, 408, "Request Timeout", message, reason=2)


class BodyLimitMiddleware:
    """Size limit, time limit and disconnects of request bodies (see the module)."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        default_limit: int,
        limits: dict[str, int],
        timeout_seconds: float | None = None,
    ) -> None:
        self.app = app
        self.default_limit = default_limit
        self.limits = limits
        self.timeout_seconds = timeout_seconds

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        limit = self.limits.get(path, self.default_limit)
        for name, value in scope["headers"]:
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = limit + 1
                if declared > limit:
                    await too_large(path, limit)(scope, receive, send)
                    return

        received = 0
        body_done = False
        response_started = False
        loop = asyncio.get_running_loop()
        deadline = None if self.timeout_seconds is None else loop.time() + self.timeout_seconds

        async def limited_receive() -> Message:
            nonlocal received, body_done
            if body_done or deadline is None:
                # After the body, receive() only waits for a disconnect (a streamed answer
                # listens for one): no deadline on that.
                message = await receive()
            else:
                try:
                    message = await asyncio.wait_for(receive(), deadline - loop.time())
                except TimeoutError:
                    raise BodyTimeout from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge
                body_done = not message.get("more_body", False)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal response_started
            if message["type"] == "http.response.start":
                response_started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except BodyTooLarge:
            if not response_started:
                await too_large(path, limit)(scope, receive, send)
        except BodyTimeout:
            log.info("request body of %s %s too slow: answered 408", scope["method"], path)
            if not response_started:
                assert self.timeout_seconds is not None
                await too_slow(path, self.timeout_seconds)(scope, receive, send)
        except ClientDisconnect:
            log.info("client closed the connection before the whole body of %s arrived", path)
            if not response_started:
                # Goes nowhere (uvicorn drops sends after a disconnect), but the access log
                # and the metrics record what happened rather than a 500.
                await refusal(path, CLIENT_CLOSED, "Client Closed Request", "", 2)(
                    scope, receive, send
                )
