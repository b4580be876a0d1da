"""Migrations: upgrade from empty on both databases, and the models match the migrations."""

from __future__ import annotations

from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import create_engine, inspect

from conftest import drop_postgres_database
from pgcluster import PostgresCluster
from wastats.store.migrate import head_revision, upgrade
from wastats.store.schema import metadata


def _check_fresh_upgrade(url: str) -> None:
    before, after = upgrade(url)
    assert before is None
    assert after == head_revision()
    assert upgrade(url) == (after, after)  # a second run is a no-op
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            diff = compare_metadata(
                MigrationContext.configure(conn, opts={"compare_type": True}), metadata
            )
            tables = set(inspect(conn).get_table_names())
    finally:
        engine.dispose()
    assert diff == []
    assert set(metadata.tables) <= tables


def test_upgrade_from_empty_sqlite(tmp_path: Path) -> None:
    _check_fresh_upgrade(f"sqlite:///{tmp_path / 'fresh.db'}")


@pytest.mark.postgres
def test_upgrade_from_empty_postgresql(pg_cluster: PostgresCluster) -> None:
    import psycopg

    name = "fresh_upgrade"
    with psycopg.connect(pg_cluster.url().replace("+psycopg", ""), autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}"')
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        _check_fresh_upgrade(pg_cluster.url(name))
    finally:
        drop_postgres_database(pg_cluster, name)


def test_every_tenant_table_leads_its_keys_with_the_tenant_or_number() -> None:
    """The schema shards by tenant: every key of a table holding tenant data starts with the
    number (`phone_number_id`) or, for account-wide sums, the account (`account_id`)."""
    reference = {"accounts", "access_tokens", "login_failures", "business_numbers", "inbox",
                 "service_state", "alembic_version"}  # fmt: skip
    by_account = {"account_monthly_counts"}
    for table in metadata.sorted_tables:
        if table.name in reference:
            continue
        lead = "account_id" if table.name in by_account else "phone_number_id"
        assert table.primary_key.columns.keys()[0] == lead, table.name
        for index in table.indexes:
            assert next(iter(index.columns)).name == lead, (table.name, index.name)
