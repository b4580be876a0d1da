"""Realistic webhook history for benchmarks: deterministic, any size.

Each body carries `per_body` status updates (Meta batches up to 1,000 per POST) for outbound
template messages: `sent` with PMP pricing, then `delivered`, then `read` for most of them, to
`customers` distinct customers of `numbers` business numbers, over `months` months. A tenth of
the bodies also carry inbound messages. Timestamps move forward with jitter, so late and early
statuses interleave as they do in real traffic.

    python bench/generate.py --statuses 1000000 --out history.jsonl
"""

from __future__ import annotations

import argparse
import heapq
import json
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

START = 1_751_328_000  # 2025-07-01T00:00:00Z
CATEGORIES = ["marketing"] * 6 + ["utility"] * 3 + ["authentication"]


def phone_number_id(index: int) -> str:
    return f"1{index:014d}"


def bodies(
    statuses: int,
    *,
    per_body: int = 100,
    numbers: int = 10,
    customers: int = 50_000,
    months: int = 12,
    seed: int = 7,
) -> Iterator[dict[str, Any]]:
    rng = random.Random(seed)
    span = months * 30 * 86400
    produced = 0
    message = 0
    while produced < statuses:
        number = rng.randrange(numbers)
        items: list[dict[str, Any]] = []
        inbound: list[dict[str, Any]] = []
        while len(items) < per_body and produced + len(items) < statuses:
            message += 1
            customer = f"9725{rng.randrange(customers):08d}"
            sent = START + int(span * produced / max(statuses, 1)) + rng.randrange(3600)
            items.extend(_updates(rng, message, number, customer, sent))
            if rng.random() < 0.1:
                inbound.append({"from": customer, "id": f"wamid.in{message:012d}",
                                "timestamp": str(sent + 60), "type": "text",
                                "text": {"body": "thanks"}})  # fmt: skip
        produced += len(items)
        yield _envelope(number, items, inbound)


def single_status_bodies(
    count: int, *, numbers: int = 10, customers: int = 50_000, seed: int = 7
) -> Iterator[dict[str, Any]]:
    """`count` bodies of exactly one status update each, in the order Meta would send them.

    A low-volume number gets one POST per status update. `bodies(per_body=1)` cannot give that:
    it keeps a message's updates together, so its bodies carry 2.7 updates on average. Here a
    message is sent every second or so, its `delivered` follows 1 to 30 s later and its `read`
    (for 70%) 30 s to 2 h later, and the updates leave in timestamp order, so those of
    different messages interleave as they do on the wire.
    """
    rng = random.Random(seed)
    pending: list[tuple[int, int, tuple[int, dict[str, Any]]]] = []  # (ts, tie-break, update)
    tie = 0
    message = 0
    clock = START
    produced = 0
    while produced < count:
        # New messages until the clock has passed the earliest pending update: every later
        # message's updates come at or after the clock, so nothing earlier can still arrive.
        while not pending or pending[0][0] >= clock:
            message += 1
            clock += rng.randrange(1, 3)
            number = rng.randrange(numbers)
            customer = f"9725{rng.randrange(customers):08d}"
            for entry in _updates(rng, message, number, customer, clock):
                tie += 1
                heapq.heappush(pending, (int(entry["timestamp"]), tie, (number, entry)))
        _, _, (number, entry) = heapq.heappop(pending)
        produced += 1
        yield _envelope(number, [entry])


def _updates(
    rng: random.Random, message: int, number: int, customer: str, sent: int
) -> list[dict[str, Any]]:
    """The status updates of one template message: `sent` and `delivered` with PMP pricing,
    1 to 30 s apart, and `read` (for 70%) 30 s to 2 h after sending."""
    category = rng.choice(CATEGORIES)
    kind = "regular" if rng.random() < 0.9 else "free_customer_service"
    wamid = f"wamid.HBgL{message:012d}{number:04d}"
    pricing = {"billable": kind == "regular", "pricing_model": "PMP",
               "type": kind, "category": category}  # fmt: skip
    steps = [("sent", sent), ("delivered", sent + rng.randrange(1, 30))]
    if rng.random() < 0.7:
        steps.append(("read", sent + rng.randrange(30, 7200)))
    updates: list[dict[str, Any]] = []
    for status, ts in steps:
        entry: dict[str, Any] = {"id": wamid, "status": status, "timestamp": str(ts),
                                 "recipient_id": customer}  # fmt: skip
        if status != "read":
            entry["pricing"] = pricing
        updates.append(entry)
    return updates


def _envelope(
    number: int, statuses: list[dict[str, Any]], inbound: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    """A webhook body of one business number: its status updates and inbound messages."""
    value: dict[str, Any] = {
        "messaging_product": "whatsapp",
        "metadata": {
            "display_phone_number": f"97230000{number:04d}",
            "phone_number_id": phone_number_id(number),
        },  # fmt: skip
        "statuses": statuses,
    }
    if inbound:
        value["messages"] = inbound
        value["contacts"] = [{"wa_id": m["from"], "profile": {"name": "C"}} for m in inbound]
    return {"object": "whatsapp_business_account",
            "entry": [{"id": "102290129340398", "changes": [{"field": "messages",
                                                             "value": value}]}]}  # fmt: skip


def write(path: Path, statuses: int, **options: Any) -> int:
    count = 0
    with path.open("w") as out:
        for body in bodies(statuses, **options):
            out.write(json.dumps(body, separators=(",", ":")) + "\n")
            count += 1
    return count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--statuses", type=int, default=100_000)
    parser.add_argument("--per-body", type=int, default=100)
    parser.add_argument("--numbers", type=int, default=10)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    n = write(args.out, args.statuses, per_body=args.per_body, numbers=args.numbers)
    print(f"wrote {n} bodies with {args.statuses} status updates to {args.out}")


if __name__ == "__main__":
    main()
