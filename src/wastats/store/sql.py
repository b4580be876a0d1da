"""Small SQL helpers shared by the repositories: dialect-specific upserts, chunked IN lists."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any, TypeVar

from sqlalchemy import ColumnElement, Connection, Table, and_, or_
from sqlalchemy.dialects import postgresql, sqlite

T = TypeVar("T")

# SQLite allows 32,766 bound parameters per statement (3.32+), PostgreSQL 65,535; stay far below.
IN_CHUNK = 900


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
    mark = "%s" if conn.dialect.name == "postgresql" else "?"
    keys = ", ".join(c.name for c in table.primary_key.columns)
    return (
        f"INSERT INTO {table.name} ({', '.join(columns)}) "
        f"VALUES ({', '.join([mark] * len(columns))}) ON CONFLICT ({keys}) DO NOTHING"
    )


def pairs_clause(
    number_column: ColumnElement[Any],
    key_column: ColumnElement[Any],
    pairs: Iterable[tuple[str, str]],
) -> ColumnElement[bool]:
    """`(number, key) IN pairs`, written as one `number = ? AND key IN (...)` term per number.

    SQLite plans a row-value `(a, b) IN (VALUES ...)` as a full scan (seen with EXPLAIN QUERY
    PLAN, and as an import that slowed as the tables grew); OR-ed terms that each fix the leading
    key column are served from the primary-key index on SQLite and PostgreSQL alike."""
    by_number: dict[str, list[str]] = {}
    for number, key in pairs:
        by_number.setdefault(number, []).append(key)
    terms = [
        and_(number_column == number, key_column.in_(keys))
        for number, keys in sorted(by_number.items())
    ]
    return or_(*terms) if len(terms) > 1 else terms[0]


def chunks(items: Sequence[T], size: int = IN_CHUNK) -> Iterator[Sequence[T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
