"""Fixtures: a fresh real database per test, on SQLite and on PostgreSQL, and the real app.

Every test that takes `database_url` (directly or through `settings`, `app`, `client`) runs twice:
once on a new SQLite file and once on a new PostgreSQL database in a throwaway cluster started
from the installed binaries. Both are copies of a template migrated once per session, so a fresh
database costs milliseconds; a PostgreSQL one is emptied and handed to the worker's next test
(`PostgresPool`) rather than dropped. Without PostgreSQL binaries the PostgreSQL half skips with the
reason, unless WASTATS_REQUIRE_POSTGRES=1 (set by .ci/run), which turns the skip into a failure.
WASTATS_REQUIRE_PODMAN=1 does the same for the container tests (tests/test_container.py).
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import hypothesis
import psycopg
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from pgcluster import CitusCluster, PostgresCluster, PostgresUnavailable
from wastats.app import create_app
from wastats.settings import Settings
from wastats.store.migrate import upgrade

# Hypothesis's per-example deadline (200 ms) is a timing assertion: on a shared two-core machine
# a slow example is load, not a bug, and it failed tests that assert nothing about speed.
hypothesis.settings.register_profile("wastats", deadline=None)
hypothesis.settings.load_profile("wastats")

REQUIRE_POSTGRES = os.environ.get("WASTATS_REQUIRE_POSTGRES") == "1"
REQUIRE_PODMAN = os.environ.get("WASTATS_REQUIRE_PODMAN") == "1"
FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "webhooks"
APP_SECRET = "test-app-secret"
VERIFY_TOKEN = "test-verify-token"
SECRET_KEY = "test-secret-key-0123456789abcdef0123456789"
JAN_2026 = 1_767_225_600  # 2026-01-01T00:00:00Z


class FakeClock:
    """The service's notion of now, moved by the test (token expiry, lockout, 'this month')."""

    def __init__(self, now: float = JAN_2026 + 14 * 86400) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PostgresCluster]:
    try:
        cluster = PostgresCluster()
        cluster.start()
    except PostgresUnavailable as exc:
        if REQUIRE_POSTGRES:
            pytest.fail(f"WASTATS_REQUIRE_POSTGRES=1 but PostgreSQL is unavailable: {exc}")
        pytest.skip(f"PostgreSQL unavailable: {exc}")
    try:
        with psycopg.connect(cluster.url().replace("+psycopg", ""), autocommit=True) as admin:
            admin.execute("CREATE DATABASE wastats_template")
        upgrade(cluster.url("wastats_template"))
        yield cluster
    finally:
        cluster.destroy()


@pytest.fixture(scope="session")
def pg_pool(pg_cluster: PostgresCluster) -> PostgresPool:
    return PostgresPool(pg_cluster)


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("template") / "template.db"
    upgrade(f"sqlite:///{path}")
    return path


def new_postgres_database(cluster: PostgresCluster) -> str:
    name = f"t_{uuid.uuid4().hex[:16]}"
    with psycopg.connect(cluster.url().replace("+psycopg", ""), autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}" TEMPLATE wastats_template')
    return name


