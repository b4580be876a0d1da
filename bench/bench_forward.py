"""Forwarding: the webhook load of the HTTP benchmark with one local destination.

Two `wastats serve`-like servers (bench_http's: uvicorn, one worker, SQLite, pinned to core 0)
on fresh databases, one without a destination and one forwarding everything to a local
consumer (forward_sink.py, its own process):

* **webhook rate**: `wrk` posts the same kind of signed, all-distinct bodies (1 status update
  each, 32 connections) to each; reported: requests/s and p99 of both, and their ratio.
  After the run, how long the forwarder needed to deliver the backlog the run left.
* **delivery lag**: then, to the forwarding server, 8 clients post `--lag-bodies` bodies one
  after the other (a load the server keeps up with); for each body, the consumer's arrival
  time minus the time wastats answered 200 (what forwarding adds for the consumer), and minus
  the time the POST was sent (what the consumer would see against Meta posting it directly).
  p50 / p99 / max, in milliseconds.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from bench_http import SECRET, run_wrk, start_server, stop_server, write_bodies
from generate import bodies
from wastats.whatsapp.signature import sign

HERE = Path(__file__).resolve().parent


def start_sink(port: int, log: Path) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "uvicorn", "forward_sink:app", "--host", "127.0.0.1",
               "--port", str(port), "--no-access-log", "--log-level", "warning"]  # fmt: skip
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
    ordered = sorted(values)

    def at(p: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(p * len(ordered)))], 2)

    return {"p50_ms": at(0.50), "p99_ms": at(0.99), "max_ms": round(ordered[-1], 2)}


def measure_lag(port: int, sink_port: int, count: int, clients: int = 8) -> dict[str, Any]:
    raws = [json_bytes(b) for b in bodies(count, per_body=1, seed=99, numbers=20)]
    sent: dict[str, tuple[float, float]] = {}
    lock = threading.Lock()
    parts = [raws[i::clients] for i in range(clients)]

    def post(part: list[bytes]) -> None:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as http:
            for raw in part:
                headers = {"Content-Type": "application/json",
                           "X-Hub-Signature-256": sign(SECRET.encode(), raw)}  # fmt: skip
                before = time.time()
                response = http.post("/webhooks/whatsapp", content=raw, headers=headers)
                after = time.time()
                assert response.status_code == 200, response.text
                with lock:
                    sent[hashlib.sha256(raw).hexdigest()] = (before, after)

    threads = [threading.Thread(target=post, args=(p,)) for p in parts]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wait_delivered(port)
    arrivals = httpx.get(f"http://127.0.0.1:{sink_port}/arrivals", timeout=30).json()
    missing = [sha for sha in sent if sha not in arrivals]
    after_ack = [(arrivals[s] - sent[s][1]) * 1000 for s in sent if s in arrivals]
    after_send = [(arrivals[s] - sent[s][0]) * 1000 for s in sent if s in arrivals]
    return {
        "bodies": len(sent),
        "missing": len(missing),
        "lag_after_200": percentiles(after_ack),
        "lag_after_post_sent": percentiles(after_send),
        "webhook_round_trip": percentiles([(a - b) * 1000 for b, a in sent.values()]),
    }


def json_bytes(body: dict[str, Any]) -> bytes:
    import json

    return json.dumps(body, separators=(",", ":")).encode()


def bench(work: Path, *, seconds: int, lag_bodies: int) -> dict[str, Any]:
    sink_port, plain_port, forward_port = 18101, 18102, 18103
    files = {}
    for name, seed in (("warmup", 11), ("plain", 12), ("forward", 13)):
        files[name] = work / f"forward-{name}.tsv"
        write_bodies(files[name], int(6000 * (seconds + 2) * 1.5), 1, seed)
    sink = start_sink(sink_port, work / "sink.log")
    results: dict[str, Any] = {"seconds": seconds}
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
                url = f"http://127.0.0.1:{port}/webhooks/whatsapp"
                run_wrk(url, files["warmup"], 2)
                wait_delivered(port)
                runs[name] = run_wrk(url, files[name], seconds)
                if name == "forward":
                    runs[name]["delivered_backlog_after_run_seconds"] = round(
                        wait_delivered(port), 2
                    )
                    results["lag"] = measure_lag(port, sink_port, lag_bodies)
            finally:
                stop_server(server)
        results["webhook_without_destination"] = runs["plain"]
        results["webhook_with_destination"] = runs["forward"]
        results["rate_ratio"] = round(
            runs["forward"]["requests_per_second"] / runs["plain"]["requests_per_second"], 3
        )
    finally:
        stop_server(sink)
    return results
