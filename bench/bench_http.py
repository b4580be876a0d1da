"""HTTP webhook ingest: signed POSTs through the real server, against two baselines.

The server (uvicorn, one worker, pinned to core 0 when `taskset` exists) serves the wastats app
with two extra routes (bare_app.py): `POST /bench/raw`, a raw ASGI app with no framework (the
stack's limit), and `POST /bench/bare`, a route through FastAPI and wastats' middleware; both only
read the body and answer 200. `wrk` (pinned to core 1) posts the same kind of pre-signed,
all-distinct bodies to all three, 32 connections. Reported: requests/s, p50/p99 latency, the
ratios webhook/raw and webhook/bare, status updates per second accepted durably, and how long
the server then needed to count everything (drain). With WASTATS_COUNTING=process (the default)
the counting child inherits the server's pinning to core 0.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from generate import bodies, single_status_bodies
from wastats.whatsapp.signature import sign

HERE = Path(__file__).resolve().parent
SECRET = "bench-app-secret"
KEY = "bench-secret-key-0123456789abcdef"


def write_bodies(path: Path, requests: int, per_body: int, seed: int) -> None:
    """At least `requests` distinct signed bodies of `per_body` status updates each.

    One status per POST is what a low-volume number gets from Meta: each update its own body
    (`single_status_bodies`). Before 2026-12-07 these bodies came from `bodies(per_body=1)`,
    which keeps a message's 2 or 3 updates in one body (2.7 on average) and gave a third as many
    bodies as asked, so a run faster than ~4,000 req/s posted bodies again (the inbox dedupes
    them: cheaper, flattering).
    """
    stream = (
        single_status_bodies(requests, seed=seed, numbers=20)
        if per_body == 1
        else bodies(requests * per_body, per_body=per_body, seed=seed, numbers=20)
    )
    with path.open("w") as out:
        for body in stream:
            raw = json.dumps(body, separators=(",", ":"))
            out.write(f"{sign(SECRET.encode(), raw.encode())}\t{raw}\n")


def _pin(cores: str) -> list[str]:
    return ["taskset", "-c", cores] if shutil.which("taskset") else []


def start_server(url: str, port: int, workers: int, log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "WASTATS_DATABASE_URL": url, "WASTATS_META_APP_SECRET": SECRET,
           "WASTATS_SECRET_KEY": KEY, "WASTATS_LOG_LEVEL": "WARNING",
           "WASTATS_LOG_FORMAT": "text", "PYTHONPATH": str(HERE)}  # fmt: skip
    wastats = Path(sys.executable).with_name("wastats")
    subprocess.run([str(wastats), "db", "upgrade"], env=env, check=True, capture_output=True)
    # As `wastats serve` runs uvicorn (cli/main.py): no access log of uvicorn's, no `Server`
    # header, and no proxy-headers middleware of uvicorn's around the app (the app applies
    # X-Forwarded-For itself). The loop and HTTP parser are uvicorn's "auto" in both: uvloop and
    # httptools, which the project's dependencies install.
    command = [sys.executable, "-m", "uvicorn", "bare_app:create", "--factory", "--host",
               "127.0.0.1", "--port", str(port), "--workers", str(workers), "--no-access-log",
               "--no-proxy-headers", "--no-server-header", "--log-level", "warning"]  # fmt: skip
    pin = _pin("0") if workers == 1 else []
    process = subprocess.Popen(pin + command, env=env, cwd=HERE, stdout=log.open("wb"),
                               stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return process
        except httpx.HTTPError:
            pass
        if process.poll() is not None:
            break
        time.sleep(0.2)
    raise RuntimeError(f"server did not start: {log.read_text()[-2000:]}")


def stop_server(process: subprocess.Popen[bytes]) -> None:
    os.killpg(process.pid, 15)
    try:
        process.wait(30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, 9)
        process.wait(10)


def run_wrk(url: str, bodies_file: Path, seconds: int, connections: int = 32) -> dict[str, Any]:
    command = _pin("1") + ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency",
                           "-s", str(HERE / "wrk_post.lua"), url]  # fmt: skip
    out = subprocess.run(command, env={**os.environ, "BODIES": str(bodies_file)}, check=True,
                         capture_output=True, text=True).stdout  # fmt: skip
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    total = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)

    def percentile(p: str) -> float:
        m = re.search(rf"\s{p}%\s+([\d.]+)(us|ms|s)", out)
        assert m, out
        value, unit = float(m.group(1)), m.group(2)
        return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value

    non_2xx = int(errors.group(1)) if errors else 0
    return {"requests_per_second": rps, "requests": total, "p50_ms": percentile("50"),
            "p99_ms": percentile("99"), "non_2xx": non_2xx}  # fmt: skip


def drain_seconds(
    port: int, limit: float = float(os.environ.get("WASTATS_BENCH_DRAIN_LIMIT", "600"))
) -> float:
    """Seconds until the server has no pending inbox body (everything accepted is counted)."""
    start = time.monotonic()
    while time.monotonic() - start < limit:
        health = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=10).json()
        if health["inbox"]["pending"] == 0:
            return time.monotonic() - start
        time.sleep(0.1)
    return float("inf")


def process_cpu(pid: int) -> dict[str, float]:
    """CPU seconds (user + system) used so far by the server process and by each of its child
    processes (the counting child), read from /proc: what a request costs each of them is the
    difference over a run divided by its requests."""
    tick = os.sysconf("SC_CLK_TCK")

    def seconds(path: str) -> float:
        fields = Path(path).read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / tick  # utime, stime

    used = {"server": seconds(f"/proc/{pid}/stat")}
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    for child in children:
        with contextlib.suppress(OSError):
            used[f"child {child}"] = seconds(f"/proc/{child}/stat")
    return used


def cpu_per_request(
    before: dict[str, float], after: dict[str, float], requests: int
) -> dict[str, float]:
    """Microseconds of CPU per request, per process (a process started during the run counts
    from zero)."""
    return {name: round((used - before.get(name, 0.0)) / max(requests, 1) * 1e6, 1)
            for name, used in after.items()}  # fmt: skip


def bench(url: str, work: Path, *, per_body: int, seconds: int, workers: int = 1) -> dict[str, Any]:
    """The raw app runs before and after the webhook, and the webhook's ratio is taken to the
    higher of its two rates: on a shared machine the speed drifts within a minute, and a raw
    rate measured only before could flatter or wrong the webhook by as much as the drift."""
    if not shutil.which("wrk"):
        raise RuntimeError("wrk is needed for the HTTP benchmark: apt-get install wrk")
    port = 18000 + per_body + workers
    expected_rps = 6000 if per_body == 1 else 600
    files = {}
    for name, seed in (("raw", 4), ("bare", 1), ("webhook", 2), ("warmup", 3)):
        files[name] = work / f"{name}-{per_body}.tsv"
        write_bodies(files[name], int(expected_rps * (seconds + 2) * 1.5), per_body, seed)
    server = start_server(url, port, workers, work / f"server-{per_body}-{workers}.log")
    base = f"http://127.0.0.1:{port}"
    try:
        run_wrk(f"{base}/webhooks/whatsapp", files["warmup"], 2)
        drain_seconds(port)
        raw = run_wrk(f"{base}/bench/raw", files["raw"], seconds)
        bare = run_wrk(f"{base}/bench/bare", files["bare"], seconds)
        cpu_before = process_cpu(server.pid) if workers == 1 else {}
        hook = run_wrk(f"{base}/webhooks/whatsapp", files["webhook"], seconds)
        drain = drain_seconds(port)
        cpu_after = process_cpu(server.pid) if workers == 1 else {}
        raw_after = run_wrk(f"{base}/bench/raw", files["raw"], seconds)
    finally:
        stop_server(server)
    accepted = hook["requests_per_second"] * per_body
    raw_rate = max(raw["requests_per_second"], raw_after["requests_per_second"])
    return {
        "statuses_per_body": per_body,
        "workers": workers,
        "raw": raw,
        "raw_after": raw_after,
        "bare": bare,
        "webhook": hook,
        "ratio_to_raw": round(hook["requests_per_second"] / raw_rate, 3),
        "ratio_to_bare": round(hook["requests_per_second"] / bare["requests_per_second"], 3),
        "statuses_accepted_per_second": round(accepted),
        "drain_seconds_after_run": round(drain, 2),
        "statuses_counted_per_second": round(hook["requests"] * per_body / (seconds + drain)),
        # One worker: the server process (event loop, inbox writer) and its counting child,
        # over the webhook run and its drain.
        "cpu_us_per_request": cpu_per_request(cpu_before, cpu_after, hook["requests"]),
    }
