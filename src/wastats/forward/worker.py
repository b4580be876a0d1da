"""The delivery worker: posts webhook bodies to their destinations, byte-exact.

One thread per process runs an asyncio loop with the transports of `forward.transport`
(HTTP/1.1 through aiohttp, HTTP/2 through httpx where an HTTPS destination offers it; TLS
verified, redirects not followed, keep-alive). Work comes two ways:

* **from memory**, right after the inbox commit: the inbox writer queues the deliveries of new
  bodies already claimed by this process, with a lease, and hands them over with the bodies
  (`ForwardQueue.committed` → `take`), so a healthy destination gets a body within
  milliseconds of the 200 to Meta, without a read of the database in between;
* **from the database**, in a *claim cycle*: deliveries due (retries, those queued while a
  destination was paused, failing or behind, and leases run out because a process died),
  claimed in one write transaction, `FOR UPDATE SKIP LOCKED` on PostgreSQL. A cycle runs every
  `poll_seconds`, and at once when a destination with more waiting in the database runs short
  of work.

Outcomes are written in batches (every `FLUSH_SECONDS`, or `FLUSH_COUNT` outcomes), not one
transaction per delivery: the database is the durable record, and until an outcome is written
the row's lease keeps other processes off it. A process killed before writing them loses only
the record: the lease runs out and the deliveries are made again (at least once).

Each destination has `concurrency` requests in flight at most, so one that hangs holds only its
own slots. Retries: 2xx is delivered; anything else, including a timeout or a refused
connection, is tried again after an exponential backoff with jitter, or after the
destination's `Retry-After`, for up to 7 days from when the body arrived (as Meta does); then
the delivery is a dead letter, kept for `wastats forward replay`.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import logging
import math
import random
import threading
import time
from collections import defaultdict, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from wastats.forward.destinations import display_url
from wastats.forward.match import Handoff
from wastats.forward.transport import Transport, TransportError, Transports
from wastats.sealing import BodySealer
from wastats.store import forwarding as store
from wastats.store.db import Database

log = logging.getLogger(__name__)

OUTCOME_MARGIN = 3
"""Seconds of lease an attempt must have left after its longest possible run, for its outcome
to be written (batched every quarter second, later on a busy machine) before the lease ends:
with 1 s, a loaded machine sometimes let another process claim a delivered body and post it
again (a duplicate seen in tests/test_forwarding_procs.py)."""

FLUSH_SECONDS = 0.25
"""Outcomes wait at most this long to be written (in one transaction with the others)."""
FLUSH_COUNT = 256
"""... or until this many wait."""


@dataclass(frozen=True)
class RetryPolicy:
    base_seconds: float = 5.0
    max_delay_seconds: float = 3600.0
    window_seconds: int = 7 * 86400

    def delay(self, failures: int, rng: random.Random) -> float:
        """Seconds before the next try after `failures` failed attempts (1, 2, ...): doubling
        from `base_seconds` up to `max_delay_seconds`, then a random half of it taken off, so
        that the many deliveries failed by one outage do not all come back at one instant."""
        exponent = min(max(failures - 1, 0), 60)
        full = min(self.max_delay_seconds, self.base_seconds * 2.0**exponent)
        return full * rng.uniform(0.5, 1.0)

    def next_attempt(
        self,
        *,
        failures: int,
        created_at: int,
        now: float,
        retry_after: float | None,
        rng: random.Random,
    ) -> int | None:
        """When to try again, or None when the retry window is over (a dead letter)."""
        end = created_at + self.window_seconds
        if now >= end:
            return None
        wait = retry_after if retry_after is not None else self.delay(failures, rng)
        return min(end, math.ceil(now + max(1.0, wait)))


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Seconds a `Retry-After` header asks to wait (delta-seconds or an HTTP date)."""
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, when.timestamp() - now)


@dataclass
class ForwardStats:
    """This process's attempts (for /metrics); the durable totals are in the database."""

    attempts: int = 0
    delivered: int = 0
    failed: int = 0
    cycle_errors: int = 0


@dataclass(frozen=True, slots=True)
class _Work:
    url: str
    delivery: store.Claimed
    lease_until: int


def _handed_back(work: _Work) -> store.Result:
    """Not attempted: due again now, for the next claim (if the row still holds our lease)."""
    return store.Result(
        work.delivery.id, work.delivery.destination_id, False, None, lease_until=work.lease_until
    )


