"""Webhook acknowledgements while heavy statistics queries run (issue 11).

The scenario of the report: an account with 200 numbers and a year of counted units (several
countries each), and four clients that keep asking the heaviest statistics questions while Meta
delivers webhooks. Measured on one real server process (SQLite, one worker):

* **idle**: p50 / p99 / max latency of webhook POSTs (one status update each, sent one after
  another by one client) with nothing else running: the baseline;
* **loaded**: the same while four clients (four tokens) loop on
  - the report's question, `granularity=day&group_by=number,country&unique=true` over the
    year for all 200 numbers (now refused by the row cap before any work: how fast?), and
  - the heaviest question the cap allows: `granularity=day&group_by=country&unique=true` over
    the year (reads every unit of the year, groups 365 days x countries, unique customers),
  and `/healthz` latency in the same window.

Reported: webhook p99 loaded / idle, heavy answers per second and their latency, how each was
answered (200 / 422 / 429), and the peak memory of the server.
"""

from __future__ import annotations

import json
import os
import random
import sqlite3
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from bench_http import SECRET, start_server, stop_server
from bench_stats import issue_token
from wastats.whatsapp.signature import sign

NUMBERS = 200
START = int(datetime(2025, 1, 1, tzinfo=UTC).timestamp())
SPAN = 365 * 86400
COUNTRIES = ["IL", "US", "GB", "DE", "FR"]
BUCKETS = [("incoming", "incoming", ""), ("marketing", "marketing", "regular"),
           ("service", "utility", "regular")]  # fmt: skip
REPORTED = ("/v1/stats?from=2025-01-01&to=2025-12-31&granularity=day"
            "&group_by=number,country&unique=true")  # fmt: skip
HEAVIEST_ALLOWED = ("/v1/stats?from=2025-01-01&to=2025-12-31&granularity=day"
                    "&group_by=country&unique=true")  # fmt: skip


def populate(path: Path, units: int) -> None:
    """Schema, one UTC account with 200 numbers, `units` counted units over 2025, rollups."""
    wastats = Path(sys.executable).with_name("wastats")
    env = {**os.environ, "WASTATS_DATABASE_URL": f"sqlite:///{path}"}
    subprocess.run([str(wastats), "db", "upgrade"], env=env, check=True, capture_output=True)
    rng = random.Random(units)
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=OFF")
    conn.execute("BEGIN")
    conn.execute(
        "INSERT INTO accounts (client_id, secret_hash, name, timezone, created_at) "
        "VALUES ('bench', 'x', 'Bench', 'UTC', 0)"
    )
    numbers = [f"3{i:014d}" for i in range(NUMBERS)]
    conn.executemany(
        "INSERT INTO business_numbers (phone_number_id, account_id, whatsapp, coexistence, "
        "created_at) VALUES (?, 1, ?, 0, 0)",
        [(n, f"9726{i:08d}") for i, n in enumerate(numbers)],
    )
    rollups: Counter[tuple[str, int, str, str, str]] = Counter()
    chunk: list[tuple[Any, ...]] = []
    for i in range(units):
        number = numbers[i % NUMBERS]
        ts = START + rng.randrange(SPAN)
        bucket, category, pricing = BUCKETS[i % len(BUCKETS)]
        day = datetime.fromtimestamp(ts, UTC)
        rollups[(number, day.year * 100 + day.month, bucket, category, pricing)] += 1
        chunk.append((number, f"X:{i}", "message", ts, bucket, category, pricing, "PMP",
                      f"{rng.randrange(100_000):032x}", rng.choice(COUNTRIES)))  # fmt: skip
        if len(chunk) == 100_000:
            conn.executemany("INSERT INTO counted_units VALUES (?,?,?,?,?,?,?,?,?,?)", chunk)
            chunk.clear()
    if chunk:
        conn.executemany("INSERT INTO counted_units VALUES (?,?,?,?,?,?,?,?,?,?)", chunk)
    conn.executemany(
        "INSERT INTO monthly_counts VALUES (?,?,?,?,?,?)",
        [(*key, value) for key, value in rollups.items()],
    )
    conn.execute(
        "INSERT INTO account_monthly_counts SELECT 1, month, bucket, category, pricing_type, "
        "SUM(units) FROM monthly_counts GROUP BY month, bucket, category, pricing_type"
    )
    conn.execute("COMMIT")
    conn.execute("ANALYZE")
    conn.close()