def drop_postgres_database(cluster: PostgresCluster, name: str) -> None:
    with psycopg.connect(cluster.url().replace("+psycopg", ""), autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


_SYSTEM_SCHEMAS = (
    "n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg_toast%'"
)
_FINGERPRINT = f"""
SELECT coalesce(string_agg(item, E'\\n' ORDER BY item), '') FROM (
  SELECT 'schema ' || n.nspname FROM pg_namespace n WHERE {_SYSTEM_SCHEMAS}
  UNION ALL
  SELECT format('relation %s.%s %s %s', n.nspname, c.relname, c.relkind, c.relpersistence)
    FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE {_SYSTEM_SCHEMAS}
  UNION ALL
  SELECT format('column %s.%s %s %s %s', a.attrelid::regclass, a.attname,
                format_type(a.atttypid, a.atttypmod), a.attnotnull, pg_get_expr(d.adbin, d.adrelid))
    FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
    JOIN pg_namespace n ON n.oid = c.relnamespace
    LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
   WHERE a.attnum > 0 AND NOT a.attisdropped AND {_SYSTEM_SCHEMAS}
  UNION ALL
  SELECT format('constraint %s %s %s', o.conrelid::regclass, o.conname, pg_get_constraintdef(o.oid))
    FROM pg_constraint o JOIN pg_namespace n ON n.oid = o.connamespace WHERE {_SYSTEM_SCHEMAS}
  UNION ALL
  SELECT 'index ' || pg_get_indexdef(i.indexrelid)
    FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
    JOIN pg_namespace n ON n.oid = c.relnamespace WHERE {_SYSTEM_SCHEMAS}
  UNION ALL
  SELECT 'trigger ' || pg_get_triggerdef(t.oid) FROM pg_trigger t WHERE NOT t.tgisinternal
  UNION ALL
  SELECT 'function ' || p.oid::regprocedure || ' ' || md5(p.prosrc)
    FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace WHERE {_SYSTEM_SCHEMAS}
  UNION ALL
  SELECT format('type %s %s', t.oid::regtype, t.typtype)
    FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
   WHERE {_SYSTEM_SCHEMAS} AND t.typrelid = 0 AND t.typelem = 0
  UNION ALL
  SELECT 'enum ' || e.enumtypid::regtype || ' ' || e.enumlabel FROM pg_enum e
  UNION ALL
  SELECT 'extension ' || extname || ' ' || extversion FROM pg_extension
  UNION ALL
  SELECT format('sequence %s.%s %s', schemaname, sequencename, last_value) FROM pg_sequences
  UNION ALL
  SELECT 'setting ' || array_to_string(setconfig, ',') FROM pg_db_role_setting
   WHERE setdatabase = (SELECT oid FROM pg_database WHERE datname = current_database())
  UNION ALL
  SELECT 'revision ' || version_num FROM alembic_version
  UNION ALL
  SELECT 'rows ' || count(*) FROM alembic_version
) AS items(item)
"""
"""Everything of a database's definition a test could change (schemas, tables and their columns,
constraints, indexes, triggers, functions, types, extensions, sequences' positions, database
settings, the migration revision): equal to the template's, the database is the template's
copy again once its tables are emptied."""


class PostgresPool:
    """A worker's PostgreSQL databases for `database_url`: a copy of the template, reused by a
    later test once emptied. `CREATE DATABASE ... TEMPLATE` and `DROP DATABASE` cost the server
    about 150 ms of CPU per test (writing and then deleting the catalogs' files and their WAL,
    8 MB each: about 400 tests of the suite take a PostgreSQL database, on a machine whose two
    cores bound the suite); emptying one costs 10 to 30 ms.

    Isolation stays exact: `give_back` first takes the database's name away (a connection or a
    process the finished test leaked can no longer reach it, as after a DROP), then empties
    the tables that hold rows (`TRUNCATE ... RESTART IDENTITY`), puts every used sequence back
    at its start, and compares the definition with the template's (`_FINGERPRINT`): a test that
    migrated, altered or dropped anything leaves a database that is dropped instead of reused.
    Only the planner's statistics may differ from a fresh copy (they change plans, not
    results)."""

    def __init__(self, cluster: PostgresCluster) -> None:
        self.cluster = cluster
        self._admin_url = cluster.url().replace("+psycopg", "")
        self._free: list[str] = []
        with psycopg.connect(cluster.url("wastats_template").replace("+psycopg", "")) as conn:
            self._template = self._fingerprint(conn)
            tables = conn.execute(
                "SELECT format('%I.%I', schemaname, tablename) FROM pg_tables "
                "WHERE schemaname NOT IN ('pg_catalog', 'information_schema') "
                "AND tablename <> 'alembic_version' ORDER BY 1"
            ).fetchall()
        self._tables = [str(t[0]) for t in tables]
        # One query that says which tables hold a row: TRUNCATE costs 2 to 3 ms a table
        # (new files for it and its indexes) and a test writes to a few of the twenty.
        self._nonempty = " UNION ALL ".join(
            f"SELECT {i} WHERE EXISTS (SELECT FROM {table})" for i, table in enumerate(self._tables)
        )

    @staticmethod
    def _fingerprint(conn: psycopg.Connection[Any]) -> str:
        row = conn.execute(_FINGERPRINT).fetchone()
        assert row is not None
        return str(row[0])

    def take(self) -> str:
        return self._free.pop() if self._free else new_postgres_database(self.cluster)

    def give_back(self, name: str) -> None:
        fresh = f"t_{uuid.uuid4().hex[:16]}"
        with psycopg.connect(self._admin_url, autocommit=True) as admin:
            # What the test left connected is ended (waiting up to 5 s for each to exit), as
            # DROP DATABASE ... WITH (FORCE) would; the rename fails if anything reconnected.
            admin.execute(
                "SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity WHERE datname = %s",
                (name,),
            )
            try:
                admin.execute(f'ALTER DATABASE "{name}" RENAME TO "{fresh}"')
            except psycopg.errors.InvalidCatalogName:
                return  # the test dropped it itself
            except psycopg.Error:
                admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
                return
        try:
            with psycopg.connect(self.cluster.url(fresh).replace("+psycopg", "")) as conn:
                used = [self._tables[int(r[0])] for r in conn.execute(self._nonempty).fetchall()]
                if used:
                    conn.execute(f"TRUNCATE {', '.join(used)} RESTART IDENTITY CASCADE")
                # A sequence advanced by rows since deleted, or by a rolled-back insert.
                conn.execute(
                    "SELECT setval(format('%I.%I', schemaname, sequencename)::regclass, "
                    "start_value, false) FROM pg_sequences WHERE last_value IS NOT NULL"
                )
                reusable = self._fingerprint(conn) == self._template
                conn.commit()
        except psycopg.Error:
            reusable = False
        if reusable:
            self._free.append(fresh)
        else:
            drop_postgres_database(self.cluster, fresh)


REQUIRE_CITUS = os.environ.get("WASTATS_REQUIRE_CITUS") == "1"
CITUS_SUITE = REQUIRE_CITUS or os.environ.get("WASTATS_CITUS") == "1"
"""Also run every test that takes `database_url` on Citus (a third parameter): set by
WASTATS_CITUS=1, and by WASTATS_REQUIRE_CITUS=1 (CI)."""
_DATABASES = ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]
if CITUS_SUITE:
    _DATABASES.append(pytest.param("citus", marks=pytest.mark.postgres))


