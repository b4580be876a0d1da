"""wastats benchmarks: one command, ratios against baselines measured in the same run.

    .venv/bin/python bench/run.py                # default sizes
    .venv/bin/python bench/run.py --statuses 1000000

Machines are shared and noisy, so every figure is reported as a ratio to a baseline measured
moments before on the same machine, with the absolute numbers for context. Results go to stdout
and, as JSON, to bench/results/ (not committed); docs/benchmarks.md records a run.

Benchmarks:
  import   `wastats import` of generated history into SQLite (status updates per second, peak
           memory), against a baseline of plain sqlite3 executemany of the same status rows into
           a table with the same key, no parsing and no counting (the floor for storing facts).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

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


def bench_import(statuses: int, workdir: Path) -> dict[str, Any]:
    history = workdir / "history.jsonl"
    write(history, statuses)
    base_seconds, base_rows = baseline_sqlite(history, workdir / "baseline.db")
    env = {**os.environ, "WASTATS_DATABASE_URL": f"sqlite:///{workdir / 'wastats.db'}",
           "WASTATS_SECRET_KEY": "bench-secret-key-0123456789abcdef"}  # fmt: skip
    subprocess.run([str(WASTATS), "db", "upgrade"], env=env, check=True, capture_output=True)
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    start = time.perf_counter()
    result = subprocess.run(
        [str(WASTATS), "import", str(history)], env=env, check=True, capture_output=True, text=True
    )
    seconds = time.perf_counter() - start
    peak_kib = max(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, before)
    rate = statuses / seconds
    base_rate = base_rows / base_seconds
    return {
        "statuses": statuses,
        "seconds": round(seconds, 2),
        "statuses_per_second": round(rate),
        "peak_memory_mb": round(peak_kib / 1024, 1),
        "baseline_rows_per_second": round(base_rate),
        "ratio_to_baseline": round(rate / base_rate, 3),
        "summary": result.stdout.strip().splitlines()[-1],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description="wastats benchmarks")
    parser.add_argument("--statuses", type=int, default=200_000, help="size of the import")
    parser.add_argument("--only", choices=["import"], default=None)
    args = parser.parse_args()
    results: dict[str, Any] = {
        "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]}
    }
    with tempfile.TemporaryDirectory(prefix="wastats-bench-") as tmp:
        work = Path(tmp)
        print(f"import: {args.statuses} status updates ...", flush=True)
        results["import"] = r = bench_import(args.statuses, work)
        print(f"  wastats import: {r['statuses_per_second']:,} status updates/s "
              f"({r['seconds']} s), peak memory {r['peak_memory_mb']} MB")  # fmt: skip
        print(f"  baseline (plain sqlite3 executemany of the same rows): "
              f"{r['baseline_rows_per_second']:,} rows/s")  # fmt: skip
        print(f"  ratio: {r['ratio_to_baseline']}")
    out = HERE / "results"
    out.mkdir(exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    (out / f"{stamp}.json").write_text(json.dumps(results, indent=2))
    print(f"results: bench/results/{stamp}.json")


if __name__ == "__main__":
    main()
