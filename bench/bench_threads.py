"""Where a webhook's CPU goes, thread by thread: the HTTP benchmark's set-up (bench_http.py: the
server pinned to core 0 with its counting child, `wrk` on core 1, 32 connections, all-distinct
signed bodies), one raw run and one webhook run, and for each thread of the server and its
children what the webhook run cost it per request, read from /proc/<pid>/task/<tid>:

* CPU, user and system (`stat`);
* voluntary and involuntary context switches (`status`): a thread woken per request shows here;
* bytes and calls of `write`/`pwrite` and `read`/`pread` (`io`): the WAL and checkpoint writes.

Not a benchmark of its own (no target, no ratio to defend): the tool the sixth session found
the event loop's involuntary switches with (docs/benchmarks.md, "sixth session"). Run twice,
alternately, against a worktree of another commit (`git worktree add`, and a copy of the venv
whose editable install points at it) to compare two versions on a noisy machine.

    .venv/bin/python bench/bench_threads.py                  # 1 status per POST, 8 s
    .venv/bin/python bench/bench_threads.py --per-body 100 --seconds 10
    .venv/bin/python bench/bench_threads.py --py-spy /path/to/py-spy   # and a profile of each
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from dataclasses import astuple, dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import bench_http  # noqa: E402


@dataclass(frozen=True)
class ThreadUse:
    """What one thread had used so far (cumulative counters of /proc)."""

    user: float
    system: float
    voluntary: int
    involuntary: int
    written: int
    writes: int
    read: int
    reads: int

    def minus(self, before: ThreadUse) -> ThreadUse:
        return ThreadUse(*(a - b for a, b in zip(astuple(self), astuple(before), strict=True)))


def _descendants(pid: int) -> list[int]:
    found, frontier = [], [pid]
    while frontier:
        parent = frontier.pop()
        for task in Path(f"/proc/{parent}/task").iterdir():
            try:
                children = (task / "children").read_text().split()
            except OSError:
                continue
            found += [int(c) for c in children]
            frontier += [int(c) for c in children]
    return found


def thread_use(server: int) -> dict[str, ThreadUse]:
    """{"server:<tid> <name>" or "child <pid>:<tid> <name>": use} of every thread now alive."""
    tick = os.sysconf("SC_CLK_TCK")
    out: dict[str, ThreadUse] = {}
    for pid in [server, *_descendants(server)]:
        for task in Path(f"/proc/{pid}/task").iterdir():
            try:
                stat = (task / "stat").read_text()
                name = (task / "comm").read_text().strip()
                status = dict(
                    line.split(":\t", 1) for line in (task / "status").read_text().splitlines()
                )
                io = dict(line.split(": ") for line in (task / "io").read_text().splitlines())
            except OSError:
                continue  # gone meanwhile
            fields = stat.rsplit(")", 1)[1].split()
            who = "server" if pid == server else f"child {pid}"
            if task.name == str(pid):
                name += " (main thread)"
            out[f"{who}:{task.name} {name}"] = ThreadUse(
                user=int(fields[11]) / tick,
                system=int(fields[12]) / tick,
                voluntary=int(status["voluntary_ctxt_switches"]),
                involuntary=int(status["nonvoluntary_ctxt_switches"]),
                written=int(io["wchar"]),
                writes=int(io["syscw"]),
                read=int(io["rchar"]),
                reads=int(io["syscr"]),
            )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-body", type=int, choices=[1, 100], default=1)
    parser.add_argument("--seconds", type=int, default=8)
    parser.add_argument("--py-spy", metavar="PATH", help="also profile the server and its child")
    args = parser.parse_args()
    expected_rps = 6000 if args.per_body == 1 else 600
    with tempfile.TemporaryDirectory() as directory:
        work = Path(directory)
        files = {}
        for name, seed in (("raw", 4), ("webhook", 2), ("warmup", 3)):
            files[name] = work / f"{name}.tsv"
            bench_http.write_bodies(files[name], int(expected_rps * (args.seconds + 2) * 1.5),
                                    args.per_body, seed)  # fmt: skip
        port = 18500 + args.per_body
        server = bench_http.start_server(f"sqlite:///{work}/wastats.db", port, 1,
                                         work / "server.log")  # fmt: skip
        base = f"http://127.0.0.1:{port}"
        try:
            bench_http.run_wrk(f"{base}/webhooks/whatsapp", files["warmup"], 2)
            bench_http.drain_seconds(port)
            raw = bench_http.run_wrk(f"{base}/bench/raw", files["raw"], args.seconds)
            before = thread_use(server.pid)
            spies = _start_py_spy(args.py_spy, server.pid, args.seconds)
            hook = bench_http.run_wrk(f"{base}/webhooks/whatsapp", files["webhook"], args.seconds)
            drain = bench_http.drain_seconds(port)
            for spy in spies:
                spy.wait()
            after = thread_use(server.pid)
        finally:
            bench_http.stop_server(server)
    requests = hook["requests"]
    raw_rate, rate = raw["requests_per_second"], hook["requests_per_second"]
    print(f"raw {raw_rate:,.0f} req/s, webhook {rate:,.0f} req/s: {rate / raw_rate:.3f} of raw; "
          f"p99 {hook['p99_ms']} ms; all counted {drain:.2f} s after; "
          f"non-2xx {hook['non_2xx']}")  # fmt: skip
    print("per webhook request (threads using under 0.5 µs left out):")
    total = 0.0
    for key, now in sorted(after.items()):
        used = now.minus(before.get(key, ThreadUse(0, 0, 0, 0, 0, 0, 0, 0)))
        cpu = (used.user + used.system) / requests * 1e6
        total += cpu
        if cpu >= 0.5:
            per = ThreadUse(*(value / requests for value in astuple(used)))
            print(f"  {key:38s} user {per.user * 1e6:6.1f} µs, system {per.system * 1e6:5.1f} µs; "
                  f"switches {per.voluntary:.2f} + {per.involuntary:.2f} involuntary; wrote "
                  f"{per.written:,.0f} B in {per.writes:.2f} calls, read {per.read:,.0f} B in "
                  f"{per.reads:.2f}")  # fmt: skip
    print(f"  total {total:.1f} µs of CPU per request")


def _start_py_spy(path: str | None, server: int, seconds: int) -> list[subprocess.Popen[bytes]]:
    if path is None:
        return []
    spies = []
    for name, pid in (("server", server), *(("child", c) for c in _descendants(server)[:1])):
        output = HERE / "results" / f"py-spy-{name}.txt"
        output.parent.mkdir(exist_ok=True)
        spies.append(subprocess.Popen(
            [path, "record", "-p", str(pid), "-r", "200", "--threads", "-f", "raw",
             "-o", str(output), "-d", str(seconds)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        ))  # fmt: skip
        print(f"py-spy: {output}", file=sys.stderr)
    return spies


if __name__ == "__main__":
    main()
