"""PostgreSQL: registering a number while a batch for it is being counted.

Under READ COMMITTED the two transactions do not see each other: the batch finds the number
unregistered (so adds nothing to its rollups), the registration builds the rollups from units
that do not include the batch's. Both must take the number's counting lock (`store.locks`: one
per partition of numbers), so one waits for the other.
Driven with two real connections: the batch is held open, uncommitted, while the registration
starts; the test waits until the registration is either blocked on the lock or done."""

from __future__ import annotations

import json
import threading
import time

import psycopg
import pytest

from conftest import SECRET_KEY, drop_postgres_database, make_settings, new_postgres_database
from helpers import add_number, count_batch, create_tenant
from pgcluster import PostgresCluster
from wastats.ingest.identity import CustomerHasher
from wastats.ingest.pipeline import Pipeline
from wastats.ingest.recount import recount_number
from wastats.store import counts as counts_repo
from wastats.store import numbers as numbers_repo
from wastats.store.db import Database
from webhooks import PHONE_NUMBER_ID, at, envelope, inbound

pytestmark = pytest.mark.postgres


def _waiting_for_an_advisory_lock(url: str) -> bool:
    with psycopg.connect(url.replace("+psycopg", ""), autocommit=True) as admin:
        row = admin.execute(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
        ).fetchone()
    return bool(row and row[0])


def test_a_number_registered_while_its_batch_is_counted_gets_the_batch(
    pg_cluster: PostgresCluster,
) -> None:
    name = new_postgres_database(pg_cluster)
    url = pg_cluster.url(name)
    config = make_settings(url)
    tenant = create_tenant(config, "Racer")
    pipeline = Pipeline(CustomerHasher(SECRET_KEY.encode()))
    body = json.dumps(envelope(inbound("972501111111", at("2025-03-10 10:00")))).encode()
    db = Database(url, pool_size=2)
    failures: list[BaseException] = []

    def register() -> None:
        try:
            add_number(config, tenant, "15550783881", PHONE_NUMBER_ID)
        except BaseException as exc:  # reported by the test, not lost in the thread
            failures.append(exc)

    registration = threading.Thread(target=register)
    try:
        with db.write() as conn:
            count_batch(conn, pipeline, [body], draft=False)  # counted, not committed yet
            registration.start()
            deadline = time.monotonic() + 30
            while registration.is_alive() and not _waiting_for_an_advisory_lock(url):
                assert time.monotonic() < deadline, "the registration neither waited nor ended"
                registration.join(timeout=0.01)
            # Leaving the block commits the batch; a waiting registration goes on from here.
        registration.join(timeout=30)
        assert not registration.is_alive()
        assert not failures, failures
        with db.write() as conn:
            account_id = numbers_repo.get_number(conn, PHONE_NUMBER_ID).account_id  # type: ignore[union-attr]
            totals = counts_repo.monthly_bucket_totals(
                conn, account_id=account_id, phone_number_id=None, first_month=None, last_month=None
            )
            assert {m: dict(b) for m, b in totals.items()} == {202503: {"incoming": 1}}
            assert not recount_number(conn, PHONE_NUMBER_ID, repair=False).differs
    finally:
        db.dispose()
        drop_postgres_database(pg_cluster, name)
