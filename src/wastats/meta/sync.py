"""The sync of Meta's `pricing_analytics` into reported half-hour slots (spec, "Sync").

A WABA's first sync reads Meta's whole window (365 days) in chunks; later ones re-read the last
3 days, because Meta revises recent slots. Each chunk is read completely (all pages) and then
stored in its own transaction together with the extended covered span, so:

* a sync killed half-way resumes from the end of the last stored chunk, and the covered span
  (what reconciliation treats as reported) never includes a chunk that was only partly read;
* every write is an upsert by (number, slot, country, category, pricing type, tier): running a
  sync twice changes nothing.

Errors are recorded per WABA with the time of the next try and never stop the other WABAs. The
service runs `SyncRunner` in its own thread with its own transactions, so a slow or hanging
Graph API never delays a webhook.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass

from wastats.meta.graph import RETRYABLE, DataPoint, GraphClient, GraphError
from wastats.settings import Settings
from wastats.store import meta as repo
from wastats.store.db import Database
from wastats.store.meta import ReportedRow

log = logging.getLogger("wastats.meta")

SLOT = 1800
DAY = 86400
WINDOW_SECONDS = 365 * DAY
"""Meta's analytics window since 1 December 2025."""
RECENT_SECONDS = 3 * DAY
CHUNK_SECONDS = 7 * DAY
"""Span of one request: a week of half-hour points per WABA stays a few pages, well inside the
31 days the fake (like Meta's undocumented limit) accepts."""
LEASE_SECONDS = 15 * 60
"""How long a sync holds its WABA without progress before another process may take it over
(renewed with every stored chunk)."""


@dataclass(frozen=True, slots=True)
class SyncOutcome:
    waba_id: str
    rows: int
    chunks: int
    error: str | None = None
    skipped: bool = False
    """Another process holds the WABA, or it is not due."""


def rows_of(
    points: list[DataPoint], waba_id: str, ids: dict[str, str]
) -> tuple[list[ReportedRow], int]:
    """Meta's data points as stored rows: the number's digits mapped to its phone-number id
    (`ids`), lower-case names, slot-aligned, one per key (the last wins if Meta repeats a key,
    so a repeated point is never counted twice). Also: how many points had no known number."""
    by_key: dict[tuple[str, int, str, str, str, str], ReportedRow] = {}
    orphans = 0
    for p in points:
        phone_number_id = ids.get(re.sub(r"\D", "", p.phone_number))
        if phone_number_id is None:
            # Meta reports only numbers in the WABA at request time, all of which `ids` has;
            # a point without a known number has no owner to store it under.
            orphans += 1
            continue
        row = ReportedRow(
            phone_number_id=phone_number_id,
            slot=p.start - p.start % SLOT,
            country=p.country.upper()[:2],
            category=p.category.lower(),
            pricing_type=p.pricing_type.lower(),
            tier=p.tier,
            waba_id=waba_id,
            volume=p.volume,
            cost_micros=None if p.cost is None else round(p.cost * 1_000_000),
        )
        by_key[row.key()] = row
    return list(by_key.values()), orphans


def next_try_after(error: GraphError, now: int, failures: int, interval: int) -> int:
    """When to try a WABA again after `error` (its `failures`-th in a row)."""
    if error.kind == "rate_limit":
        return now + (error.retry_after or 3600)
    if error.kind in RETRYABLE:
        # Already retried in place; back off further, never beyond the interval.
        return now + min(max(interval, 60), 60 * (1 << min(failures, 10)))
    # Token, permission, unknown WABA: nothing changes until the operator acts; try again at
    # the normal pace so a fixed token is picked up without a restart.
    return now + max(interval, 60)