CITUS_SKIPPED = {
    "test_database_errors_are_counted": "drops its database, which the Citus run shares",
}
"""Tests of `database_url` not run on Citus, and why (skipped with the reason, visibly)."""


XDIST_GROUPS = {"tests/test_container.py": "container", "tests/test_citus.py": "citus"}
"""The modules whose tests carry `pytest.mark.xdist_group(NAME)`, and NAME: under `--dist
loadgroup` (scripts/test) each group runs on one worker. pytest-xdist 3.8 marks a group by
suffixing the test ids on the workers, which pytest 9.2's structured ids silently ignore
(pytest-xdist issue #1386): the tests then spread over the workers, and both build the image.
So the controller's scheduler (`pytest_xdist_make_scheduler`) groups by this table, and the
collection checks that the table and the marks agree."""


def _xdist_group(item: pytest.Item) -> str | None:
    names = {
        str(m.args[0] if m.args else m.kwargs["name"]) for m in item.iter_markers("xdist_group")
    }
    return "_".join(sorted(names)) or None


def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """`--dist loadgroup` that groups by `XDIST_GROUPS` (see there); other modes as xdist has
    them. Scopes of one test each otherwise, so the workers stay balanced to the end."""
    if config.getvalue("dist") != "loadgroup":
        return None
    from xdist.scheduler import LoadGroupScheduling

    class TableGroupScheduling(LoadGroupScheduling):
        def _split_scope(self, nodeid: str) -> str:
            module = nodeid.split("::", 1)[0]
            group = XDIST_GROUPS.get(module)
            return f"@{group}" if group else super()._split_scope(nodeid)

    return TableGroupScheduling(config, log)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        module = item.nodeid.split("::", 1)[0].split("@", 1)[0]
        if _xdist_group(item) != XDIST_GROUPS.get(module):
            raise pytest.UsageError(
                f"{item.nodeid}: xdist_group {_xdist_group(item)!r}, but XDIST_GROUPS in "
                f"tests/conftest.py says {XDIST_GROUPS.get(module)!r} for {module}"
            )
    for item in items:
        callspec = getattr(item, "callspec", None)
        if callspec is None or callspec.params.get("database_url") != "citus":
            continue
        reason = CITUS_SKIPPED.get(getattr(item, "originalname", item.name))
        if reason:
            item.add_marker(pytest.mark.skip(reason=f"not on Citus: {reason}"))
    # The long tests first (a stable sort: the rest keep their order), so no worker starts one
    # of them when the others are about to finish. xdist schedules in this order (its loadgroup
    # puts a group, the container tests, before single tests).
    items.sort(key=_long_first_rank)


LONG_FIRST = (
    "tests/test_scaleout.py::test_three_processes_on_one_postgresql",  # 129 s on Citus, 69 s
    "tests/test_ingest_properties.py::test_any_order_duplication_and_batching_give_the_reference_",
    "tests/test_forwarding_procs.py::",
    "tests/test_parallel_counting.py::test_parallel_counting_equals_serial_counting",
    "tests/test_reconciliation.py::test_reconciliation_end_to_end",
    "tests/test_failures.py::test_kill_9_mid_stream_loses_no_acknowledged_body",
    "tests/test_v1_schemathesis.py::",
    "tests/test_citus.py::test_distribute_lays_out_every_table",
    "tests/test_ingest_properties.py::test_a_number_moved_mid_stream",
    "tests/test_forwarding.py::test_dead_letter_after_seven_days_then_replay",
    "tests/test_meta_cli.py::test_link_registers_the_missing_numbers_and_syncs",
    "tests/test_forwarding.py::test_a_hanging_destination_does_not_delay_another",
    "tests/test_whatsapp_payload.py::test_fuzz_",
    "tests/test_cli.py::test_serve_warns_of_several_workers_on_sqlite",
    "tests/test_cli.py::test_tables_never_cut_an_id",
    "tests/test_meta_sync.py::test_a_killed_sync_resumes_where_it_stopped",
    "tests/test_forwarding.py::test_cli_adds_lists_pauses_resumes_and_removes_destinations",
)
"""Node id prefixes of the longest tests, longest first, from `--durations=80` of a whole
`scripts/test` run (PYTEST_ADDOPTS; 2026-12-07, on this project's two-core machine, loaded, so
the seconds are inflated but their order holds): a slow test that starts last ends the run alone.
A test that grows long goes here; an entry that matches nothing is harmless."""


