"""Counting in a process of its own (`WASTATS_COUNTING=process`, the default).

Counting (parse, hash, merge facts, recount, rollups) is pure Python: in the server's process it
shares one GIL with the event loop, and every millisecond it holds the GIL is a millisecond no
webhook is answered (issue 13, measured). So the service starts `python -m wastats.ingest.counter`
and hands it the inbox ids its writer committed:

* **Protocol**: a socketpair, one JSON object per line. The parent first sends the child's
  configuration (database URL and keys: over the private socket, never on a command line or in
  the environment, so `ps` shows no secret), then `{"seq": n, "ids": [...], "bytes": b}` per
  commit (`bytes`: the size of those bodies, what the child sizes its batches by). The child
  answers `{"done": [n, ...], "stats": {...}}` once those ids are counted (the counters
  `IngestStats` reports on /metrics, as differences).
* **Nothing is lost**: the child counts exactly as the processor thread does (`IngestService`:
  sweep of pending rows at start, batches, one-by-one retry, parking), from the inbox, where the
  writer's commit has already made every acknowledged body durable. Ids the parent sent but saw
  no answer for are sent again to the next child; counting one twice is skipped (no longer
  pending) or exact anyway (facts merge by set union).
* **Restart with backoff**: if the child dies, the parent starts another after 0.1 s, doubling up
  to 30 s while it keeps dying; an answered batch resets the backoff.
* **No orphans**: the child exits when the parent's end of the socket closes, which the kernel
  does for any death of the parent, `kill -9` included. On an orderly stop the parent only shuts
  its sending side, so the child counts what it was handed, answers, and exits.
"""

from __future__ import annotations

import base64
import contextlib
import gc
import json
import logging
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, fields
from typing import Any, Literal, NamedTuple

from wastats.ingest.scheduling import run_as_batch_work

log = logging.getLogger(__name__)

_COUNTERS = ("processed_bodies", "rejected_bodies", "statuses", "inbound", "process_errors")
"""`IngestStats` fields the child counts (the parent adds them to its own); `newest_event` is a
maximum, sent as such."""

BACKOFF_FIRST = 0.1
BACKOFF_MAX = 30.0

_GATHER_NAP = 0.025
"""The child's sleep between reads while it gathers a batch window (`_Child._gather`)."""

BATCH_BYTES = 2 << 20
"""Bodies a counting batch gathers, in bytes, when they come fast enough (`_Child._gather`):
about 4,000 single-status bodies or 110 of 100 statuses."""

_DIRECT_LINE_LIMIT = 4096
"""`try_submit` sends lines up to this long (a few hundred ids): far below the socket's buffer
unit, so a non-blocking send takes the whole line or none of it."""


class Handed(NamedTuple):
    """Inbox ids handed to the child in one line, and the size of their bodies in bytes."""

    ids: list[int]
    size: int


def _batch_line(seq: int, handed: Handed) -> bytes:
    """The protocol's line handing the child a batch of inbox ids (module docstring)."""
    return json.dumps({"seq": seq, "ids": handed.ids, "bytes": handed.size}).encode() + b"\n"


@dataclass(frozen=True)
class CounterConfig:
    """What the child needs to count: everything else it would read is the parent's business."""

    database_url: str
    hash_key: bytes
    body_secrets: list[bytes]
    retention_days: int
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["json", "text"] = "json"
    max_batch: int = 1000
    sweep_seconds: float = 5.0
    batch_window: float = 0.1
    """How long a batch gathers in a stream: at least this, and, while bodies come fast enough
    to fill `batch_bytes` by `batch_window_max`, until they do (`_Child._gather`)."""
    batch_window_max: float = 1.0
    batch_bytes: int = BATCH_BYTES

    def to_line(self) -> bytes:
        fields_ = asdict(self)
        fields_["hash_key"] = base64.b64encode(self.hash_key).decode()
        fields_["body_secrets"] = [base64.b64encode(s).decode() for s in self.body_secrets]
        return json.dumps(fields_).encode() + b"\n"

    @classmethod
    def from_line(cls, line: bytes) -> CounterConfig:
        given = json.loads(line)
        given["hash_key"] = base64.b64decode(given["hash_key"])
        given["body_secrets"] = [base64.b64decode(s) for s in given["body_secrets"]]
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in given.items() if k in known})


Done = Callable[[int, dict[str, int]], None]
"""Called by the parent for each answer: how many ids were counted, and the child's counters."""


