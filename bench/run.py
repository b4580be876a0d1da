"""wastats benchmarks: one command, ratios against baselines measured in the same run.

    .venv/bin/python bench/run.py                 # everything (about 10 minutes; needs wrk)
    .venv/bin/python bench/run.py --only import --statuses 1000000
    .venv/bin/python bench/run.py --quick         # smaller sizes, for a smoke run

Machines are shared and noisy, so every figure is reported as a ratio to a baseline measured
moments before on the same machine, with the absolute numbers for context. Results go to stdout
and, as JSON, to bench/results/ (not committed); docs/benchmarks.md records a run.

  import  `wastats import` of generated history into SQLite (status updates per second, peak
          memory) against plain sqlite3 executemany of the same rows (the floor for storing).
  http    signed webhook POSTs (1 and 100 status updates each) through the real server against
          a raw ASGI app and a bare FastAPI route in the same server; SQLite with one worker,
          PostgreSQL with two (`--no-postgres`: SQLite only); ends with issue 13's targets.
  forward the http webhook load with one local forwarding destination, against none: the
          webhook rate, and the delivery lag p50/p99 at full and at steady load
          (bench_forward.py)
  stats   getConversationsStatistics and /v1/stats (monthly) for an account with 1,000 numbers
          and 24 months at 1M and 10M counted units, against a bare GET, and the naive SQL.
  isolation  webhook acknowledgement p50/p99 idle and while four clients loop on the heaviest
          statistics questions (200 numbers, a year of units); bench_isolation.py.
  meta    the first sync of Meta's record, 10 WABAs x 20 numbers x 365 days (--quick: 2 x 10)
          from the fake Graph API into SQLite: wall time, rows/s, peak memory of the syncing
          process (bench_meta_sync.py, run as its own process so earlier benchmarks' memory
          does not count).
  counting  PostgreSQL counting, 1 against 2 processes, over 24 numbers (each process its own
          batches, and all sweeping one backlog) and 1 number (the control); CPU per 1,000
          updates, what the backends waited for; a Citus pair if Citus is installed
          (bench_counting.py).
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))

from generate import write  # noqa: E402

WASTATS = Path(sys.executable).with_name("wastats")


def baseline_sqlite(history: Path, db: Path) -> tuple[float, int]:
    """Insert the status rows of `history` with plain sqlite3, 1,000 per transaction."""
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute(
        "CREATE TABLE s (number TEXT, wamid TEXT, status TEXT, ts INTEGER, category TEXT, "
        "type TEXT, recipient TEXT, PRIMARY KEY (number, wamid, status, ts))"
    )
    rows = []
    with history.open() as lines:
        for line in lines:
            value = json.loads(line)["entry"][0]["changes"][0]["value"]
            number = value["metadata"]["phone_number_id"]
            for s in value["statuses"]:
                pricing = s.get("pricing") or {}
                row = (number, s["id"], s["status"], int(s["timestamp"]),
                       pricing.get("category"), pricing.get("type"), s["recipient_id"])  # fmt: skip
                rows.append(row)
    start = time.perf_counter()
    for i in range(0, len(rows), 1000):
        conn.execute("BEGIN")
        conn.executemany("INSERT INTO s VALUES (?,?,?,?,?,?,?) ON CONFLICT DO NOTHING",
                         rows[i : i + 1000])  # fmt: skip
        conn.execute("COMMIT")
    elapsed = time.perf_counter() - start
    conn.close()
    return elapsed, len(rows)


def _tree_peak_kib(pid: int) -> dict[int, int]:
    """{pid: peak resident memory (VmHWM) in KiB} of a process and all its descendants.

    Read from /proc while they run: wait4's ru_maxrss would also count the memory of this
    benchmark process, which the child shares between fork and exec (hundreds of MB after the
    baseline)."""
    parents: dict[int, int] = {}
    rss: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            status = (entry / "status").read_text()
        except OSError:
            continue
        parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
        for line in status.splitlines():
            if line.startswith("VmHWM:"):
                rss[int(entry.name)] = int(line.split()[1])
    tree, frontier = {pid}, [pid]
    while frontier:
        parent = frontier.pop()
        children = [p for p, pp in parents.items() if pp == parent and p not in tree]
        tree.update(children)
        frontier.extend(children)
    return {p: rss[p] for p in tree if p in rss}


def _run_import(history: Path, workdir: Path, name: str, *options: str) -> dict[str, Any]:
    env = {**os.environ, "WASTATS_DATABASE_URL": f"sqlite:///{workdir / f'{name}.db'}",
           "WASTATS_SECRET_KEY": "bench-secret-key-0123456789abcdef"}  # fmt: skip
    subprocess.run([str(WASTATS), "db", "upgrade"], env=env, check=True, capture_output=True)
    start = time.perf_counter()
    process = subprocess.Popen(
        [str(WASTATS), "import", *options, str(history)],
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    # Peak memory of the whole process tree (`--parallel` has a second process), sampled.
    peaks: dict[int, int] = {}
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.1):
            for pid, kib in _tree_peak_kib(process.pid).items():
                peaks[pid] = max(peaks.get(pid, 0), kib)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    output = process.stdout.read()
    status = process.wait()
    seconds = time.perf_counter() - start
    done.set()
    sampler.join()
    assert status == 0, output
    return {
        "seconds": round(seconds, 2),
        "peak_memory_mb": round(peaks.get(process.pid, 0) / 1024, 1),
        "peak_memory_all_processes_mb": round(sum(peaks.values()) / 1024, 1),
        "summary": output.strip().splitlines()[-1],
    }


def bench_import(statuses: int, workdir: Path) -> dict[str, Any]:
    history = workdir / "history.jsonl"
    write(history, statuses)
    base_seconds, base_rows = baseline_sqlite(history, workdir / "baseline.db")
    base_rate = base_rows / base_seconds
    results: dict[str, Any] = {"statuses": statuses, "baseline_rows_per_second": round(base_rate)}
    for name, options in (("serial", ("--serial",)), ("parallel", ())):
        run = _run_import(history, workdir, name, *options)
        rate = statuses / run["seconds"]
        run["statuses_per_second"] = round(rate)
        run["ratio_to_baseline"] = round(rate / base_rate, 3)
        results[name] = run
    return results


def http_targets(results: dict[str, Any]) -> str:
    """Issue 13's three targets against this run, as one line."""
    one, hundred = results["sqlite_1"], results["sqlite_100"]
    drain = max(one["drain_seconds_after_run"], hundred["drain_seconds_after_run"])
    checks = [
        (f"1-status/raw {one['ratio_to_raw']:.3f} >= 0.2", one["ratio_to_raw"] >= 0.2),
        (f"100-status {hundred['statuses_accepted_per_second']:,}/s >= 60,000",
         hundred["statuses_accepted_per_second"] >= 60_000),
        (f"drain {drain:.2f}s <= 2s", drain <= 2.0),
    ]  # fmt: skip
    cpu = "; ".join(
        f"{n} per POST: "
        + ", ".join(f"{who.split()[0]} {us:,.0f}" for who, us in run["cpu_us_per_request"].items())
        for n, run in (("1", one), ("100", hundred))
    )
    return (
        "targets (SQLite): "
        + "; ".join(f"{t} {'MET' if ok else 'MISSED'}" for t, ok in checks)
        + f"\nCPU per request, us (server, counting child): {cpu}"
    )


