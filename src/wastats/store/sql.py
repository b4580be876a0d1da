"""Small SQL helpers shared by the repositories: dialect-specific upserts, chunked IN lists."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from contextlib import closing
from typing import Any, TypeVar

from sqlalchemy import Connection, Table
from sqlalchemy.dialects import postgresql, sqlite

T = TypeVar("T")

Pair = tuple[str, str]
"""(phone_number_id, key): every fact and unit is addressed by its number first, the leading
column of every key, so a batch's lookups are one query per number (`fetch_by_pairs`)."""

# SQLite allows 32,766 bound parameters per statement (3.32+), PostgreSQL 65,535; stay far below.
IN_CHUNK = 900


def placeholder(conn: Connection) -> str:
    """The driver's positional parameter mark, for driver SQL (`exec_driver_sql`): `%s` for
    psycopg, `?` for sqlite3. Driver SQL is used where SQLAlchemy's per-statement work was
    measured to cost more than the statement itself (the hot paths of ingestion)."""
    return "%s" if conn.dialect.name == "postgresql" else "?"


def sqlite_cursor(conn: Connection) -> closing[sqlite3.Cursor]:
    """SQLite's own cursor on `conn`'s connection (in its transaction), closed when the `with`
    block ends: for the statements of the ingestion hot paths, where SQLAlchemy's statement,
    parameter and row handling were measured to cost more than SQLite's own work."""
    driver = conn.connection.driver_connection
    assert isinstance(driver, sqlite3.Connection)
    return closing(driver.cursor())


def insert_for(conn: Connection, table: Table) -> Any:
    """An INSERT that supports ON CONFLICT on both dialects (they share the method names)."""
    if conn.dialect.name == "postgresql":
        return postgresql.insert(table)
    return sqlite.insert(table)


def insert_ignore_sql(conn: Connection, table: Table, columns: Sequence[str]) -> str:
    """`INSERT ... ON CONFLICT (primary key) DO NOTHING` as driver SQL, for executemany.

    The ingestion hot path inserts tens of thousands of fact rows per second; handing plain
    tuples straight to the driver skips SQLAlchemy's per-row parameter processing (measured:
    the largest single cost of an import before this)."""
    mark = placeholder(conn)
    keys = ", ".join(c.name for c in table.primary_key.columns)
    return (
        f"INSERT INTO {table.name} ({', '.join(columns)}) "
        f"VALUES ({', '.join([mark] * len(columns))}) ON CONFLICT ({keys}) DO NOTHING"
    )


def fetch_by_pairs(
    conn: Connection,
    statement: str,
    pair_columns: tuple[str, str],
    pairs: Iterable[Pair],
    *,
    condition: str = "",
) -> list[Any]:
    """The rows of `statement` (a SELECT without WHERE) for `pairs` of (number, key): see
    `pair_statements`."""
    return [
        row
        for sql, params in pair_statements(conn, statement, pair_columns, pairs, condition)
        for row in conn.exec_driver_sql(sql, params)
    ]


def pair_statements(
    conn: Connection,
    statement: str,
    pair_columns: tuple[str, str],
    pairs: Iterable[Pair],
    condition: str = "",
) -> Iterator[tuple[str, tuple[str, ...]]]:
    """`statement WHERE number = ? AND key IN (...) [AND condition]` for `pairs` of
    (number, key), as driver SQL and its parameters, as many as it takes.

    One statement per number and `IN_CHUNK` keys, each of which SQLite and PostgreSQL serve from
    the index that leads with (number, key). Not a row-value `(a, b) IN (VALUES ...)`: SQLite
    plans that as a full scan (seen with EXPLAIN QUERY PLAN, as an import that slowed as its
    tables grew). Not SQLAlchemy expressions: building and compiling one per chunk cost more
    than the lookups themselves (measured: 4.5 us a key against 1.9 on the hot path of
    ingestion)."""
    mark = placeholder(conn)
    number_column, key_column = pair_columns
    by_number: dict[str, list[str]] = {}
    for number, key in pairs:
        by_number.setdefault(number, []).append(key)
    extra = f" AND {condition}" if condition else ""
    for number, keys in sorted(by_number.items()):
        for part in chunks(sorted(set(keys))):
            sql = (
                f"{statement} WHERE {number_column} = {mark} "
                f"AND {key_column} IN ({', '.join([mark] * len(part))}){extra}"
            )
            yield sql, (number, *part)


def chunks(items: Sequence[T], size: int = IN_CHUNK) -> Iterator[Sequence[T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
