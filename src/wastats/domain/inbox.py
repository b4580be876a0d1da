"""The inbox as operators see it (`/healthz`, `/metrics`): how many webhook bodies are in each
state, and how long the oldest one has waited to be counted."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Connection

from wastats.store import inbox as inbox_repo


@dataclass(frozen=True, slots=True)
class InboxStates:
    pending: int
    rejected: int
    processed: int


def states(conn: Connection) -> InboxStates:
    counts = inbox_repo.count_by_state(conn)
    return InboxStates(
        pending=counts.get(inbox_repo.PENDING, 0),
        rejected=counts.get(inbox_repo.REJECTED, 0),
        processed=counts.get(inbox_repo.PROCESSED, 0),
    )


def oldest_pending_received_at(conn: Connection) -> int | None:
    """Unix time the oldest body still waiting to be counted was received; None if none is."""
    return inbox_repo.oldest_pending_received_at(conn)
