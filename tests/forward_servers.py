"""Real HTTP destinations on 127.0.0.1 for the forwarding tests: a customer's webhook consumer
as it behaves, failures included. Each is a stdlib `ThreadingHTTPServer` (HTTP/1.1 keep-alive)
in a background thread; what it receives is recorded, and tests wait on it with a deadline
(`wait_for`), never a sleep.

* `Destination()` answers 200 and checks Meta's signature of each body with the app secret, as
  the customer's consumer does.
* `Destination(fail_first=N)` answers 500 N times, then 200.
* `Destination(fail_first=1, fail_status=429, retry_after="120")` answers 429 with Retry-After.
* `Destination(hang=True)` reads the request and never answers (until closed).
* `Destination(redirect_to=URL)` answers 307 to URL.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from conftest import APP_SECRET
from wastats.whatsapp.signature import verify_signature


@dataclass(frozen=True)
class Received:
    path: str
    headers: dict[str, str]
    """Lower-case name → value."""
    body: bytes
    signature_ok: bool
    at: float
    """time.time() on arrival."""


class Destination:
    def __init__(
        self,
        *,
        fail_first: int = 0,
        fail_status: int = 500,
        retry_after: str | None = None,
        hang: bool = False,
        redirect_to: str | None = None,
        secret: str = APP_SECRET,
    ) -> None:
        self.fail_first = fail_first
        self.fail_status = fail_status
        self.retry_after = retry_after
        self.hang = hang
        self.redirect_to = redirect_to
        self.secret = secret.encode()
        self.received: list[Received] = []
        """Successful deliveries (answered 2xx)."""
        self.attempts: list[Received] = []
        """Every request, answered or not."""
        self.hanging = 0
        self.changed = threading.Condition()
        self._release = threading.Event()
        destination = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # header and body are two writes

            def do_POST(self) -> None:
                destination._handle(self)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def _handle(self, handler: BaseHTTPRequestHandler) -> None:
        length = int(handler.headers.get("Content-Length", "0"))
        body = handler.rfile.read(length)
        if len(body) < length:
            # The sender died mid-request (the kill -9 tests): an incomplete request, which no
            # consumer would take as a webhook.
            handler.close_connection = True
            return
        headers = {k.lower(): v for k, v in handler.headers.items()}
        got = Received(
            path=handler.path,
            headers=headers,
            body=body,
            signature_ok=verify_signature(self.secret, body, headers.get("x-hub-signature-256")),
            at=time.time(),
        )
        with self.changed:
            self.attempts.append(got)
            failing = len(self.attempts) <= self.fail_first
            hang = self.hang
            if hang:
                self.hanging += 1
            self.changed.notify_all()
        if hang:
            self._release.wait(120)
            handler.close_connection = True
            return
        if self.redirect_to is not None:
            self._answer(handler, 307, {"Location": self.redirect_to})
            return
        if failing:
            extra = {"Retry-After": self.retry_after} if self.retry_after else {}
            self._answer(handler, self.fail_status, extra)
            return
        with self.changed:
            self.received.append(got)
            self.changed.notify_all()
        self._answer(handler, 200, {})

    @staticmethod
    def _answer(handler: BaseHTTPRequestHandler, status: int, headers: dict[str, str]) -> None:
        payload = b'{"ok":true}' if status < 300 else b'{"error":"try later"}'
        handler.send_response(status)
        for name, value in headers.items():
            handler.send_header(name, value)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(payload)))
        handler.end_headers()
        handler.wfile.write(payload)

    def wait_for(self, condition: Callable[[], bool], timeout: float = 30.0) -> bool:
        """Wait (bounded) until `condition()` holds; it is checked on every request."""
        with self.changed:
            return self.changed.wait_for(condition, timeout)

    def release(self) -> None:
        """Stop hanging: the requests held so far are dropped without an answer (a failed
        attempt for the sender), and the next ones are answered."""
        self.hang = False
        self._release.set()

    def close(self) -> None:
        self._release.set()
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self) -> Destination:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()
