"""Benchmark: the first sync of Meta's record, 10 WABAs x 20 numbers x 365 days, against the
fake Graph API (a real HTTP server on 127.0.0.1, in this process' thread), into a new SQLite
database (or --database-url for PostgreSQL).

    .venv/bin/python bench/bench_meta_sync.py                 # 10 x 20 x 365 days, 6 points/day
    .venv/bin/python bench/bench_meta_sync.py --wabas 2 --numbers 5 --per-day 2   # smoke

Reports wall time, stored rows per second and peak memory (max RSS) of the whole process
(fake included, so an upper bound for the sync). docs/benchmarks.md records a run.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import threading
import time
from pathlib import Path

import uvicorn

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

from wastats.meta.fake_graph import create_fake_graph, demo_state  # noqa: E402
from wastats.meta.graph import GraphClient  # noqa: E402
from wastats.meta.sync import sync_all  # noqa: E402
from wastats.store import meta as repo  # noqa: E402
from wastats.store.db import Database  # noqa: E402
from wastats.store.migrate import upgrade  # noqa: E402

NOW = 1_796_212_800  # 2026-12-02T12:00:00Z


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--wabas", type=int, default=10)
    parser.add_argument("--numbers", type=int, default=20)
    parser.add_argument("--per-day", type=int, default=6)
    parser.add_argument("--database-url")
    parser.add_argument("--port", type=int, default=8799)
    args = parser.parse_args()
    state = demo_state(token="bench", wabas=args.wabas, numbers=args.numbers, per_day=args.per_day)
    state.page_size = 5000
    server = uvicorn.Server(
        uvicorn.Config(create_fake_graph(state), host="127.0.0.1", port=args.port,
                       log_level="warning")
    )  # fmt: skip
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    with tempfile.TemporaryDirectory() as tmp:
        url = args.database_url or f"sqlite:///{tmp}/bench.db"
        upgrade(url)
        db = Database(url)
        with db.write() as conn:
            for waba in state.wabas:
                repo.ensure_state(conn, waba, None, 0)
        started = time.perf_counter()
        with GraphClient(f"http://127.0.0.1:{args.port}", "v24.0", "bench") as client:
            outcomes = sync_all(db, client, now=lambda: NOW, interval=3600)
        wall = time.perf_counter() - started
        with db.read() as conn:
            rows = repo.count_reported(conn)
        db.dispose()
    server.should_exit = True
    thread.join(10)
    result = {
        "wabas": args.wabas,
        "numbers_per_waba": args.numbers,
        "points_per_number_day": args.per_day,
        "requests": len(state.requests),
        "errors": [o.error for o in outcomes if o.error],
        "rows": rows,
        "wall_seconds": round(wall, 2),
        "rows_per_second": round(rows / wall),
        "max_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