def run_http(work: Path, quick: bool, postgres: bool = True) -> dict[str, Any]:
    from bench_http import bench
    from pgcluster import PostgresCluster

    seconds = 5 if quick else 10
    results: dict[str, Any] = {}
    for per_body in (1, 100):
        db = work / f"http-{per_body}.db"
        results[f"sqlite_{per_body}"] = bench(f"sqlite:///{db}", work, per_body=per_body,
                                              seconds=seconds)  # fmt: skip
    results["targets"] = http_targets(results)
    if not postgres:
        return results
    cluster = PostgresCluster()
    cluster.start()
    try:
        import psycopg

        with psycopg.connect(cluster.url().replace("+psycopg", ""), autocommit=True) as admin:
            for per_body in (1, 100):
                admin.execute(f"CREATE DATABASE bench{per_body}")
        for per_body in (1, 100):
            results[f"postgresql_{per_body}_2workers"] = bench(
                cluster.url(f"bench{per_body}"), work, per_body=per_body, seconds=seconds,
                workers=2,
            )  # fmt: skip
    finally:
        cluster.destroy()
    return results


def run_stats(work: Path, quick: bool) -> dict[str, Any]:
    from bench_stats import bench

    sizes = (100_000, 1_000_000) if quick else (1_000_000, 10_000_000)
    results = {f"units_{n}": bench(work, n) for n in sizes}
    small, large = (results[f"units_{n}"] for n in sizes)
    results["growth"] = {
        "compatible_p50": round(large["compatible"]["p50_ms"] / small["compatible"]["p50_ms"], 2),
        "v1_p50": round(large["v1_monthly"]["p50_ms"] / small["v1_monthly"]["p50_ms"], 2),
    }
    return results


