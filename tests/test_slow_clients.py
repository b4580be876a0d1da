"""Slow clients against a real `wastats serve` process and a real socket (issue 11): one client
holding half a body must neither keep a SIGTERM'd server alive (bounded graceful shutdown) nor
hold its connection past the body timeout."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import time
from pathlib import Path

import httpx

from procs import Server


def _half_a_webhook(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=60)
    sock.sendall(
        b"POST /webhooks/whatsapp HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"X-Hub-Signature-256: sha256=00\r\nContent-Length: 5000\r\n\r\n" + b'{"object": "'
    )
    return sock


def _read_until_closed(sock: socket.socket) -> bytes:
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def test_sigterm_with_a_client_holding_half_a_body_exits_within_the_grace(
    tmp_path: Path,
) -> None:
    url = f"sqlite:///{tmp_path / 'slow.db'}"
    server = Server(
        url,
        tmp_path / "serve",
        env_extra={
            "WASTATS_GRACEFUL_SHUTDOWN_SECONDS": "1",
            # Far away, so only the graceful-shutdown bound can end the held request.
            "WASTATS_BODY_TIMEOUT_SECONDS": "3600",
        },
    ).start()
    try:
        sock = _half_a_webhook(server.port)
        # And one that never finishes its headers (no request reaches the app).
        headers_only = socket.create_connection(("127.0.0.1", server.port), timeout=60)
        headers_only.sendall(b"POST /webhooks/whatsapp HTTP/1.1\r\nHost: x\r\nContent-")
        # The server reads connections in the order their bytes arrive: once it has answered
        # a later request, the held one has reached the app and waits for the rest of its body.
        assert httpx.get(f"{server.url}/healthz", timeout=30).status_code == 200
        assert server.process is not None
        sent = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        try:
            returncode = server.process.wait(30)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"still running 30 s after SIGTERM with a 1 s grace:\n{server.logs()}"
            ) from None
        # uvicorn exits by re-raising the SIGTERM it handled once shut down.
        assert returncode in (0, -signal.SIGTERM), server.logs()
        assert "timeout graceful shutdown exceeded" in server.logs()
        # The held connection was closed by the server, not left to the client.
        sock.settimeout(30)
        _read_until_closed(sock)
        sock.close()
        headers_only.settimeout(30)
        _read_until_closed(headers_only)
        headers_only.close()
        assert time.monotonic() - sent < 30
    finally:
        server.stop()


def test_a_body_that_never_completes_is_answered_408_and_closed(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'slow.db'}"
    server = Server(
        url, tmp_path / "serve", env_extra={"WASTATS_BODY_TIMEOUT_SECONDS": "0.5"}
    ).start()
    try:
        with _half_a_webhook(server.port) as sock:
            answer = _read_until_closed(sock)  # the server closes it, not us
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 408 "), answer
        assert json.loads(body)["detail"] == "request body not received within 0.5 seconds"
        # Meanwhile and afterwards, the service answers.
        assert httpx.get(f"{server.url}/healthz", timeout=30).status_code == 200
    finally:
        server.stop()
