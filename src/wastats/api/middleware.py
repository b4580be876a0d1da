"""ASGI middleware: request body limits, enforced before any handler reads the body."""

from __future__ import annotations

import json

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from wastats.api.problems import problem_body


class BodyTooLarge(Exception):
    pass


def too_large_body(path: str, limit: int) -> bytes:
    message = f"request body too large: the limit is {limit} bytes"
    if path.startswith("/api/"):
        # The compatible API answers in its own envelope even for transport faults.
        return json.dumps({"status": "FAIL", "reason": 2, "message": message}).encode()
    return json.dumps(problem_body(413, "Payload Too Large", message)).encode()


class BodyLimitMiddleware:
    """Refuse bodies over the limit with 413: by Content-Length up front, or while streaming
    for chunked uploads, so a huge body is never buffered."""

    def __init__(self, app: ASGIApp, *, default_limit: int, limits: dict[str, int]) -> None:
        self.app = app
        self.default_limit = default_limit
        self.limits = limits

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
                    await self._refuse(send, path, limit)
                    return

        received = 0
        response_started = False

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge
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
                await self._refuse(send, path, limit)

    @staticmethod
    async def _refuse(send: Send, path: str, limit: int) -> None:
        body = too_large_body(path, limit)
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})
