"""Accepting webhooks: durable before the 200, counted right after.

Two threads per process:

* the **inbox writer** takes every body handed in by concurrent requests and stores them in one
  transaction (group commit): a burst of a thousand requests costs a handful of commits, not a
  thousand fsyncs. Each request's 200 is released only when the transaction holding its body
  has committed; if the commit fails the request gets 503 and Meta retries it.
* the **processor** runs the counting pipeline over what the writer just committed, usually
  within milliseconds, so counts are visible well inside a second of the 200. If it fails or
  the process dies, the bodies stay `pending` in the inbox and are processed by the next sweep
  (at start and every few seconds), by this or any other process.

Raw bodies are sealed by the inbox writer's transaction (wastats.store.inbox, AES-GCM: about a
microsecond per kilobyte, off the event loop) and dropped by `purge`, at start-up and then
every `purge_seconds`; with a retention of 0 days, as soon as each batch is counted.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import Connection

from wastats.forward.match import AcceptedBody, ForwardQueue, Headers, Queued
from wastats.ingest import partitions
from wastats.ingest.counter import CounterProcess, Handed
from wastats.ingest.pipeline import BatchReport, Pipeline
from wastats.ingest.scheduling import run_as_batch_work
from wastats.sealing import BodySealer
from wastats.store import inbox as inbox_repo
from wastats.store.db import Database

log = logging.getLogger(__name__)

_STOP = object()


class IngestUnavailable(Exception):
    """The body could not be stored: the caller must not acknowledge it."""


@dataclass
class _Pending:
    raw: bytes
    sha256: str
    future: asyncio.Future[None]
    loop: asyncio.AbstractEventLoop
    headers: Headers = ()
    """Meta's headers to forward with the body (forwarding, issue 15)."""


@dataclass
class IngestStats:
    accepted: int = 0
    duplicates: int = 0
    store_errors: int = 0
    processed_bodies: int = 0
    rejected_bodies: int = 0
    statuses: int = 0
    inbound: int = 0
    process_errors: int = 0
    newest_event: int = 0


def retention_cutoff(retention_days: int, now: int) -> int:
    """Bodies received before this may be dropped: those older than `retention_days`, or, with
    0, every body (once counted: `inbox.purgeable` never drops a pending one)."""
    return now - retention_days * 86400 if retention_days > 0 else now + 1


