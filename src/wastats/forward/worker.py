"""The delivery worker: posts stored webhook bodies to their destinations, byte-exact.

One thread per process runs an asyncio loop with one `httpx.AsyncClient` (keep-alive, HTTP/2
where the destination offers it, TLS verified, redirects not followed). It works only from the
durable rows (`store.forwarding`): each *cycle* is one write transaction that records the
outcomes of finished attempts and claims the deliveries now due, up to the free slots of each
destination (`WASTATS_FORWARD_CONCURRENCY`), so a destination that hangs holds only its own
slots and the others go on. A cycle runs when the inbox writer of this process commits new
deliveries (lag: milliseconds), when an attempt finishes, and every `poll_seconds` (retries
due, deliveries queued by other processes).

Retries: 2xx is delivered; anything else, including a timeout or a refused connection, is
tried again after an exponential backoff with jitter, or after the destination's
`Retry-After`, for up to 7 days from when the body arrived (as Meta does); then the delivery is
a dead letter, kept for `wastats forward replay`.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import logging
import math
import random
import ssl
import threading
import time
from collections import defaultdict, deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx

from wastats import __version__
from wastats.forward.destinations import display_url
from wastats.sealing import BodySealer
from wastats.store import forwarding as store
from wastats.store.db import Database

log = logging.getLogger(__name__)

USER_AGENT = f"wastats-forwarder/{__version__}"
MAX_RESPONSE_BYTES = 64 * 1024
"""Of a destination's answer we read at most this (its status is all that matters)."""


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


@dataclass(frozen=True)
class _Active:
    id: int
    url: str