def sync_waba(
    db: Database,
    client: GraphClient,
    waba_id: str,
    *,
    now: int,
    interval: int = 3600,
    force: bool = False,
    chunk_seconds: int = CHUNK_SECONDS,
    form: str = "fields",
    on_chunk: Callable[[int, int], None] | None = None,
) -> SyncOutcome:
    """Sync one WABA up to `now` (see the module docstring). `force` ignores `next_try`."""
    with db.write() as conn:
        repo.ensure_state(conn, waba_id, None, now)
        if not repo.claim(conn, waba_id, now, now + LEASE_SECONDS, force=force):
            return SyncOutcome(waba_id, 0, 0, skipped=True)
        state = repo.get_state(conn, waba_id)
    assert state is not None
    end = now - now % SLOT
    window_start = end - WINDOW_SECONDS + SLOT  # whole slots inside Meta's window
    start = window_start
    if state.covered_to is not None:
        start = max(window_start, min(state.covered_to, end - RECENT_SECONDS))
    rows_total = chunks = orphans = 0
    try:
        # Meta names numbers by their digits in analytics: map them to phone-number ids.
        ids = {
            re.sub(r"\D", "", n.display_phone_number): n.phone_number_id
            for n in client.phone_numbers(waba_id)
        }
        while start < end:
            stop = min(start + chunk_seconds, end)
            points = client.pricing_analytics(waba_id, start, stop, form=form)
            rows, unknown = rows_of(points, waba_id, ids)
            orphans += unknown
            with db.write() as conn:
                repo.upsert_reported(conn, rows, now)
                repo.record_chunk(conn, waba_id, start, stop, now + LEASE_SECONDS)
            rows_total += len(rows)
            chunks += 1
            if on_chunk is not None:
                on_chunk(start, stop)
            start = stop
    except GraphError as exc:
        with db.write() as conn:
            failures = (state.failures or 0) + 1
            repo.record_error(
                conn, waba_id, now, str(exc), next_try_after(exc, now, failures, interval)
            )
        log.warning("Meta sync of WABA %s failed: %s", waba_id, exc)
        return SyncOutcome(waba_id, rows_total, chunks, error=str(exc))
    if orphans:
        log.warning("Meta sync of WABA %s: %d data points of unknown numbers", waba_id, orphans)
    with db.write() as conn:
        repo.record_success(conn, waba_id, now, now + max(interval, 60))
    return SyncOutcome(waba_id, rows_total, chunks)


def client_from(
    settings: Settings, *, token: str | None = None, timeout: float = 60.0
) -> GraphClient:
    secret = token or (
        settings.meta_access_token.get_secret_value() if settings.meta_access_token else None
    )
    if not secret:
        raise GraphError("token", "no Meta access token configured (WASTATS_META_ACCESS_TOKEN)")
    return GraphClient(
        settings.meta_graph_url, settings.meta_graph_version, secret, timeout=timeout
    )


def sync_all(
    db: Database,
    client: GraphClient,
    *,
    now: Callable[[], float],
    interval: int,
    force: bool = False,
    waba_ids: list[str] | None = None,
    stop: threading.Event | None = None,
) -> list[SyncOutcome]:
    """Sync every known WABA that is due (all of them with `force`), one after another; one
    WABA's failure never stops the others."""
    if waba_ids is None:
        with db.read() as conn:
            waba_ids = sorted(
                set(repo.wabas_of_numbers(conn)) | {s.waba_id for s in repo.list_states(conn)}
            )
    outcomes: list[SyncOutcome] = []
    for waba_id in waba_ids:
        if stop is not None and stop.is_set():
            break
        outcomes.append(
            sync_waba(db, client, waba_id, now=int(now()), interval=interval, force=force)
        )
    return outcomes


class SyncRunner:
    """The service's background sync: its own thread, its own transactions."""

    POLL_SECONDS = 60.0
    """How often due WABAs are looked for (a rate-limited WABA may be due before the interval)."""

    def __init__(self, db: Database, settings: Settings, clock: Callable[[], float]) -> None:
        self._db = db
        self._settings = settings
        self._clock = clock
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @staticmethod
    def wanted(settings: Settings) -> bool:
        return settings.meta_access_token is not None and settings.meta_sync_interval > 0

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="wastats-meta-sync", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            # A request in flight ends at the client's timeout; the thread is a daemon, so a
            # shutdown never waits longer than this.
            self._thread.join(5.0)

    def _run(self) -> None:
        interval = self._settings.meta_sync_interval
        while not self._stop.is_set():
            try:
                with client_from(self._settings) as client:
                    sync_all(self._db, client, now=self._clock, interval=interval, stop=self._stop)
            except Exception:  # the sync must never take the service down
                log.exception("Meta sync round failed")
            self._stop.wait(min(self.POLL_SECONDS, float(interval)))
