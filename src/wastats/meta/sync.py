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
from wastats.meta.tokens import MetaTokens, TokenChoice, global_token
from wastats.sealing import BodySealer
from wastats.settings import Settings
from wastats.store import meta as repo
from wastats.store import meta_tokens as token_repo
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
    """Another process holds the WABA, or it is not due; or (with `error`) it has no token and
    no sync state, so nothing was recorded."""
    error_kind: str | None = None
    """`GraphError.kind` of `error` (`token` also when the WABA has no token to sync with)."""


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
        return SyncOutcome(waba_id, rows_total, chunks, error=str(exc), error_kind=exc.kind)
    if orphans:
        log.warning("Meta sync of WABA %s: %d data points of unknown numbers", waba_id, orphans)
    with db.write() as conn:
        repo.record_success(conn, waba_id, now, now + max(interval, 60))
    return SyncOutcome(waba_id, rows_total, chunks)


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


def record_refusal(
    db: Database, waba_id: str, message: str, *, now: int, interval: int, force: bool = False
) -> SyncOutcome:
    """Record, as the WABA's last error, why it is not synced without asking Meta (it has no
    token, or its token already failed this round). Only for a WABA that has a sync state (linked
    or synced before): one nobody asked to sync gets no state, so its statistics stay as they
    were (a state is what turns Meta's record on for a number)."""
    with db.write() as conn:
        if repo.get_state(conn, waba_id) is None:
            # Said (`meta sync` prints it), not recorded.
            return SyncOutcome(waba_id, 0, 0, error=message, skipped=True, error_kind="token")
        if not repo.claim(conn, waba_id, now, now + LEASE_SECONDS, force=force):
            return SyncOutcome(waba_id, 0, 0, skipped=True)
        repo.record_error(conn, waba_id, now, message, now + max(interval, 60))
    return SyncOutcome(waba_id, 0, 0, error=message, error_kind="token")


def sync_with_tokens(
    db: Database,
    settings: Settings,
    tokens: MetaTokens,
    *,
    now: Callable[[], float],
    interval: int,
    force: bool = False,
    waba_ids: list[str] | None = None,
    override: str | None = None,
    stop: threading.Event | None = None,
    timeout: float = 60.0,
) -> list[SyncOutcome]:
    """Sync every known WABA (or `waba_ids`) with its own token (`meta.tokens`): one Graph
    client per distinct token. A token Meta refuses (190) fails only the WABAs that use it: the
    rest of its WABAs are marked with the same error without another request, and the WABAs of
    other tokens go on. A WABA without a token is skipped with that reason."""
    with db.read() as conn:
        stale = tokens.stale(conn)
    if stale:
        # After a rotation of WASTATS_BODY_KEYS (docs/security.md). A write transaction only
        # then: on SQLite it queues with the webhooks' writes.
        with db.write() as conn:
            tokens.reseal(conn)
    with db.read() as conn:
        choices = tokens.choose(conn, settings, override=override)
    if waba_ids is not None:
        wanted = set(waba_ids)
        known = {c.waba_id for c in choices}
        choices = [c for c in choices if c.waba_id in wanted]
        # A WABA named on the command line but not known yet: the global token (or the
        # override) is all there is for it.
        choices += [
            c
            for w in sorted(wanted - known)
            for c in tokens.choose_unknown(w, settings, override=override)
        ]
    groups: dict[str | None, list[TokenChoice]] = {}
    for choice in choices:
        groups.setdefault(choice.token, []).append(choice)
    outcomes: list[SyncOutcome] = []
    for token, group in groups.items():
        if token is None:
            for choice in group:
                outcomes.append(
                    record_refusal(
                        db, choice.waba_id, choice.problem or "token: none",
                        now=int(now()), interval=interval, force=force,
                    )
                )  # fmt: skip
            continue
        refused: SyncOutcome | None = None
        client = GraphClient(
            settings.meta_graph_url, settings.meta_graph_version, token, timeout=timeout
        )
        with client:
            for choice in group:
                if stop is not None and stop.is_set():
                    return outcomes
                if refused is not None:
                    outcomes.append(
                        record_refusal(
                            db, choice.waba_id,
                            f"{refused.error} (the same token as WABA {refused.waba_id})",
                            now=int(now()), interval=interval, force=force,
                        )
                    )  # fmt: skip
                    continue
                outcome = sync_waba(
                    db, client, choice.waba_id, now=int(now()), interval=interval, force=force
                )
                if outcome.error_kind == "token":
                    refused = outcome
                outcomes.append(outcome)
    return sorted(outcomes, key=lambda o: o.waba_id)


class SyncRunner:
    """The service's background sync: its own thread, its own transactions."""

    POLL_SECONDS = 60.0
    """How often due WABAs are looked for (a rate-limited WABA may be due before the interval)."""

    def __init__(
        self, db: Database, settings: Settings, clock: Callable[[], float], sealer: BodySealer
    ) -> None:
        self._db = db
        self._settings = settings
        self._clock = clock
        self._tokens = MetaTokens(sealer)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @staticmethod
    def wanted(settings: Settings) -> bool:
        """Whether to run the thread at all. Not only with a global token: an account's own
        token may be set at any time (`wastats meta token set`), and is picked up without a
        restart; a round with no token anywhere is one small query (`_has_work`)."""
        return settings.meta_sync_interval > 0

    def _has_work(self) -> bool:
        if global_token(self._settings) is not None:
            return True
        with self._db.read() as conn:
            return token_repo.any_token(conn)

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
                if self._has_work():
                    sync_with_tokens(
                        self._db, self._settings, self._tokens,
                        now=self._clock, interval=interval, stop=self._stop,
                    )  # fmt: skip
            except Exception:  # the sync must never take the service down
                log.exception("Meta sync round failed")
            self._stop.wait(min(self.POLL_SECONDS, float(interval)))
