"""Forwarding with real `wastats serve` processes: `kill -9` mid-stream loses no accepted body,
and two processes on one database deliver each body once. The destination is a real HTTP
server of this test on 127.0.0.1 that verifies Meta's signature; every wait is a bounded poll.
"""

from __future__ import annotations

import hashlib
import hmac
import threading
from pathlib import Path

import httpx

from conftest import APP_SECRET
from forward_servers import Destination
from procs import Server, generate_events, pack
from wastats.whatsapp.signature import sign


def meta_post(http: httpx.Client, raw: bytes) -> int:
    """POST a body as Meta does: its content type and both signatures."""
    sha1 = hmac.new(APP_SECRET.encode(), raw, hashlib.sha1).hexdigest()
    headers = {
        "Content-Type": "application/json",
        "X-Hub-Signature-256": sign(APP_SECRET.encode(), raw),
        "X-Hub-Signature": f"sha1={sha1}",
    }
    return http.post("/webhooks/whatsapp", content=raw, headers=headers).status_code


def forwarding_env(destination: Destination) -> dict[str, str]:
    # A short attempt timeout keeps the lease (what a killed process leaves behind) short.
    return {"WASTATS_FORWARD_URLS": destination.url, "WASTATS_FORWARD_TIMEOUT_SECONDS": "2"}


def nothing_pending(server: Server) -> bool:
    forwarding = server.health().json().get("forwarding", {})
    return all(d["pending"] == 0 for d in forwarding.get("destinations", [{"pending": 1}]))


def wait_until(condition: object, timeout: float, server: Server) -> None:
    pause = threading.Event()
    deadline = threading.Event()
    timer = threading.Timer(timeout, deadline.set)
    timer.start()
    try:
        while not deadline.is_set():
            if condition():  # type: ignore[operator]
                return
            pause.wait(0.1)
        raise AssertionError(f"not reached in {timeout}s:\n{server.logs()}")
    finally:
        timer.cancel()


def test_kill_9_mid_stream_then_restart_delivers_every_accepted_body(
    database_url: str, tmp_path: Path
) -> None:
    raws = [d.raw for d in pack(generate_events(15, 500), 15)]
    with Destination() as consumer:
        server = Server(
            database_url, tmp_path / "serve", workers=1, env_extra=forwarding_env(consumer)
        ).start()
        try:
            acked: set[bytes] = set()
            progress = threading.Condition()
            stop = threading.Event()
            indexes = iter(range(len(raws)))
            url = server.url

            def sender() -> None:
                with httpx.Client(base_url=url, timeout=30.0) as http:
                    while not stop.is_set():
                        with progress:
                            i = next(indexes, None)
                        if i is None:
                            return
                        try:
                            code = meta_post(http, raws[i])
                        except httpx.TransportError:
                            continue  # no answer: Meta would retry it
                        with progress:
                            if code == 200:
                                acked.add(raws[i])
                                progress.notify_all()

            senders = [threading.Thread(target=sender, daemon=True) for _ in range(4)]
            for thread in senders:
                thread.start()
            with progress:
                assert progress.wait_for(lambda: len(acked) >= 60, timeout=120), server.logs()
            server.kill()  # kill -9 of the process group, the clients still sending
            stop.set()
            for thread in senders:
                thread.join(60)
            assert len(acked) < len(raws), "the kill must come before the stream ends"

            server.start()
            # Everything acknowledged reaches the consumer: what was in flight at the kill is
            # claimed again when its lease ends.
            assert consumer.wait_for(
                lambda: acked <= {r.body for r in consumer.received}, timeout=90
            ), f"{len(acked - {r.body for r in consumer.received})} lost\n{server.logs()}"
            # And Meta's retries of what got no 200 make it complete.
            with httpx.Client(base_url=server.url, timeout=30.0) as http:
                for raw in raws:
                    if raw not in acked:
                        assert meta_post(http, raw) == 200
            assert consumer.wait_for(
                lambda: {r.body for r in consumer.received} == set(raws), timeout=90
            ), (
                f"{len(set(raws) - {r.body for r in consumer.received})} missing; "
                f"extra: {[r.body[:300] for r in consumer.received if r.body not in set(raws)]}"
                f"{server.health().json()}\n{server.logs()}"
            )
            wait_until(lambda: nothing_pending(server), 60, server)
        finally:
            server.stop()
    # Only what was sent, each as Meta signed it (at least once: a body in flight at the kill
    # may come twice, never altered).
    assert {r.body for r in consumer.received} <= set(raws)
    assert all(r.signature_ok for r in consumer.received)
    assert all(r.headers["content-type"] == "application/json" for r in consumer.received)


def test_two_processes_on_one_database_deliver_each_body_once(
    database_url: str, tmp_path: Path
) -> None:
    raws = [d.raw for d in pack(generate_events(16, 300), 16)]
    with Destination() as consumer:
        servers = [
            Server(database_url, tmp_path / f"serve{i}", env_extra=forwarding_env(consumer))
            for i in range(2)
        ]
        try:
            for server in servers:
                server.start()
            clients = [httpx.Client(base_url=s.url, timeout=30.0) for s in servers]
            try:
                # Spread over both processes, each enqueuing and both workers claiming.
                for i, raw in enumerate(raws):
                    assert meta_post(clients[i % 2], raw) == 200
            finally:
                for http in clients:
                    http.close()
            assert consumer.wait_for(lambda: len(consumer.received) >= len(raws), timeout=90)
            # Every delivery recorded as delivered: none can be sent again after this.
            for server in servers:
                wait_until(lambda s=server: nothing_pending(s), 60, server)
        finally:
            for server in servers:
                server.stop()
    bodies = [r.body for r in consumer.received]
    assert sorted(bodies) == sorted(raws), "each body once, by one of the two processes"
    assert all(r.signature_ok for r in consumer.received)
