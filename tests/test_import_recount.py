"""`wastats import`, `wastats recount` and `wastats events` through the real CLI."""

from __future__ import annotations

import gzip
import json
import shutil
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from typer.testing import CliRunner

from conftest import FIXTURES, SECRET_KEY, make_settings
from helpers import TEST_SEALER, add_number, count_batch, create_tenant
from wastats.cli import app
from wastats.ingest import importer
from wastats.ingest.identity import CustomerHasher
from wastats.ingest.pipeline import Pipeline
from wastats.store.db import Database
from webhooks import PHONE_NUMBER_ID, at, envelope, inbound, status

runner = CliRunner()


def run(url: str, *args: str) -> tuple[int, str, str]:
    env = {"WASTATS_DATABASE_URL": url, "WASTATS_SECRET_KEY": SECRET_KEY}
    result = runner.invoke(app, list(args), env=env)
    return result.exit_code, result.stdout, result.stderr


def write_history(path: Path) -> None:
    lines = []
    for day in range(1, 29):
        t = at(f"2025-02-{day:02d} 10:00")
        lines.append(envelope(inbound("972501111111", t), inbound("972502222222", t + 60)))
        lines.append(
            envelope(
                status(
                    f"wamid.{day}",
                    "sent",
                    t,
                    pricing=("CBP", "marketing", None),
                    conversation=(f"conv{day}", "marketing", t + 86400),
                    billable=True,
                ),
                status(f"wamid.{day}", "delivered", t + 5, conversation=(f"conv{day}", None, None)),
            )  # fmt: skip
        )
    text_ = "\n".join(json.dumps(line) for line in lines) + "\n\n"
    if path.suffix == ".gz":
        path.write_bytes(gzip.compress(text_.encode()))
    else:
        path.write_text(text_)


def stats(url: str, client_id: str) -> list[tuple[object, ...]]:
    db = Database(url)
    try:
        with db.read() as conn:
            return [
                tuple(r)
                for r in conn.execute(
                    text("SELECT month, bucket, units FROM monthly_counts ORDER BY 1, 2")
                )
            ]
    finally:
        db.dispose()


def test_import_is_idempotent_and_recount_finds_no_difference(
    database_url: str, tmp_path: Path
) -> None:
    code, out, err = run(database_url, "accounts", "create", "--name", "A", "--json")
    client_id = json.loads(out)["client_id"]
    code, _, err = run(
        database_url, "numbers", "add", "--account", client_id, "--whatsapp", "15550783881",
        "--phone-number-id", PHONE_NUMBER_ID,
    )  # fmt: skip
    assert code == 0, err
    plain, packed = tmp_path / "history.jsonl", tmp_path / "more.jsonl.gz"
    write_history(plain)
    write_history(packed)  # the same bodies, compressed: all duplicates

    code, out, err = run(database_url, "import", str(plain))
    assert code == 0, err
    assert "Read 56 bodies: 56 new, 0 already stored" in out
    assert "counted 56 status updates and 56 incoming messages" in out
    assert "112 events" in out  # the progress bar ends on the final count
    first = stats(database_url, client_id)
    assert first == [(202502, "incoming", 56), (202502, "marketing", 28)]

    code, out, _ = run(database_url, "import", str(packed), str(plain))
    assert "Read 112 bodies: 0 new, 112 already stored" in out
    assert stats(database_url, client_id) == first

    code, out, _ = run(database_url, "recount")
    assert code == 0
    assert "No difference: 1 number recounted." in out


def test_recount_repairs_and_reports_a_tampered_rollup(database_url: str, tmp_path: Path) -> None:
    code, out, _ = run(database_url, "accounts", "create", "--name", "A", "--json")
    client_id = json.loads(out)["client_id"]
    run(database_url, "numbers", "add", "--account", client_id, "--whatsapp", "15550783881",
        "--phone-number-id", PHONE_NUMBER_ID)  # fmt: skip
    history = tmp_path / "h.jsonl"
    write_history(history)
    run(database_url, "import", str(history))
    db = Database(database_url)
    try:
        with db.write() as conn:
            conn.execute(
                text("UPDATE monthly_counts SET units = units + 5 WHERE bucket = 'marketing'")
            )
            conn.execute(text("DELETE FROM counted_units WHERE unit_key LIKE 'C:conv1%'"))
    finally:
        db.dispose()
    code, out, _ = run(database_url, "recount", "--dry-run", "--account", client_id)
    assert code == 1
    assert "Differences found on 1 of 1 numbers." in out
    code, out, _ = run(database_url, "recount")
    assert code == 1
    assert "found and repaired" in out
    assert stats(database_url, client_id) == [(202502, "incoming", 56), (202502, "marketing", 28)]
    code, out, _ = run(database_url, "recount")
    assert code == 0


