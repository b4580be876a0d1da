"""Counting in a child process (`WASTATS_COUNTING=process`, ingest/counter.py), through real
`wastats serve` processes: it counts what the thread counts, a killed child is restarted and
loses nothing, a killed server loses nothing it acknowledged, and no child outlives its server.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import json
import os
import shutil
import signal
import socket
import threading
import time
import weakref
from pathlib import Path

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import text

from procs import Delivery, Server, generate_events, pack, post_webhook, send_all
from test_failures import assert_counts, inbox_rows, register
from wastats.ingest.counter import (
    FULL_COLLECTION_EVERY,
    CounterConfig,
    CounterProcess,
    Handed,
    _Child,
    _collect_garbage,
    keeps_gathering,
)
from wastats.ingest.identity import CustomerHasher
from wastats.ingest.pipeline import Pipeline
from wastats.ingest.scheduling import run_as_batch_work
from wastats.ingest.service import IngestService
from wastats.sealing import BodySealer
from wastats.store.db import Database

COUNTER = "wastats.ingest.counter"


def counter_pids(root: int) -> list[int]:
    """Pids of the counting children among `root`'s descendants (read from /proc)."""
    parents: dict[int, int] = {}
    commands: dict[int, bytes] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            commands[int(entry.name)] = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    tree, frontier = {root}, [root]
    while frontier:
        parent = frontier.pop()
        children = [p for p, pp in parents.items() if pp == parent and p not in tree]
        tree.update(children)
        frontier.extend(children)
    return sorted(p for p in tree - {root} if COUNTER.encode() in commands.get(p, b""))


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def wait_until(condition: object, timeout: float, what: str) -> None:
    """Poll `condition()` (bounded) until true: waiting on other processes, never a guess."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():  # type: ignore[operator]
            return
        time.sleep(0.05)
    raise AssertionError(f"not within {timeout}s: {what}")


def the_counter(server: Server) -> int:
    assert server.process is not None
    found: list[int] = []

    def one() -> bool:
        found[:] = counter_pids(server.process.pid)  # type: ignore[union-attr]
        return len(found) == 1

    wait_until(one, 30, f"one counting child of the server: {found}\n{server.logs()}")
    return found[0]


def counts(database_url: str) -> list[tuple[object, ...]]:
    db = Database(database_url, pool_size=1)
    try:
        with db.read() as conn:
            return [tuple(r) for r in conn.execute(text(
                "SELECT * FROM monthly_counts ORDER BY 1, 2, 3, 4, 5, 6"))]  # fmt: skip
    finally:
        db.dispose()


def copy_sqlite(template: Path, target: Path) -> str:
    shutil.copyfile(template, target)
    return f"sqlite:///{target}"


def send(server: Server, deliveries: list[Delivery]) -> None:
    codes = send_all([server.url], [d.raw for d in deliveries], threads=4)
    assert codes == [200] * len(deliveries), server.logs()


def test_process_counts_equal_thread_counts(sqlite_template: Path, tmp_path: Path) -> None:
    deliveries = pack(generate_events(31, 400), 31)
    results = {}
    for mode in ("process", "thread"):
        url = copy_sqlite(sqlite_template, tmp_path / f"{mode}.db")
        tenant = register(url)
        server = Server(url, tmp_path / mode, env_extra={"WASTATS_COUNTING": mode}).start()
        try:
            assert bool(counter_pids(server.process.pid)) == (mode == "process")  # type: ignore[union-attr]
            send(server, deliveries)
            server.wait_no_pending()
            assert_counts(server, tenant, deliveries)
        finally:
            server.stop()
        results[mode] = counts(url)
    assert results["process"]
    assert results["process"] == results["thread"]


def test_a_killed_counter_is_restarted_and_nothing_is_lost(
    database_url: str, tmp_path: Path
) -> None:
    deliveries = pack(generate_events(32, 500), 32)
    tenant = register(database_url)
    server = Server(database_url, tmp_path / "serve").start()
    try:
        first = the_counter(server)
        half = len(deliveries) // 2
        send(server, deliveries[:half])
        os.kill(first, signal.SIGKILL)  # whatever it was counting is still pending
        send(server, deliveries[half:])
        wait_until(lambda: counter_pids(server.process.pid) not in ([], [first]), 30,  # type: ignore[union-attr]
                   f"a new counting child\n{server.logs()}")  # fmt: skip
        second = the_counter(server)
        assert second != first
        server.wait_no_pending()
        assert {state for _, state in inbox_rows(database_url)} == {"processed"}
        assert_counts(server, tenant, deliveries)
        assert "the counting process exited" in server.logs()
    finally:
        server.stop()


def test_kill_9_of_the_server_mid_stream_loses_nothing_and_leaves_no_child(
    database_url: str, tmp_path: Path
) -> None:
    deliveries = pack(generate_events(33, 600), 33)
    by_raw = {d.raw: d for d in deliveries}
    tenant = register(database_url)
    server = Server(database_url, tmp_path / "serve").start()
    assert server.process is not None
    try:
        child = the_counter(server)
        acked: set[int] = set()
        lock = threading.Condition()
        stop = threading.Event()
        indexes = iter(range(len(deliveries)))

        def sender(url: str) -> None:
            with httpx.Client(base_url=url, timeout=30.0) as http:
                while not stop.is_set():
                    with lock:
                        i = next(indexes, None)
                    if i is None:
                        return
                    try:
                        code = post_webhook(http, deliveries[i].raw)
                    except httpx.TransportError:
                        continue  # no answer: may or may not be stored
                    with lock:
                        if code == 200:
                            acked.add(i)
                            lock.notify_all()

        senders = [threading.Thread(target=sender, args=(server.url,)) for _ in range(4)]
        for thread in senders:
            thread.start()
        with lock:
            assert lock.wait_for(lambda: len(acked) >= 60, timeout=120), server.logs()
        # The server's own process only (not its group): its child must notice and go.
        os.kill(server.process.pid, signal.SIGKILL)
        server.process.wait(20)
        stop.set()
        for thread in senders:
            thread.join(60)
        assert len(acked) < len(deliveries), "the kill must come before the stream ends"
        wait_until(lambda: not alive(child), 30, "the orphaned counting child exits")

        server.start()  # the new counting child's start-up sweep counts what was pending
        server.wait_no_pending()
        rows = inbox_rows(database_url)
        stored = {body for body, _ in rows}
        assert {state for _, state in rows} == {"processed"}
        lost = [i for i in acked if deliveries[i].raw not in stored]
        assert not lost, f"acknowledged with 200 but not stored: {sorted(lost)}"
        assert_counts(server, tenant, [by_raw[raw] for raw in stored])
    finally:
        server.stop()


def test_no_counting_child_outlives_a_stopped_server(database_url: str, tmp_path: Path) -> None:
    server = Server(database_url, tmp_path / "serve").start()
    try:
        child = the_counter(server)
        assert server.process is not None
        # SIGTERM only, waited for here: Server.stop() would then kill the whole group.
        server.process.send_signal(signal.SIGTERM)
        server.process.wait(30)  # uvicorn exits by the signal (status -15)
        wait_until(lambda: not alive(child), 30, "the counting child exits with its server")
    finally:
        server.stop()


def test_thread_mode_starts_no_child(database_url: str, tmp_path: Path) -> None:
    server = Server(
        database_url, tmp_path / "serve", env_extra={"WASTATS_COUNTING": "thread"}
    ).start()
    try:
        assert server.process is not None
        assert counter_pids(server.process.pid) == []
    finally:
        server.stop()


def test_ctrl_c_to_the_whole_group_lets_the_child_finish_and_exit(
    database_url: str, tmp_path: Path
) -> None:
    # A terminal's Ctrl-C (or systemd's SIGTERM) reaches every process of the group at once.
    deliveries = pack(generate_events(34, 200), 34)
    tenant = register(database_url)
    server = Server(database_url, tmp_path / "serve").start()
    try:
        child = the_counter(server)
        assert server.process is not None
        # The child has a group of its own, so the signal can't catch it mid-import (where
        # Python has not yet been told to ignore it) and print a KeyboardInterrupt traceback.
        assert os.getpgid(child) != os.getpgid(server.process.pid)
        send(server, deliveries)
        os.killpg(server.process.pid, signal.SIGINT)
        server.process.wait(30)
        wait_until(lambda: not alive(child), 30, "the counting child exits after its server")
        assert "Traceback" not in server.logs(), server.logs()
        server.start()  # whatever was left pending is counted by the next child
        server.wait_no_pending()
        assert_counts(server, tenant, deliveries)
    finally:
        server.stop()


@given(
    url=st.text(min_size=1, max_size=80),
    key=st.binary(min_size=16, max_size=64),
    secrets=st.lists(st.binary(min_size=1, max_size=64), min_size=1, max_size=3),
    days=st.integers(min_value=0, max_value=3650),
)
def test_the_childs_configuration_survives_the_socket(
    url: str, key: bytes, secrets: list[bytes], days: int
) -> None:
    # Keys are arbitrary bytes (newlines included): the one-line JSON must carry them intact.
    config = CounterConfig(database_url=url, hash_key=key, body_secrets=secrets,
                           retention_days=days, log_level="WARNING", log_format="text")  # fmt: skip
    line = config.to_line()
    assert line.endswith(b"\n")
    assert line.count(b"\n") == 1
    assert CounterConfig.from_line(line) == config


# --- the writer's own hand-over: `CounterProcess.try_submit` -----------------------------------


def _linked_counter() -> tuple[CounterProcess, socket.socket]:
    """A CounterProcess linked to one end of a real socketpair, as `_spawn` links it to a child;
    the other end (returned) stands for the child, which here reads only when the test says."""
    ours, child = socket.socketpair()
    config = CounterConfig(database_url="sqlite://", hash_key=b"k" * 32,
                           body_secrets=[b"s" * 32], retention_days=30)  # fmt: skip
    counter = CounterProcess(config)
    counter._sock = ours
    return counter, child


def _lines_read(child: socket.socket) -> list[dict[str, object]]:
    child.setblocking(False)
    data = b""
    with contextlib.suppress(BlockingIOError):
        while chunk := child.recv(1 << 20):
            data += chunk
    child.setblocking(True)
    assert data.endswith(b"\n") or not data  # whole lines only, never a cut one
    return [json.loads(line) for line in data.splitlines()]


def test_try_submit_sends_whole_lines_or_nothing_and_keeps_what_it_sent() -> None:
    counter, child = _linked_counter()
    try:
        assert counter.try_submit(Handed([1, 2, 3], 1500))
        assert _lines_read(child) == [{"seq": 1, "ids": [1, 2, 3], "bytes": 1500}]
        # The child reads nothing for a while: the socket's buffer fills, and from then on the
        # writer is told no at once instead of waiting (and nothing is kept for those ids).
        sent = 1
        while counter.try_submit(Handed(list(range(100)), 0)):
            sent += 1
        assert not counter.try_submit(Handed([7], 0))
        assert sorted(counter._outstanding) == list(range(1, sent + 1))
        lines = _lines_read(child)
        assert [line["seq"] for line in lines] == list(range(2, sent + 1))
        # Read, the socket takes lines again, numbered on from the last one sent.
        assert counter.try_submit(Handed([8], 400))
        assert _lines_read(child) == [{"seq": sent + 1, "ids": [8], "bytes": 400}]
    finally:
        child.close()
        counter._sock.close()  # type: ignore[union-attr]


def test_try_submit_never_waits_for_a_submit_or_restart_under_way_nor_sends_long_lines() -> None:
    counter, child = _linked_counter()
    try:
        with counter._lock:  # what `submit`, the answer loop and a restart hold
            assert not counter.try_submit(Handed([1], 0))
        # A long line goes the waiting way.
        assert not counter.try_submit(Handed(list(range(2000)), 0))
        assert counter._outstanding == {}
        assert _lines_read(child) == []
    finally:
        child.close()
        counter._sock.close()  # type: ignore[union-attr]


def test_try_submit_to_a_dead_child_keeps_the_ids_for_the_next_one() -> None:
    counter, child = _linked_counter()
    child.close()
    try:
        assert counter.try_submit(Handed([5, 6], 900))
        assert counter._outstanding == {1: Handed([5, 6], 900)}  # sent again by `_spawn`
    finally:
        counter._sock.close()  # type: ignore[union-attr]


# --- scheduling (ingest/scheduling.py) ---------------------------------------------------------

needs_sched_batch = pytest.mark.skipif(
    not hasattr(os, "SCHED_BATCH"), reason="SCHED_BATCH is Linux's; elsewhere nothing is changed"
)


@needs_sched_batch
def test_the_counting_child_is_batch_work_and_the_event_loop_is_not(
    sqlite_template: Path, tmp_path: Path
) -> None:
    url = copy_sqlite(sqlite_template, tmp_path / "wastats.db")
    server = Server(url, tmp_path / "serve").start()
    try:
        assert server.process is not None
        child = the_counter(server)
        # Set by the child itself, first thing in its `main`: seen once it got there.
        wait_until(lambda: os.sched_getscheduler(child) == os.SCHED_BATCH, 30,
                   f"the counting child under SCHED_BATCH\n{server.logs()}")  # fmt: skip
        # The server's main thread runs the event loop: it keeps the default policy, so a
        # request that arrives preempts background work, never the other way round.
        assert os.sched_getscheduler(server.process.pid) == os.SCHED_OTHER
    finally:
        server.stop()


@needs_sched_batch
@pytest.mark.parametrize("mode", ["process", "thread"])
def test_the_inbox_writer_and_processor_threads_are_batch_work(
    sqlite_template: Path, tmp_path: Path, mode: str
) -> None:
    url = copy_sqlite(sqlite_template, tmp_path / "wastats.db")
    db = Database(url)
    config = CounterConfig(database_url=url, hash_key=b"k" * 32, body_secrets=[b"s" * 32],
                           retention_days=30)  # fmt: skip
    service = IngestService(
        db, Pipeline(CustomerHasher(b"k" * 32)), BodySealer([b"s" * 32]),
        counter=CounterProcess(config) if mode == "process" else None,
    )  # fmt: skip
    service.start()
    try:
        threads = list(service._threads)  # the writer, then the processor (or hand-over)
        assert len(threads) == 2
        for thread in threads:
            native_id = thread.native_id
            assert native_id is not None
            # Set by each thread itself, first thing it runs: seen once it got there.
            wait_until(lambda: os.sched_getscheduler(native_id) == os.SCHED_BATCH, 30,  # noqa: B023
                       f"{thread.name} under SCHED_BATCH")  # fmt: skip
        # The policy is the thread's own: the thread that started them keeps the default.
        assert os.sched_getscheduler(threading.get_native_id()) == os.SCHED_OTHER
    finally:
        service.stop()
        db.dispose()


def test_batch_work_is_refused_quietly_where_the_kernel_says_no(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def refuse(*_: object) -> None:
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "sched_setscheduler", refuse, raising=False)
    monkeypatch.setattr(os, "SCHED_BATCH", 3, raising=False)
    assert run_as_batch_work() is False
    monkeypatch.delattr(os, "SCHED_BATCH")
    assert run_as_batch_work() is False


# --- how the child sizes its batches: `keeps_gathering` and `_Child._gather` -----------------

_CONFIG = CounterConfig(database_url="sqlite://", hash_key=b"k" * 32, body_secrets=[b"s" * 32],
                        retention_days=30)  # fmt: skip


def test_an_idle_child_counts_at_once_and_a_stream_gathers_through_its_window() -> None:
    assert not keeps_gathering(_CONFIG, 0.0, 0.0, 500)  # idle: no window at all
    assert keeps_gathering(_CONFIG, 0.1, 0.05, 0)  # a stream, inside the window
    # Past the short window, a slow stream (a hundred small bodies a second) is counted now.
    assert not keeps_gathering(_CONFIG, 0.1, 0.1, 45_000 // 10)
    # A fast one (6,000 single-status bodies a second) goes on gathering a bigger batch.
    assert keeps_gathering(_CONFIG, 0.1, 0.1, 6_000 * 450 // 10)


@given(
    window=st.sampled_from([0.0, 0.05, 0.1]),
    elapsed=st.floats(0.0, 3.0),
    size=st.integers(0, 8 << 20),
    more=st.integers(0, 8 << 20),
)
def test_a_batch_never_waits_past_the_longest_window_and_more_bytes_never_wait_less(
    window: float, elapsed: float, size: int, more: int
) -> None:
    waits = keeps_gathering(_CONFIG, window, elapsed, size)
    if elapsed >= _CONFIG.batch_window_max:
        assert not waits
    if waits and elapsed >= window:
        assert keeps_gathering(_CONFIG, window, elapsed, size + more)


def test_the_child_takes_every_line_sent_and_stops_gathering_at_the_batch_bytes(
    tmp_path: Path,
) -> None:
    ours, theirs = socket.socketpair()
    config = dataclasses.replace(_CONFIG, database_url=f"sqlite:///{tmp_path / 'c.db'}",
                                 batch_bytes=10_000)  # fmt: skip
    child = _Child(theirs, config)
    try:
        child.last_batch = time.monotonic()  # in a stream: the window applies
        for seq in range(1, 4):
            ours.sendall(json.dumps({"seq": seq, "ids": [seq], "bytes": 4_000}).encode() + b"\n")
        # 12,000 bytes handed: past the batch's 10,000, so it is counted without waiting.
        batch = child._gather()
        assert batch == [(1, Handed([1], 4_000)), (2, Handed([2], 4_000)),
                         (3, Handed([3], 4_000))]  # fmt: skip
        # A line from an older parent, without sizes, still hands its ids.
        ours.sendall(b'{"seq": 4, "ids": [7, 8]}\n')
        child.last_batch = float("-inf")  # idle: counted at once
        assert child._gather() == [(4, Handed([7, 8], 0))]
    finally:
        child.db.dispose()
        ours.close()
        theirs.close()


class _Node:
    """An object that can be in a reference cycle and be watched (weakref)."""

    def __init__(self) -> None:
        self.other: _Node | None = None


def _cycle() -> weakref.ref[_Node]:
    """A two-object reference cycle nothing else holds: only a cyclic collection frees it."""
    a, b = _Node(), _Node()
    a.other, b.other = b, a
    return weakref.ref(a)


def test_the_child_frees_reference_cycles_after_its_batches_without_automatic_collection() -> None:
    """The child turns automatic collection off (`_tune_gc`) and collects after each batch: a
    cycle left by a batch is freed after it, and one that outlived a batch's collection (now an
    old object) by the full collection every `FULL_COLLECTION_EVERY` batches."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        young = _cycle()
        assert young() is not None  # nothing automatic frees it
        _collect_garbage(1)
        assert young() is None

        old = _cycle()
        kept = old()
        _collect_garbage(2)  # survives this batch's collection: moved to the old generation
        del kept
        for batch in range(3, FULL_COLLECTION_EVERY):
            _collect_garbage(batch)
        _collect_garbage(FULL_COLLECTION_EVERY)
        assert old() is None
    finally:
        if enabled:
            gc.enable()
