"""A real HTTP server for tests that need one (the browser, the Python client): uvicorn serving
the app on a free loopback port in a background thread, with its lifespan (ingestion) running."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import uvicorn
from fastapi import FastAPI


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def live_server(app: FastAPI) -> Iterator[str]:
    """Serve `app`; yields its base URL (`http://127.0.0.1:<port>`)."""
    port = _free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    started = threading.Event()

    # uvicorn sets `started` once it listens; wait on it without sleeping blindly.
    def watch() -> None:
        while thread.is_alive() and not server.started:
            started.wait(0.01)
        started.set()

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    assert started.wait(30), "the test server did not start"
    assert server.started, "the test server failed to start"
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(30)
