"""Statistics at scale: one account with 1,000 numbers and 24 months of counted units.

How the data is made: counted units (the counting pipeline's output: one per incoming
session, billable message or CBP conversation) are generated directly into `counted_units`
(the pipeline keeps message units in their message's row instead, read the same way),
spread evenly over the numbers, the 24 months and the buckets, with customers drawn from a
pool; the monthly rollups are computed from exactly those units, as the pipeline would keep
them. (Feeding 10 million events through webhooks would measure ingestion, not reads, and take
longer than a benchmark run should.)

Measured with wrk over one connection (latency, not queueing): the compatible
`getConversationsStatistics` for all numbers over the 24 months, `/v1/stats` monthly (account
zone: the rollup path), and a bare authenticated-less GET on the same server as the baseline.
The naive way (aggregating the counted units in SQL for the same answer) is timed in-process.
"""

from __future__ import annotations

import os
import random
import re
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from bench_http import HERE, _pin, start_server, stop_server

NUMBERS = 1000
MONTHS = 24
START = int(datetime(2024, 1, 1, tzinfo=UTC).timestamp())
SPAN = 730 * 86400
BUCKETS = [("incoming", "incoming", ""), ("marketing", "marketing", "regular"),
           ("service", "utility", "regular"), ("service", "authentication", "regular"),
           ("none", "service", "free_customer_service")]  # fmt: skip
ZONE = "Asia/Jerusalem"


def populate(path: Path, units: int) -> None:
    """Create the schema, the account, its 1,000 numbers, `units` counted units and rollups."""
    wastats = Path(sys.executable).with_name("wastats")
    env = {**os.environ, "WASTATS_DATABASE_URL": f"sqlite:///{path}"}
    subprocess.run([str(wastats), "db", "upgrade"], env=env, check=True, capture_output=True)
    zone = ZoneInfo(ZONE)
    rng = random.Random(units)
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=OFF")
    conn.execute("PRAGMA cache_size=-262144")
    conn.execute("BEGIN")
    conn.execute(
        "INSERT INTO accounts (client_id, secret_hash, name, timezone, created_at) "
        "VALUES ('bench', 'x', 'Bench', ?, 0)",
        (ZONE,),
    )
    numbers = [f"2{i:014d}" for i in range(NUMBERS)]
    conn.executemany(
        "INSERT INTO business_numbers (phone_number_id, account_id, whatsapp, coexistence, "
        "created_at) VALUES (?, 1, ?, 0, 0)",
        [(n, f"9725{i:08d}") for i, n in enumerate(numbers)],
    )
    rollups: Counter[tuple[str, int, str, str, str]] = Counter()
    month_cache: dict[int, int] = {}
    chunk: list[tuple[Any, ...]] = []
    for i in range(units):
        number = numbers[i % NUMBERS]
        ts = START + rng.randrange(SPAN)
        bucket, category, pricing = BUCKETS[i % len(BUCKETS)]
        hour = ts // 3600
        month = month_cache.get(hour)
        if month is None:
            local = datetime.fromtimestamp(ts, zone)
            month = month_cache[hour] = local.year * 100 + local.month
        rollups[(number, month, bucket, category, pricing)] += 1
        chunk.append((number, f"X:{i}", "message", ts, bucket, category, pricing, "PMP",
                      f"{rng.randrange(200_000):032x}", "IL"))  # fmt: skip
        if len(chunk) == 100_000:
            conn.executemany("INSERT INTO counted_units VALUES (?,?,?,?,?,?,?,?,?,?)", chunk)
            chunk.clear()
    if chunk:
        conn.executemany("INSERT INTO counted_units VALUES (?,?,?,?,?,?,?,?,?,?)", chunk)
    conn.executemany(
        "INSERT INTO monthly_counts VALUES (?,?,?,?,?,?)",
        [(*key, value) for key, value in rollups.items()],
    )
    conn.executemany(
        "INSERT INTO number_activity VALUES (?, ?, 0)", [(n, START + SPAN) for n in numbers]
    )
    # The account-wide sums the pipeline keeps beside the per-number rollups.
    conn.execute(
        "INSERT INTO account_monthly_counts SELECT 1, month, bucket, category, pricing_type, "
        "SUM(units) FROM monthly_counts GROUP BY month, bucket, category, pricing_type"
    )
    conn.execute("COMMIT")
    conn.execute("ANALYZE")
    conn.close()


