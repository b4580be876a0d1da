"""Process logging: one JSON object per line (or plain text), tagged with the id of the request
being served.

Logs are for the operator. They carry the traceback of unexpected errors (clients never see it)
and never request bodies, query strings, tokens, secrets or Authorization headers: the access log
records the path without its query (the webhook handshake carries the verify token there), and
the formatter masks any `extra` field whose name says it holds a credential, as a safety net.

The request id lives in a context variable set by the request middleware
(`wastats.api.observability`), so every record emitted while a request is served, by any
logger, including code run in the thread pool, carries it without being passed around.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import re
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, Protocol, TextIO

_request_id: ContextVar[str | None] = ContextVar("wastats_request_id", default=None)

# What an incoming X-Request-ID may be: short and harmless in a log line or a header (no
# spaces, quotes or control characters a client could use to forge log entries).
_VALID_REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")

# Attributes every LogRecord has: anything else on a record came from `extra=`.
_RECORD_ATTRIBUTES = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {
    "message",
    "asctime",
    "taskName",
    "color_message",
}  # color_message: uvicorn's ANSI copy

# `extra` fields whose values are masked whatever they hold (defence in depth: no wastats code
# logs credentials, and this keeps a future `extra={"token": ...}` from leaking one).
_SENSITIVE_FIELD = re.compile(r"authorization|cookie|password|secret|token|signature", re.I)
_MASK = "[redacted]"

# Loggers uvicorn configures for itself; ours must reach the root handler instead.
_UVICORN_LOGGERS = ("uvicorn", "uvicorn.error", "uvicorn.asgi")

# uvicorn's own access logger writes the request line with its full query string (the webhook
# handshake carries `hub.verify_token` there) and would be a second line per request beside
# `wastats.access`. uvicorn logs access only if this logger has a handler somewhere up its
# chain (it checks `hasHandlers()` per connection), so it is cut off from the root handler.
_UVICORN_ACCESS = "uvicorn.access"

# HTTP client libraries log every request's full URL, query string included, at INFO; a URL
# can carry a credential (the Graph API takes `access_token=` there). Only their warnings.
_QUIET_LOGGERS = ("httpx", "httpcore")


# --- request ids ----------------------------------------------------------------------------


def current_request_id() -> str | None:
    """The id of the request being served in this context, if any."""
    return _request_id.get()


def accept_request_id(incoming: str | None) -> str:
    """The client's X-Request-ID if it is 1-64 characters of [A-Za-z0-9._-], else a new one.

    Honouring a well-formed id lets a proxy or client correlate its logs with ours; anything
    else is replaced rather than sanitised, so what we log is always exactly what we answer."""
    if incoming is not None and _VALID_REQUEST_ID.fullmatch(incoming):
        return incoming
    return _new_request_id()


class _RequestIds:
    """New request ids: 32 hex digits, a random prefix per process and a counter. Unique, not
    secret (an id only correlates log lines), and about ten times cheaper than `uuid4`, which
    asks the kernel for randomness on every request: a quarter of the webhook's own time."""

    def __init__(self) -> None:
        self.reset()
        # A forked child must not repeat its parent's ids.
        os.register_at_fork(after_in_child=self.reset)

    def reset(self) -> None:
        self.prefix = os.urandom(8).hex()
        self.counter = itertools.count(int.from_bytes(os.urandom(4)))

    def __call__(self) -> str:
        return f"{self.prefix}{next(self.counter) & 0xFFFFFFFFFFFFFFFF:016x}"


_new_request_id = _RequestIds()


@contextmanager
def bound_request_id(request_id: str) -> Iterator[None]:
    """Tag every record logged inside the block (in this context) with `request_id`."""
    token = _request_id.set(request_id)
    try:
        yield
    finally:
        _request_id.reset(token)


def _record_request_id(record: logging.LogRecord) -> str | None:
    # An explicit `extra={"request_id": ...}` wins: the 500 handler runs outside the middleware
    # (in Starlette's ServerErrorMiddleware), after the context variable was reset.
    explicit = record.__dict__.get("request_id")
    return str(explicit) if explicit else current_request_id()


# --- formatters -----------------------------------------------------------------------------


def _utc_timestamp(record: logging.LogRecord) -> str:
    # ISO 8601 in UTC with milliseconds, e.g. 2026-01-15T10:04:05.123Z: sortable, unambiguous.
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + (
        f".{int(record.msecs):03d}Z"
    )


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, message, request_id (inside a request),
    every `extra` field, and `exc` (the formatted traceback) when an exception is attached."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": _utc_timestamp(record),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        request_id = _record_request_id(record)
        if request_id:
            entry["request_id"] = request_id
        for key, value in record.__dict__.items():
            if key in _RECORD_ATTRIBUTES or key == "request_id" or key.startswith("_"):
                continue
            entry[key] = _MASK if _SENSITIVE_FIELD.search(key) else value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exc"] = record.exc_text
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        # default=str: an `extra` value that is not JSON (a Path, a datetime) is still logged;
        # ensure_ascii=False keeps non-ASCII readable (the stream handler encodes it).
        return json.dumps(entry, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """`2026-01-15T10:04:05.123Z INFO wastats.access: GET /v1/stats 200 3.1ms [request_id=…]`
    for a terminal; `extra` fields are left out (use the JSON format to keep them)."""

    def __init__(self) -> None:
        super().__init__("%(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = f"{_utc_timestamp(record)} {super().format(record)}"
        request_id = _record_request_id(record)
        if request_id:
            # After the message but before a traceback, so the id stays on the first line.
            head, sep, tail = line.partition("\n")
            line = f"{head} [request_id={request_id}]{sep}{tail}"
        return line


# --- setup ----------------------------------------------------------------------------------


class _WastatsHandler(logging.StreamHandler[TextIO]):
    """Marks the handler configure_logging installed, so calling it again replaces it."""


class LogSettings(Protocol):
    """What `configure_logging` reads: `Settings`, or the counting child's `CounterConfig`,
    which thus needs no pydantic (0.15 s of imports in a process started with every server)."""

    @property
    def log_level(self) -> str: ...

    @property
    def log_format(self) -> str: ...


def configure_logging(settings: LogSettings, *, stream: TextIO | None = None) -> logging.Handler:
    """Send every log record of the process, uvicorn's included, through one handler on the root
    logger writing to `stream` (standard error by default), in `settings.log_format`, at
    `settings.log_level`. Idempotent: a second call replaces the first call's handler and leaves
    any other handler (a test runner's, say) alone. Returns the installed handler."""
    handler = _WastatsHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonFormatter() if settings.log_format == "json" else TextFormatter())
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _WastatsHandler)]:
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    root.setLevel(settings.log_level)
    for name in _UVICORN_LOGGERS:
        # uvicorn's own handlers would print a second, differently formatted copy.
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
    access = logging.getLogger(_UVICORN_ACCESS)
    access.handlers.clear()
    access.propagate = False
    for name in _QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    return handler