class Forwarder:
    """The delivery worker of one process (see the module docstring)."""

    def __init__(
        self,
        db: Database,
        sealer: BodySealer,
        *,
        clock: Callable[[], float] = time.time,
        timeout: float = 10.0,
        concurrency: int = 4,
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
        # than any attempt (bounded by `timeout`) plus the cycle that records its outcome.
        self.lease_seconds = math.ceil(timeout) * 2 + 5
        self.prefetch = concurrency * 8
        """Deliveries of one destination claimed at once: a cycle's transaction costs more than
        an attempt to a healthy destination, so one cycle feeds several rounds of attempts."""
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self._stopping = threading.Event()
        self._ready = threading.Event()
        self._grace = 5.0

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
        """Run a cycle now (thread-safe; called by the inbox writer after its commit)."""
        loop, event = self._loop, self._wake
        if loop is not None and event is not None:
            with contextlib.suppress(RuntimeError):  # the loop has just closed
                loop.call_soon_threadsafe(event.set)

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except Exception:  # pragma: no cover - a bug; logged for the operator, health shows it
            log.exception("the forwarding worker stopped")
        finally:
            self._ready.set()

    # --- the loop -------------------------------------------------------------------------------

    def _client(self) -> httpx.AsyncClient:
        verify: ssl.SSLContext | bool = True
        if self.ca_file is not None:
            verify = ssl.create_default_context(cafile=str(self.ca_file))
        return httpx.AsyncClient(
            http2=True,
            verify=verify,
            follow_redirects=False,
            timeout=self.timeout,
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=64),
            headers={"User-Agent": USER_AGENT},
            trust_env=False,  # no proxy or netrc credentials picked up from the environment
        )

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        wake = self._wake
        self._ready.set()
        in_flight: defaultdict[int, int] = defaultdict(int)
        # Claimed ahead of the free slots (a cycle's transaction costs more than an attempt to a
        # healthy destination), each with the end of its lease.
        queued: defaultdict[int, deque[tuple[_Active, store.Claimed, int]]] = defaultdict(deque)
        tasks: set[asyncio.Task[store.Result]] = set()
        results: list[store.Result] = []
        last_purge = 0.0

        def finished(task: asyncio.Task[store.Result]) -> None:
            if task.cancelled():
                return  # stopping: the lease brings it back
            result = task.result()
            results.append(result)
            in_flight[result.destination_id] -= 1
            waiting = queued[result.destination_id]
            if not result.delivered:
                # Failing: what is queued behind it would most likely fail too. Let it go; it
                # is claimed again (by any process) when its lease ends.
                waiting.clear()
            launch(client)
            # A cycle (a transaction) only when this destination runs short of claimed work or
            # enough outcomes wait to be recorded; else the next poll records them.
            if len(waiting) < self.concurrency or len(results) >= self.prefetch // 2:
                wake.set()

        def launch(client: httpx.AsyncClient) -> None:
            released = False
            for destination_id, waiting in queued.items():
                while waiting and in_flight[destination_id] < self.concurrency:
                    destination, delivery, lease_until = waiting.popleft()
                    if self.clock() + self.timeout + 1 > lease_until:
                        # Its lease would end mid-attempt (a slow destination): hand it back,
                        # due now, for a new claim with a new lease.
                        results.append(store.Result(delivery.id, destination_id, False, None))
                        released = True
                        continue
                    in_flight[destination_id] += 1
                    task = asyncio.create_task(self._attempt(client, destination, delivery))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
                    task.add_done_callback(finished)
            if released:
                wake.set()

        client = self._client()
        async with client:
            while not self._stopping.is_set():
                wake.clear()
                done, results[:] = list(results), []
                # Refill a destination's claimed work only when it runs short.
                wants = {
                    d: self.prefetch - in_flight[d] - len(queued[d])
                    if len(queued[d]) < self.concurrency
                    else 0
                    for d in set(in_flight) | set(queued)
                }
                try:
                    claimed, active = await asyncio.to_thread(self._cycle, done, wants)
                except Exception as exc:
                    # Database away: keep the outcomes for the next cycle; the rows stay
                    # claimed until their lease ends, so nothing is lost either way.
                    results[:0] = done
                    self.stats.cycle_errors += 1
                    log.error("forwarding: database error: %s", getattr(exc, "orig", exc))
                    claimed, active = [], None
                if active is not None:
                    for destination_id in set(queued) - active:
                        queued[destination_id].clear()  # paused or removed meanwhile
                for destination, deliveries, lease_until in claimed:
                    queued[destination.id].extend((destination, d, lease_until) for d in deliveries)
                launch(client)
                if time.monotonic() - last_purge > 3600:
                    last_purge = time.monotonic()
                    await asyncio.to_thread(self._purge)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(wake.wait(), self.poll_seconds)
            if tasks:
                await asyncio.wait(tasks, timeout=min(self.timeout, self._grace))
                for task in tasks:
                    task.cancel()
                await asyncio.sleep(0)  # let the done callbacks collect the outcomes
            with contextlib.suppress(Exception):
                await asyncio.to_thread(self._cycle, list(results), None)

    def _cycle(
        self, done: list[store.Result], wants: dict[int, int] | None
    ) -> tuple[list[tuple[_Active, list[store.Claimed], int]], set[int]]:
        """One transaction: record `done`, then claim what is due: up to `wants[id]` for a
        destination this worker has deliveries of, `prefetch` for the others (nothing when
        `wants` is None: stopping). Returns the claims and the ids of the active destinations."""
        now = int(self.clock())
        lease_until = now + self.lease_seconds
        claimed: list[tuple[_Active, list[store.Claimed], int]] = []
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
                    claimed.append((_Active(d.id, d.url), found, lease_until))
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

    async def _attempt(
        self, client: httpx.AsyncClient, destination: _Active, delivery: store.Claimed
    ) -> store.Result:
        self.stats.attempts += 1
        if delivery.body is None:
            # Cannot happen while the inbox purge keeps bodies with pending deliveries; if it
            # does (a body deleted by hand), say so and stop retrying.
            return store.Result(
                delivery.id, destination.id, False, None, "the raw body is no longer stored"
            )
        retry_after: float | None = None
        try:
            # One deadline for the whole attempt: httpx's own timeouts are per phase.
            async with (
                asyncio.timeout(self.timeout),
                client.stream(
                    "POST", destination.url, content=delivery.body, headers=delivery.headers
                ) as response,
            ):
                await _read_some(response)
            status = response.status_code
            if 200 <= status < 300:
                self.stats.delivered += 1
                return store.Result(delivery.id, destination.id, True)
            error = f"HTTP {status}"
            if 300 <= status < 400:
                error += " (a redirect: not followed; set the final URL)"
            retry_after = parse_retry_after(response.headers.get("retry-after"), self.clock())
        except TimeoutError:
            error = f"no answer within {self.timeout:g} s"
        except httpx.HTTPError as exc:
            error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
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
                display_url(destination.url),
                delivery.attempts + 1,
                error,
            )
        return store.Result(delivery.id, destination.id, False, next_at, error)


async def _read_some(response: httpx.Response) -> None:
    """Read (and drop) the answer, so the connection can be reused; stop at a limit."""
    total = 0
    async for chunk in response.aiter_raw():
        total += len(chunk)
        if total > MAX_RESPONSE_BYTES:
            break
