"""Database engine and transactions, the same API on SQLite and PostgreSQL.

Callers never commit by hand: `db.write()` is a transaction that commits when the block ends
(the request, batch or CLI-command edge), `db.read()` a read-only one. On SQLite a write
transaction starts with `BEGIN IMMEDIATE`, so two writers queue on the busy timeout instead of
deadlocking when both try to upgrade a read lock; reads start with a plain `BEGIN` and, thanks
to WAL, never wait for the writer.
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

SQLITE_BUSY_TIMEOUT_SECONDS = 30.0

SQLITE_WAL_AUTOCHECKPOINT_PAGES = 10_000
"""WAL pages (4 KiB each) after which a commit copies the WAL into the database (SQLite's default
is 1,000). A counting transaction of 100-status bodies writes about 2,300 pages, so at 1,000 every
one of them was followed by a checkpoint, and the large indexes' pages, written again by each
batch, were copied to the database file (and fsynced) each time. At 10,000 a page written by
several batches in between is copied once (measured, issue 13: the counting child's writes
-17%, its CPU -10% per 100-status body; no difference for single-status bodies). The price: a WAL
file of up to about 40 MB more on disk, and a checkpoint's pause that long when it comes."""


DATABASE_WAIT_SECONDS = 30.0
"""How long a start on PostgreSQL keeps trying while the database cannot be reached. In compose
or on a restarting host the database may be a moment behind (a container's name not resolving
yet was seen in the container tests, seconds after `serve` had migrated through it): waiting is
what a service manager would otherwise do by restarting us. SQLite is a local file: no wait."""


def first_line(error: BaseException | None) -> str:
    """What a database error says, in one line fit for a log or a terminal (the driver's
    messages run to several, with hints and context)."""
    text = str(error).strip() if error is not None else ""
    return text.splitlines()[0] if text else type(error).__name__


class Database:
    """One engine per process; stateless apart from its connection pool."""

    def __init__(self, url: str, *, pool_size: int = 8) -> None:
        self.url = url
        parsed = make_url(url)
        self.dialect = parsed.get_backend_name()
        self._write_lock: AbstractContextManager[object] = (
            threading.Lock() if self.dialect == "sqlite" else nullcontext()
        )
        if self.dialect == "sqlite":
            if parsed.database and parsed.database != ":memory:":
                create_private_file(Path(parsed.database))
                self._write_lock = WriteLock(Path(f"{parsed.database}-writelock"))
            self.engine = create_engine(
                url,
                connect_args={
                    "timeout": SQLITE_BUSY_TIMEOUT_SECONDS,
                    "check_same_thread": False,
                    # We emit BEGIN ourselves (see _sqlite_begin); the sqlite3 module's own
                    # implicit transactions would otherwise fight SQLAlchemy's.
                    "isolation_level": None,
                },
                pool_size=pool_size,
                max_overflow=pool_size,
                # Error messages must never carry bound values: webhook bodies, customers.
                hide_parameters=True,
            )
            event.listen(self.engine, "connect", _sqlite_on_connect)
            event.listen(self.engine, "begin", _sqlite_begin)
        else:
            self.engine = create_engine(
                url,
                pool_size=pool_size,
                max_overflow=pool_size,
                pool_pre_ping=True,
                hide_parameters=True,
                # A short connect timeout turns "database is gone" into a prompt 503 rather
                # than a request hanging until Meta's delivery times out.
                connect_args={"connect_timeout": 5},
            )

    @property
    def is_sqlite(self) -> bool:
        return self.dialect == "sqlite"

    @contextmanager
    def write(self) -> Iterator[Connection]:
        """A read-write transaction: committed at the end of the block, rolled back on error.

        On SQLite, writers also queue on a lock (`WriteLock`: a Python lock in the process, a
        file lock across processes). SQLite has one writer at a time; without the lock a second
        writer's BEGIN IMMEDIATE would sleep in SQLite's busy handler (which backs off up to
        100 ms a try) instead of waking the moment the first one commits: measured, that alone
        cut the webhook rate by ten, in threads (issue 4) as between the server and its counting
        process (issue 13). Processes that do not take it (an older wastats) still queue on the
        busy timeout."""
        with self._write_lock, self.engine.connect() as conn:
            conn = conn.execution_options(wastats_write=True)
            with conn.begin():
                yield conn

    @contextmanager
    def read(self) -> Iterator[Connection]:
        """A read-only transaction (kept separate so reads can later move to a replica)."""
        with self.engine.connect() as conn, conn.begin():
            yield conn

    def ping(self) -> None:
        with self.read() as conn:
            conn.execute(text("SELECT 1"))

    def dispose(self) -> None:
        self.engine.dispose()
        if isinstance(self._write_lock, WriteLock):
            self._write_lock.close()


