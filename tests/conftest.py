"""Fixtures: a fresh real database per test, on SQLite and on PostgreSQL, and the real app.

Every test that takes `database_url` (directly or through `settings`, `app`, `client`) runs twice:
once on a new SQLite file and once on a new PostgreSQL database in a throwaway cluster started
from the installed binaries. Both are copies of a template migrated once per session, so a fresh
database costs milliseconds. Without PostgreSQL binaries the PostgreSQL half skips with the
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
    cluster: PostgresCluster = request.getfixturevalue("pg_cluster")
    name = new_postgres_database(cluster)
    try:
        yield cluster.url(name)
    finally:
        drop_postgres_database(cluster, name)


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