def test_events_rejected_and_replay(database_url: str, tmp_path: Path) -> None:
    history = tmp_path / "mixed.jsonl"
    fixture = (FIXTURES / "meta-docs__analytics-messaging-response.json").read_bytes()
    history.write_bytes(
        json.dumps(envelope(inbound("972501111111", at("2025-02-01 10:00")))).encode()
        + b"\n{truncated json\n"
        + json.dumps(json.loads(fixture)).encode()
        + b"\n"
    )
    code, out, err = run(database_url, "import", "--allow-rejected", str(history))
    assert code == 0, err
    assert "2 bodies rejected" in out
    code, out, _ = run(database_url, "events", "rejected", "--json")
    listed = [json.loads(line) for line in out.splitlines()]
    assert len(listed) == 2
    assert all(item["reason"] for item in listed)
    assert any("JSON" in item["reason"] for item in listed)
    code, out, _ = run(database_url, "events", "replay")
    assert code == 0
    assert "Replayed 2 bodies: 0 now understood, 2 still rejected." in out


def test_import_needs_no_signature_but_a_secret_key_on_postgres(tmp_path: Path) -> None:
    history = tmp_path / "h.jsonl"
    write_history(history)
    result = runner.invoke(
        app,
        ["import", str(history)],
        env={"WASTATS_DATABASE_URL": "postgresql+psycopg://nobody@127.0.0.1:1/none"},
    )
    assert result.exit_code == 1
    assert "WASTATS_SECRET_KEY must be set for PostgreSQL" in result.stderr


def test_account_totals_follow_numbers_added_and_removed(database_url: str, tmp_path: Path) -> None:
    """The account-wide rollup moves with registrations; recount finds it consistent."""
    code, out, _ = run(database_url, "accounts", "create", "--name", "A", "--json")
    client_id = json.loads(out)["client_id"]
    history = tmp_path / "h.jsonl"
    write_history(history)
    run(database_url, "import", str(history))  # before the number exists: kept, not shown

    def account_totals() -> list[tuple[object, ...]]:
        db = Database(database_url)
        try:
            with db.read() as conn:
                return [tuple(r) for r in conn.execute(text(
                    "SELECT month, bucket, SUM(units) FROM account_monthly_counts "
                    "GROUP BY month, bucket ORDER BY 1, 2"))]  # fmt: skip
        finally:
            db.dispose()

    assert account_totals() == []
    run(database_url, "numbers", "add", "--account", client_id, "--whatsapp", "15550783881",
        "--phone-number-id", PHONE_NUMBER_ID)  # fmt: skip
    assert account_totals() == [(202502, "incoming", 56), (202502, "marketing", 28)]
    assert run(database_url, "recount")[0] == 0
    run(database_url, "numbers", "remove", PHONE_NUMBER_ID)
    assert account_totals() == []
    assert run(database_url, "recount")[0] == 0


def _dump(url: str) -> dict[str, list[tuple[object, ...]]]:
    db = Database(url)
    try:
        with db.read() as conn:
            return {
                table: sorted(tuple(r) for r in conn.execute(text(f"SELECT {cols} FROM {table}")))
                for table, cols in (
                    ("message_facts", "*"),
                    ("message_conversations", "*"),
                    ("inbound_messages", "*"),
                    ("counted_units", "*"),
                    ("monthly_counts", "*"),
                    (
                        "inbox LEFT JOIN inbox_bodies USING (id)",
                        "body_sha256, body IS NULL, state, reason, events",
                    ),
                )
            }
    finally:
        db.dispose()