class WriteLock:
    """The SQLite writers' queue: a thread lock, then an exclusive `flock` of a file beside the
    database, so a waiting writer in any process is woken by the kernel the moment the lock is
    free. The file is opened once, on first use, and never holds data."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._thread = threading.Lock()
        self._fd: int | None = None

    def __enter__(self) -> None:
        self._thread.acquire()
        try:
            if self._fd is None:
                try:
                    self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
                except OSError:
                    # The directory is gone or read-only: SQLite's own error (an
                    # OperationalError, a 503) says it better; the busy timeout still queues.
                    return
            fcntl.flock(self._fd, fcntl.LOCK_EX)
        except BaseException:
            self._thread.release()
            raise

    def __exit__(self, *exc: object) -> None:
        try:
            if self._fd is not None:
                fcntl.flock(self._fd, fcntl.LOCK_UN)
        finally:
            self._thread.release()

    def close(self) -> None:
        with self._thread:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None


def _sqlite_on_connect(dbapi_connection: sqlite3.Connection, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    # WAL: readers never block the writer and vice versa. FULL: every commit is on the disk
    # (fsync of the WAL) before it returns, so a webhook answered 200 survives a power loss,
    # not only a crash of the process (NORMAL's promise), as PostgreSQL's default commit does.
    # The inbox writer commits what arrived meanwhile in one transaction, so it is one fsync
    # per batch (0.2 ms here), not per webhook.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute("PRAGMA foreign_keys=ON")
    # 64 MiB page cache (the default is 2 MiB): ingestion inserts hashed, hence random, keys
    # into large indexes; a small cache evicts and re-reads their pages on every batch.
    cursor.execute("PRAGMA cache_size=-65536")
    cursor.execute(f"PRAGMA wal_autocheckpoint={SQLITE_WAL_AUTOCHECKPOINT_PAGES}")
    cursor.execute(f"PRAGMA busy_timeout={int(SQLITE_BUSY_TIMEOUT_SECONDS * 1000)}")
    cursor.close()


def _sqlite_begin(conn: Connection) -> None:
    # On the driver's connection, not through `exec_driver_sql`: SQLAlchemy's handling of a
    # statement cost more than SQLite's BEGIN itself, once per transaction, and every webhook
    # waits for a write transaction (the inbox writer's commit).
    driver = conn.connection.driver_connection
    assert driver is not None
    write = conn.get_execution_options().get("wastats_write")
    driver.execute("BEGIN IMMEDIATE" if write else "BEGIN")


def create_private_file(path: Path) -> None:
    """Create the SQLite file, if it is not there yet, readable by its owner only (0600): it
    holds sealed webhook bodies, hashed credentials and every tenant's counts. SQLite creates
    the -wal and -shm files with the database file's permissions, so they follow. An existing
    file keeps the permissions the operator gave it."""
    path = path.resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return
    os.close(fd)


def create_database(url: str) -> Database:
    return Database(url)


def create_migration_engine(url: str) -> Engine:
    """A throwaway engine for Alembic: no pool, so nothing lingers after the upgrade.

    On SQLite, the transaction is emitted by us, as for the service's engine: the sqlite3
    module's own transactions begin only before INSERT, UPDATE or DELETE, which left schema
    changes committed one by one; a killed upgrade then left a half-migrated database that
    could not be upgraded again. With an explicit BEGIN the whole upgrade is one transaction."""
    engine = create_engine(url, poolclass=NullPool)
    database = engine.url.database
    if engine.dialect.name == "sqlite" and database and database != ":memory:":
        create_private_file(Path(database))
    if engine.dialect.name == "sqlite":
        event.listen(engine, "connect", _sqlite_manual_transactions)
        event.listen(engine, "begin", lambda conn: conn.exec_driver_sql("BEGIN IMMEDIATE"))
    return engine


def _sqlite_manual_transactions(dbapi_connection: sqlite3.Connection, _record: Any) -> None:
    dbapi_connection.isolation_level = None
