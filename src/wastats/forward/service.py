"""Forwarding in the service: the enqueue hook and the delivery worker of one app, together."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from sqlalchemy import Connection

from wastats.forward import destinations
from wastats.forward.match import ForwardQueue
from wastats.forward.worker import Forwarder
from wastats.sealing import BodySealer
from wastats.settings import Settings
from wastats.store.db import Database


class Forwarding:
    KEY = "forwarding"
    """Where the app keeps its `Forwarding` (in `AppContext.extras`)."""

    def __init__(
        self,
        db: Database,
        settings: Settings,
        sealer: BodySealer,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.db = db
        self.settings = settings
        self.clock = clock
        self.queue = ForwardQueue()
        self.worker = Forwarder(
            db,
            sealer,
            clock=clock,
            timeout=settings.forward_timeout_seconds,
            concurrency=settings.forward_concurrency,
            ca_file=settings.forward_ca_file,
            retention_days=settings.raw_retention_days,
        )
        # The inbox writer hands each committed delivery to this worker (posted from memory).
        self.queue.attach(self.worker)

    def start(self) -> None:
        """Bring the configured destinations in step with the settings, start the worker."""
        with self.db.write() as conn:
            destinations.sync_configured(conn, self.settings, int(self.clock()))
        self.worker.start()

    def stop(self) -> None:
        self.worker.stop()

    def health(self, conn: Connection) -> dict[str, Any] | None:
        """The `forwarding` part of `/healthz` (None when no destination is set), and whether a
        destination is far behind (`WASTATS_FORWARD_DEGRADED_AFTER_SECONDS`)."""
        found = destinations.statuses(conn, int(self.clock()))
        if not found:
            return None
        limit = self.settings.forward_degraded_after_seconds
        behind = [s for s in found if not s.destination.paused and s.oldest_pending_age > limit]
        return {
            "status": "behind" if behind else "ok" if self.worker.running else "stopped",
            "worker": "running" if self.worker.running else "stopped",
            "destinations": [
                {
                    "id": s.destination.id,
                    "url": destinations.display_url(s.destination.url),
                    "state": s.state,
                    "delivered": s.destination.delivered_total,
                    "pending": s.backlog.pending,
                    "failing": s.backlog.failing,
                    "dead": s.backlog.dead,
                    "oldest_pending_seconds": s.oldest_pending_age,
                    "last_error": s.destination.last_error,
                }
                for s in found
            ],
        }


def forwarding_of(extras: dict[str, Any]) -> Forwarding | None:
    found = extras.get(Forwarding.KEY)
    return found if isinstance(found, Forwarding) else None
