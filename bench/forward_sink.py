"""A minimal webhook consumer for the forwarding benchmark: records when each body arrived.

Raw ASGI on uvicorn (no framework), so the destination costs as little as possible of the
machine the benchmark shares with wastats. `POST` anything: answered 200, the arrival time
(time.time()) kept by the body's SHA-256. `GET /arrivals`: all of them as JSON.
"""

from __future__ import annotations

import hashlib
import json
import time
from typing import Any

arrivals: dict[str, float] = {}


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    body = b""
    more = True
    while more:
        message = await receive()
        body += message.get("body", b"")
        more = message.get("more_body", False)
    if scope["method"] == "POST":
        arrivals[hashlib.sha256(body).hexdigest()] = time.time()
        payload = b"{}"
    else:
        payload = json.dumps(arrivals).encode()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json")]})  # fmt: skip
    await send({"type": "http.response.body", "body": payload})