# --- the parent's side ----------------------------------------------------------------------


class CounterProcess:
    """Starts, feeds and restarts the counting child (module docstring). Thread-safe `submit`."""

    def __init__(self, config: CounterConfig) -> None:
        self.config = config
        self._lock = threading.Lock()
        self._outstanding: dict[int, Handed] = {}
        self._seq = 0
        self._sock: socket.socket | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._receiver: threading.Thread | None = None
        self._stopping = threading.Event()
        self._done: Done = lambda n, stats: None
        self.restarts = 0

    @property
    def pid(self) -> int | None:
        process = self._process
        return process.pid if process is not None else None

    @property
    def running(self) -> bool:
        process = self._process
        return process is not None and process.poll() is None

    def start(self, done: Done) -> None:
        self._done = done
        self._stopping.clear()
        with self._lock:
            self._spawn()
        self._receiver = threading.Thread(
            target=self._receive_loop, name="wastats-counter-link", daemon=True
        )
        self._receiver.start()

    def submit(self, handed: Handed) -> None:
        """Hand ids to the child; kept until it answers for them (and resent to a new child)."""
        with self._lock:
            self._seq += 1
            self._outstanding[self._seq] = handed
            self._send(self._seq, handed)

    def try_submit(self, handed: Handed) -> bool:
        """`submit` if it can be done now without waiting, else False (nothing sent, nothing
        kept): for the inbox writer, which hands its commits over itself when it can (a thread
        hop and a wake-up fewer per commit, measured: 5-10% more webhooks a second) and to the
        hand-over thread when it cannot, so a child that does not read (busy with a long batch,
        hung, being restarted) never holds up the writer and the webhooks waiting on it."""
        if not self._lock.acquire(blocking=False):
            return False  # a submit, an answer or a restart is under way
        try:
            sock = self._sock
            line = _batch_line(self._seq + 1, handed)
            if sock is None or len(line) > _DIRECT_LINE_LIMIT:
                return False
            try:
                # A line this short is one buffer of the socket: queued whole, or not at all.
                sent = sock.send(line, socket.MSG_DONTWAIT)
                if sent < len(line):
                    sock.sendall(line[sent:])  # never seen; a line must not be cut
            except BlockingIOError:
                return False
            except OSError:
                pass  # the child is gone: the ids are kept below and sent to the next one
            self._seq += 1
            self._outstanding[self._seq] = handed
            return True
        finally:
            self._lock.release()

    def stop(self, timeout: float = 60.0) -> None:
        """Let the child count what it was handed, then wait for it (killed after `timeout`)."""
        self._stopping.set()
        with self._lock:
            sock = self._sock
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_WR)  # the child sees the end, finishes, exits
        if self._receiver is not None:
            self._receiver.join(timeout)
        process = self._process
        if process is not None:
            try:
                process.wait(max(1.0, timeout / 10))
            except subprocess.TimeoutExpired:
                log.warning("the counting process did not stop in time: killed")
                process.kill()
                process.wait()
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def _spawn(self) -> None:
        # Called with the lock held.
        ours, theirs = socket.socketpair()
        self._process = subprocess.Popen(
            [sys.executable, "-m", "wastats.ingest.counter", str(theirs.fileno())],
            pass_fds=[theirs.fileno()],
            stdin=subprocess.DEVNULL,
            # A copy of the child's end in any other child would keep it from ever seeing EOF.
            close_fds=True,
            # A group of its own: a terminal's Ctrl-C (or `kill` of the server's group) must not
            # reach the child while it is still importing, before it can ignore the signal; it
            # ends when the parent's socket closes, which an orderly stop and any death both do.
            process_group=0,
        )
        theirs.close()
        self._sock = ours
        ours.sendall(self.config.to_line())
        for seq, handed in self._outstanding.items():
            self._send(seq, handed)

    def _send(self, seq: int, handed: Handed) -> None:
        if self._sock is None:
            return
        # OSError: the child is gone; the receiver restarts it and the ids are sent again.
        with contextlib.suppress(OSError):
            self._sock.sendall(_batch_line(seq, handed))

    def _receive_loop(self) -> None:
        backoff = BACKOFF_FIRST
        while True:
            sock = self._sock
            assert sock is not None
            answered = False
            for message in _lines(sock):
                answered = True
                counted = 0
                with self._lock:
                    for seq in message["done"]:
                        handed = self._outstanding.pop(seq, None)
                        counted += len(handed.ids) if handed is not None else 0
                self._done(counted, message["stats"])
            # The end of the child's socket: it exited (done, or died).
            process = self._process
            code = process.wait() if process is not None else None
            if self._stopping.is_set():
                return
            backoff = BACKOFF_FIRST if answered else min(backoff * 2, BACKOFF_MAX)
            log.error("the counting process exited (status %s): restarting in %.1fs",
                      code, backoff)  # fmt: skip
            if self._stopping.wait(backoff):
                return
            with self._lock:
                sock.close()
                self._spawn()
                self.restarts += 1