def _webhook_body(i: int) -> bytes:
    ts = START + i
    value = {
        "messaging_product": "whatsapp",
        "metadata": {"display_phone_number": "15550000000", "phone_number_id": "399999999999"},
        "statuses": [{"id": f"wamid.bench.{i}", "status": "delivered", "timestamp": str(ts),
                      "recipient_id": "972501234567"}],
    }  # fmt: skip
    return json.dumps(
        {"object": "whatsapp_business_account",
         "entry": [{"id": "1", "changes": [{"field": "messages", "value": value}]}]}
    ).encode()  # fmt: skip


def _percentiles(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    if not ordered:
        return {"count": 0}
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return {"count": len(ordered), "p50_ms": round(statistics.median(ordered) * 1000, 1),
            "p99_ms": round(p99 * 1000, 1), "max_ms": round(ordered[-1] * 1000, 1)}  # fmt: skip


def _webhooks(base: str, seconds: float, offset: int) -> dict[str, float]:
    latencies: list[float] = []
    failures = 0
    deadline = time.monotonic() + seconds
    i = offset
    with httpx.Client(base_url=base, timeout=120) as http:
        while time.monotonic() < deadline:
            raw = _webhook_body(i)
            i += 1
            started = time.perf_counter()
            signature = {"X-Hub-Signature-256": sign(SECRET.encode(), raw)}
            response = http.post("/webhooks/whatsapp", content=raw, headers=signature)
            latencies.append(time.perf_counter() - started)
            failures += response.status_code != 200
    return {**_percentiles(latencies), "non_200": failures}


def _peak_rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return 0.0


def bench(work: Path, units: int, seconds: float) -> dict[str, Any]:
    path = work / f"isolation-{units}.db"
    populate(path, units)
    tokens = [issue_token(path) for _ in range(4)]
    port = 18700 + units % 89
    process = start_server(f"sqlite:///{path}", port, 1, work / "isolation-server.log")
    base = f"http://127.0.0.1:{port}"
    try:
        _webhooks(base, 2, 0)  # warm-up
        idle = _webhooks(base, seconds, 1_000_000)

        stop = threading.Event()
        heavy: dict[str, list[float]] = {"reported": [], "allowed": []}
        statuses: Counter[str] = Counter()
        lock = threading.Lock()

        def client(token: str, n: int) -> None:
            with httpx.Client(base_url=base, timeout=300,
                              headers={"Authorization": f"Bearer {token}"}) as http:  # fmt: skip
                while not stop.is_set():
                    name, path_ = ("reported", REPORTED) if n % 2 else ("allowed", HEAVIEST_ALLOWED)
                    n += 1
                    started = time.perf_counter()
                    response = http.get(path_)
                    with lock:
                        heavy[name].append(time.perf_counter() - started)
                        statuses[f"{name} {response.status_code}"] += 1

        threads = [threading.Thread(target=client, args=(t, i)) for i, t in enumerate(tokens)]
        for thread in threads:
            thread.start()
        health: list[float] = []

        def poll_health() -> None:
            with httpx.Client(base_url=base, timeout=120) as http:
                while not stop.is_set():
                    started = time.perf_counter()
                    http.get("/healthz")
                    health.append(time.perf_counter() - started)
                    stop.wait(0.2)

        health_thread = threading.Thread(target=poll_health)
        health_thread.start()
        loaded = _webhooks(base, seconds, 2_000_000)
        stop.set()
        for thread in [*threads, health_thread]:
            thread.join()
        # One worker: uvicorn runs the app in the process it started (taskset execs it).
        peak = _peak_rss_mb(process.pid)
    finally:
        stop_server(process)
    return {
        "units": units,
        "numbers": NUMBERS,
        "seconds_per_phase": seconds,
        "webhooks_idle": idle,
        "webhooks_loaded": loaded,
        "p99_loaded_vs_idle": round(loaded["p99_ms"] / idle["p99_ms"], 2),
        "healthz_loaded": _percentiles(health),
        "heavy_reported_question": _percentiles(heavy["reported"]),
        "heavy_allowed_question": _percentiles(heavy["allowed"]),
        "heavy_answers": dict(sorted(statuses.items())),
        "server_peak_rss_mb": peak,
    }
