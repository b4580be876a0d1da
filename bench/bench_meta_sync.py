"""Benchmark: the first sync of Meta's record, 10 WABAs x 20 numbers x 365 days, against the
fake Graph API (a real HTTP server on 127.0.0.1, in a process of its own), into a new SQLite
database (or --database-url for PostgreSQL). Part of `bench/run.py --only meta`; also runs alone:

    .venv/bin/python bench/bench_meta_sync.py                 # 10 x 20 x 365 days, 6 points/day
    .venv/bin/python bench/bench_meta_sync.py --quick         # 2 x 10 x 365 days

Reports wall time, stored rows per second and the peak memory (VmHWM) of the syncing process.
The fake runs in a forked child, so its memory (it generates every data point it serves) is
not counted: the figure is the sync's own (with the interpreter and the libraries it loaded).
docs/benchmarks.md records a run.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import socket
import sys
import tempfile
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

NOW = 1_796_212_800  # 2026-12-02T12:00:00Z
FULL = {"wabas": 10, "numbers": 20, "per_day": 6}
QUICK = {"wabas": 2, "numbers": 10, "per_day": 6}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _serve(port: int, wabas: int, numbers: int, per_day: int, pipe: Connection) -> None:
    """The fake Graph API, in the child: serves until told to stop, then reports its request
    count (a check that paging happened as expected)."""
    import threading

    import uvicorn

    from wastats.meta.fake_graph import create_fake_graph, demo_state

    state = demo_state(token="bench", wabas=wabas, numbers=numbers, per_day=per_day)
    state.page_size = 5000
    config = uvicorn.Config(
        create_fake_graph(state), host="127.0.0.1", port=port, log_level="warning"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started and thread.is_alive():
        time.sleep(0.02)
    pipe.send("ready")
    pipe.recv()  # stop
    server.should_exit = True
    thread.join(10)
    pipe.send(len(state.requests))


def _peak_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


def bench(
    *, wabas: int, numbers: int, per_day: int, database_url: str | None = None
) -> dict[str, Any]:
    """One first sync; the figures as a dict (see the module docstring)."""
    from wastats.meta.graph import GraphClient
    from wastats.meta.sync import sync_all
    from wastats.store import meta as repo
    from wastats.store.db import Database
    from wastats.store.migrate import upgrade

    port = _free_port()
    ours, theirs = multiprocessing.get_context("fork").Pipe()
    fake = multiprocessing.get_context("fork").Process(
        target=_serve, args=(port, wabas, numbers, per_day, theirs), daemon=True
    )
    fake.start()
    try:
        assert ours.recv() == "ready"
        with tempfile.TemporaryDirectory() as tmp:
            url = database_url or f"sqlite:///{tmp}/bench.db"
            upgrade(url)
            db = Database(url)
            with db.write() as conn:
                for w in range(wabas):
                    repo.ensure_state(conn, str(1000 + w), None, 0)
            before = _peak_kib()
            started = time.perf_counter()
            with GraphClient(f"http://127.0.0.1:{port}", "v24.0", "bench") as client:
                outcomes = sync_all(db, client, now=lambda: NOW, interval=3600)
            wall = time.perf_counter() - started
            with db.read() as conn:
                rows = repo.count_reported(conn)
            db.dispose()
        ours.send("stop")
        requests = ours.recv()
    finally:
        fake.join(15)
        if fake.is_alive():
            fake.terminate()
    return {
        "wabas": wabas,
        "numbers_per_waba": numbers,
        "days": 365,
        "points_per_number_day": per_day,
        "requests": requests,
        "errors": [o.error for o in outcomes if o.error],
        "rows": rows,
        "wall_seconds": round(wall, 2),
        "rows_per_second": round(rows / wall),
        "peak_memory_mib": round(_peak_kib() / 1024, 1),
        "peak_memory_before_sync_mib": round(before / 1024, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="2 WABAs x 10 numbers")
    parser.add_argument("--wabas", type=int)
    parser.add_argument("--numbers", type=int)
    parser.add_argument("--per-day", type=int)
    parser.add_argument("--database-url")
    args = parser.parse_args()
    size = dict(QUICK if args.quick else FULL)
    for key in ("wabas", "numbers", "per_day"):
        if getattr(args, key) is not None:
            size[key] = getattr(args, key)
    print(json.dumps(bench(**size, database_url=args.database_url), indent=2))


if __name__ == "__main__":
    main()