def issue_token(path: Path) -> str:
    from wastats.domain import auth
    from wastats.store.db import Database

    db = Database(f"sqlite:///{path}")
    try:
        with db.write() as conn:
            conn.exec_driver_sql(
                "UPDATE accounts SET secret_hash = ? WHERE id = 1", (auth.hash_secret("s"),)
            )
            issued = auth.issue_token(
                conn, client_id="bench", client_secret="s", ip="bench", now=int(time.time()),
                lifetime=86400, lockout=auth.LockoutPolicy(10, 60, 60),
            )  # fmt: skip
    finally:
        db.dispose()
    assert isinstance(issued, auth.IssuedToken)
    return issued.access_token


def naive_seconds(path: Path, repeat: int = 3) -> float:
    """The same monthly answer by aggregating counted units in SQL (UTC months: SQLite has no
    time zones, which flatters the naive way), best of `repeat`."""
    conn = sqlite3.connect(path)
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        conn.execute(
            "SELECT strftime('%Y%m', u.ts, 'unixepoch') AS month, u.bucket, count(*) "
            "FROM counted_units u JOIN business_numbers b "
            "ON b.phone_number_id = u.phone_number_id WHERE b.account_id = 1 "
            "AND u.bucket IN ('marketing', 'service', 'incoming') GROUP BY month, u.bucket"
        ).fetchall()
        best = min(best, time.perf_counter() - start)
    conn.close()
    return best


def wrk_get(url: str, token: str | None, seconds: int = 5) -> dict[str, float]:
    script = HERE / "wrk_get.lua"
    env = {**os.environ, "TOKEN": token or ""}
    command = _pin("1") + ["wrk", "-t1", "-c1", f"-d{seconds}s", "--latency", "-s", str(script),
                           url]  # fmt: skip
    out = subprocess.run(command, env=env, check=True, capture_output=True, text=True).stdout

    def ms(p: str) -> float:
        m = re.search(rf"\s{p}%\s+([\d.]+)(us|ms|s)", out)
        assert m, out
        value, unit = float(m.group(1)), m.group(2)
        return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value

    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    assert not errors, out
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    return {"p50_ms": ms("50"), "p99_ms": ms("99"), "requests_per_second": rps}


def bench(work: Path, units: int) -> dict[str, Any]:
    path = work / f"stats-{units}.db"
    started = time.perf_counter()
    populate(path, units)
    populate_seconds = time.perf_counter() - started
    token = issue_token(path)
    port = 18500 + units % 97
    server = start_server(f"sqlite:///{path}", port, 1, work / f"stats-server-{units}.log")
    base = f"http://127.0.0.1:{port}"
    try:
        wrk_get(f"{base}/healthz", None, 2)  # warm-up
        bare = wrk_get(f"{base}/bench/bare-get", None)
        compatible = wrk_get(
            f"{base}/api/whatsapp/getConversationsStatistics?start_date=012024&end_date=122025",
            token,
        )
        modern = wrk_get(f"{base}/v1/stats?from=2024-01&to=2025-12&granularity=month", token)
    finally:
        stop_server(server)
    naive = naive_seconds(path)
    return {
        "units": units,
        "numbers": NUMBERS,
        "months": MONTHS,
        "populate_seconds": round(populate_seconds, 1),
        "bare": bare,
        "compatible": compatible,
        "v1_monthly": modern,
        "compatible_p50_vs_bare": round(compatible["p50_ms"] / bare["p50_ms"], 2),
        "v1_p50_vs_bare": round(modern["p50_ms"] / bare["p50_ms"], 2),
        "naive_sql_ms": round(naive * 1000, 1),
        "naive_vs_compatible_p50": round(naive * 1000 / compatible["p50_ms"], 1),
    }
