"""Which destinations a body goes to, and the hook that queues its deliveries.

`ForwardQueue.enqueue` runs inside the inbox writer's transaction (`IngestService._commit`), so
the deliveries of a body commit with the body or not at all: a body acknowledged to Meta is
never skipped, even after `kill -9`. It must stay cheap, since every webhook's 200 waits for
that commit: one small query for the destinations, and, only when some destination is scoped to
a WABA or a number, a decode of the ids the scopes need (msgspec skips everything else).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

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


class ForwardQueue:
    """Queues the deliveries of newly stored bodies (in the caller's transaction), and wakes
    the delivery workers of this process once that transaction has committed."""

    def __init__(self) -> None:
        self._listeners: list[Callable[[], None]] = []
        self._lock = threading.Lock()

    def listen(self, wake: Callable[[], None]) -> None:
        with self._lock:
            self._listeners.append(wake)

    def enqueue(self, conn: Connection, accepted: Sequence[AcceptedBody], now: int) -> int:
        """Add a delivery of each body to each destination it matches; returns how many."""
        if not accepted:
            return 0
        targets = store.targets(conn)
        if not targets:
            return 0
        scoped = any(t.scope != store.ALL for t in targets)
        rows: list[store.NewDelivery] = []
        for body in accepted:
            found = addresses(body.raw) if scoped else Addresses()
            rows.extend(
                store.NewDelivery(body.inbox_id, t.id, body.headers)
                for t in targets
                if matches(t, found)
            )
        return store.enqueue(conn, rows, now)

    def committed(self) -> None:
        """Called after the transaction that enqueued deliveries has committed."""
        for wake in self._listeners:
            wake()
