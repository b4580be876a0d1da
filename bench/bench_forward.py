"""Forwarding: the webhook load of the HTTP benchmark with one healthy local destination.

Two `wastats serve`-like servers (bench_http's: uvicorn, one worker, SQLite, pinned to core 0;
`wrk` pinned to core 1) on fresh databases, one without a destination and one forwarding
everything to a local consumer (forward_sink.py, raw ASGI on uvicorn, its own process pinned
to wrk's core, which records when each body arrived):

* **full load**: `wrk` posts signed, all-distinct bodies (a message's status updates each, 32
  connections) to each server for `seconds`; reported: requests/s and p50/p99 of both, and
  their ratio (what forwarding costs the webhook rate). Meanwhile one *probe* client posts a
  body every 20 ms to the same server (to both, so the load is the same) and, on the
  forwarding server, each probe's delivery lag is measured. After the run: how long the
  forwarder needed for what was still pending.
* **steady load**: then, to the forwarding server, 8 clients post at a fixed total rate (half
  the full-load rate with a destination: a load it keeps up with) for `steady_seconds`.
* **sender CPU**: the CPU time (of this process: the sink's is not counted) one delivery costs
  through each of forward.transport's clients, 2,500 bodies to the sink, 16 in flight:
  aiohttp (HTTP/1.1) and httpx (with h2 enabled, speaking HTTP/1.1 to the sink).

Delivery lag, per body: the consumer's arrival time minus the time wastats answered 200 (what
forwarding adds for the consumer), and minus the time the POST was sent (what the consumer
sees against Meta posting to it directly); p50 / p99 / max in milliseconds. One clock
(`time.time()`): the sink, the clients and wastats run on the same machine.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import subprocess
import sys
import threading
import time
from itertools import islice
from pathlib import Path
from typing import Any

import aiohttp
import httpx

from bench_http import SECRET, _pin, run_wrk, start_server, stop_server, write_bodies
from generate import bodies
from wastats.forward.transport import Http1, Http2, Transport
from wastats.whatsapp.signature import sign

HERE = Path(__file__).resolve().parent


def start_sink(port: int, log: Path) -> subprocess.Popen[bytes]:
    # On wrk's core (1): the server's core (0) stays its own, as with a consumer on another
    # machine; sharing it measured the consumer's CPU as forwarding's cost.
    command = _pin("1") + [sys.executable, "-m", "uvicorn", "forward_sink:app", "--host",
                           "127.0.0.1", "--port", str(port), "--no-access-log",
                           "--log-level", "warning"]  # fmt: skip
    process = subprocess.Popen(command, cwd=HERE, stdout=log.open("wb"),
                               stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            httpx.get(f"http://127.0.0.1:{port}/arrivals", timeout=1)
            return process
        except httpx.HTTPError:
            time.sleep(0.1)
    raise RuntimeError(f"the sink did not start: {log.read_text()[-2000:]}")


def forward_pending(port: int) -> int:
    health = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=10).json()
    return sum(d["pending"] for d in health.get("forwarding", {}).get("destinations", []))


def wait_delivered(port: int, limit: float = 600) -> float:
    start = time.monotonic()
    while time.monotonic() - start < limit:
        if forward_pending(port) == 0:
            return time.monotonic() - start
        time.sleep(0.05)
    return float("inf")


def percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    ordered = sorted(values)

    def at(p: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(p * len(ordered)))], 2)

    return {"p50_ms": at(0.50), "p99_ms": at(0.99), "max_ms": round(ordered[-1], 2)}


def json_bytes(body: dict[str, Any]) -> bytes:
    return json.dumps(body, separators=(",", ":")).encode()


def distinct_bodies(count: int, seed: int) -> list[bytes]:
    """`count` new bodies (the generator's bodies hold a message's 2 or 3 status updates)."""
    return [
        json_bytes(b) for b in islice(bodies(count * 3, per_body=1, seed=seed, numbers=20), count)
    ]


class Sent:
    """When each body was posted and answered, by the SHA-256 the sink records it under."""

    def __init__(self) -> None:
        self.times: dict[str, tuple[float, float]] = {}
        self.lock = threading.Lock()

    def post(self, http: httpx.Client, raw: bytes) -> None:
        headers = {"Content-Type": "application/json",
                   "X-Hub-Signature-256": sign(SECRET.encode(), raw)}  # fmt: skip
        before = time.time()
        response = http.post("/webhooks/whatsapp", content=raw, headers=headers)
        after = time.time()
        assert response.status_code == 200, response.text
        with self.lock:
            self.times[hashlib.sha256(raw).hexdigest()] = (before, after)

    def lag(self, sink_port: int) -> dict[str, Any]:
        arrivals = httpx.get(f"http://127.0.0.1:{sink_port}/arrivals", timeout=60).json()
        got = [s for s in self.times if s in arrivals]
        return {
            "bodies": len(self.times),
            "missing": len(self.times) - len(got),
            "lag_after_200": percentiles([(arrivals[s] - self.times[s][1]) * 1000 for s in got]),
            "lag_after_post_sent": percentiles(
                [(arrivals[s] - self.times[s][0]) * 1000 for s in got]
            ),
            "webhook_round_trip": percentiles([(a - b) * 1000 for b, a in self.times.values()]),
        }


def paced(port: int, raws: list[bytes], rate: float, clients: int, sent: Sent) -> float:
    """Post `raws` from `clients` connections at `rate` bodies/s in all (open loop: a body late
    for its slot goes at once, the schedule is not moved); returns the achieved rate.

    One asyncio loop with aiohttp, not a thread with httpx per client: at this rate httpx's CPU
    per request (about 1 ms) made the load generator a process that needed most of a core,
    which it took from the server's core as often as not."""

    async def run() -> float:
        connector = aiohttp.TCPConnector(limit=clients)
        async with aiohttp.ClientSession(f"http://127.0.0.1:{port}", connector=connector) as http:
            start = time.monotonic() + 0.2

            async def client(index: int, part: list[bytes]) -> None:
                for k, raw in enumerate(part):
                    delay = start + (k * clients + index) / rate - time.monotonic()
                    if delay > 0:
                        await asyncio.sleep(delay)
                    headers = {"Content-Type": "application/json",
                               "X-Hub-Signature-256": sign(SECRET.encode(), raw)}  # fmt: skip
                    before = time.time()
                    async with http.post("/webhooks/whatsapp", data=raw, headers=headers) as r:
                        text = await r.text()
                    after = time.time()
                    assert r.status == 200, text
                    sent.times[hashlib.sha256(raw).hexdigest()] = (before, after)

            await asyncio.gather(*(client(i, raws[i::clients]) for i in range(clients)))
            return len(raws) / (time.monotonic() - start)

    return asyncio.run(run())


