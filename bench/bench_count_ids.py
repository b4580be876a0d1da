"""CPU of live counting per status update, without HTTP: `IngestService.count_ids` on pending
bodies in a SQLite inbox (the counting child's entry point, `ingest/counter.py`), 100 status
updates each or, with `--per-body 1`, one each (what a single-status webhook costs the child).

The bodies (generated history over 20 registered numbers) are inserted sealed and pending, then
counted in batches of `--batch` bodies, as the child counts what one batch window gathered.
Prints the CPU (process time, so a loaded machine changes it less than a rate) per status update.

    .venv/bin/python bench/bench_count_ids.py --bodies 500 --batch 60
    .venv/bin/python bench/bench_count_ids.py --gc child   # the child's collector settings
    .venv/bin/python bench/bench_count_ids.py --profile    # cProfile, by own time
    .venv/bin/python bench/bench_count_ids.py --per-body 1 --bodies 20000 --batch 500
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import hashlib
import json
import pstats
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from generate import bodies, phone_number_id, single_status_bodies  # noqa: E402
from wastats.domain import accounts, numbers  # noqa: E402
from wastats.ingest.identity import CustomerHasher  # noqa: E402
from wastats.ingest.pipeline import Pipeline  # noqa: E402
from wastats.ingest.service import IngestService  # noqa: E402
from wastats.sealing import BodySealer  # noqa: E402
from wastats.store import inbox as inbox_repo  # noqa: E402
from wastats.store.db import Database  # noqa: E402
from wastats.store.migrate import upgrade  # noqa: E402

SEALER = BodySealer([b"bench-secret-key-0123456789abcdef"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bodies", type=int, default=500)
    parser.add_argument("--batch", type=int, default=60, help="bodies per count_ids call")
    parser.add_argument("--per-body", type=int, choices=[1, 100], default=100)
    parser.add_argument("--gc", choices=["default", "child"], default="default")
    parser.add_argument("--profile", action="store_true")
    parser.add_argument(
        "--sort",
        choices=["tottime", "cumulative"],
        default="tottime",
        help="order of the --profile listing",
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as work:
        url = f"sqlite:///{work}/count.db"
        upgrade(url)
        db = Database(url)
        stream = (
            single_status_bodies(args.bodies, numbers=20, seed=3)
            if args.per_body == 1
            else bodies(args.bodies * 100, per_body=100, numbers=20, seed=3)
        )
        raws = [json.dumps(b, separators=(",", ":")).encode() for b in stream]
        with db.write() as conn:
            creds = accounts.create_account(conn, name="Bench", timezone="UTC", now=0)
            for i in range(20):
                numbers.add_number(conn, client_id=creds.client_id,
                                   whatsapp=f"97230000{i:04d}", phone_number_id=phone_number_id(i),
                                   waba_id=None, display_name=None, business_name=None,
                                   coexistence=False, now=0)  # fmt: skip
            inbox_repo.insert_bodies(
                conn,
                [inbox_repo.NewBody(hashlib.sha256(r).hexdigest(), r, "webhook", 0) for r in raws],
                SEALER,
            )
        with db.read() as conn:
            ids = inbox_repo.pending_ids(conn, len(raws) + 1)
        service = IngestService(db, Pipeline(CustomerHasher(b"k" * 32)), SEALER, retention_days=30)
        if args.gc == "child":
            gc.freeze()
            gc.set_threshold(10_000, 10, 10)
        profile = cProfile.Profile() if args.profile else None
        started = time.process_time()
        wall = time.perf_counter()
        if profile is not None:
            profile.enable()
        for start in range(0, len(ids), args.batch):
            service.count_ids(ids[start : start + args.batch])
        if profile is not None:
            profile.disable()
        cpu = time.process_time() - started
        wall = time.perf_counter() - wall
        db.dispose()
    statuses = service.stats.statuses
    print(json.dumps({"bodies": len(ids), "batch": args.batch, "statuses": statuses,
                      "cpu_seconds": round(cpu, 3),
                      "cpu_us_per_status": round(cpu / statuses * 1e6, 1),
                      "cpu_us_per_body": round(cpu / len(ids) * 1e6, 1),
                      "wall_us_per_body": round(wall / len(ids) * 1e6, 1)}))  # fmt: skip
    if profile is not None:
        pstats.Stats(profile).sort_stats(args.sort).print_stats(40)


if __name__ == "__main__":
    main()
