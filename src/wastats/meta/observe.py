"""The per-WABA sync state for operators: a `/healthz` section and `/metrics` gauges
(spec/meta-record.md, "Faults": last success, last error, next try per WABA)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import UTC, datetime

from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import Connection
from sqlalchemy.exc import SQLAlchemyError

from wastats.store import meta as repo
from wastats.store.db import Database

log = logging.getLogger("wastats.meta")


def _iso(ts: int | None) -> str | None:
    return None if ts is None else datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def health(conn: Connection) -> list[dict[str, object]]:
    """One entry per WABA the service syncs (empty when none is)."""
    return [
        {
            "waba_id": s.waba_id,
            "last_success": _iso(s.last_success),
            "covered_from": _iso(s.covered_from),
            "covered_to": _iso(s.covered_to),
            "last_error": s.last_error,
            "last_error_at": _iso(s.last_error_at),
            "failures": s.failures,
            "next_try": _iso(s.next_try) if s.next_try else None,
        }
        for s in repo.list_states(conn)
    ]


class MetaSyncCollector(Collector):
    """Read at scrape time from the database (every process sees every WABA's state)."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def collect(self) -> Iterator[Metric]:
        try:
            with self.db.read() as conn:
                states = repo.list_states(conn)
        except SQLAlchemyError:
            log.warning("metrics: could not read the Meta sync state")
            return
        gauges = {
            "last_success": GaugeMetricFamily(
                "wastats_meta_sync_last_success_timestamp_seconds",
                "Unix time the last complete sync of the WABA ended (0: never).",
                labels=["waba"],
            ),
            "covered_to": GaugeMetricFamily(
                "wastats_meta_sync_covered_to_timestamp_seconds",
                "Unix time up to which Meta's record of the WABA is stored completely (0: none).",
                labels=["waba"],
            ),
            "failures": GaugeMetricFamily(
                "wastats_meta_sync_consecutive_failures",
                "Syncs of the WABA that failed since its last success.",
                labels=["waba"],
            ),
            "next_try": GaugeMetricFamily(
                "wastats_meta_sync_next_try_timestamp_seconds",
                "Unix time of the WABA's next sync.",
                labels=["waba"],
            ),
        }
        for s in states:
            gauges["last_success"].add_metric([s.waba_id], s.last_success or 0)
            gauges["covered_to"].add_metric([s.waba_id], s.covered_to or 0)
            gauges["failures"].add_metric([s.waba_id], s.failures)
            gauges["next_try"].add_metric([s.waba_id], s.next_try)
        yield from gauges.values()
