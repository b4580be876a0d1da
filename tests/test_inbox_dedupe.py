"""The inbox stores each body once, whatever state its row is in.

On SQLite the body hash's uniqueness is split into a pending and a settled index (migration
0012, issue 13), the pending rows' index holds only the first 8 digits of each hash (migration
0013), and the inbox writer looks a hash up in both before inserting: these tests hold both
databases to what one unique constraint gave.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from sqlalchemy import text

from helpers import TEST_SEALER, store_bodies
from wastats.store import inbox as inbox_repo
from wastats.store.db import Database


@pytest.fixture
def db(database_url: str) -> Iterator[Database]:
    database = Database(database_url)
    try:
        yield database
    finally:
        database.dispose()


def _sha(raw: bytes) -> str:
    return hashlib.sha256(raw).hexdigest()


def _settle(db: Database, ids: list[int], state: str) -> None:
    with db.write() as conn:
        inbox_repo.record_outcomes(
            conn, [inbox_repo.Outcome(i, state, None if state == "processed" else "x", 0)
                   for i in ids], now=1,
        )  # fmt: skip


def _rows(db: Database) -> list[tuple[str, str]]:
    with db.read() as conn:
        rows = conn.execute(text("SELECT body_sha256, state FROM inbox ORDER BY id"))
        return [(str(sha), str(state)) for sha, state in rows]


@pytest.mark.parametrize("state", ["pending", "processed", "rejected"])
def test_a_body_stored_in_any_state_is_not_stored_again(db: Database, state: str) -> None:
    raw = b'{"object":"whatsapp_business_account","n":1}'
    with db.write() as conn:
        first = store_bodies(conn, [raw], now=1)
    assert list(first) == [_sha(raw)]
    if state != "pending":
        _settle(db, list(first.values()), state)
    with db.write() as conn:
        # Alone, and beside a new body in the same commit (the writer's batches).
        assert store_bodies(conn, [raw], now=2) == {}
        again = store_bodies(conn, [raw, b"{}"], now=2)
    assert list(again) == [_sha(b"{}")]
    assert _rows(db) == [(_sha(raw), state), (_sha(b"{}"), "pending")]


def test_a_replayed_body_goes_back_to_pending_without_a_twin(db: Database) -> None:
    raw = b'{"n":2}'
    with db.write() as conn:
        ids = list(store_bodies(conn, [raw], now=1).values())
    _settle(db, ids, "rejected")
    with db.write() as conn:
        # What `wastats events replay` does to a rejected row before counting it again.
        conn.execute(text("UPDATE inbox SET state = 'pending' WHERE id = :i"), {"i": ids[0]})
        assert store_bodies(conn, [raw], now=2) == {}
    _settle(db, ids, "processed")
    assert _rows(db) == [(_sha(raw), "processed")]


def test_hashes_alike_in_their_first_digits_are_two_bodies_each_stored_once(db: Database) -> None:
    """Two pending bodies whose hashes share the digits the pending index holds: the lookup
    compares whole hashes, so neither hides the other, and each is still stored once."""
    shared = "0123abcd"
    hashes = [shared + "1" * 56, shared + "2" * 56]
    bodies = [inbox_repo.NewBody(sha, f"body {n}".encode(), "webhook", 1)
              for n, sha in enumerate(hashes)]  # fmt: skip
    with db.write() as conn:
        assert set(inbox_repo.insert_bodies(conn, bodies[:1], TEST_SEALER)) == {hashes[0]}
        assert set(inbox_repo.insert_bodies(conn, bodies, TEST_SEALER)) == {hashes[1]}
        assert inbox_repo.insert_bodies(conn, bodies + bodies, TEST_SEALER) == {}
    assert _rows(db) == [(hashes[0], "pending"), (hashes[1], "pending")]


_serial = itertools.count()


@hypothesis_settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    steps=st.lists(
        st.tuples(
            st.sampled_from(["store", "process", "reject", "replay"]),
            st.lists(st.integers(0, 5), min_size=1, max_size=4),
        ),
        max_size=12,
    )
)
def test_any_sequence_of_stores_and_settlements_keeps_each_hash_once(
    db: Database, steps: list[tuple[str, list[int]]]
) -> None:
    """Stores (in batches, with repeats), settlements and replays in any order: a store returns
    an id exactly for the bodies not stored before, and no hash is ever held by two rows."""
    example = next(_serial)  # bodies of their own: the database is shared by all examples
    bodies = [f'{{"example":{example},"body":{n}}}'.encode() for n in range(6)]
    stored: dict[int, int] = {}  # body -> inbox id
    for action, which in steps:
        chosen = [bodies[n] for n in which]
        if action == "store":
            with db.write() as conn:
                new = store_bodies(conn, chosen, now=1)
            expected = {_sha(bodies[n]) for n in which if n not in stored}
            assert set(new) == expected
            for n in which:
                stored.setdefault(n, new.get(_sha(bodies[n]), -1))
            continue
        ids = [stored[n] for n in set(which) if n in stored]
        if action == "replay":
            with db.write() as conn:
                for inbox_id in ids:
                    conn.execute(
                        text("UPDATE inbox SET state = 'pending' WHERE id = :i AND "
                             "state = 'rejected'"), {"i": inbox_id},
                    )  # fmt: skip
        else:
            _settle(db, ids, "processed" if action == "process" else "rejected")
    mine = {_sha(raw) for raw in bodies}
    hashes = [sha for sha, _ in _rows(db) if sha in mine]
    assert len(hashes) == len(set(hashes)) == len(stored)


def test_sealed_bodies_still_open_after_a_duplicate_was_skipped(db: Database) -> None:
    raw = b'{"n":3}'
    with db.write() as conn:
        ids = list(store_bodies(conn, [raw], now=1).values())
        store_bodies(conn, [raw], now=2)
        assert inbox_repo.load_bodies(conn, ids, TEST_SEALER) == [(ids[0], raw)]