def _lines(sock: socket.socket) -> Iterator[dict[str, Any]]:
    """The JSON messages arriving on `sock`, until it closes (or fails)."""
    buffer = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except OSError:
            return
        if not chunk:
            return
        buffer += chunk
        *complete, buffer = buffer.split(b"\n")
        for line in complete:
            yield json.loads(line)


# --- the child ------------------------------------------------------------------------------


def keeps_gathering(config: CounterConfig, window: float, elapsed: float, size: int) -> bool:
    """Whether a batch that has gathered `size` bytes of bodies in `elapsed` seconds waits for
    more: through `window` (0 when idle), and after it for as long as the stream's rate so far
    would fill `config.batch_bytes` within `config.batch_window_max`."""
    if elapsed < window:
        return True
    if window == 0.0 or elapsed >= config.batch_window_max:
        return False
    return size * config.batch_window_max >= config.batch_bytes * elapsed


def main(argv: list[str]) -> int:
    # The child has a process group of its own, but a service manager may still signal every
    # process of the service (systemd's control group): it finishes its batch and exits when its
    # parent's socket closes, never mid-batch.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    # Counting is batch work: it must not take the core from the server's event loop each time
    # a commit's ids wake it (ingest/scheduling.py).
    run_as_batch_work()
    sock = socket.socket(fileno=int(argv[1]))
    first = _readline(sock)
    if not first:
        return 0
    config = CounterConfig.from_line(first)
    _configure_logging(config)
    return _Child(sock, config).run()


def _readline(sock: socket.socket) -> bytes:
    line = b""
    while not line.endswith(b"\n"):
        chunk = sock.recv(1)
        if not chunk:
            return b""
        line += chunk
    return line


def _configure_logging(config: CounterConfig) -> None:
    from wastats.logs import configure_logging

    # The parent's two logging fields, from the configuration it sent: nothing of the
    # environment is read, and pydantic (Settings) is not loaded.
    configure_logging(config)


def _tune_gc() -> None:
    """No automatic cyclic garbage collection in the counting child: `_collect_garbage` runs
    after each batch instead. A batch allocates a few container objects per status update
    (facts, sets, rows), which reference counting frees at its end; an automatic collection
    (every 10,000 allocations) walked those still in use mid-batch: 55-80 us per 100-status
    body, about 4% of counting (measured with `gc.callbacks`; 1 us after the change). After the
    batch they are gone, and a collection walks only what outlives batches. What was loaded at
    start is frozen (never walked again)."""
    gc.freeze()
    gc.disable()


FULL_COLLECTION_EVERY = 100
"""Batches between two collections of every generation (`_collect_garbage`)."""


def _collect_garbage(batches: int) -> None:
    """After a batch: the young objects that outlived it (few), and every
    `FULL_COLLECTION_EVERY` batches the old ones too, so that cycles are still freed."""
    gc.collect(2 if batches % FULL_COLLECTION_EVERY == 0 else 1)