class Forwarder:
    """The delivery worker of one process (see the module docstring)."""

    def __init__(
        self,
        db: Database,
        sealer: BodySealer,
        *,
        clock: Callable[[], float] = time.time,
        timeout: float = 10.0,
        concurrency: int = 16,
        ca_file: Path | None = None,
        policy: RetryPolicy | None = None,
        poll_seconds: float = 1.0,
        retention_days: int = 30,
        seed: int | None = None,
    ) -> None:
        self.db = db
        self.sealer = sealer  # raw bodies are sealed at rest (wastats.sealing)
        self.clock = clock
        self.timeout = timeout
        self.concurrency = concurrency
        self.ca_file = ca_file
        self.policy = policy or RetryPolicy()
        self.poll_seconds = poll_seconds
        self.retention_days = retention_days
        self.stats = ForwardStats()
        self._rng = random.Random(seed)
        # A process that dies mid-attempt leaves its claims to others after this long: longer
        # than any attempt (bounded by `timeout`) plus the flush that records its outcome.
        self.lease_seconds = math.ceil(timeout) * 2 + OUTCOME_MARGIN + 2
        self.prefetch = concurrency * 8
        """Deliveries of one destination claimed from the database at once."""
        self.max_held = concurrency * 64
        """Deliveries of one destination held in memory (queued or in flight) before the
        inbox writer stops handing more over: they wait in the database instead, due."""
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self._stopping = threading.Event()
        self._ready = threading.Event()
        self._grace = 5.0
        self.transport: Transport | None = None
        # The state below is the event loop's; other threads only read lengths (`wants`).
        self._queued: defaultdict[int, deque[_Work]] = defaultdict(deque)
        self._in_flight: defaultdict[int, int] = defaultdict(int)
        self._failing: set[int] = set()
        """Destinations whose last attempt failed: nothing more from memory until one works."""
        self._more_in_db: set[int] = set()
        """Destinations with due deliveries left in the database (the last claim was full, or
        the writer kept some there): a claim cycle runs as soon as they run short."""
        self._results: list[store.Result] = []
        self._first_result_at = 0.0
        self._claim_now = False
        self._tasks: set[asyncio.Task[store.Result]] = set()

    # --- lifecycle ------------------------------------------------------------------------------

    def start(self) -> None:
        self._stopping.clear()
        self._ready.clear()
        self._thread = threading.Thread(target=self._run, name="wastats-forwarder", daemon=True)
        self._thread.start()
        self._ready.wait(10)

    def stop(self, grace: float = 5.0) -> None:
        """Let attempts in flight finish (up to `grace` seconds) and record them, then stop;
        anything unfinished is claimed again once its lease is over."""
        self._grace = grace
        self._stopping.set()
        self.wake()
        if self._thread is not None:
            self._thread.join(grace + 10)
            self._thread = None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def wake(self) -> None:
        """Run a claim cycle now (thread-safe)."""
        self._call(self._claim_soon)

    def _call(self, callback: Callable[[], None]) -> bool:
        loop = self._loop
        if loop is None:
            return False
        try:
            loop.call_soon_threadsafe(callback)
        except RuntimeError:  # the loop has just closed
            return False
        return True

    def _claim_soon(self) -> None:
        self._claim_now = True
        if self._wake is not None:
            self._wake.set()

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except Exception:  # pragma: no cover - a bug; logged for the operator, health shows it
            log.exception("the forwarding worker stopped")
        finally:
            self._ready.set()

    # --- from memory (the inbox writer's thread calls these) --------------------------------

    def lease_until(self, now: int) -> int | None:
        if self._loop is None or self._stopping.is_set() or not self.running:
            return None
        return now + self.lease_seconds

    def wants(self, destination_id: int) -> bool:
        if destination_id in self._failing:
            return False
        held = len(self._queued.get(destination_id, ())) + self._in_flight.get(destination_id, 0)
        if held < self.max_held:
            return True
        self._call(lambda: self._more_in_db.add(destination_id))
        return False

    def take(self, handoffs: Sequence[Handoff]) -> None:
        items = [_Work(h.url, h.delivery, h.lease_until) for h in handoffs]
        # If the loop is gone (stopping), the leases bring these back from the database.
        self._call(lambda: self._take(items))

    def _take(self, items: list[_Work]) -> None:
        for item in items:
            self._queued[item.delivery.destination_id].append(item)
        self._launch()

    # --- the loop -------------------------------------------------------------------------------

    def _make_transport(self) -> Transport:
        return Transports(ca_file=self.ca_file, timeout=self.timeout)

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        wake = self._wake
        self.transport = self._make_transport()
        self._ready.set()
        last_purge = 0.0
        next_claim = 0.0
        try:
            while not self._stopping.is_set():
                wake.clear()
                now = time.monotonic()
                claim = self._claim_now or now >= next_claim or self._runs_short()
                flush = bool(self._results) and (
                    len(self._results) >= FLUSH_COUNT
                    or now - self._first_result_at >= FLUSH_SECONDS
                )
                if claim or flush:
                    self._claim_now = False
                    if claim:
                        next_claim = now + self.poll_seconds
                    await self._db_cycle(claim)
                self._launch()
                if time.monotonic() - last_purge > 3600:
                    last_purge = time.monotonic()
                    await asyncio.to_thread(self._purge)
                timeout = next_claim - time.monotonic()
                if self._results:
                    timeout = min(timeout, self._first_result_at + FLUSH_SECONDS - time.monotonic())
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(wake.wait(), max(0.0, timeout))
            if self._tasks:
                await asyncio.wait(self._tasks, timeout=min(self.timeout, self._grace))
                for task in self._tasks:
                    task.cancel()
                await asyncio.sleep(0)  # let the done callbacks collect the outcomes
            with contextlib.suppress(Exception):
                await asyncio.to_thread(self._cycle, self._take_results(), None)
        finally:
            self._loop = None
            await self.transport.aclose()

    def _runs_short(self) -> bool:
        return any(len(self._queued[d]) < self.concurrency for d in self._more_in_db)

    def _take_results(self) -> list[store.Result]:
        done, self._results = self._results, []
        return done

    async def _db_cycle(self, claim: bool) -> None:
        done = self._take_results()
        # Claim for a destination only what it lacks of `prefetch`, and only when short.
        wants: dict[int, int] | None = None
        if claim:
            wants = {
                d: self.prefetch - self._in_flight[d] - len(self._queued[d])
                if len(self._queued[d]) < self.concurrency
                else 0
                for d in set(self._in_flight) | set(self._queued)
            }
        try:
            claimed, active = await asyncio.to_thread(self._cycle, done, wants)
        except Exception as exc:
            # Database away: keep the outcomes for the next cycle; the rows stay claimed until
            # their lease ends, so nothing is lost either way.
            self._results[:0] = done
            if self._results:
                self._first_result_at = time.monotonic()
            self.stats.cycle_errors += 1
            log.error("forwarding: database error: %s", getattr(exc, "orig", exc))
            return
        if wants is None:
            return
        for destination_id in set(self._queued) - active:
            self._queued[destination_id].clear()  # paused or removed meanwhile
        self._more_in_db.clear()
        for url, deliveries, lease_until, full in claimed:
            if deliveries:
                destination_id = deliveries[0].destination_id
                self._queued[destination_id].extend(_Work(url, d, lease_until) for d in deliveries)
                if full:
                    self._more_in_db.add(destination_id)

    def _launch(self) -> None:
        assert self.transport is not None
        released = False
        for destination_id, waiting in self._queued.items():
            while waiting and self._in_flight[destination_id] < self.concurrency:
                work = waiting.popleft()
                if self.clock() + self.timeout + OUTCOME_MARGIN > work.lease_until:
                    # Its lease would end mid-attempt or before the outcome is written (a slow
                    # destination, a busy machine): hand it back, due now, for a new claim with
                    # a new lease, rather than risk another process posting it again.
                    self._add_result(_handed_back(work))
                    released = True
                    continue
                self._in_flight[destination_id] += 1
                task = asyncio.create_task(self._attempt(self.transport, work))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
                task.add_done_callback(self._finished)
        if released and self._wake is not None:
            self._more_in_db.update(d for d, q in self._queued.items() if not q)
            self._wake.set()

    def _add_result(self, result: store.Result) -> None:
        if not self._results:
            self._first_result_at = time.monotonic()
            if self._wake is not None:
                self._wake.set()  # the loop sets its flush deadline
        self._results.append(result)
        if len(self._results) >= FLUSH_COUNT and self._wake is not None:
            self._wake.set()

    def _finished(self, task: asyncio.Task[store.Result]) -> None:
        if task.cancelled():
            return  # stopping: the lease brings it back
        result = task.result()
        destination_id = result.destination_id
        self._add_result(result)
        self._in_flight[destination_id] -= 1
        if result.delivered:
            self._failing.discard(destination_id)
        else:
            # Failing: hand back what waits behind it, due now, rather than post it at once to
            # a destination that most likely fails again (or hold it until its lease ends: a
            # blip must not delay those bodies by a lease). The next regular claim (not one
            # per failure: a destination that is down would cost a transaction per attempt)
            # takes them, each then delivered or failing into its own backoff; new bodies wait
            # in the database, due, until an attempt works again.
            self._failing.add(destination_id)
            waiting = self._queued[destination_id]
            while waiting:
                self._add_result(_handed_back(waiting.popleft()))
            self._more_in_db.discard(destination_id)
        self._launch()
        if self._wake is not None and self._runs_short():
            self._wake.set()

    def _cycle(
        self, done: list[store.Result], wants: dict[int, int] | None
    ) -> tuple[list[tuple[str, list[store.Claimed], int, bool]], set[int]]:
        """One transaction: record `done`, then (unless `wants` is None) claim what is due: up
        to `wants[id]` for a destination this worker has deliveries of, `prefetch` for the
        others. Returns the claims (URL, deliveries, lease end, whether the claim was full:
        more may be due) and the ids of the active destinations."""
        now = int(self.clock())
        lease_until = now + self.lease_seconds
        claimed: list[tuple[str, list[store.Claimed], int, bool]] = []
        active: set[int] = set()
        with self.db.write() as conn:
            store.record_results(conn, done, now)
            if wants is None:
                return [], active
            for d in store.list_destinations(conn):
                if d.paused:
                    continue
                active.add(d.id)
                limit = wants.get(d.id, self.prefetch)
                found = store.claim(
                    conn, d.id, limit, now=now, lease_until=lease_until, sealer=self.sealer
                )
                if found:
                    claimed.append((d.url, found, lease_until, len(found) >= limit))
        return claimed, active

    def _purge(self) -> None:
        if self.retention_days <= 0:
            return
        try:
            with self.db.write() as conn:
                store.purge_delivered(conn, int(self.clock()) - self.retention_days * 86400)
        except Exception as exc:
            log.error("forwarding: purging delivered rows failed: %s", getattr(exc, "orig", exc))

    # --- one attempt --------------------------------------------------------------------------

    async def _attempt(self, transport: Transport, work: _Work) -> store.Result:
        delivery = work.delivery
        destination_id = delivery.destination_id
        self.stats.attempts += 1
        if delivery.body is None:
            # Cannot happen while the inbox purge keeps bodies with pending deliveries; if it
            # does (a body deleted by hand), say so and stop retrying.
            return store.Result(
                delivery.id,
                destination_id,
                False,
                None,
                "the raw body is no longer stored",
                lease_until=work.lease_until,
            )
        retry_after: float | None = None
        try:
            # One deadline for the whole attempt, connecting included.
            async with asyncio.timeout(self.timeout):
                answer = await transport.post(work.url, delivery.body, delivery.headers)
            if 200 <= answer.status < 300:
                self.stats.delivered += 1
                return store.Result(delivery.id, destination_id, True)
            error = f"HTTP {answer.status}"
            if 300 <= answer.status < 400:
                error += " (a redirect: not followed; set the final URL)"
            retry_after = parse_retry_after(answer.retry_after, self.clock())
        except TimeoutError:
            error = f"no answer within {self.timeout:g} s"
        except TransportError as exc:
            error = str(exc)
        except Exception as exc:  # never let one delivery stop the worker
            log.exception("forwarding: unexpected error posting delivery %d", delivery.id)
            error = f"internal error: {type(exc).__name__}"
        self.stats.failed += 1
        next_at = self.policy.next_attempt(
            failures=delivery.attempts + 1,
            created_at=delivery.created_at,
            now=self.clock(),
            retry_after=retry_after,
            rng=self._rng,
        )
        if next_at is None:
            log.warning(
                "forwarding: delivery %d to %s is a dead letter after %d attempts: %s",
                delivery.id,
                display_url(work.url),
                delivery.attempts + 1,
                error,
            )
        return store.Result(
            delivery.id, destination_id, False, next_at, error, lease_until=work.lease_until
        )