def _long_first_rank(item: pytest.Item) -> int:
    for rank, prefix in enumerate(LONG_FIRST):
        if item.nodeid.startswith(prefix):
            return rank
    return len(LONG_FIRST)


@pytest.fixture(params=_DATABASES)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "citus":
        yield request.getfixturevalue("citus_database")
        return
    if request.param == "sqlite":
        template: Path = request.getfixturevalue("sqlite_template")
        target = tmp_path / "wastats.db"
        shutil.copyfile(template, target)
        yield f"sqlite:///{target}"
        return
    pool: PostgresPool = request.getfixturevalue("pg_pool")
    name = pool.take()
    try:
        yield pool.cluster.url(name)
    finally:
        pool.give_back(name)


def make_settings(database_url: str, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "database_url": database_url,
        "meta_app_secret": APP_SECRET,
        "meta_verify_token": VERIFY_TOKEN,
        "secret_key": SECRET_KEY,
        # The per-token rate limit out of the way of tests about something else (most run on
        # a frozen clock, where a bucket never refills); tests/test_limits.py sets its own.
        "api_burst": 1_000_000,
    }
    values.update(overrides)
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


@pytest.fixture
def settings(database_url: str) -> Settings:
    return make_settings(database_url)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def app(settings: Settings, clock: FakeClock) -> FastAPI:
    return create_app(settings, clock=clock)


@pytest.fixture
def client(app: FastAPI) -> Iterator[TestClient]:
    with TestClient(app, raise_server_exceptions=False) as test_client:
        yield test_client


# --- Citus: a coordinator and two workers (tests/test_citus.py) ---------------------------------
# Without the extension (sh ../shared/citus/install.sh) the Citus tests skip with the reason;
# WASTATS_REQUIRE_CITUS=1 (set by .ci/run) turns that skip into a failure.


@pytest.fixture(scope="session")
def citus_cluster() -> Iterator[CitusCluster]:
    try:
        cluster = CitusCluster()
        cluster.start()
    except PostgresUnavailable as exc:
        if REQUIRE_CITUS:
            pytest.fail(f"WASTATS_REQUIRE_CITUS=1 but Citus is unavailable: {exc}")
        pytest.skip(f"Citus unavailable: {exc}")
    try:
        yield cluster
    finally:
        cluster.destroy()


def new_citus_database(cluster: CitusCluster, *, distribute: bool = True) -> str:
    """A new database on every node, migrated to the head and (by default) distributed."""
    from wastats.store import citus
    from wastats.store.db import Database

    name = f"c_{uuid.uuid4().hex[:16]}"
    cluster.create_database(name)
    upgrade(cluster.url(name))
    if distribute:
        db = Database(cluster.url(name))
        try:
            citus.distribute(db)
        finally:
            db.dispose()
    return name


@pytest.fixture
def citus_url(citus_cluster: CitusCluster) -> Iterator[str]:
    name = new_citus_database(citus_cluster)
    try:
        yield citus_cluster.url(name)
    finally:
        citus_cluster.drop_database(name)


@pytest.fixture(scope="session")
def citus_shared_database(citus_cluster: CitusCluster) -> str:
    """One distributed database for the suite's Citus run: distributing a new one per test
    costs seconds; emptying this one costs a TRUNCATE (`citus_database`)."""
    return new_citus_database(citus_cluster)


@pytest.fixture
def citus_database(citus_cluster: CitusCluster, citus_shared_database: str) -> str:
    """The shared distributed database, emptied: every table of the schema truncated."""
    from wastats.store.schema import metadata

    url = citus_cluster.url(citus_shared_database)
    tables = ", ".join(f'"{t}"' for t in metadata.tables)
    with psycopg.connect(url.replace("+psycopg", ""), autocommit=True) as conn:
        conn.execute(f"TRUNCATE {tables} RESTART IDENTITY CASCADE")
    return url
