"""Which destinations a body goes to, and the hook that queues its deliveries.

`ForwardQueue.enqueue` runs inside the inbox writer's transaction (`IngestService._commit`), so
the deliveries of a body commit with the body or not at all: a body acknowledged to Meta is
never skipped, even after `kill -9`. It must stay cheap, since every webhook's 200 waits for
that commit: one small query for the destinations, and, only when some destination is scoped to
a WABA or a number, a decode of the ids the scopes need (msgspec skips everything else).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import msgspec
from sqlalchemy import Connection

from wastats.store import forwarding as store

Headers = tuple[tuple[str, str], ...]
"""Meta's request headers kept with a body, to send with it: ((name, value), ...)."""

FORWARDED_HEADERS = {
    "content-type": "Content-Type",
    "x-hub-signature-256": "X-Hub-Signature-256",
    # The older SHA-1 signature Meta still sends: a consumer may verify that one.
    "x-hub-signature": "X-Hub-Signature",
}
"""The request headers forwarded with a body (lower-case name → name as sent)."""


def kept_headers(get: Callable[[str], str | None]) -> Headers:
    """The headers of an incoming webhook request to forward with its body, in a fixed order."""
    found = []
    for name, sent_as in FORWARDED_HEADERS.items():
        value = get(name)
        if value is not None:
            found.append((sent_as, value))
    return tuple(found)


# --- the ids a body is addressed to ------------------------------------------------------------


class _Metadata(msgspec.Struct, gc=False):
    phone_number_id: str | int | None = None
    display_phone_number: str | int | None = None


class _Value(msgspec.Struct, gc=False):
    metadata: _Metadata | None = None


class _Change(msgspec.Struct, gc=False):
    value: _Value | None = None


class _Entry(msgspec.Struct, gc=False):
    id: str | int | None = None
    changes: list[_Change | None] | None = None


class _Body(msgspec.Struct, gc=False):
    entry: list[_Entry | None] | None = None


_decoder = msgspec.json.Decoder(_Body)


@dataclass(frozen=True, slots=True)
class Addresses:
    """The WABA ids (`entry[].id`), phone-number ids and display numbers (digits) of a body."""

    wabas: frozenset[str] = frozenset()
    numbers: frozenset[str] = frozenset()
    displays: frozenset[str] = frozenset()


def addresses(raw: bytes) -> Addresses:
    """What a body is addressed to; empty for a body that is not JSON (it still goes to the
    destinations for everything)."""
    try:
        body = _decoder.decode(raw)
    except msgspec.ValidationError:
        # A value of an unexpected type somewhere: walk the plain JSON instead, taking what fits.
        try:
            return _walk(msgspec.json.decode(raw))
        except msgspec.DecodeError:
            return Addresses()
    except msgspec.DecodeError:
        return Addresses()
    wabas, numbers, displays = set(), set(), set()
    for entry in body.entry or ():
        if entry is None:
            continue
        if entry.id is not None:
            wabas.add(str(entry.id))
        for change in entry.changes or ():
            meta = change.value.metadata if change and change.value else None
            if meta is not None:
                if meta.phone_number_id is not None:
                    numbers.add(str(meta.phone_number_id))
                if meta.display_phone_number is not None:
                    displays.add(_digits(str(meta.display_phone_number)))
    return Addresses(frozenset(wabas), frozenset(numbers), frozenset(displays))


def _walk(doc: Any) -> Addresses:
    def items(value: Any) -> list[Any]:
        return value if isinstance(value, list) else []

    def field(value: Any, name: str) -> Any:
        return value.get(name) if isinstance(value, dict) else None

    def text(value: Any) -> str | None:
        return str(value) if isinstance(value, str | int) and not isinstance(value, bool) else None

    wabas, numbers, displays = set(), set(), set()
    for entry in items(field(doc, "entry")):
        if (waba := text(field(entry, "id"))) is not None:
            wabas.add(waba)
        for change in items(field(entry, "changes")):
            meta = field(field(change, "value"), "metadata")
            if (number := text(field(meta, "phone_number_id"))) is not None:
                numbers.add(number)
            if (display := text(field(meta, "display_phone_number"))) is not None:
                displays.add(_digits(display))
    return Addresses(frozenset(wabas), frozenset(numbers), frozenset(displays))


