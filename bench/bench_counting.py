"""Counting throughput on PostgreSQL: one process against N processes, on the same load.

The bodies (generated history, 100 statuses per body, spread over `--numbers` registered numbers)
are stored in the inbox as pending first, so only counting is measured: then `--processes`
processes each run the ingest service's sweep (`IngestService.sweep`, the code path that counts
pending rows in a live service) until nothing is pending. Each run starts on a fresh database.

    .venv/bin/python bench/bench_counting.py --statuses 200000 --numbers 24 --processes 1 2
    .venv/bin/python bench/bench_counting.py --cores 0 ...   # pin the counting processes
    .venv/bin/python bench/bench_counting.py --partitions 1 ...   # one global lock, as before

Prints JSON: per run, the seconds from the start of the processes to the last body counted and
status updates counted per second.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing
import os
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))

import psycopg  # noqa: E402

from generate import bodies, phone_number_id  # noqa: E402
from pgcluster import PostgresCluster  # noqa: E402
from wastats.domain import accounts, numbers  # noqa: E402
from wastats.ingest.identity import CustomerHasher  # noqa: E402
from wastats.ingest.pipeline import Pipeline  # noqa: E402
from wastats.ingest.service import IngestService  # noqa: E402
from wastats.store import inbox as inbox_repo  # noqa: E402
from wastats.store import locks as locks_repo  # noqa: E402
from wastats.store.db import Database  # noqa: E402
from wastats.store.migrate import upgrade  # noqa: E402

SECRET = b"bench-secret-key-0123456789abcdef"


def prepare(url: str, raws: list[bytes], count: int) -> None:
    upgrade(url)
    db = Database(url)
    try:
        with db.write() as conn:
            creds = accounts.create_account(conn, name="Bench", timezone="UTC", now=0)
            for i in range(count):
                numbers.add_number(conn, client_id=creds.client_id,
                                   whatsapp=f"97230000{i:04d}", phone_number_id=phone_number_id(i),
                                   waba_id=None, display_name=None, business_name=None,
                                   coexistence=False, now=0)  # fmt: skip
        for start in range(0, len(raws), 1000):
            with db.write() as conn:
                inbox_repo.insert_bodies(
                    conn,
                    [inbox_repo.NewBody(hashlib.sha256(r).hexdigest(), r, "webhook", 0)
                     for r in raws[start : start + 1000]],
                )  # fmt: skip
    finally:
        db.dispose()


def count(url: str, cores: str | None, go: Any, partitions: int | None) -> None:
    if partitions:
        # 1: every number in one partition, i.e. the single global lock counting had before.
        locks_repo.PARTITIONS = partitions
    if cores:
        os.sched_setaffinity(0, {int(c) for c in cores.split(",")})
    db = Database(url, pool_size=2)
    service = IngestService(db, Pipeline(CustomerHasher(SECRET)), clock=lambda: 10**10)
    go.wait()
    service.sweep(older_than=0)
    db.dispose()


def run(cluster: PostgresCluster, raws: list[bytes], args: argparse.Namespace, n: int) -> float:
    name = f"bench_counting_{n}"
    with psycopg.connect(cluster.url().replace("+psycopg", ""), autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}"')
        admin.execute(f'CREATE DATABASE "{name}"')
    url = cluster.url(name)
    prepare(url, raws, args.numbers)
    context = multiprocessing.get_context("spawn")
    go = context.Event()
    processes = [
        context.Process(target=count, args=(url, args.cores, go, args.partitions)) for _ in range(n)
    ]
    for process in processes:
        process.start()
    time.sleep(2)  # let the processes import and connect: not part of counting
    started = time.monotonic()
    go.set()
    for process in processes:
        process.join()
    elapsed = time.monotonic() - started
    with psycopg.connect(url.replace("+psycopg", "")) as conn:
        row = conn.execute("SELECT count(*) FROM inbox WHERE state = 'pending'").fetchone()
        assert row is not None
        assert row[0] == 0, "bodies left pending"
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--statuses", type=int, default=200_000)
    parser.add_argument("--numbers", type=int, default=24)
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--cores", default=None, help="CPU list for the counting processes")
    parser.add_argument(
        "--partitions",
        type=int,
        default=None,
        help="lock partitions (1 = one global lock, as before; default: store.locks.PARTITIONS)",
    )
    args = parser.parse_args()
    raws = [
        json.dumps(b, separators=(",", ":")).encode()
        for b in bodies(args.statuses, numbers=args.numbers)
    ]
    cluster = PostgresCluster()
    cluster.start()
    results: dict[str, Any] = {"statuses": args.statuses, "numbers": args.numbers}
    try:
        for n in args.processes:
            seconds = run(cluster, raws, args, n)
            results[f"{n}_processes"] = {
                "seconds": round(seconds, 2),
                "statuses_per_s": round(args.statuses / seconds),
            }
            print(json.dumps(results), flush=True)
    finally:
        cluster.destroy()
    first = results[f"{args.processes[0]}_processes"]["statuses_per_s"]
    for n in args.processes[1:]:
        results[f"{n}_vs_{args.processes[0]}"] = round(
            results[f"{n}_processes"]["statuses_per_s"] / first, 2
        )
    print(json.dumps(results))


if __name__ == "__main__":
    main()