def full_load(
    port: int, bodies_file: Path, seconds: int, probes: list[bytes]
) -> tuple[dict[str, Any], Sent]:
    """`wrk` at full load, and the probe client beside it (one body every 20 ms)."""
    sent = Sent()
    stop = threading.Event()

    def probe() -> None:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as http:
            for raw in probes:
                if stop.wait(0.02):
                    return
                sent.post(http, raw)

    thread = threading.Thread(target=probe)
    thread.start()
    try:
        result = run_wrk(f"http://127.0.0.1:{port}/webhooks/whatsapp", bodies_file, seconds)
    finally:
        stop.set()
        thread.join()
    return result, sent


def sender_cpu(sink_port: int, count: int = 2500) -> dict[str, Any]:
    """Milliseconds of CPU per delivery, and deliveries/s, of each transport (16 in flight)."""
    raws = distinct_bodies(count + 200, 5)
    url = f"http://127.0.0.1:{sink_port}/cpu"

    async def run(transport: Transport) -> dict[str, float]:
        slots = asyncio.Semaphore(16)

        async def one(raw: bytes) -> None:
            async with slots:
                headers = [("Content-Type", "application/json"),
                           ("X-Hub-Signature-256", sign(SECRET.encode(), raw))]  # fmt: skip
                assert (await transport.post(url, raw, headers)).status == 200

        await asyncio.gather(*(one(r) for r in raws[:200]))  # connections made, code warm
        cpu, wall = time.process_time(), time.monotonic()
        await asyncio.gather(*(one(r) for r in raws[200:]))
        cpu, wall = time.process_time() - cpu, time.monotonic() - wall
        await transport.aclose()
        return {"cpu_ms_per_delivery": round(cpu / count * 1000, 3),
                "deliveries_per_second": round(count / wall, 1)}  # fmt: skip

    return {
        "aiohttp_http1": asyncio.run(run(Http1(ca_file=None, timeout=30))),
        "httpx": asyncio.run(run(Http2(ca_file=None, timeout=30))),
    }


