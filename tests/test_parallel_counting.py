"""PostgreSQL: counting in parallel (a lock per partition of numbers) equals counting serially.

Two threads, each with its own connections, count the same inbox at once through the ingest
service's partitioned counting (`ingest.partitions`), each handed an arbitrary share of the rows
(some rows to both, as two sweeps would be), the bodies stored in an arbitrary arrival order
with duplicates; numbers of one account, of another, and unregistered; numbers hashed into 1 to
16 partitions, a batch spread over 1 to 16 transactions. The units and both rollups (per
number, and per account: written by both threads for numbers of the same account) must equal
those of one connection counting the bodies one batch at a time, in order.

Then, with real processes: one process counts a partition while another, handed the same rows
and more, counts the other partition and commits meanwhile, without waiting (proved by the
locks each holds, not by timing); and rows claimed `FOR UPDATE SKIP LOCKED` are counted by
exactly one transaction however many processes are handed them.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import text

from conftest import SECRET_KEY, drop_postgres_database, make_settings, new_postgres_database
from helpers import TEST_SEALER, add_number, create_tenant
from pgcluster import PostgresCluster
from wastats.ingest import partitions
from wastats.ingest.identity import CustomerHasher
from wastats.ingest.pipeline import Pipeline
from wastats.store import inbox as inbox_repo
from wastats.store import locks as locks_repo
from wastats.store.db import Database
from webhooks import at, envelope, inbound, status

pytestmark = pytest.mark.postgres

# Six numbers in six different partitions (a body with events of two numbers spans two).
NUMBERS = ["106540352242922", "106540352242923", "106540352242930", "106540352242931",
           "106540352242932", "106540352242933"]  # fmt: skip
ACCOUNT_A, ACCOUNT_B = NUMBERS[:3], NUMBERS[3:5]  # NUMBERS[5] stays unregistered
USERS = ["972501111111", "972502222222", "14155550100"]
TIMES = [at("2025-03-10 10:00"), at("2025-03-10 23:30"), at("2025-03-31 22:30"),
         at("2025-07-01 09:00"), at("2025-07-02 10:00")]  # fmt: skip
PRICING = [("CBP", "marketing", None), ("PMP", "utility", "regular"), ("PMP", "service", "free")]

TABLES = {
    "counted_units": "SELECT * FROM counted_units ORDER BY 1, 2",
    "message units": "SELECT phone_number_id, message_key, unit_ts, unit_bucket, unit_category, "
    "unit_pricing_type, unit_user_key FROM message_facts ORDER BY 1, 2",
    "monthly_counts": "SELECT * FROM monthly_counts ORDER BY 1, 2, 3, 4, 5",
    "account_monthly_counts": "SELECT a.name, m.month, m.bucket, m.category, "
    "m.pricing_type, m.units FROM account_monthly_counts m JOIN accounts a "
    "ON a.id = m.account_id ORDER BY 1, 2, 3, 4, 5",
}

event = st.tuples(
    st.sampled_from(["inbound", "sent", "delivered", "read"]),
    st.sampled_from(NUMBERS),
    st.sampled_from(USERS),
    st.sampled_from(TIMES),
    st.integers(0, 3),  # message
    st.sampled_from(PRICING),
)


def change(e: tuple[Any, ...]) -> dict[str, Any]:
    kind, number, user, ts, message, (model, category, type_) = e
    if kind == "inbound":
        return inbound(user, ts, f"wamid.in.{user}.{ts}", number=number)
    return status(f"wamid.out.{number}.{message}", kind, ts, user=user, number=number,
                  pricing=(model, category, type_))  # fmt: skip


@pytest.fixture(scope="module")
def pipeline() -> Pipeline:
    return Pipeline(CustomerHasher(SECRET_KEY.encode()))


def new_database(cluster: PostgresCluster) -> tuple[str, str]:
    name = new_postgres_database(cluster)
    url = cluster.url(name)
    config = make_settings(url)
    for label, numbers in (("A", ACCOUNT_A), ("B", ACCOUNT_B)):
        tenant = create_tenant(config, label, "Asia/Jerusalem")
        for i, number in enumerate(numbers):
            add_number(config, tenant, f"1555078{label == 'A':d}{i:04d}", number)
    return name, url


def store_bodies(db: Database, bodies: list[bytes]) -> list[int]:
    """The bodies in the inbox, pending; their ids in the order given (duplicates stored once)."""
    with db.write() as conn:
        new = inbox_repo.insert_bodies(
            conn,
            [inbox_repo.NewBody(hashlib.sha256(b).hexdigest(), b, "webhook", 0) for b in bodies],
            TEST_SEALER,
        )
    return sorted(new.values())


def snapshot(url: str) -> dict[str, list[tuple[Any, ...]]]:
    with psycopg.connect(url.replace("+psycopg", "")) as conn:
        return {name: conn.execute(query).fetchall() for name, query in TABLES.items()}


@settings(max_examples=12, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    events=st.lists(event, min_size=1, max_size=40),
    packing=st.lists(st.integers(1, 3), min_size=40, max_size=40),
    order=st.randoms(use_true_random=False),
    shares=st.lists(st.sampled_from(["first", "second", "both"]), min_size=80, max_size=80),
    partition_count=st.sampled_from([1, 2, 3, 16]),
    transactions=st.sampled_from([1, 2, 4, 16]),
)
def test_parallel_counting_equals_serial_counting(
    pg_cluster: PostgresCluster,
    pipeline: Pipeline,
    events: list[tuple[Any, ...]],
    packing: list[int],
    order: Any,
    shares: list[str],
    partition_count: int,
    transactions: int,
) -> None:
    # Bodies of 1-3 events (of any numbers: a body may span partitions), as Meta batches them.
    bodies: list[bytes] = []
    i = 0
    for size in packing:
        if i >= len(events):
            break
        bodies.append(json.dumps(envelope(*(change(e) for e in events[i : i + size]))).encode())
        i += size
    serial_name, serial_url = new_database(pg_cluster)
    parallel_name, parallel_url = new_database(pg_cluster)
    serial, parallel = Database(serial_url, pool_size=2), Database(parallel_url, pool_size=4)
    # How numbers are partitioned and a batch split must not change any count: only which
    # transaction counts what.
    saved = locks_repo.PARTITIONS, partitions.TRANSACTIONS_PER_BATCH
    locks_repo.PARTITIONS, partitions.TRANSACTIONS_PER_BATCH = partition_count, transactions
    try:
        for raw in bodies:  # one process, one batch at a time, in order
            partitions.count_bodies(serial, pipeline, TEST_SEALER, store_bodies(serial, [raw]), 0)

        arrived = bodies + order.sample(bodies, k=len(bodies) // 2)  # with duplicates
        order.shuffle(arrived)
        ids = store_bodies(parallel, arrived)
        handed: list[list[int]] = [[], []]
        for inbox_id, share in zip(ids, shares, strict=False):
            for which in {"first": [0], "second": [1], "both": [0, 1]}[share]:
                handed[which].append(inbox_id)
        handed[0] += ids[len(shares) :]
        failures: list[BaseException] = []

        def count(share: list[int]) -> None:
            try:
                partitions.count_bodies(parallel, pipeline, TEST_SEALER, share, 0)
            except BaseException as exc:  # reported by the test, not lost in the thread
                failures.append(exc)

        threads = [threading.Thread(target=count, args=(share,)) for share in handed]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
        assert not failures, failures
        with parallel.read() as conn:
            pending = conn.execute(text("SELECT count(*) FROM inbox WHERE state = 'pending'"))
            assert pending.scalar_one() == 0
        assert snapshot(parallel_url) == snapshot(serial_url)
    finally:
        locks_repo.PARTITIONS, partitions.TRANSACTIONS_PER_BATCH = saved
        serial.dispose()
        parallel.dispose()
        drop_postgres_database(pg_cluster, serial_name)
        drop_postgres_database(pg_cluster, parallel_name)


def test_batches_for_numbers_in_other_partitions_do_not_wait(
    pg_cluster: PostgresCluster, pipeline: Pipeline
) -> None:
    """No global lock: while a batch for one number is counted (uncommitted), a batch for a
    number of another partition is counted and committed; one for the same number waits.
    (Numbers of two accounts: two numbers of one account also share their account's rollup
    rows, which the second batch's last step would wait for, row by row, not for the lock.)"""
    first, other = ACCOUNT_A[0], ACCOUNT_B[0]
    assert locks_repo.partition_of(first) != locks_repo.partition_of(other)
    name, url = new_database(pg_cluster)
    db = Database(url, pool_size=3)

    def body(number: str, user: str) -> bytes:
        return json.dumps(envelope(inbound(user, TIMES[0], number=number))).encode()

    try:
        ids = {n: store_bodies(db, [body(n, USERS[0])]) for n in (first, other)}
        with db.write() as holding:
            holding.execute(text("SET LOCAL lock_timeout = '20s'"))
            report = partitions._count_group(holding, pipeline, TEST_SEALER, ids[first], 0, True)
            assert report.inbound == 1  # counted, not committed: its partition's lock is held
            # Another number's batch goes through meanwhile (a global lock would make it wait
            # for the transaction above, which this thread holds open: lock_timeout fails it).
            with db.write() as conn:
                conn.execute(text("SET LOCAL lock_timeout = '5s'"))
                assert (
                    partitions._count_group(
                        conn, pipeline, TEST_SEALER, ids[other], 0, True
                    ).inbound
                    == 1
                )
            # The same number's partition is taken: a try says so instead of waiting.
            with db.write() as conn:
                partition = locks_repo.partition_of(first)
                assert not locks_repo.try_partition_locks(conn, [partition])
    finally:
        db.dispose()
        drop_postgres_database(pg_cluster, name)


# --- real processes -------------------------------------------------------------------------------

COUNTER = """
import json, sys
from helpers import TEST_SEALER
from conftest import SECRET_KEY
from wastats.ingest import partitions
from wastats.ingest.identity import CustomerHasher
from wastats.ingest.pipeline import Pipeline
from wastats.store.db import Database

db = Database(sys.argv[1], pool_size=2)
report = partitions.count_bodies(
    db, Pipeline(CustomerHasher(SECRET_KEY.encode())), TEST_SEALER, json.loads(sys.argv[2]), 0
)
db.dispose()
print(json.dumps({"bodies": report.bodies, "inbound": report.inbound}))
"""
TESTS = Path(__file__).resolve().parent


def start_counter(url: str, ids: list[int], *, may_wait: bool) -> subprocess.Popen[str]:
    """A process that counts these inbox rows (`partitions.count_bodies`) and prints its report.
    Unless it `may_wait`, any lock it waits for more than 10 s fails it (PGOPTIONS reaches every
    connection it opens): a process that should not wait must not hang the test instead."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), str(TESTS.parent / "src")])}
    if not may_wait:
        env["PGOPTIONS"] = "-c lock_timeout=10s"
    return subprocess.Popen(
        [sys.executable, "-c", COUNTER, url, json.dumps(ids)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip


def finished(process: subprocess.Popen[str]) -> dict[str, int]:
    out, err = process.communicate(timeout=120)
    assert process.returncode == 0, err[-3000:]
    report: dict[str, int] = json.loads(out)
    return report


def states(db: Database, ids: list[int]) -> set[str]:
    with db.read() as conn:
        rows = conn.execute(text("SELECT DISTINCT state FROM inbox WHERE id = ANY(:ids)"),
                            {"ids": ids})  # fmt: skip
        return {str(state) for (state,) in rows}


def test_two_processes_count_different_partitions_at_once_and_never_queue(
    pg_cluster: PostgresCluster,
) -> None:
    """Process A counts the bodies of one number and is held inside its transaction (a row it
    writes is held by the test). Process B is handed the same bodies and those of a number of
    another partition, as two sweeps are: it counts and commits the other partition while A
    still holds its own, and skips A's rows instead of waiting for them (a wait would fail B
    with its 10 s lock_timeout). Released, A finishes: every body counted once."""
    first, other = ACCOUNT_A[0], ACCOUNT_B[0]
    assert locks_repo.partition_of(first) != locks_repo.partition_of(other)
    name, url = new_database(pg_cluster)
    db = Database(url, pool_size=2)
    plain = url.replace("+psycopg", "")

    def bodies(number: str) -> list[int]:
        return store_bodies(db, [json.dumps(envelope(inbound(user, TIMES[0], number=number)))
                                 .encode() for user in USERS])  # fmt: skip

    a = b = None
    try:
        ids = {n: bodies(n) for n in (first, other)}
        with psycopg.connect(plain) as blocker:
            # An uncommitted row of A's number in `number_activity`: A's upsert of it waits for
            # this transaction, after A has claimed its rows and its partition's lock.
            blocker.execute("INSERT INTO number_activity VALUES (%s, 0, 0)", (first,))
            # A waits for the test's row as long as B takes (seconds on a loaded machine).
            a = start_counter(url, ids[first], may_wait=True)
            with psycopg.connect(plain, autocommit=True) as admin:
                deadline = time.monotonic() + 60
                while not admin.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = %s "
                    "AND wait_event_type = 'Lock'", (name,),
                ).fetchone()[0]:  # type: ignore[index]  # fmt: skip
                    assert a.poll() is None, a.communicate()
                    assert time.monotonic() < deadline, "A never reached the held row"
                    time.sleep(0.05)
                a_holds = (
                    "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity s ON s.pid = l.pid "
                    "WHERE s.datname = %s AND l.locktype = 'advisory' AND l.granted "
                    "AND l.classid = %s AND l.objid = %s"
                )
                held = (name, locks_repo.LOCK_SPACE, locks_repo.partition_of(first))
                assert admin.execute(a_holds, held).fetchone() == (1,)

                b = start_counter(url, ids[first] + ids[other], may_wait=False)
                assert finished(b) == {"bodies": len(USERS), "inbound": len(USERS)}
                # B committed the other partition while A is still inside its transaction.
                assert states(db, ids[other]) == {"processed"}
                assert states(db, ids[first]) == {"pending"}
                assert admin.execute(a_holds, held).fetchone() == (1,)
            blocker.rollback()
            assert finished(a) == {"bodies": len(USERS), "inbound": len(USERS)}
        assert states(db, ids[first] + ids[other]) == {"processed"}
    finally:
        for process in (a, b):
            if process is not None and process.poll() is None:
                process.kill()
                process.communicate()
        db.dispose()
        drop_postgres_database(pg_cluster, name)


def test_claimed_rows_are_skipped_never_waited_for_nor_counted_twice(
    pg_cluster: PostgresCluster, pipeline: Pipeline
) -> None:
    """`claim_pending` holds rows for its transaction; another transaction's claim skips them
    (now, without waiting); once the first commits them counted, nobody claims them again; a
    claim rolled back gives them back. Then three threads handed the very same rows count
    each body exactly once between them (their reports add up to the number of bodies)."""
    name, url = new_database(pg_cluster)
    db = Database(url, pool_size=6)
    try:
        raws = [json.dumps(envelope(change(e))).encode()
                for e in [("inbound", n, u, TIMES[0], 0, PRICING[0])
                          for n in NUMBERS for u in USERS]]  # fmt: skip
        ids = store_bodies(db, raws)
        half = ids[: len(ids) // 2]
        with db.write() as first:
            first.execute(text("SET LOCAL lock_timeout = '5s'"))
            assert inbox_repo.claim_pending(first, half) == half
            with db.write() as second:
                second.execute(text("SET LOCAL lock_timeout = '5s'"))
                assert inbox_repo.claim_pending(second, ids) == ids[len(half) :]
                second.rollback()  # gives its claim back
            partitions._count_group(first, pipeline, TEST_SEALER, half, 0, True)
        with db.write() as conn:
            assert inbox_repo.unclaimed_pending(conn, ids) == ids[len(half) :]

        more = store_bodies(db, [json.dumps(envelope(status(f"wamid.x.{i}", "sent", TIMES[1],
                                 user=USERS[i % 3], number=NUMBERS[i % 6]))).encode()
                                 for i in range(60)])  # fmt: skip
        handed = ids[len(half) :] + more
        reports: list[int] = []
        failures: list[BaseException] = []

        def count() -> None:
            try:
                report = partitions.count_bodies(db, pipeline, TEST_SEALER, handed, 0)
                reports.append(report.bodies)
            except BaseException as exc:  # reported by the test, not lost in the thread
                failures.append(exc)

        threads = [threading.Thread(target=count) for _ in range(3)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
        assert not failures, failures
        assert sum(reports) == len(handed)
        assert states(db, ids + more) == {"processed"}
    finally:
        db.dispose()
        drop_postgres_database(pg_cluster, name)
