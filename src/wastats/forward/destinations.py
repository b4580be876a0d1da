"""Forwarding destinations: what the operator sets, and how each is doing.

Domain services: they take a Connection and never commit (the CLI opens the transaction).
Destinations are set only by the operator (`WASTATS_FORWARD_URLS`, `wastats forward ...`);
nothing a webhook or an API client sends can add one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import httpx
from sqlalchemy import Connection

from wastats.domain.errors import Conflict, InvalidInput, NotFound
from wastats.settings import Settings, forward_urls
from wastats.store import forwarding as store


@dataclass(frozen=True, slots=True)
class DestinationStatus:
    destination: store.Destination
    backlog: store.Backlog
    oldest_pending_age: int
    """Seconds since the oldest pending delivery was queued (0 if none)."""

    @property
    def state(self) -> str:
        """ok | paused | failing (its last attempt failed and deliveries wait)."""
        d = self.destination
        if d.paused:
            return "paused"
        failing_now = d.last_error_at is not None and (
            d.last_delivered_at is None or d.last_error_at > d.last_delivered_at
        )
        return "failing" if failing_now and self.backlog.pending else "ok"


def check_url(url: str) -> str:
    """A destination URL as stored, or InvalidInput with what is wrong with it."""
    url = url.strip()
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError):
        raise InvalidInput(f"not a URL: {url!r}") from None
    if parsed.scheme not in ("http", "https"):
        raise InvalidInput(f"a destination URL must start with https:// (or http://): {url!r}")
    if not parsed.host:
        raise InvalidInput(f"a destination URL needs a host: {url!r}")
    if parsed.fragment:
        raise InvalidInput(f"a destination URL cannot have a #fragment: {url!r}")
    return url


def display_url(url: str) -> str:
    """The URL without credentials or query string, for logs, metrics and health answers
    (an operator may put a token in either)."""
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL:
        return "(invalid URL)"
    port = f":{parsed.port}" if parsed.port else ""
    return f"{parsed.scheme}://{parsed.host}{port}{parsed.path}"


def _scope(waba: str | None, number: str | None) -> tuple[str, str]:
    if waba is not None and number is not None:
        raise InvalidInput("give --waba or --number, not both")
    if waba is not None:
        waba = waba.strip()
        if not waba.isdigit():
            raise InvalidInput(f"a WABA id is digits: {waba!r}")
        return store.WABA, waba
    if number is not None:
        digits = "".join(c for c in number if c.isdigit())
        if not 6 <= len(digits) <= 15 or any(c not in "0123456789+-() ." for c in number):
            raise InvalidInput(f"a number is 6 to 15 digits, e.g. 972501234567: {number!r}")
        return store.NUMBER, digits
    return store.ALL, ""


def add(
    conn: Connection, *, url: str, waba: str | None = None, number: str | None = None, now: int
) -> store.Destination:
    url = check_url(url)
    scope, value = _scope(waba, number)
    new_id = store.add_destination(
        conn, url=url, scope=scope, scope_value=value, source=store.FROM_CLI, now=now
    )
    if new_id is None:
        existing = store.find_destination(conn, url, scope, value)
        raise Conflict(f"destination {existing} already forwards {describe_scope(scope, value)}")
    found = store.get_destination(conn, new_id)
    assert found is not None
    return found


def describe_scope(scope: str, value: str) -> str:
    if scope == store.WABA:
        return f"WABA {value}"
    if scope == store.NUMBER:
        return f"number {value}"
    return "everything"


def _get(conn: Connection, destination_id: int) -> store.Destination:
    found = store.get_destination(conn, destination_id)
    if found is None:
        raise NotFound(f"no destination {destination_id} (see `wastats forward list`)")
    return found


def remove(conn: Connection, destination_id: int) -> store.Destination:
    """Remove a destination with its queue (pending deliveries are dropped)."""
    found = _get(conn, destination_id)
    if found.source == store.FROM_CONFIG:
        raise InvalidInput(
            f"destination {destination_id} comes from WASTATS_FORWARD_URLS: remove it there "
            "(or pause it)"
        )
    store.remove_destination(conn, destination_id)
    return found


def set_paused(conn: Connection, destination_id: int, paused: bool) -> store.Destination:
    _get(conn, destination_id)
    store.set_paused(conn, destination_id, paused)
    return _get(conn, destination_id)


def sync_configured(conn: Connection, settings: Settings, now: int) -> None:
    """Make the configured destinations those of `WASTATS_FORWARD_URLS` (checked first, so a
    bad URL stops the service at start with its reason)."""
    urls = [check_url(u) for u in forward_urls(settings)]
    store.sync_configured(conn, urls, now)


def statuses(conn: Connection, now: int) -> list[DestinationStatus]:
    backlog = store.backlog(conn)
    result = []
    for d in store.list_destinations(conn):
        b = backlog.get(d.id, store.Backlog())
        age = 0 if b.oldest_pending_at is None else max(0, now - b.oldest_pending_at)
        result.append(DestinationStatus(d, b, age))
    return result


def dead_letters(
    conn: Connection, destination_id: int | None, limit: int
) -> list[store.DeadLetter]:
    if destination_id is not None:
        _get(conn, destination_id)
    return store.dead_letters(conn, destination_id=destination_id, limit=limit)


def replay(
    conn: Connection,
    *,
    ids: Sequence[int],
    destination_id: int | None,
    everything: bool,
    now: int,
) -> int:
    """Queue dead letters again (the given ids, or all of a destination's, or all)."""
    if not ids and destination_id is None and not everything:
        raise InvalidInput("name the dead letters to replay, or --destination ID, or --all")
    if destination_id is not None:
        _get(conn, destination_id)
    return store.replay(
        conn, ids=list(ids) if ids else None, destination_id=destination_id, now=now
    )
