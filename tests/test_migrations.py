"""Migrations: upgrade from empty on both databases, and the models match the migrations."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Connection, create_engine, inspect

from conftest import drop_postgres_database
from pgcluster import PostgresCluster
from wastats.store.migrate import head_revision, upgrade
from wastats.store.schema import emitted_on, metadata


def _check_fresh_upgrade(url: str) -> None:
    before, after = upgrade(url)
    assert before is None
    assert after == head_revision()
    assert upgrade(url) == (after, after)  # a second run is a no-op
    engine = create_engine(url)
    try:
        with engine.connect() as conn, warnings.catch_warnings():
            # SQLAlchemy does not reflect SQLite's expression indexes, so Alembic leaves them out
            # of the comparison (warning of both): that one is checked by its SQL instead.
            warnings.filterwarnings("ignore", "Skipped unsupported reflection of expression")
            warnings.filterwarnings("ignore", "autogenerate skipping metadata-specified expr")
            diff = compare_metadata(
                MigrationContext.configure(
                    conn,
                    opts={"compare_type": True, "include_object": emitted_on(conn.dialect.name)},
                ),
                metadata,
            )
            if conn.dialect.name == "sqlite":
                indexes = _inbox_indexes(conn)
                assert indexes["ix_inbox_pending_sha_prefix"] == (
                    "CREATE INDEX ix_inbox_pending_sha_prefix ON inbox "
                    "(substr(body_sha256, 1, 8)) WHERE state = 'pending'"
                )
            tables = set(inspect(conn).get_table_names())
            # Alembic's comparison does not look at primary keys: compare them here.
            keys = {
                name: inspect(conn).get_pk_constraint(name)["constrained_columns"]
                for name in metadata.tables
            }
    finally:
        engine.dispose()
    assert diff == []
    assert set(metadata.tables) <= tables
    assert keys == {
        name: [c.name for c in table.primary_key.columns] for name, table in metadata.tables.items()
    }


def test_head_revision_is_alembics() -> None:
    """`head_revision` reads the scripts' revision lines itself (not to load Alembic in every
    process): it must name the head Alembic finds."""
    from alembic.script import ScriptDirectory

    from wastats.store.migrate import alembic_config

    assert head_revision() == ScriptDirectory.from_config(alembic_config()).get_current_head()


def test_upgrade_from_empty_sqlite(tmp_path: Path) -> None:
    _check_fresh_upgrade(f"sqlite:///{tmp_path / 'fresh.db'}")


def _on_empty_postgres_database(
    pg_cluster: PostgresCluster, name: str, check: Callable[[str], None]
) -> None:
    """Run `check(url)` on a new, empty database (no template: migrations start from nothing)."""
    import psycopg

    with psycopg.connect(pg_cluster.url().replace("+psycopg", ""), autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}"')
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        check(pg_cluster.url(name))
    finally:
        drop_postgres_database(pg_cluster, name)


@pytest.mark.postgres
def test_upgrade_from_empty_postgresql(pg_cluster: PostgresCluster) -> None:
    _on_empty_postgres_database(pg_cluster, "fresh_upgrade", _check_fresh_upgrade)


def test_every_tenant_table_leads_its_keys_with_the_tenant_or_number() -> None:
    """The schema shards by tenant: every key of a table holding tenant data starts with the
    number (`phone_number_id`) or, for account-wide sums, the account (`account_id`)."""
    reference = {"accounts", "access_tokens", "login_failures", "business_numbers", "inbox",
                 "service_state", "alembic_version",
                 "meta_sync_state",
                 "inbox_bodies",  # the inbox's bodies, keyed by its rows (migration 0014)
                 # Forwarding: keyed like the inbox, whose bodies they deliver (issue 15).
                 "forward_destinations", "forward_deliveries"}  # fmt: skip
    by_account = {"account_monthly_counts", "meta_tokens"}
    for table in metadata.sorted_tables:
        if table.name in reference:
            continue
        lead = "account_id" if table.name in by_account else "phone_number_id"
        assert table.primary_key.columns.keys()[0] == lead, table.name
        for index in table.indexes:
            assert next(iter(index.columns)).name == lead, (table.name, index.name)


# --- 0004: status rows become one row per message -------------------------------------------

_OLD_STATUS_ROWS = [
    # (number, message_key, status, ts, conversation_id, origin, expiration, model, type,
    #  category, billable, user_key, country)
    ("111", "m1", "sent", 100, "c1", "marketing", 86_500, "CBP", "regular", "marketing", True,
     "u1", "IL"),
    ("111", "m1", "delivered", 101, "c1", None, None, "CBP", "regular", "marketing", True,
     "u1", "IL"),
    ("111", "m2", "read", 300, None, None, None, "PMP", "free_customer_service", "utility",
     False, "u2", None),
    ("222", "m1", "delivered", 400, None, None, None, None, None, "בדיקה", None, None, None),
]  # fmt: skip


def _migrate_status_rows(url: str) -> None:
    from alembic import command
    from sqlalchemy import text

    from wastats.store import facts as facts_repo
    from wastats.store.migrate import alembic_config

    engine = create_engine(url)
    try:
        with engine.begin() as conn:
            command.upgrade(alembic_config(conn), "0003")
            columns = ("phone_number_id, message_key, status, ts, conversation_id, "
                       "conversation_origin, expiration_ts, pricing_model, pricing_type, "
                       "pricing_category, billable, user_key, country")  # fmt: skip
            marks = ", ".join(f":p{i}" for i in range(13))
            conn.execute(
                text(f"INSERT INTO message_statuses ({columns}) VALUES ({marks})"),
                [{f"p{i}": v for i, v in enumerate(row)} for row in _OLD_STATUS_ROWS],
            )
            command.upgrade(alembic_config(conn), "head")

            stored = facts_repo.statuses_of(conn, [("111", "m1"), ("111", "m2"), ("222", "m1")])
            as_rows = sorted(
                (number, f.message_key, f.status, f.timestamp, f.conversation_id,
                 f.conversation_origin, f.expiration_timestamp, f.pricing_model, f.pricing_type,
                 f.pricing_category, f.billable, f.user_key, f.country)
                for (number, _), facts in stored.items()
                for f in facts
            )  # fmt: skip
            assert as_rows == sorted(_OLD_STATUS_ROWS)
            assert facts_repo.messages_in_conversations(conn, [("111", "c1")]) == {
                ("111", "c1"): {"m1"}
            }
            # The migrated text reads back as what the application itself writes.
            for (number, key), facts in stored.items():
                [text_value] = conn.execute(
                    text("SELECT statuses FROM message_facts WHERE phone_number_id = :n "
                         "AND message_key = :k"), {"n": number, "k": key},
                ).scalars()  # fmt: skip
                assert set(facts_repo.decode_statuses(key, text_value)) == set(
                    facts_repo.decode_statuses(key, facts_repo.encode_statuses(facts))
                )
                assert text_value == facts_repo.encode_statuses(facts)  # the same order, too

            command.downgrade(alembic_config(conn), "0003")
            back = conn.execute(text(f"SELECT {columns} FROM message_statuses")).all()
            assert sorted(tuple(r[:10]) + (None if r[10] is None else bool(r[10]),) +
                          tuple(r[11:]) for r in back) == sorted(_OLD_STATUS_ROWS)  # fmt: skip
    finally:
        engine.dispose()


def test_status_rows_move_to_message_facts_and_back_sqlite(tmp_path: Path) -> None:
    _migrate_status_rows(f"sqlite:///{tmp_path / 'old.db'}")


@pytest.mark.postgres
def test_status_rows_move_to_message_facts_and_back_postgresql(
    pg_cluster: PostgresCluster,
) -> None:
    _on_empty_postgres_database(pg_cluster, "migrate_0004", _migrate_status_rows)


# --- 0005: message units move into their message's row ------------------------------------------

_UNIT_COLUMNS = ("phone_number_id, unit_key, kind, ts, bucket, category, pricing_type, era, "
                 "user_key, country")  # fmt: skip
_OLD_UNITS = [
    ("111", "P:m1", "message", 101, "marketing", "marketing", "regular", "PMP", "u1", "IL"),
    ("111", "P:m2", "message", 300, "none", "utility", "free_customer_service", "PMP", None,
     None),
    ("111", "I:u1:90", "incoming", 90, "incoming", "incoming", "", None, "u1", "IL"),
    ("222", "C:c1", "conversation", 400, "service", "service", "regular", "CBP", "u9", None),
]  # fmt: skip


def _migrate_message_units(url: str) -> None:
    from alembic import command
    from sqlalchemy import text

    from wastats.store import units as units_repo
    from wastats.store.migrate import alembic_config

    engine = create_engine(url)
    try:
        with engine.begin() as conn:
            command.upgrade(alembic_config(conn), "0004")
            for number, key in (("111", "m1"), ("111", "m2"), ("111", "m3")):
                conn.execute(
                    text("INSERT INTO message_facts (phone_number_id, message_key, statuses) "
                         "VALUES (:n, :k, '[]')"), {"n": number, "k": key},
                )  # fmt: skip
            marks = ", ".join(f":p{i}" for i in range(10))
            conn.execute(
                text(f"INSERT INTO counted_units ({_UNIT_COLUMNS}) VALUES ({marks})"),
                [{f"p{i}": v for i, v in enumerate(row)} for row in _OLD_UNITS],
            )
            command.upgrade(alembic_config(conn), "head")

            units = {**units_repo.all_of(conn, "111"), **units_repo.all_of(conn, "222")}
            assert {key: tuple(unit)[2:] for key, unit in units.items()} == {
                row[1]: row[3:] for row in _OLD_UNITS
            }
            left = conn.execute(text("SELECT unit_key FROM counted_units")).scalars().all()
            assert sorted(left) == ["C:c1", "I:u1:90"]  # message units moved out
            moved = conn.execute(
                text("SELECT message_key, unit_ts, unit_bucket FROM message_facts ORDER BY 1")
            ).all()
            assert [tuple(r) for r in moved] == [
                ("m1", 101, "marketing"), ("m2", 300, "none"), ("m3", None, None)
            ]  # fmt: skip

            command.downgrade(alembic_config(conn), "0004")
            back = conn.execute(text(f"SELECT {_UNIT_COLUMNS} FROM counted_units")).all()
            assert sorted(tuple(r) for r in back) == sorted(_OLD_UNITS)
    finally:
        engine.dispose()


def test_message_units_move_into_message_rows_and_back_sqlite(tmp_path: Path) -> None:
    _migrate_message_units(f"sqlite:///{tmp_path / 'old.db'}")


@pytest.mark.postgres
def test_message_units_move_into_message_rows_and_back_postgresql(
    pg_cluster: PostgresCluster,
) -> None:
    _on_empty_postgres_database(pg_cluster, "migrate_0005", _migrate_message_units)


def test_a_failed_sqlite_upgrade_changes_nothing(tmp_path: Path) -> None:
    """Schema changes and data moves are one transaction: a migration that fails (or is killed)
    half-way leaves the database as it was, so the upgrade can simply be run again. (The sqlite3
    module, left to itself, commits each ALTER on its own.)"""
    from sqlalchemy import text

    from wastats.store.db import create_migration_engine

    def half_a_migration() -> None:
        with engine.begin() as conn:
            conn.execute(text("CREATE TABLE half_done (x INTEGER)"))
            conn.execute(text("INSERT INTO half_done VALUES (1)"))
            raise RuntimeError("killed")

    engine = create_migration_engine(f"sqlite:///{tmp_path / 'atomic.db'}")
    try:
        with pytest.raises(RuntimeError):
            half_a_migration()
        with engine.connect() as conn:
            assert "half_done" not in inspect(conn).get_table_names()
    finally:
        engine.dispose()


# --- 0006: inbound messages keyed by (number, wamid, customer, time) ----------------------------


def _migrate_inbound_key(url: str) -> None:
    from alembic import command
    from sqlalchemy import text

    from wastats.store.migrate import alembic_config

    insert = text("INSERT INTO inbound_messages (phone_number_id, wamid, user_key, ts, country) "
                  "VALUES (:n, :w, :u, :t, :c)")  # fmt: skip
    engine = create_engine(url)
    try:
        with engine.begin() as conn:
            command.upgrade(alembic_config(conn), "0005")
            old_rows = [{"n": "111", "w": "w1", "u": "u1", "t": 10, "c": "IL"},
                        {"n": "111", "w": "w2", "u": "u2", "t": 20, "c": None}]  # fmt: skip
            conn.execute(insert, old_rows)
            command.upgrade(alembic_config(conn), "0006")
            key = inspect(conn).get_pk_constraint("inbound_messages")["constrained_columns"]
            assert key == ["phone_number_id", "wamid", "user_key", "ts"]
            # A second copy of w1, from another customer and earlier, is a fact of its own now.
            conn.execute(insert, {"n": "111", "w": "w1", "u": "u3", "t": 9, "c": None})
            assert conn.execute(text("SELECT count(*) FROM inbound_messages")).scalar() == 3

            command.downgrade(alembic_config(conn), "0005")
            key = inspect(conn).get_pk_constraint("inbound_messages")["constrained_columns"]
            assert key == ["phone_number_id", "wamid"]
            left = conn.execute(text("SELECT wamid, user_key, ts FROM inbound_messages ORDER BY 1"))
            assert [tuple(r) for r in left] == [("w1", "u3", 9), ("w2", "u2", 20)]  # the earliest
    finally:
        engine.dispose()


def test_inbound_copies_get_a_key_of_their_own_and_back_sqlite(tmp_path: Path) -> None:
    _migrate_inbound_key(f"sqlite:///{tmp_path / 'old.db'}")


@pytest.mark.postgres
def test_inbound_copies_get_a_key_of_their_own_and_back_postgresql(
    pg_cluster: PostgresCluster,
) -> None:
    _on_empty_postgres_database(pg_cluster, "migrate_0006", _migrate_inbound_key)


# --- 0007: lockout per (address, client id); sealed inbox bodies -------------------------------


def _migrate_hardening(url: str) -> None:
    from alembic import command
    from sqlalchemy import text

    from wastats.store.migrate import alembic_config

    engine = create_engine(url)
    try:
        with engine.begin() as conn:
            command.upgrade(alembic_config(conn), "0006")
            conn.execute(
                text(
                    "INSERT INTO login_failures (ip, failures, window_start, locked_until) "
                    "VALUES ('203.0.113.7', 3, 10, 0)"
                )  # fmt: skip
            )
            conn.execute(
                text(
                    "INSERT INTO inbox (body_sha256, body, source, received_at, state, events) "
                    "VALUES ('a', :b, 'webhook', 1, 'processed', 1)"
                ),  # fmt: skip
                {"b": b"{}"},
            )
            command.upgrade(alembic_config(conn), "0007")
            key = inspect(conn).get_pk_constraint("login_failures")["constrained_columns"]
            assert key == ["address", "client_id"]
            # Counters are short-lived: started afresh. A body from before stays, in clear
            # (no key id), until the service seals it.
            assert conn.execute(text("SELECT count(*) FROM login_failures")).scalar() == 0
            body = conn.execute(text("SELECT body, body_key FROM inbox")).one()
            assert (bytes(body[0]), body[1]) == (b"{}", None)
            conn.execute(
                text("INSERT INTO inbox (body_sha256, body, body_key, source, received_at, "
                     "state, events) VALUES ('b', :b, 'k1', 'webhook', 1, 'processed', 1)"),
                {"b": b"sealed"},
            )  # fmt: skip

            command.downgrade(alembic_config(conn), "0006")
            # An older wastats cannot open a sealed body: it is dropped, its row stays.
            left = conn.execute(text("SELECT body_sha256, body FROM inbox ORDER BY 1"))
            assert [(r[0], None if r[1] is None else bytes(r[1])) for r in left] == [
                ("a", b"{}"),
                ("b", None),
            ]
            key = inspect(conn).get_pk_constraint("login_failures")["constrained_columns"]
            assert key == ["ip"]
    finally:
        engine.dispose()


def test_hardening_migrates_and_back_sqlite(tmp_path: Path) -> None:
    _migrate_hardening(f"sqlite:///{tmp_path / 'old.db'}")


@pytest.mark.postgres
def test_hardening_migrates_and_back_postgresql(pg_cluster: PostgresCluster) -> None:
    _on_empty_postgres_database(pg_cluster, "migrate_0007", _migrate_hardening)


# --- 0012: SQLite's inbox hash unique among pending rows and among settled rows ---------------


def _inbox_indexes(conn: Connection) -> dict[str, str]:
    from sqlalchemy import text

    rows = conn.execute(
        text("SELECT name, sql FROM sqlite_master WHERE type = 'index' AND tbl_name = 'inbox'")
    )
    return {str(name): str(sql) for name, sql in rows}


def test_inbox_hash_indexes_split_by_state_and_back_sqlite(tmp_path: Path) -> None:
    from alembic import command
    from sqlalchemy import text
    from sqlalchemy.exc import IntegrityError

    from wastats.store.migrate import alembic_config

    engine = create_engine(f"sqlite:///{tmp_path / 'old.db'}")
    try:
        with engine.begin() as conn:
            command.upgrade(alembic_config(conn), "0011")
            for n, state in enumerate(("pending", "processed", "rejected"), start=1):
                conn.execute(
                    text("INSERT INTO inbox (id, body_sha256, body, source, received_at, state, "
                         "events) VALUES (:n, :sha, :b, 'webhook', 1, :state, 1)"),
                    {"n": n, "sha": f"h{n}", "b": b"sealed", "state": state},
                )  # fmt: skip
            conn.execute(
                text("INSERT INTO forward_destinations (id, url, scope, scope_value, source, "
                     "paused, created_at, delivered_total, failed_attempts_total) VALUES "
                     "(1, 'https://example.com/', 'all', '', 'webhook', 0, 1, 0, 0)"),
            )  # fmt: skip
            conn.execute(
                text("INSERT INTO forward_deliveries (inbox_id, destination_id, headers, state, "
                     "created_at, attempts, next_attempt_at) VALUES (2, 1, '[]', 'pending', "
                     "1, 0, 1)"),
            )  # fmt: skip
            command.upgrade(alembic_config(conn), "0012")
            # The rows, their ids and what points at them are kept through the table's copy.
            kept = conn.execute(text("SELECT id, body_sha256, state FROM inbox ORDER BY id"))
            assert [tuple(r) for r in kept] == [
                (1, "h1", "pending"), (2, "h2", "processed"), (3, "h3", "rejected"),
            ]  # fmt: skip
            assert conn.execute(text("SELECT inbox_id FROM forward_deliveries")).all() == [(2,)]
            indexes = _inbox_indexes(conn)
            assert "uq_inbox_pending_sha256" in indexes
            assert "WHERE state = 'pending'" in indexes["uq_inbox_pending_sha256"]
            assert "WHERE state <> 'pending'" in indexes["uq_inbox_settled_sha256"]
            # Each index is unique within its rows.
            for state, sha in (("pending", "h1"), ("rejected", "h2")):
                with pytest.raises(IntegrityError), conn.begin_nested():
                    conn.execute(
                        text("INSERT INTO inbox (body_sha256, source, received_at, state, "
                             "events) VALUES (:sha, 'webhook', 1, :state, 0)"),
                        {"sha": sha, "state": state},
                    )  # fmt: skip

            command.downgrade(alembic_config(conn), "0011")
            assert not {"uq_inbox_pending_sha256", "uq_inbox_settled_sha256"} & set(
                _inbox_indexes(conn)
            )
            unique = inspect(conn).get_unique_constraints("inbox")
            assert [(u["name"], u["column_names"]) for u in unique] == [
                ("uq_inbox_body_sha256", ["body_sha256"])
            ]
            assert conn.execute(text("SELECT count(*) FROM inbox")).scalar() == 3
    finally:
        engine.dispose()


# --- 0014: the inbox's bodies in a table of their own --------------------------------------------


def _check_bodies_move_apart_and_back(url: str) -> None:
    from alembic import command
    from sqlalchemy import text

    from wastats.store.migrate import alembic_config

    engine = create_engine(url)
    try:
        with engine.begin() as conn:
            command.upgrade(alembic_config(conn), "0013")
            # A sealed body, one stored in clear by an older wastats (no key), a purged one.
            for n, body, key in ((1, b"sealed", "k1"), (2, b"clear", None), (3, None, None)):
                conn.execute(
                    text("INSERT INTO inbox (id, body_sha256, body, body_key, source, "
                         "received_at, state, events) "
                         "VALUES (:n, :sha, :b, :k, 'webhook', 1, 'processed', 1)"),
                    {"n": n, "sha": f"h{n}", "b": body, "k": key},
                )  # fmt: skip
            command.upgrade(alembic_config(conn), "0014")
            moved = conn.execute(text("SELECT id, body_key, body FROM inbox_bodies ORDER BY id"))
            assert [tuple(r) for r in moved] == [(1, "k1", b"sealed"), (2, None, b"clear")]
            columns = {c["name"] for c in inspect(conn).get_columns("inbox")}
            assert not {"body", "body_key"} & columns
            assert conn.execute(text("SELECT count(*) FROM inbox")).scalar() == 3
            if conn.dialect.name == "sqlite":  # dropping columns kept the expression index
                assert "ix_inbox_pending_sha_prefix" in _inbox_indexes(conn)

            command.downgrade(alembic_config(conn), "0013")
            back = conn.execute(text("SELECT id, body_key, body FROM inbox ORDER BY id"))
            assert [tuple(r) for r in back] == [
                (1, "k1", b"sealed"), (2, None, b"clear"), (3, None, None),
            ]  # fmt: skip
            assert "inbox_bodies" not in inspect(conn).get_table_names()
    finally:
        engine.dispose()


def test_inbox_bodies_move_apart_and_back_sqlite(tmp_path: Path) -> None:
    _check_bodies_move_apart_and_back(f"sqlite:///{tmp_path / 'old.db'}")


@pytest.mark.postgres
def test_inbox_bodies_move_apart_and_back_postgresql(pg_cluster: PostgresCluster) -> None:
    _on_empty_postgres_database(pg_cluster, "bodies_apart", _check_bodies_move_apart_and_back)
