"""Citus: the table registry, `wastats db distribute`, migrations on a distributed database, and
the service on a real coordinator + two workers counting exactly what plain PostgreSQL counts.

The cluster is started by the suite (`conftest.citus_cluster`, `pgcluster.CitusCluster`); where
Citus is not installed these tests skip with the reason (`WASTATS_REQUIRE_CITUS=1`: they fail).
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import psycopg
import pytest
from alembic import command
from fastapi.testclient import TestClient
from sqlalchemy import create_engine

from conftest import (
    SECRET_KEY,
    FakeClock,
    drop_postgres_database,
    make_settings,
    new_citus_database,
    new_postgres_database,
)
from helpers import TEST_SEALER, add_number, bearer, create_tenant, get_token
from pgcluster import CitusCluster, PostgresCluster
from procs import run_cli
from wastats.app import create_app
from wastats.ingest import partitions
from wastats.ingest.identity import CustomerHasher
from wastats.ingest.pipeline import Pipeline
from wastats.store import citus, schema
from wastats.store.db import Database
from wastats.store.migrate import alembic_config, upgrade
from webhooks import at, envelope, inbound, post, settle, status

# One group (`--dist loadgroup`; XDIST_GROUPS in conftest): the worker that takes these tests
# starts a Citus cluster (three PostgreSQL servers) for them, instead of every worker starting one.
pytestmark = pytest.mark.xdist_group("citus")

NUMBERS = {"106540352242922": "15550783881", "106540352242931": "15550783882"}


def test_every_table_of_the_schema_has_a_citus_role() -> None:
    """A new table must be added to the registry (one line in store/citus.py), or this fails."""
    registered = [*citus.DISTRIBUTED, *citus.REFERENCE, *citus.COORDINATOR_LOCAL]
    assert len(registered) == len(set(registered)), "a table is registered twice"
    missing = set(schema.metadata.tables) - set(registered)
    assert not missing, f"add these tables to store/citus.py: {sorted(missing)}"
    assert not set(registered) - set(schema.metadata.tables), "registered tables that are gone"
    for table, column in citus.DISTRIBUTED.items():
        assert column in schema.metadata.tables[table].c, (table, column)
        primary = [c.name for c in schema.metadata.tables[table].primary_key.columns]
        assert column in primary, f"{table}: Citus needs {column} in the primary key"


@pytest.mark.postgres
def test_distribute_refuses_plain_postgresql_clearly(
    pg_cluster: PostgresCluster, tmp_path: Path
) -> None:
    name = new_postgres_database(pg_cluster)
    try:
        result = run_cli(["db", "distribute"], pg_cluster.url(name), tmp_path)
        assert result.returncode == 1
        assert "no Citus extension" in result.stdout + result.stderr
        assert "Traceback" not in result.stdout + result.stderr
    finally:
        drop_postgres_database(pg_cluster, name)


def _roles(url: str) -> dict[str, tuple[str, Any]]:
    with psycopg.connect(url.replace("+psycopg", "")) as conn:
        rows = conn.execute(
            "SELECT logicalrelid::regclass::text, partmethod, colocationid FROM pg_dist_partition"
        ).fetchall()
    return {table: (method, colocation) for table, method, colocation in rows}


def _check_layout(url: str) -> None:
    roles = _roles(url)
    for table in citus.REFERENCE:
        assert roles[table][0] == "n", table
    for table in citus.DISTRIBUTED:
        assert roles[table][0] == "h", table
    for table in citus.COORDINATOR_LOCAL:
        assert table not in roles, table
    by_number = {roles[t][1] for t, c in citus.DISTRIBUTED.items() if c == "phone_number_id"}
    assert len(by_number) == 1, "the per-number tables must be co-located"


def _count_in_parallel(url: str, bodies: list[bytes]) -> None:
    """Store the bodies in the inbox and count them from two threads at once."""
    import hashlib

    from wastats.store import inbox as inbox_repo

    db = Database(url, pool_size=4)
    pipeline = Pipeline(CustomerHasher(SECRET_KEY.encode()))
    try:
        with db.write() as conn:
            new = inbox_repo.insert_bodies(
                conn,
                [
                    inbox_repo.NewBody(hashlib.sha256(b).hexdigest(), b, "webhook", 0)
                    for b in bodies
                ],
                TEST_SEALER,
            )
        ids = sorted(new.values())
        failures: list[BaseException] = []

        def count(share: list[int]) -> None:
            try:
                partitions.count_bodies(db, pipeline, TEST_SEALER, share, 0)
            except BaseException as exc:  # reported by the test
                failures.append(exc)

        threads = [threading.Thread(target=count, args=(ids[i::2] + ids[:3],)) for i in (0, 1)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
        assert not failures, failures
    finally:
        db.dispose()


def test_distribute_lays_out_every_table_keeps_the_data_and_is_idempotent(
    citus_cluster: CitusCluster, tmp_path: Path
) -> None:
    name = new_citus_database(citus_cluster, distribute=False)
    url = citus_cluster.url(name)
    try:
        config = make_settings(url)
        tenant = create_tenant(config, "Before", "UTC")
        for pnid, digits in NUMBERS.items():
            add_number(config, tenant, digits, pnid)
        bodies = [
            json.dumps(envelope(inbound(user, at("2025-03-10 10:00"), number=n))).encode()
            for n in NUMBERS
            for user in ("972501111111", "972502222222")
        ]
        _count_in_parallel(url, bodies)  # data in the tables before they are distributed

        first = run_cli(["db", "distribute"], url, tmp_path)
        assert first.returncode == 0, first.stdout + first.stderr
        assert (
            f"Distributed {len(citus.DISTRIBUTED) + len(citus.REFERENCE)} tables"
            in first.stdout.replace("\n", " ")
        )
        _check_layout(url)
        again = run_cli(["db", "distribute"], url, tmp_path)
        assert again.returncode == 0, again.stdout + again.stderr
        assert "already distributed" in again.stdout
        with psycopg.connect(url.replace("+psycopg", "")) as conn:
            units = conn.execute("SELECT sum(units) FROM monthly_counts").fetchone()
            assert units == (4,)
        recount = run_cli(["recount"], url, tmp_path)
        assert "No difference" in recount.stdout, recount.stdout + recount.stderr
    finally:
        citus_cluster.drop_database(name)


def test_migrations_after_distributing_an_old_schema(citus_cluster: CitusCluster) -> None:
    """A 0003 schema distributed first, then upgraded: the tables later migrations create are
    distributed by them (else 0005 fails: "relation message_facts is not distributed")."""
    name = f"m_{citus_cluster.port}_old"
    citus_cluster.create_database(name)
    url = citus_cluster.url(name)
    try:
        engine = create_engine(url)
        try:
            with engine.begin() as conn:
                command.upgrade(alembic_config(conn), "0003")
        finally:
            engine.dispose()
        db = Database(url)
        try:
            assert "counted_units" in citus.distribute(db)
        finally:
            db.dispose()
        upgrade(url)
        _check_layout(url)
        assert upgrade(url)[0] == upgrade(url)[1]
    finally:
        citus_cluster.drop_database(name)


def _answers(url: str, bodies: list[bytes]) -> dict[str, Any]:
    """What the APIs answer after these webhooks: partners statistics (all; per number),
    getWhatsApp, and /v1's monthly stats."""
    config = make_settings(url)
    tenant = create_tenant(config, "Same", "Asia/Jerusalem")
    for pnid, digits in NUMBERS.items():
        add_number(config, tenant, digits, pnid)
    clock = FakeClock(at("2025-03-20 12:00"))
    with TestClient(create_app(config, clock=clock)) as client:
        for raw in bodies:
            assert post(client, raw) == 200
        settle(client)
        headers = bearer(get_token(client, tenant))
        stats = "/api/whatsapp/getConversationsStatistics"
        answers: dict[str, Any] = {"all": client.get(stats, headers=headers).json()}
        for digits in NUMBERS.values():
            answers[digits] = client.get(stats, headers=headers, params={"whatsapp": digits}).json()
        numbers = client.get("/api/whatsapp/getWhatsApp", headers=headers).json()
        for each in numbers if isinstance(numbers, list) else numbers.get("data", []):
            if isinstance(each, dict):
                each.pop("id", None)
        answers["getWhatsApp"] = numbers
    return answers