def _digits(text: str) -> str:
    return "".join(c for c in text if c.isdigit())


def matches(target: store.Target, found: Addresses) -> bool:
    if target.scope == store.ALL:
        return True
    if target.scope == store.WABA:
        return target.scope_value in found.wabas
    # A number: by its registered phone-number id, or by the display number in the metadata
    # (so a number not registered in wastats can be forwarded too).
    return (
        target.phone_number_id is not None and target.phone_number_id in found.numbers
    ) or target.scope_value in found.displays


# --- the hook ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AcceptedBody:
    inbox_id: int
    raw: bytes
    headers: Headers


@dataclass(frozen=True, slots=True)
class Handoff:
    """A delivery queued leased to this process, to post from memory once its transaction has
    committed: the destination, the row (`store.Claimed`, with the body) and the lease's end."""

    url: str
    delivery: store.Claimed
    lease_until: int


@dataclass(frozen=True, slots=True)
class Queued:
    """What `ForwardQueue.enqueue` queued in a transaction, for `committed` once it has."""

    count: int = 0
    handoffs: tuple[Handoff, ...] = ()

    def __bool__(self) -> bool:
        return self.count > 0


class Taker(Protocol):
    """The delivery worker of this process, as the enqueue hook sees it."""

    def lease_until(self, now: int) -> int | None:
        """The lease to queue deliveries with for this worker; None: it takes none now
        (stopped): the rows are queued due now, for any process."""
        ...

    def wants(self, destination_id: int) -> bool:
        """Whether it takes more of this destination from memory now (not when it is failing
        or already holds more than it can post within a lease)."""
        ...

    def take(self, handoffs: Sequence[Handoff]) -> None:
        """Post these (thread-safe; called after the commit)."""
        ...


class ForwardQueue:
    """Queues the deliveries of newly stored bodies (in the caller's transaction) and, once
    that transaction has committed, hands them to this process's delivery worker, which posts
    them from memory: no read of the database between the commit and the POST.

    The rows it hands over are written already claimed, with a lease, so no other process
    takes them meanwhile; if this process dies before recording the outcome, the lease runs
    out and any process delivers them from the database (at least once)."""

    def __init__(self) -> None:
        self._taker: Taker | None = None

    def attach(self, taker: Taker) -> None:
        self._taker = taker

    def enqueue(self, conn: Connection, accepted: Sequence[AcceptedBody], now: int) -> Queued:
        """Add a delivery of each body to each destination it matches."""
        if not accepted:
            return Queued()
        targets = store.targets(conn)
        if not targets:
            return Queued()
        taker = self._taker
        lease_until = taker.lease_until(now) if taker is not None else None
        # Taken from memory: the active destinations the worker has room for.
        leased = {
            t.id
            for t in targets
            if lease_until is not None and not t.paused and taker is not None and taker.wants(t.id)
        }
        scoped = any(t.scope != store.ALL for t in targets)
        rows: list[store.NewDelivery] = []
        for body in accepted:
            found = addresses(body.raw) if scoped else Addresses()
            rows.extend(
                store.NewDelivery(
                    body.inbox_id,
                    t.id,
                    body.headers,
                    leased_until=lease_until if t.id in leased else None,
                )
                for t in targets
                if matches(t, found)
            )
        queued = store.enqueue(conn, rows, now)
        if not leased or lease_until is None:
            return Queued(len(queued))
        urls = {t.id: t.url for t in targets}
        by_id = {b.inbox_id: b for b in accepted}
        handoffs = tuple(
            Handoff(
                urls[q.destination_id],
                store.Claimed(
                    id=q.id,
                    inbox_id=q.inbox_id,
                    destination_id=q.destination_id,
                    headers=list(by_id[q.inbox_id].headers),
                    attempts=0,
                    created_at=now,
                    body=by_id[q.inbox_id].raw,
                ),
                lease_until,
            )
            for q in queued
            if q.destination_id in leased
        )
        return Queued(len(queued), handoffs)

    def committed(self, queued: Queued) -> None:
        """Called after the transaction that enqueued `queued` has committed (never before:
        a body the database does not hold must not be posted)."""
        if queued.handoffs and self._taker is not None:
            self._taker.take(queued.handoffs)