def run_isolation(work: Path, quick: bool) -> dict[str, Any]:
    from bench_isolation import bench

    return bench(work, 200_000 if quick else 1_000_000, 5 if quick else 15)


def run_meta(quick: bool) -> dict[str, Any]:
    command = [sys.executable, str(HERE / "bench_meta_sync.py"), *(["--quick"] if quick else [])]
    done = subprocess.run(command, check=True, capture_output=True, text=True)
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def run_counting(quick: bool) -> dict[str, Any]:
    """Counting on PostgreSQL, 1 against 2 processes (bench_counting.py): every process its own
    batches (as live workers) and all sweeping one backlog, over 24 numbers; one number (a
    single partition: no speed-up possible, the control); a Citus cluster if installed."""
    from bench_counting import bench, options
    from pgcluster import CitusCluster, PostgresUnavailable

    size = ["--statuses", "50000" if quick else "200000"]
    runs = {
        "own_24_numbers": ["--mode", "own", "--numbers", "24"],
        "sweep_24_numbers": ["--mode", "sweep", "--numbers", "24"],
        "sweep_1_number": ["--mode", "sweep", "--numbers", "1"],
    }
    try:
        CitusCluster()
        runs["citus_own_24_numbers"] = ["--citus", "--mode", "own", "--numbers", "24"]
    except PostgresUnavailable as exc:
        print(f"counting: no Citus pair ({exc})", flush=True)
    results: dict[str, Any] = {}
    for name, argv in runs.items():
        print(f"counting: {name} ...", flush=True)
        results[name] = bench(options([*size, *argv]))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description="wastats benchmarks")
    parser.add_argument(
        "--only",
        choices=["import", "http", "forward", "stats", "isolation", "meta", "counting"],
        default=None,
    )
    parser.add_argument("--statuses", type=int, default=None, help="size of the import")
    parser.add_argument("--quick", action="store_true", help="smaller sizes")
    parser.add_argument("--no-postgres", action="store_true", help="http: SQLite only")
    args = parser.parse_args()
    statuses = args.statuses or (100_000 if args.quick else 1_000_000)
    results: dict[str, Any] = {
        "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]}
    }
    with tempfile.TemporaryDirectory(prefix="wastats-bench-") as tmp:
        work = Path(tmp)
        if args.only in (None, "import"):
            print(f"import: {statuses} status updates ...", flush=True)
            results["import"] = bench_import(statuses, work)
            print(json.dumps(results["import"], indent=2), flush=True)
        if args.only in (None, "http"):
            print("http: webhook POSTs against a bare endpoint ...", flush=True)
            results["http"] = run_http(work, args.quick, postgres=not args.no_postgres)
            print(json.dumps(results["http"], indent=2), flush=True)
            print(results["http"]["targets"], flush=True)
        if args.only in (None, "forward"):
            from bench_forward import bench as bench_forward

            print("forward: webhooks with one local destination ...", flush=True)
            results["forward"] = bench_forward(
                work, seconds=5 if args.quick else 10, steady_seconds=5 if args.quick else 15
            )
            print(json.dumps(results["forward"], indent=2), flush=True)
        if args.only in (None, "stats"):
            print("stats: 1,000 numbers x 24 months ...", flush=True)
            results["stats"] = run_stats(work, args.quick)
            print(json.dumps(results["stats"], indent=2), flush=True)
        if args.only in (None, "isolation"):
            print("isolation: webhooks while heavy statistics run ...", flush=True)
            results["isolation"] = run_isolation(work, args.quick)
            print(json.dumps(results["isolation"], indent=2), flush=True)
        if args.only in (None, "meta"):
            print("meta: first sync of Meta's record from the fake Graph API ...", flush=True)
            results["meta"] = run_meta(args.quick)
            print(json.dumps(results["meta"], indent=2), flush=True)
        if args.only in (None, "counting"):
            print("counting: 1 against 2 processes on PostgreSQL ...", flush=True)
            results["counting"] = run_counting(args.quick)
            print(json.dumps(results["counting"], indent=2), flush=True)
    out = HERE / "results"
    out.mkdir(exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    (out / f"{stamp}.json").write_text(json.dumps(results, indent=2))
    print(f"results: bench/results/{stamp}.json")


if __name__ == "__main__":
    main()