class IngestService:
    def __init__(
        self,
        db: Database,
        pipeline: Pipeline,
        sealer: BodySealer,
        *,
        clock: Callable[[], float] = time.time,
        max_batch: int = 1000,
        sweep_seconds: float = 5.0,
        retention_days: int = 30,
        batch_window: float = 0.1,
        purge_seconds: float = 3600.0,
        forward: ForwardQueue | None = None,
        counter: CounterProcess | None = None,
    ) -> None:
        self.db = db
        self.pipeline = pipeline
        self.sealer = sealer
        self.purge_seconds = purge_seconds
        self.clock = clock
        self.max_batch = max_batch
        self.sweep_seconds = sweep_seconds
        self.retention_days = retention_days
        self.batch_window = batch_window
        self.forward = forward
        self.counter = counter
        """With a counter (WASTATS_COUNTING=process), counting runs in that child process
        (`ingest/counter.py`): the writer hands it what it committed, and the processor thread
        only what the child's socket would not take at once (`CounterProcess.try_submit`)."""
        self.stats = IngestStats()
        self._incoming: queue.SimpleQueue[_Pending | object] = queue.SimpleQueue()
        self._committed: queue.SimpleQueue[Handed | object] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._stopping = threading.Event()
        self._idle = threading.Condition()
        self._in_flight = 0

    # --- lifecycle --------------------------------------------------------------------------

    def start(self) -> None:
        # Before anything is served: a service restarted more often than `purge_seconds`
        # (every deploy) must not keep bodies past their retention.
        self.purge()
        self._stopping.clear()
        processor = self._process_loop
        if self.counter is not None:
            self.counter.start(self._counted)
            processor = self._hand_over_loop
        for name, target in (("inbox-writer", self._write_loop), ("processor", processor)):
            thread = threading.Thread(
                target=_as_batch_work, args=(target,), name=f"wastats-{name}", daemon=True
            )
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        """Finish what was handed in, then stop; pending rows are left for the next start."""
        self._stopping.set()
        self._incoming.put(_STOP)
        self._threads[0].join(timeout=30)
        self._committed.put(_STOP)
        self._threads[1].join(timeout=60)
        self._threads.clear()
        if self.counter is not None:
            self.counter.stop()

    @property
    def running(self) -> bool:
        # A counting child being restarted is not "down": its ids wait for the next one.
        return bool(self._threads) and all(t.is_alive() for t in self._threads)

    # --- accepting --------------------------------------------------------------------------

    async def accept(self, raw: bytes, headers: Headers = ()) -> None:
        """Return once `raw` is committed to the inbox; raise IngestUnavailable if it can't be.

        `headers` (Meta's signature and content type) go with the body to any forwarding
        destination."""
        if self._stopping.is_set() or not self.running:
            raise IngestUnavailable("wastats is shutting down")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        sha = hashlib.sha256(raw).hexdigest()
        # Counted as in flight from now until processed (or refused), for wait_idle.
        self._track(+1)
        self._incoming.put(_Pending(raw=raw, sha256=sha, future=future, loop=loop, headers=headers))
        await future

    def wait_idle(self, timeout: float = 30.0) -> bool:
        """Block until everything handed in so far is committed and processed (for tests,
        benchmarks and orderly shutdown; the service itself never waits on this)."""
        deadline = time.monotonic() + timeout
        with self._idle:
            while self._in_flight:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._idle.wait(remaining)
        return True

    def _track(self, delta: int) -> None:
        if not delta:
            return
        with self._idle:
            self._in_flight += delta
            if self._in_flight <= 0:
                self._in_flight = 0
                self._idle.notify_all()

    # --- the writer thread ------------------------------------------------------------------

    def _write_loop(self) -> None:
        while True:
            first = self._incoming.get()
            if first is _STOP:
                return
            assert isinstance(first, _Pending)
            batch = [first]
            stop_after = False
            # Everything that queued up while the previous commit ran goes into this one.
            while len(batch) < self.max_batch:
                try:
                    item = self._incoming.get_nowait()
                except queue.Empty:
                    break
                if item is _STOP:
                    stop_after = True
                    break
                assert isinstance(item, _Pending)
                batch.append(item)
            self._commit(batch)
            if stop_after:
                return

    def _commit(self, batch: list[_Pending]) -> None:
        now = int(self.clock())
        unique = {p.sha256: p for p in batch}
        try:
            with self.db.write() as conn:
                new_ids = inbox_repo.insert_bodies(
                    conn,
                    [
                        inbox_repo.NewBody(
                            sha256=sha, body=p.raw, source="webhook", received_at=now
                        )
                        for sha, p in unique.items()
                    ],
                    self.sealer,
                )
                # --- forwarding (issue 15): the deliveries of the new bodies commit with them,
                # so an acknowledged body is never skipped; once committed, they are posted
                # from memory (wastats.forward.match).
                forwarded = self._enqueue_forwarding(conn, unique, new_ids, now)
        except Exception as exc:
            self.stats.store_errors += len(batch)
            log.error("could not store %d webhook bodies: %s", len(batch), exc)
            _resolve(batch, IngestUnavailable(f"could not store the body: {type(exc).__name__}"))
            self._track(-len(batch))
            return
        self.stats.accepted += len(new_ids)
        self.stats.duplicates += len(batch) - len(new_ids)
        # Bodies that were already stored (retries, duplicates) need no processing.
        self._track(-(len(batch) - len(new_ids)))
        _resolve(batch, None)
        if new_ids:
            committed = Handed(
                sorted(new_ids.values()), sum(len(unique[sha].raw) for sha in new_ids)
            )
            # To the counting child straight away when its socket takes them now; else (and to
            # the processor thread, without a child) through the hand-over queue.
            if self.counter is None or not self.counter.try_submit(committed):
                self._committed.put(committed)
        if forwarded and self.forward is not None:
            self.forward.committed(forwarded)

    def _enqueue_forwarding(
        self, conn: Connection, unique: dict[str, _Pending], new_ids: dict[str, int], now: int
    ) -> Queued:
        if self.forward is None or not new_ids:
            return Queued()
        accepted = [
            AcceptedBody(inbox_id, unique[sha].raw, unique[sha].headers)
            for sha, inbox_id in new_ids.items()
        ]
        return self.forward.enqueue(conn, accepted, now)

    # --- counting in a child process (WASTATS_COUNTING=process) ------------------------------

    def _hand_over_loop(self) -> None:
        assert self.counter is not None
        while True:
            item = self._committed.get()
            if item is _STOP:
                return
            assert isinstance(item, Handed)
            self.counter.submit(item)

    def _counted(self, ids: int, child: dict[str, int]) -> None:
        """The child counted `ids` of the ids handed to it; `child` are its counters."""
        s = self.stats
        s.processed_bodies += child.get("processed_bodies", 0)
        s.rejected_bodies += child.get("rejected_bodies", 0)
        s.statuses += child.get("statuses", 0)
        s.inbound += child.get("inbound", 0)
        s.process_errors += child.get("process_errors", 0)
        s.newest_event = max(s.newest_event, child.get("newest_event", 0))
        self._track(-ids)

    # --- the processor thread ---------------------------------------------------------------

    def _process_loop(self) -> None:
        self.sweep(older_than=0)
        self.seal_clear_bodies()
        last_sweep = last_purge = time.monotonic()
        while True:
            try:
                item = self._committed.get(timeout=self.sweep_seconds)
            except queue.Empty:
                item = None
            if item is _STOP:
                return
            ids: list[int] = list(item.ids) if isinstance(item, Handed) else []
            stop_after = False
            # Under load (commits queued up while we were busy), gather for a moment: every
            # processing transaction has a fixed cost per batch and per number touched, and
            # small batches spent the CPU the HTTP side needs (measured: 3x fewer webhooks/s).
            # Idle, process at once: counts are then visible within milliseconds.
            window = self.batch_window if self._committed.qsize() else 0.0
            deadline = time.monotonic() + window
            while len(ids) < self.max_batch * 4:
                try:
                    more = self._committed.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
                if more is _STOP:
                    stop_after = True
                    break
                assert isinstance(more, Handed)
                ids.extend(more.ids)
            try:
                if ids:
                    self._process_ids(ids)
            finally:
                self._track(-len(ids))
            if stop_after:
                return
            if time.monotonic() - last_sweep >= self.sweep_seconds:
                # Bodies another process (or a crash) left pending for a while.
                self.sweep(older_than=int(self.sweep_seconds * 2))
                last_sweep = time.monotonic()
            if time.monotonic() - last_purge >= self.purge_seconds:
                self.purge()
                last_purge = time.monotonic()

    def sweep(self, older_than: int) -> None:
        """Process pending inbox rows received more than `older_than` seconds ago."""
        while not self._stopping.is_set():
            try:
                with self.db.read() as conn:
                    # Not the rows another process is counting (PostgreSQL): it has them.
                    ids = inbox_repo.pending_ids(
                        conn, self.max_batch, received_before=int(self.clock()) - older_than + 1,
                        skip_claimed=True,
                    )  # fmt: skip
            except Exception as exc:
                log.error("inbox sweep failed: %s", exc)
                return
            if not ids or not self._process_ids(ids):
                return

    def purge(self) -> int:
        """Drop the raw bodies past the retention; returns how many (errors are logged)."""
        cutoff = retention_cutoff(self.retention_days, int(self.clock()))
        try:
            with self.db.write() as conn:
                purged = inbox_repo.purge_bodies(conn, cutoff)
        except Exception as exc:
            log.error("purging old bodies failed: %s", exc)
            return 0
        if purged:
            log.info("dropped %d raw bodies (retention %d days)", purged, self.retention_days)
        return purged

    def seal_clear_bodies(self) -> int:
        """Seal the bodies an older wastats stored in clear, in small transactions (in the
        processor thread, so the service answers meanwhile); returns how many."""
        sealed = 0
        while not self._stopping.is_set():
            try:
                with self.db.write() as conn:
                    done = inbox_repo.seal_clear_bodies(conn, self.sealer, 500)
            except Exception as exc:
                log.error("sealing bodies stored in clear failed: %s", exc)
                break
            if not done:
                break
            sealed += done
        if sealed:
            log.info("sealed %d raw bodies stored in clear by an older wastats", sealed)
        return sealed

    def count_ids(self, ids: list[int]) -> bool:
        """Count these inbox rows now, in this thread (the counting child's entry point)."""
        return self._process_ids(ids)

    def _process_ids(self, ids: list[int]) -> bool:
        """Process these inbox rows; returns False if nothing could be done (database down)."""
        try:
            self._record(self._process(ids))
            return True
        except Exception as exc:
            log.error("processing %d inbox bodies failed (%s); retrying one by one", len(ids), exc)
        # One bad body must not hold back the others: retry each alone, and park the ones that
        # still fail as rejected, with the reason, for the operator (`wastats events rejected`).
        progressed = False
        for inbox_id in ids:
            try:
                self._record(self._process([inbox_id]))
                progressed = True
            except Exception as exc:
                self.stats.process_errors += 1
                log.exception("inbox body %d could not be processed", inbox_id)
                progressed |= self._park(inbox_id, exc)
        return progressed

    def _process(self, ids: list[int]) -> BatchReport:
        # On PostgreSQL, a few transactions that each claim free partitions of numbers,
        # so processes count at once (ingest.partitions).
        return partitions.count_bodies(
            self.db, self.pipeline, self.sealer, ids, int(self.clock()),
            keep_bodies=self.retention_days != 0,
        )  # fmt: skip

    def _park(self, inbox_id: int, exc: Exception) -> bool:
        try:
            with self.db.write() as conn:
                inbox_repo.record_outcomes(
                    conn,
                    [
                        inbox_repo.Outcome(
                            id=inbox_id,
                            state=inbox_repo.REJECTED,
                            reason=f"internal error while counting: {type(exc).__name__}: {exc}"[
                                :500
                            ],
                            events=0,
                        )
                    ],
                    int(self.clock()),
                )
            return True
        except Exception:
            return False

    def _record(self, report: BatchReport) -> None:
        self.stats.processed_bodies += report.bodies
        self.stats.rejected_bodies += report.rejected
        self.stats.statuses += report.statuses
        self.stats.inbound += report.inbound
        self.stats.newest_event = max(self.stats.newest_event, report.newest_event)


def _as_batch_work(loop: Callable[[], None]) -> None:
    """Run a thread's loop as batch work for the scheduler: the writer and the processor are
    woken by requests, and must not take the core from the event loop each time; they commit
    and count when it waits, more bodies at a time (ingest/scheduling.py)."""
    run_as_batch_work()
    loop()


def _resolve(batch: list[_Pending], error: Exception | None) -> None:
    """Answer every request of a batch: one wake-up of each event loop for the whole batch, not
    one per request (each wake-up is a write to the loop's self-pipe and a turn of the loop)."""
    by_loop: dict[asyncio.AbstractEventLoop, list[asyncio.Future[None]]] = {}
    for pending in batch:
        by_loop.setdefault(pending.loop, []).append(pending.future)

    def settle(futures: list[asyncio.Future[None]]) -> None:
        for future in futures:
            if future.done():
                continue
            if error is None:
                future.set_result(None)
            else:
                future.set_exception(error)

    for loop, futures in by_loop.items():
        # RuntimeError: the request's event loop is gone (client disconnected at shutdown).
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(settle, futures)