def test_parallel_import_stores_exactly_what_a_serial_one_does(
    database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`--parallel` parses in a second process, chunks ahead: with tiny chunks and transactions,
    a message's statuses and the re-imported lines fall in different chunks and transactions,
    and the outcome (facts, units, rollups, inbox rows, the rejected line's body kept) must not
    change."""
    monkeypatch.setattr(importer, "CHUNK_BYTES", 1500)
    monkeypatch.setattr(importer, "COMMIT_BYTES", 4000)  # a transaction spans a few chunks
    history = tmp_path / "h.jsonl"
    write_history(history)
    lines = history.read_bytes().splitlines()
    history.write_bytes(b"\n".join(lines[:20] + [b"{truncated"] + lines[10:]) + b"\n")
    serial_url = f"sqlite:///{tmp_path / 'serial.db'}"
    assert run(serial_url, "db", "upgrade")[0] == 0  # only `db upgrade` and `serve` create one
    for url in (database_url, serial_url):
        code, out, err = run(url, "accounts", "create", "--name", "A", "--json")
        code, _, err = run(
            url, "numbers", "add", "--account", json.loads(out)["client_id"],
            "--whatsapp", "15550783881", "--phone-number-id", PHONE_NUMBER_ID,
        )  # fmt: skip
        assert code == 0, err

    code, parallel_out, err = run(database_url, "import", "--parallel", "--allow-rejected",
                                  str(history))  # fmt: skip
    assert code == 0, err
    code, serial_out, err = run(serial_url, "import", "--serial", "--allow-rejected", str(history))
    assert code == 0, err
    # The same summary (the progress bar above it runs a chunk ahead in parallel).
    assert parallel_out.splitlines()[-1] == serial_out.splitlines()[-1]
    assert "Read 67 bodies: 57 new, 10 already stored" in parallel_out
    assert "1 body rejected" in parallel_out
    assert _dump(database_url) == _dump(serial_url)
    # The rejected line is kept for replay, sealed like every stored body.
    kept = _rows(
        database_url, "SELECT body, body_key, body_sha256 FROM inbox JOIN inbox_bodies USING (id)"
    )
    assert b"{truncated" in [TEST_SEALER.open(bytes(b), k, h) for b, k, h in kept]  # type: ignore[arg-type]
    assert all(b"{truncated" not in bytes(b) for b, _, _ in kept)  # type: ignore[arg-type]


def _rows(url: str, sql: str) -> list[tuple[object, ...]]:
    db = Database(url)
    try:
        with db.read() as conn:
            return [tuple(r) for r in conn.execute(text(sql))]
    finally:
        db.dispose()


def test_a_parsing_process_that_dies_ends_the_import_with_a_clear_error(
    database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """If the parsing process dies (killed, out of memory), the import says so in one line,
    keeps what it committed, and a re-run finishes the file."""
    from concurrent.futures import Executor, Future
    from concurrent.futures.process import BrokenProcessPool
    from contextlib import contextmanager

    from wastats.cli import ingest as ingest_cli

    class DeadProcess(Executor):
        def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> Future[Any]:
            future: Future[Any] = Future()
            future.set_exception(BrokenProcessPool("a child process terminated abruptly"))
            return future

    @contextmanager
    def dead(pipeline: Any) -> Iterator[Executor]:
        yield DeadProcess()

    monkeypatch.setattr(ingest_cli, "parsing_process", dead)
    history = tmp_path / "h.jsonl"
    write_history(history)
    code, out, err = run(database_url, "import", str(history))  # parallel is the default
    assert code == 1
    assert "the parsing process stopped unexpectedly" in out + err
    assert "Traceback" not in out + err
    code, out, err = run(database_url, "import", "--serial", str(history))
    assert code == 0, err
    assert "Read 56 bodies: 56 new" in out


def _store_batches(url: str, batches: list[list[bytes]], *, draft: bool) -> None:
    config = make_settings(url)
    add_number(config, create_tenant(config, "A"), "15550783881", PHONE_NUMBER_ID)
    pipeline = Pipeline(CustomerHasher(SECRET_KEY.encode()))
    db = Database(url)
    try:
        for batch in batches:
            with db.write() as conn:
                count_batch(conn, pipeline, batch, draft=draft)
    finally:
        db.dispose()


def test_drafted_batches_store_exactly_what_plain_ones_do(
    database_url: str, tmp_path: Path, sqlite_template: Path
) -> None:
    """`wastats import` prepares each message as if it were new (`MessageDraft`). In batches
    that mix such messages with ones that cannot be drafted (a customer known by a BSUID only, a
    conversation id) and with messages stored by an earlier batch, every fixture payload and a
    BSUID link included, what is stored must be what the undrafted pipeline stores."""
    t = at("2025-08-03 10:00")
    sent = status("wamid.P1", "sent", t, pricing=("PMP", "marketing", "regular"))
    bsuid_only = status("wamid.B1", "delivered", t + 9, pricing=("PMP", "utility", "regular"))
    del bsuid_only["statuses"][0]["recipient_id"]
    bsuid_only["statuses"][0]["recipient_user_id"] = "US.1349120865530"
    first = [
        *(path.read_bytes() for path in sorted(FIXTURES.glob("*.json"))),
        json.dumps(envelope(sent, bsuid_only, status("wamid.P2", "delivered", t + 1))).encode(),
    ]
    second = [
        json.dumps(envelope(status("wamid.P1", "delivered", t + 5))).encode(),
        json.dumps(envelope(inbound("16505551234", t + 60, user_id="US.1349120865530"))).encode(),
        json.dumps(envelope(status("wamid.B1", "read", t + 99), bsuid_only)).encode(),
    ]
    shutil.copyfile(sqlite_template, tmp_path / "plain.db")
    plain_url = f"sqlite:///{tmp_path / 'plain.db'}"
    _store_batches(database_url, [first, second], draft=True)
    _store_batches(plain_url, [first, second], draft=False)
    drafted = _dump(database_url)
    assert drafted == _dump(plain_url)
    message_units = [row for row in drafted["message_facts"] if row[3] is not None]
    assert len(message_units) >= 5
    assert len(drafted["counted_units"]) >= 10


@pytest.mark.parametrize("order", [(0, 1, 2), (2, 1, 0), (1, 0, 2), (2, 0, 1)])
def test_a_message_seen_with_and_without_the_phone_number_is_one_fact(
    database_url: str, order: tuple[int, ...]
) -> None:
    """Meta may send one inbound message once with the customer's phone number and once with
    the business-scoped user id only. Once a payload links the two, they are one customer, and
    the two copies (same wamid, same time) one fact with one session, in any order; moving the
    BSUID's copy onto the phone number's must merge it, not collide with it."""
    from wastats.ingest.recount import recount_number
    from wastats.store import units as units_repo

    t = at("2025-09-03 10:00")
    bsuid = "US.1349120865530"
    bsuid_only = inbound("16505551234", t, "wamid.X")
    del bsuid_only["messages"][0]["from"]
    bsuid_only["contacts"] = [{"profile": {"name": "x"}, "user_id": bsuid}]
    with_phone = inbound("16505551234", t, "wamid.X")  # no BSUID: nothing links yet
    link = inbound("16505551234", t + 3600, "wamid.Y", user_id=bsuid)
    bodies = [json.dumps(envelope(v)).encode() for v in (bsuid_only, with_phone, link)]
    pipeline = Pipeline(CustomerHasher(SECRET_KEY.encode()))
    db = Database(database_url, pool_size=1)
    try:
        for index in order:
            with db.write() as conn:
                count_batch(conn, pipeline, [bodies[index]], draft=False)
        with db.write() as conn:
            assert not recount_number(conn, PHONE_NUMBER_ID, repair=False).differs
            units = units_repo.all_of(conn, PHONE_NUMBER_ID)
            copies = conn.execute(text("SELECT user_key, ts, country FROM inbound_messages")).all()
    finally:
        db.dispose()
    phone_key = pipeline.hasher.phone_key("16505551234")
    assert sorted(tuple(row) for row in copies) == [
        (phone_key, t, "US"),
        (phone_key, t + 3600, "US"),
    ]
    assert [(u.bucket, u.user_key, u.timestamp) for u in units.values()] == [
        ("incoming", phone_key, t)
    ]


@pytest.mark.parametrize("parallel", ["--parallel", "--serial"])
def test_a_damaged_gzip_file_keeps_what_came_before_the_damage(
    database_url: str, tmp_path: Path, parallel: str
) -> None:
    """A backup cut short (a copy that ran out of disk, a transfer broken off) must not cost the
    history before the cut, nor the other files of the same import, and must be said plainly."""
    whole, cut, other = tmp_path / "a.jsonl.gz", tmp_path / "cut.jsonl.gz", tmp_path / "b.jsonl"
    write_history(whole)
    packed = whole.read_bytes()
    cut.write_bytes(packed[: len(packed) // 2])
    complete = zlib.decompressobj(31).decompress(cut.read_bytes())  # all that is readable
    kept = complete.count(b"\n")  # the lines before the cut, each whole
    assert 0 < kept < 56
    other.write_text(json.dumps(envelope(inbound("972503333333", at("2025-03-01 10:00")))) + "\n")

    code, out, err = run(database_url, "import", parallel, str(cut), str(other))
    assert code == 1
    assert "cut.jsonl.gz: the file is damaged (Compressed file ended" in err
    assert f"the {kept} complete bodies before the damage were read and kept" in err
    assert f"Read {kept + 1} bodies: {kept + 1} new" in out
    assert "Traceback" not in out + err

    code, out, err = run(database_url, "import", str(whole))  # the intact copy finishes it
    assert code == 0, err
    assert f"Read 56 bodies: {56 - kept} new, {kept} already stored" in out


def test_a_json_array_or_a_pretty_printed_body_imports_like_json_lines(
    database_url: str, tmp_path: Path, sqlite_template: Path
) -> None:
    """Exports and saved examples are often one JSON document (an array of bodies, or one body
    over many lines) rather than JSON Lines: each body of it is imported as if it were a line,
    where it used to be split into hundreds of broken 'bodies', each stored as rejected."""
    files = sorted(FIXTURES.glob("*.json"))
    bodies = [json.loads(path.read_bytes()) for path in files]
    array = tmp_path / "export.json"
    array.write_text(json.dumps(bodies, indent=2))
    packed = tmp_path / "one-line-array.json.gz"
    packed.write_bytes(gzip.compress(json.dumps(bodies[:3]).encode()))
    code, out, err = run(
        database_url, "import", "--allow-rejected", str(array), str(files[0]), str(packed)
    )
    assert code == 0, err
    assert f"Read {len(files) + 1 + 3} bodies" in out
    assert "8 bodies rejected" in out  # the fixtures that are not webhooks, as over HTTP

    lines = tmp_path / "fixtures.jsonl"
    lines.write_text("".join(json.dumps(b) + "\n" for b in bodies))
    shutil.copyfile(sqlite_template, tmp_path / "lines.db")
    lines_url = f"sqlite:///{tmp_path / 'lines.db'}"
    assert run(lines_url, "import", "--allow-rejected", str(lines))[0] == 0
    assert _dump(database_url)["counted_units"] == _dump(lines_url)["counted_units"]


def test_json_lines_with_a_broken_first_line_are_still_json_lines(
    database_url: str, tmp_path: Path
) -> None:
    history = tmp_path / "history.jsonl"
    write_history(history)
    broken = tmp_path / "broken.jsonl"
    broken.write_bytes(
        b'{"object": "whatsapp_business_account", "entry": [\n' + history.read_bytes()
    )
    code, out, err = run(database_url, "import", "--allow-rejected", str(broken))
    assert code == 0, err
    assert "Read 57 bodies: 57 new" in out
    assert "counted 56 status updates and 56 incoming messages; 1 body rejected" in out


def test_a_json_document_too_large_to_read_whole_is_refused_with_a_hint(
    database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(importer, "DOCUMENT_LIMIT", 10_000)
    monkeypatch.setattr(importer, "CHUNK_BYTES", 4_000)
    big = tmp_path / "big.json"
    big.write_text(json.dumps([json.loads(p.read_bytes()) for p in sorted(FIXTURES.glob("*"))
                               if p.suffix == ".json"], indent=1))  # fmt: skip
    small = tmp_path / "small.jsonl"
    write_history(small)
    code, out, err = run(database_url, "import", "--serial", str(big), str(small))
    assert code == 1
    assert "big.json: the file is one JSON document over" in err
    assert "jq -c '.[]'" in err
    assert "Read 56 bodies: 56 new" in out  # the other file still imported, nothing of big.json