def bench(
    work: Path, *, seconds: int, steady_seconds: int = 10, steady_fraction: float = 0.5
) -> dict[str, Any]:
    sink_port, plain_port, forward_port = 18101, 18102, 18103
    files = {}
    for name, seed in (("warmup", 11), ("plain", 12), ("forward", 13)):
        files[name] = work / f"forward-{name}.tsv"
        write_bodies(files[name], int(6000 * (seconds + 2) * 1.5), 1, seed)
    probes = {
        name: distinct_bodies(seconds * 50, seed) for name, seed in (("plain", 21), ("forward", 22))
    }
    sink = start_sink(sink_port, work / "sink.log")
    results: dict[str, Any] = {"seconds": seconds}
    # This process posts the probes and the steady load: on wrk's core, like wrk, so the
    # server's core 0 is the server's alone (unpinned, it ran there as often as not).
    affinity = os.sched_getaffinity(0)
    if len(affinity) > 1:
        os.sched_setaffinity(0, {1})
    try:
        runs: dict[str, dict[str, Any]] = {}
        for name, port in (("plain", plain_port), ("forward", forward_port)):
            if name == "forward":
                os.environ["WASTATS_FORWARD_URLS"] = f"http://127.0.0.1:{sink_port}/hook"
            try:
                server = start_server(f"sqlite:///{work / f'forward-{name}.db'}", port, 1,
                                      work / f"forward-{name}.log")  # fmt: skip
            finally:
                os.environ.pop("WASTATS_FORWARD_URLS", None)
            try:
                run_wrk(f"http://127.0.0.1:{port}/webhooks/whatsapp", files["warmup"], 2)
                wait_delivered(port)
                runs[name], probe = full_load(port, files[name], seconds, probes[name])
                if name != "forward":
                    continue
                runs[name]["delivered_backlog_after_run_seconds"] = round(wait_delivered(port), 2)
                results["lag_full_load"] = probe.lag(sink_port)
                rate = steady_fraction * runs[name]["requests_per_second"]
                raws = distinct_bodies(int(rate * steady_seconds), 99)
                steady = Sent()
                achieved = paced(port, raws, rate, 8, steady)
                wait_delivered(port)
                results["lag_steady_load"] = {
                    "target_rate": round(rate, 1),
                    "achieved_rate": round(achieved, 1),
                    **steady.lag(sink_port),
                }
            finally:
                stop_server(server)
        results["sender_cpu"] = sender_cpu(sink_port)
        results["webhook_without_destination"] = runs["plain"]
        results["webhook_with_destination"] = runs["forward"]
        results["rate_ratio"] = round(
            runs["forward"]["requests_per_second"] / runs["plain"]["requests_per_second"], 3
        )
    finally:
        stop_server(sink)
        os.sched_setaffinity(0, affinity)
    return results