@pytest.mark.postgres
def test_the_service_on_citus_answers_like_plain_postgresql(
    citus_url: str, pg_cluster: PostgresCluster
) -> None:
    month = "2025-03-{:02d} {:02d}:00"
    bodies = [
        json.dumps(envelope(change)).encode()
        for i, n in enumerate(NUMBERS)
        for change in (
            inbound("972501111111", at(month.format(10 + i, 9)), number=n),
            inbound("972502222222", at(month.format(11, 22)), number=n),
            status(f"wamid.{n}.1", "sent", at(month.format(12, 8)), number=n,
                   pricing=("PMP", "marketing", "regular")),
            status(f"wamid.{n}.1", "delivered", at(month.format(12, 9)), number=n,
                   pricing=("PMP", "marketing", "regular")),
            status(f"wamid.{n}.2", "sent", at(month.format(13 + i, 8)), number=n,
                   pricing=("PMP", "utility", "regular")),
        )
    ]  # fmt: skip
    name = new_postgres_database(pg_cluster)
    try:
        plain = _answers(pg_cluster.url(name), bodies)
    finally:
        drop_postgres_database(pg_cluster, name)
    on_citus = _answers(citus_url, bodies)
    assert on_citus == plain
    assert plain["all"] != plain[next(iter(NUMBERS.values()))]  # two numbers counted