class _Child:
    def __init__(self, sock: socket.socket, config: CounterConfig) -> None:
        # Imported here: the parent's side of this module needs none of it.
        from wastats.ingest.identity import CustomerHasher
        from wastats.ingest.pipeline import Pipeline
        from wastats.ingest.service import IngestService
        from wastats.sealing import BodySealer
        from wastats.store.db import Database

        self.sock = sock
        self.config = config
        self.db = Database(config.database_url)
        self.service = IngestService(
            self.db,
            Pipeline(CustomerHasher(config.hash_key)),
            BodySealer(config.body_secrets),
            retention_days=config.retention_days,
            max_batch=config.max_batch,
            sweep_seconds=config.sweep_seconds,
        )
        self.buffer = b""
        self.closed = False
        self.last_batch = float("-inf")

    def run(self) -> int:
        service = self.service
        # What a previous child (or a crash) left pending, as the processor thread does.
        service.sweep(older_than=0)
        service.seal_clear_bodies()
        _tune_gc()
        last_sweep = last_purge = time.monotonic()
        batches = 0
        try:
            while not self.closed:
                batch = self._gather()
                if batch:
                    seqs = [seq for seq, _ in batch]
                    ids = [i for _, handed in batch for i in handed.ids]
                    before = asdict(service.stats)
                    service.count_ids(ids)
                    self._answer(seqs, before)
                    batches += 1
                    _collect_garbage(batches)
                if time.monotonic() - last_sweep >= self.config.sweep_seconds:
                    service.sweep(older_than=int(self.config.sweep_seconds * 2))
                    last_sweep = time.monotonic()
                if service.purge_seconds and time.monotonic() - last_purge >= service.purge_seconds:
                    service.purge()
                    last_purge = time.monotonic()
        except ConnectionError:
            pass  # the parent is gone: what we counted is committed; nothing else to do
        finally:
            self.db.dispose()
        return 0

    def _gather(self) -> list[tuple[int, Handed]]:
        """The batches handed in: waits up to the sweep interval for the first, then, in a
        stream (more already queued, or the previous batch came less than a second ago),
        gathers for the batch window: every counting transaction has a fixed cost, and one per
        commit of the writer cost more than the counting itself (measured: 270 us of CPU per
        1-status body). Idle, it counts at once: counts are then visible within milliseconds.

        In a stream it sleeps through the window and then takes everything sent meanwhile,
        rather than waking for each of the writer's commits (a thousand or more a second, each
        a wake-up, a read and a parse on the core the server answers on). While bodies come fast
        enough to fill `batch_bytes` within `batch_window_max`, it goes on until they do: a
        counting transaction writes a random page of each large index per body, and pages
        shared by more bodies of one batch are written once (measured on single-status bodies:
        54 us of CPU a body in batches of 500, 37 in batches of 2,000). Slower streams are
        counted after the short window, so their counts show as soon as before. It stops early
        when the ids reach the batch limit, checked at each of a few wake-ups."""
        batch = self._read(self.config.sweep_seconds)
        if not batch:
            return batch
        start = time.monotonic()
        busy = start - self.last_batch < 1.0 or self._readable(0)
        self.last_batch = start
        window = self.config.batch_window if busy else 0.0
        limit = self.config.max_batch * 4
        ids = sum(len(handed.ids) for _, handed in batch)
        size = sum(handed.size for _, handed in batch)
        while ids < limit and size < self.config.batch_bytes and not self.closed:
            elapsed = time.monotonic() - start
            waiting = keeps_gathering(self.config, window, elapsed, size)
            if waiting:
                time.sleep(min(_GATHER_NAP, window - elapsed) if elapsed < window else _GATHER_NAP)
            more = self._read(0.0)
            batch.extend(more)
            ids += sum(len(handed.ids) for _, handed in more)
            size += sum(handed.size for _, handed in more)
            if not waiting and not more:
                break
        return batch

    def _readable(self, timeout: float) -> bool:
        ready, _, _ = select.select([self.sock], [], [], timeout)
        return bool(ready)

    def _read(self, timeout: float) -> list[tuple[int, Handed]]:
        if not self._readable(timeout):
            return []
        chunk = self.sock.recv(1 << 20)
        if not chunk:
            self.closed = True  # the parent stopped sending (orderly stop) or died
        self.buffer += chunk
        *complete, self.buffer = self.buffer.split(b"\n")
        found = []
        for line in complete:
            message = json.loads(line)
            handed = Handed([int(i) for i in message["ids"]], int(message.get("bytes", 0)))
            found.append((int(message["seq"]), handed))
        return found

    def _answer(self, seqs: list[int], before: dict[str, int]) -> None:
        after = asdict(self.service.stats)
        stats = {name: after[name] - before[name] for name in _COUNTERS}
        stats["newest_event"] = after["newest_event"]
        self.sock.sendall(json.dumps({"done": seqs, "stats": stats}).encode() + b"\n")


if __name__ == "__main__":
    # No "parent is PID 1, so it died" check: in a container the server *is* PID 1. A parent
    # that died before the child got here closed its end of the socket, so the first read ends
    # the child anyway (tests/test_container.py runs the server as PID 1).
    sys.exit(main(sys.argv))
