"""Counting throughput on PostgreSQL: one process against N processes, on the same load.

The bodies (generated history, 100 statuses per body, spread over `--numbers` registered numbers)
are stored in the inbox as pending first, so only counting is measured: then `--processes`
processes each run the ingest service's sweep (`IngestService.sweep`, the code path that counts
pending rows in a live service) until nothing is pending. Each run starts on a fresh database.

    .venv/bin/python bench/bench_counting.py --statuses 200000 --numbers 24 --processes 1 2
    .venv/bin/python bench/bench_counting.py --cores 0 ...   # pin the counting processes
    .venv/bin/python bench/bench_counting.py --partitions 1 ...   # one global lock, as before
    .venv/bin/python bench/bench_counting.py --mode own ...   # each process its own batches
    .venv/bin/python bench/bench_counting.py --citus ...   # coordinator + 2 workers

`--mode sweep` (the default): every process sweeps the same pending rows, as processes
restarted on a backlog do. `--mode own`: the rows are dealt out to the processes first (process
i gets every n-th body) and each counts its own in batches of 1,000, as live workers count what
they accepted themselves: every batch of every process spans all the numbers.

Prints JSON: per run, the seconds from the start of the processes to the last body counted,
status updates counted per second, the CPU seconds spent per 1,000 status updates by the counting
processes and by PostgreSQL (its postmaster's own and reaped children's times, plus the live
backends', from /proc), and what the counting backends were seen waiting for (sampled from
`pg_stat_activity` every 20 ms: `Lock:advisory`, `Lock:transactionid` (a row another transaction
holds), `Client:ClientRead` (waiting for Python), none = running). The waits are the answer to
"what still serialises" (docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing
import os
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))

import psycopg  # noqa: E402

from generate import bodies, phone_number_id  # noqa: E402
from pgcluster import CitusCluster, PostgresCluster  # noqa: E402
from wastats.domain import accounts, numbers  # noqa: E402
from wastats.ingest.identity import CustomerHasher  # noqa: E402
from wastats.ingest.pipeline import Pipeline  # noqa: E402
from wastats.ingest.service import IngestService  # noqa: E402
from wastats.sealing import BodySealer  # noqa: E402
from wastats.store import citus  # noqa: E402
from wastats.store import inbox as inbox_repo  # noqa: E402
from wastats.store import locks as locks_repo  # noqa: E402
from wastats.store.db import Database  # noqa: E402
from wastats.store.migrate import upgrade  # noqa: E402

SECRET = b"bench-secret-key-0123456789abcdef"
SEALER = BodySealer([SECRET])


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
                    SEALER,
                )  # fmt: skip
    finally:
        db.dispose()


def count(
    url: str, cores: str | None, go: Any, partitions: int | None, cpu: Any, own: list[int] | None
) -> None:
    if partitions:
        # 1: every number in one partition, i.e. the single global lock counting had before.
        locks_repo.PARTITIONS = partitions
    if cores:
        os.sched_setaffinity(0, {int(c) for c in cores.split(",")})
    db = Database(url, pool_size=2)
    service = IngestService(db, Pipeline(CustomerHasher(SECRET)), SEALER, clock=lambda: 10**10)
    with db.read() as conn:  # connected, and every module imported: ready
        conn.exec_driver_sql("SELECT 1")
    cpu.put("ready")
    go.wait()
    before, started = os.times(), time.monotonic()
    if own is None:
        service.sweep(older_than=0)
    else:  # as the processor thread does with what this process's writer committed
        for first in range(0, len(own), service.max_batch):
            service._process_ids(own[first : first + service.max_batch])
    after, elapsed, finished = os.times(), time.monotonic() - started, time.time()
    db.dispose()
    seconds = after.user - before.user + after.system - before.system
    cpu.put((seconds, service.stats.statuses, elapsed, finished))


Server = PostgresCluster | CitusCluster


def postgres_cpu(server: Server) -> float:
    """CPU seconds PostgreSQL (every node of a Citus cluster) has spent so far."""
    nodes = server.nodes if isinstance(server, CitusCluster) else [server]
    return sum(_node_cpu(node) for node in nodes)


def _node_cpu(cluster: PostgresCluster) -> float:
    """The postmaster's own and its reaped children's (backends that have exited) CPU seconds,
    plus its live children's."""
    tick = os.sysconf("SC_CLK_TCK")
    postmaster = int((cluster.data / "postmaster.pid").read_text().split()[0])

    def fields(pid: int) -> list[str]:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat[stat.rindex(")") + 2 :].split()

    own = fields(postmaster)
    total = sum(int(x) for x in own[11:15])  # utime stime cutime cstime
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            child = fields(int(entry.name))
        except (FileNotFoundError, ProcessLookupError):
            continue  # exited meanwhile: in the postmaster's cutime by the next read
        if int(child[1]) == postmaster:  # ppid
            total += sum(int(x) for x in child[11:13])
    return total / tick


def sample_waits(url: str, database: str, stop: Any, seen: Counter[str]) -> None:
    """Every 20 ms until `stop`: what each counting backend is waiting for, if anything."""
    with psycopg.connect(url.replace("+psycopg", ""), autocommit=True) as conn:
        while not stop.wait(0.02):
            for kind, event in conn.execute(
                "SELECT wait_event_type, wait_event FROM pg_stat_activity "
                "WHERE datname = %s AND pid <> pg_backend_pid() AND state <> 'idle'",
                (database,),
            ):
                seen[f"{kind}:{event}" if kind else "running"] += 1


