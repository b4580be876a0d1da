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


def test_every_number_table_leads_its_keys_with_the_number() -> None:
    """The schema shards by phone_number_id: every key of a number table starts with it."""
    reference = {"accounts", "access_tokens", "login_failures", "business_numbers", "inbox",
                 "service_state", "alembic_version"}  # fmt: skip
    for table in metadata.sorted_tables:
        if table.name in reference:
            continue
        assert table.primary_key.columns.keys()[0] == "phone_number_id", table.name
        for index in table.indexes:
            assert next(iter(index.columns)).name == "phone_number_id", (table.name, index.name)