def run(server: Server, raws: list[bytes], args: argparse.Namespace, n: int) -> dict[str, Any]:
    name = f"bench_counting_{args.mode}_{args.numbers}_{n}"
    if isinstance(server, CitusCluster):
        server.create_database(name)
        upgrade(server.url(name))
        db = Database(server.url(name))
        try:
            citus.distribute(db)  # as docs/deployment.md says, before any data
        finally:
            db.dispose()
    else:
        with psycopg.connect(server.url().replace("+psycopg", ""), autocommit=True) as admin:
            admin.execute(f'CREATE DATABASE "{name}"')
    url = server.url(name)
    prepare(url, raws, args.numbers)
    with psycopg.connect(url.replace("+psycopg", "")) as conn:
        ids = [i for (i,) in conn.execute("SELECT id FROM inbox ORDER BY id")]
    context = multiprocessing.get_context("spawn")
    go = context.Event()
    cpu = context.Queue()
    processes = [
        context.Process(
            target=count,
            args=(
                url,
                args.cores,
                go,
                args.partitions,
                cpu,
                ids[i::n] if args.mode == "own" else None,
            ),
        )  # fmt: skip
        for i in range(n)
    ]
    for process in processes:
        process.start()
    for _ in processes:  # importing and connecting is not part of counting
        assert cpu.get(timeout=120) == "ready"
    waits: Counter[str] = Counter()
    stop = threading.Event()
    sampler = threading.Thread(target=sample_waits, args=(url, name, stop, waits))
    sampler.start()
    pg_before = postgres_cpu(server)
    started = time.time()
    go.set()
    shares = [cpu.get() for _ in processes]
    # Until the last body is counted, not until the processes have exited (a loaded machine
    # takes seconds to tear an interpreter down).
    elapsed = max(finished for _, _, _, finished in shares) - started
    for process in processes:
        process.join()
    stop.set()
    sampler.join()
    time.sleep(0.2)  # the counting backends exit once their clients disconnect
    pg_seconds = postgres_cpu(server) - pg_before
    client_seconds = sum(seconds for seconds, _, _, _ in shares)
    with psycopg.connect(url.replace("+psycopg", "")) as conn:
        row = conn.execute("SELECT count(*) FROM inbox WHERE state = 'pending'").fetchone()
        assert row is not None
        assert row[0] == 0, "bodies left pending"
    per_1000 = 1000 / args.statuses
    samples = sum(waits.values()) or 1
    return {
        "seconds": round(elapsed, 2),
        "statuses_per_s": round(args.statuses / elapsed),
        "cpu_ms_per_1000": {
            "counting_processes": round(client_seconds * per_1000 * 1000, 1),
            "postgresql": round(pg_seconds * per_1000 * 1000, 1),
        },
        "backend_states": {k: round(v / samples, 3) for k, v in waits.most_common()},
        # Each process: status updates it counted, seconds until its sweep found nothing left.
        "per_process": [[statuses, round(wall, 2)] for _, statuses, wall, _ in shares],
    }


def options(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--statuses", type=int, default=200_000)
    parser.add_argument("--numbers", type=int, default=24)
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--mode", choices=["sweep", "own"], default="sweep")
    parser.add_argument("--cores", default=None, help="CPU list for the counting processes")
    parser.add_argument(
        "--partitions",
        type=int,
        default=None,
        help="lock partitions (1 = one global lock, as before; default: store.locks.PARTITIONS)",
    )
    parser.add_argument(
        "--durable",
        action="store_true",
        help="fsync and synchronous commit on, as in production (the default cluster, like the "
        "test suite's, skips them): commit latency then counts",
    )
    parser.add_argument("--citus", action="store_true", help="a coordinator and 2 workers")
    return parser.parse_args(argv)


def bench(args: argparse.Namespace) -> dict[str, Any]:
    raws = [
        json.dumps(b, separators=(",", ":")).encode()
        for b in bodies(args.statuses, numbers=args.numbers)
    ]
    server: Server = CitusCluster() if args.citus else PostgresCluster()
    if args.durable:
        # Later options win over the cluster's own `fsync=off ...`.
        for node in server.nodes if isinstance(server, CitusCluster) else [server]:
            node.extra_options += " -c fsync=on -c synchronous_commit=on -c full_page_writes=on"
    server.start()
    results: dict[str, Any] = {"statuses": args.statuses, "numbers": args.numbers,
                               "mode": args.mode, "citus": args.citus}  # fmt: skip
    try:
        for n in args.processes:
            results[f"{n}_processes"] = run(server, raws, args, n)
            print(json.dumps(results), flush=True)
    finally:
        server.destroy()
    first = results[f"{args.processes[0]}_processes"]
    for n in args.processes[1:]:
        other = results[f"{n}_processes"]
        results[f"{n}_vs_{args.processes[0]}"] = round(
            other["statuses_per_s"] / first["statuses_per_s"], 2
        )
        # What n processes could reach if nothing serialised them and each had a core (with
        # PostgreSQL's share): n times the work of one, at the CPU cost per update measured.
        cost = {k: sum(r["cpu_ms_per_1000"].values()) for k, r in (("1", first), ("n", other))}
        results[f"{n}_vs_{args.processes[0]}_cpu_ceiling"] = round(n * cost["1"] / cost["n"], 2)
    return results


def main() -> None:
    print(json.dumps(bench(options())))


if __name__ == "__main__":
    main()
