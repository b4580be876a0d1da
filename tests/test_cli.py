"""The `wastats` command through Typer's runner, against the real databases."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import uuid
from pathlib import Path

import psycopg
import pytest
from typer.testing import CliRunner

from conftest import SECRET_KEY, drop_postgres_database
from pgcluster import PostgresCluster
from procs import WASTATS, Server
from wastats.cli import app

runner = CliRunner()


def run(database_url: str, *args: str, input: str | None = None) -> tuple[int, str, str]:
    result = runner.invoke(app, list(args), env={"WASTATS_DATABASE_URL": database_url}, input=input)
    return result.exit_code, result.stdout, result.stderr


def test_help_everywhere() -> None:
    for command in (
        [],
        ["serve"],
        ["accounts"],
        ["accounts", "create"],
        ["accounts", "list"],
        ["accounts", "rotate-secret"],
        ["accounts", "delete"],
        ["numbers"],
        ["numbers", "add"],
        ["numbers", "list"],
        ["numbers", "remove"],
        ["db"],
        ["db", "upgrade"],
        ["events", "purge"],
        ["lockout"],
        ["lockout", "list"],
        ["lockout", "clear"],
    ):
        result = runner.invoke(app, [*command, "--help"])
        assert result.exit_code == 0, (command, result.output)
        assert "Usage" in result.output


def create(database_url: str, name: str = "Shop", *extra: str) -> dict[str, str]:
    code, out, err = run(database_url, "accounts", "create", "--name", name, "--json", *extra)
    assert code == 0, err
    return dict(json.loads(out))


def test_accounts_lifecycle(database_url: str) -> None:
    creds = create(database_url, "Shop", "--timezone", "Asia/Jerusalem")
    assert set(creds) == {"client_id", "client_secret", "timezone"}
    assert creds["timezone"] == "Asia/Jerusalem"
    assert len(creds["client_secret"]) >= 43

    code, out, _ = run(database_url, "accounts", "list", "--json")
    listed = [json.loads(line) for line in out.splitlines()]
    assert [(a["client_id"], a["name"], a["numbers"]) for a in listed] == [
        (creds["client_id"], "Shop", 0)
    ]
    assert creds["client_secret"] not in out

    code, out, _ = run(database_url, "accounts", "rotate-secret", creds["client_id"], "--json")
    rotated = json.loads(out)
    assert code == 0
    assert rotated["client_id"] == creds["client_id"]
    assert rotated["client_secret"] != creds["client_secret"]

    code, _, _ = run(database_url, "accounts", "delete", creds["client_id"], "--yes")
    assert code == 0
    code, out, _ = run(database_url, "accounts", "list", "--json")
    assert out.strip() == ""


def test_unknown_zone_is_a_clear_error(database_url: str) -> None:
    code, out, err = run(
        database_url, "accounts", "create", "--name", "X", "--timezone", "Mars/Base"
    )
    assert code == 1
    assert "unknown time zone 'Mars/Base'" in err
    assert "Traceback" not in out + err


def test_numbers_add_list_remove(database_url: str) -> None:
    a = create(database_url, "A")
    b = create(database_url, "B")
    code, out, err = run(
        database_url, "numbers", "add", "--account", a["client_id"],
        "--whatsapp", "+972-50-123-4567", "--phone-number-id", "106540352242922",
        "--waba-id", "102290129340398",
        "--display-name", "Shop", "--business-name", "Shop Ltd", "--coexistence",
    )  # fmt: skip
    assert code == 0, err
    code, out, _ = run(database_url, "numbers", "list", "--account", a["client_id"], "--json")
    assert json.loads(out) | {"created_at": 0} == {
        "whatsapp": "972501234567",
        "phone_number_id": "106540352242922",
        "waba_id": "102290129340398",
        "display_name": "Shop",
        "business_name": "Shop Ltd",
        "coexistence": True,
        "created_at": 0,
        "counts_from": None,  # all its history: it was never another account's
    }
    # A number, and a phone-number id, belong to at most one account.
    code, _, err = run(
        database_url, "numbers", "add", "--account", b["client_id"], "--whatsapp", "972501234567",
        "--phone-number-id", "999",
    )  # fmt: skip
    assert code == 1
    assert "number 972501234567 is already registered (to another account)" in err
    code, _, err = run(
        database_url, "numbers", "add", "--account", b["client_id"], "--whatsapp", "972509999999",
        "--phone-number-id", "106540352242922",
    )  # fmt: skip
    assert code == 1
    assert "phone-number id 106540352242922 is already registered" in err
    code, out, _ = run(database_url, "numbers", "list", "--account", b["client_id"], "--json")
    assert out.strip() == ""

    code, _, _ = run(database_url, "numbers", "remove", "+972 50 123 4567")
    assert code == 0
    code, out, _ = run(database_url, "numbers", "list", "--json")
    assert out.strip() == ""


@pytest.mark.parametrize(
    ("args", "status", "message"),
    [
        (["--whatsapp", "12-34"], 1, "'12-34' is not a phone number: expected 8 to 15 digits"),
        # Meta's ids are digits: anything else is a usage error (exit 2), before any work.
        (["--whatsapp", "972501234567", "--waba-id", "a b"], 2, "'a b' is not a Meta id"),
        (["--whatsapp", "972501234567", "--phone-number-id", "abc"], 2, "'abc' is not a Meta id"),
        (["--whatsapp", "972501234567", "--phone-number-id", "+97250"], 2, "digits only"),
    ],
)
def test_numbers_add_bad_input(
    database_url: str, args: list[str], status: int, message: str
) -> None:
    a = create(database_url)
    code, out, err = run(
        database_url, "numbers", "add", "--account", a["client_id"], "--phone-number-id", "1", *args
    )
    assert code == status
    assert message in " ".join(err.replace("│", " ").split())
    assert run(database_url, "numbers", "list", "--json")[1] == ""


def test_numbers_add_unknown_account(database_url: str) -> None:
    code, _, err = run(
        database_url, "numbers", "add", "--account", "nope", "--whatsapp", "972501234567",
        "--phone-number-id", "1",
    )  # fmt: skip
    assert code == 1
    assert "no account with client id 'nope'" in err


def test_bad_configuration_is_one_line(tmp_path: object) -> None:
    result = runner.invoke(
        app,
        ["accounts", "list"],
        env={"WASTATS_DATABASE_URL": "sqlite:///x.db", "WASTATS_TOKEN_LIFETIME_SECONDS": "5"},
    )
    assert result.exit_code == 1
    assert result.stderr.strip().startswith(
        "error: invalid configuration: WASTATS_TOKEN_LIFETIME_SECONDS:"
    )
    assert len(result.stderr.strip().splitlines()) == 1
    result = runner.invoke(app, ["db", "upgrade"], env={"WASTATS_DATABASE_URL": "mysql://x"})
    assert result.exit_code == 1
    assert "WASTATS_DATABASE_URL" in result.stderr


def test_commands_refuse_an_unmigrated_database(tmp_path: object) -> None:
    url = f"sqlite:///{tmp_path}/empty.db"
    code, _, err = run(url, "accounts", "list")
    assert code == 1
    assert "there is no wastats database here" in err
    assert "`wastats db upgrade`" in err
    code, out, _ = run(url, "db", "upgrade")
    assert code == 0
    assert "Upgraded the schema from empty" in out
    code, out, _ = run(url, "db", "upgrade")
    assert "up to date" in out
    assert run(url, "accounts", "list")[0] == 0


# --- a CLI that guides (issue 14) ----------------------------------------------------------------


def _all_commands() -> list[list[str]]:
    """The path of every command and group, found by walking the real command tree."""
    import typer.main

    paths: list[list[str]] = []

    def walk(command: object, path: list[str]) -> None:
        paths.append(path)
        for name, sub in getattr(command, "commands", {}).items():
            walk(sub, [*path, name])

    walk(typer.main.get_command(app), [])
    return paths


def test_help_shows_readable_metavars_everywhere() -> None:
    commands = _all_commands()
    assert ["import"] in commands
    assert ["accounts", "delete"] in commands
    for command in commands:
        result = runner.invoke(app, [*command, "--help"], env={"COLUMNS": "120"})
        assert result.exit_code == 0, (command, result.output)
        # Python types and `{name}` made flags look as if they took values.
        for noise in ("<bool>", "<str>", "<int", "<list", "<path", "<float", "{", "1<=x"):
            assert noise not in result.output, (command, noise, result.output)
    usage = {
        ("accounts", "delete"): "Usage: wastats accounts delete [OPTIONS] CLIENT_ID",
        ("import",): "Usage: wastats import [OPTIONS] FILE...",
        ("events", "replay"): "Usage: wastats events replay [OPTIONS] [ID...]",
    }
    for command, line in usage.items():
        assert line in runner.invoke(app, [*command, "--help"]).output
    serve = runner.invoke(app, ["serve", "--help"], env={"COLUMNS": "120"}).output
    assert re.search(r"--port +PORT ", serve), serve
    assert re.search(r"--workers +N ", serve), serve
    add = runner.invoke(app, ["numbers", "add", "--help"], env={"COLUMNS": "120"}).output
    assert re.search(r"--account +CLIENT_ID ", add), add
    assert re.search(r"--coexistence +The number", add), add  # a flag: no metavar


def test_commands_are_listed_in_working_order() -> None:
    output = runner.invoke(app, ["--help"]).output
    names = re.findall(r"^│ (\w+) ", output, re.MULTILINE)
    order = ["serve", "accounts", "numbers", "stats", "import", "recount", "events", "db"]
    assert [n for n in names if n in order] == order, output


NO_DATABASE_COMMANDS = [
    ["accounts", "list"],
    ["accounts", "create", "--name", "Shop"],
    ["accounts", "delete", "x", "--yes"],
    ["numbers", "list"],
    ["numbers", "add", "--account", "x", "--whatsapp", "972501234567", "--phone-number-id", "1"],
    ["import", "FILE"],
    ["recount"],
    ["events", "rejected"],
    ["events", "replay"],
    ["stats", "--account", "x"],
]


@pytest.mark.parametrize("command", NO_DATABASE_COMMANDS, ids=" ".join)
def test_no_database_is_an_error_that_says_where_and_creates_nothing(
    command: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "data.jsonl").write_text('{"object": "whatsapp_business_account", "entry": []}\n')
    command = [str(tmp_path / "data.jsonl") if part == "FILE" else part for part in command]
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)  # the default URL, sqlite:///wastats.db, is relative to it
    for name in ("WASTATS_DATABASE_URL", "WASTATS_SECRET_KEY"):
        monkeypatch.delenv(name, raising=False)
    result = runner.invoke(app, command)
    assert result.exit_code == 1, result.output
    message = " ".join(result.stderr.split())
    assert message.startswith("error: there is no wastats database here"), message
    assert f"no file {work / 'wastats.db'} (sqlite:///wastats.db" in message
    assert "WASTATS_DATABASE_URL" in message
    assert "`wastats db upgrade`" in message
    # Neither an empty database nor a key file was left behind.
    assert sorted(p.name for p in work.iterdir()) == []


def test_an_unreachable_database_is_named_with_its_password_hidden() -> None:
    url = "postgresql+psycopg://wastats:s3cr3t-pw@127.0.0.1:1/wastats"
    for command in (["accounts", "list"], ["db", "upgrade"]):
        code, out, err = run(url, *command)
        assert code == 1
        text = " ".join(err.split())
        assert text.startswith(
            "error: cannot reach the database at postgresql+psycopg://wastats:***@127.0.0.1:1/"
        ), text
        assert "s3cr3t" not in out + err
    code, _, err = run(url, "db", "upgrade", "--wait", "1")
    assert code == 1
    assert "Waiting for the database at postgresql+psycopg://wastats:***@" in err
    assert "s3cr3t" not in err


def test_a_file_that_is_no_database_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "notes.db").write_text("not a database\n" * 100)
    code, _, err = run(f"sqlite:///{tmp_path / 'notes.db'}", "accounts", "list")
    assert code == 1
    assert "file is not a database" in err
    assert "Traceback" not in err


@pytest.mark.postgres
def test_an_empty_postgres_database_is_not_a_wastats_database(pg_cluster: PostgresCluster) -> None:
    name = f"empty_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_cluster.url().replace("+psycopg", ""), autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        url = pg_cluster.url(name)
        code, _, err = run(url, "accounts", "create", "--name", "Shop")
        assert code == 1
        assert "there is no wastats database here: the database holds no wastats tables" in (
            " ".join(err.split())
        )
        assert run(url, "db", "upgrade")[0] == 0
        assert run(url, "accounts", "create", "--name", "Shop")[0] == 0
    finally:
        drop_postgres_database(pg_cluster, name)


def _import(database_url: str, *args: str) -> tuple[int, str, str]:
    env = {"WASTATS_DATABASE_URL": database_url, "WASTATS_SECRET_KEY": SECRET_KEY}
    result = runner.invoke(app, ["import", "--serial", *args], env=env)
    return result.exit_code, result.stdout, result.stderr


GOOD = '{"object": "whatsapp_business_account", "entry": []}'


def test_import_reports_each_rejected_line_and_fails(database_url: str, tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text(f"{GOOD}\n{{not json\n\n[1, 2]\n")
    code, out, err = _import(database_url, str(bad))
    assert code == 1
    lines = [" ".join(line.split()) for line in err.splitlines()]
    assert f"rejected: {bad}:2: $: invalid JSON: JSON is malformed" in "\n".join(lines)
    assert f"rejected: {bad}:4: $: expected a JSON object" in "\n".join(lines)
    assert "2 lines were rejected" in err
    assert "--allow-rejected" in err
    assert "Read 3 bodies: 3 new" in out
    assert "2 bodies rejected" in out
    # `events rejected` names the file and line of each, in JSON and in the table.
    code, out, _ = run(database_url, "events", "rejected", "--json")
    reasons = sorted(json.loads(line)["reason"] for line in out.splitlines())
    assert [r.split(": $:")[0] for r in reasons] == [f"{bad}:2", f"{bad}:4"]
    code, out, _ = run(database_url, "events", "rejected")
    assert "2 rejected bodies shown." in out

    # Accepted on purpose: exit 0, and the same report.
    other = tmp_path / "other.jsonl"
    other.write_text(f'{GOOD.replace("[]", "[ ]")}\n{{"x": 1}}\n')
    code, out, err = _import(database_url, "--allow-rejected", str(other))
    assert code == 0, err
    assert f"{other}:2: $: not a WhatsApp webhook body" in " ".join(err.split())
    assert "1 body rejected" in out


def test_import_of_a_json_array_names_the_element(database_url: str, tmp_path: Path) -> None:
    array = tmp_path / "export.json"
    array.write_text(f"[\n  {GOOD},\n  [1]\n]\n")
    code, _, err = _import(database_url, str(array))
    assert code == 1
    assert f"rejected: {array}, element 2: $: expected a JSON object" in " ".join(err.split())


def test_a_missing_file_does_not_stop_the_others(database_url: str, tmp_path: Path) -> None:
    good = tmp_path / "good.jsonl"
    good.write_text(GOOD + "\n")
    code, out, err = _import(
        database_url, str(tmp_path / "missing.jsonl"), str(good), str(tmp_path)
    )
    assert code == 1
    assert "Read 1 body: 1 new" in out  # the plural too
    text = " ".join(err.split())
    assert f"{tmp_path / 'missing.jsonl'}: no such file" in text
    assert f"{tmp_path}: not a file" in text
    code, out, _ = run(database_url, "events", "rejected")
    assert "0 rejected bodies shown." in out


def test_delete_names_the_account_before_asking(database_url: str) -> None:
    a = create(database_url, "Falafel Palace")
    run(database_url, "numbers", "add", "--account", a["client_id"], "--whatsapp", "972501234567",
        "--phone-number-id", "106540352242922")  # fmt: skip
    code, out, _ = run(database_url, "accounts", "delete", a["client_id"], input="n\n")
    assert code == 1  # aborted
    assert (
        f"Delete account 'Falafel Palace' ({a['client_id']}) and its 1 number registration "
        "(972501234567)?" in out
    )
    assert len(run(database_url, "accounts", "list", "--json")[1].splitlines()) == 1
    code, out, _ = run(database_url, "accounts", "delete", a["client_id"], input="y\n")
    assert code == 0
    assert "Deleted account 'Falafel Palace'" in out
    code, _, err = run(database_url, "accounts", "delete", "nope", input="y\n")
    assert code == 1
    assert "no account with client id 'nope'" in err  # before any question


def _cli(database_url: str, columns: int, *args: str) -> subprocess.CompletedProcess[str]:
    """The installed `wastats` in a terminal `columns` wide (rich reads COLUMNS at start)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WASTATS_")}
    env.update(WASTATS_DATABASE_URL=database_url, COLUMNS=str(columns))
    return subprocess.run([str(WASTATS), *args], env=env, capture_output=True, text=True,
                          timeout=120, check=False)  # fmt: skip


def test_tables_never_cut_an_id(database_url: str) -> None:
    a = create(database_url, "A shop with a name long enough to need several lines", "--timezone",
               "America/Argentina/Buenos_Aires")  # fmt: skip
    run(database_url, "numbers", "add", "--account", a["client_id"], "--whatsapp", "972501234567",
        "--phone-number-id", "106540352242922", "--waba-id", "102290129340398",
        "--display-name", "Shop with a long display name", "--business-name", "Ltd")  # fmt: skip
    # Wide enough: a table whose other columns fold; too narrow for that: `header: value` lines.
    for columns in (120, 30):
        accounts = _cli(database_url, columns, "accounts", "list")
        assert accounts.returncode == 0, accounts.stderr
        assert a["client_id"] in accounts.stdout, (columns, accounts.stdout)
        numbers = _cli(database_url, columns, "numbers", "list")
        for number_id in ("972501234567", "106540352242922", "102290129340398"):
            assert number_id in numbers.stdout, (columns, numbers.stdout)
        for output in (accounts.stdout, numbers.stdout):
            assert "…" not in output
            if "┃" in output:  # a table: it fits the terminal
                assert all(len(line) <= columns for line in output.splitlines()), output
        assert ("┃" in accounts.stdout, "┃" in numbers.stdout) == (columns > 100,) * 2
    assert "┃" in _cli(database_url, 80, "accounts", "list").stdout


def test_serve_warns_of_several_workers_on_sqlite(sqlite_template: Path, tmp_path: Path) -> None:
    shutil.copyfile(sqlite_template, tmp_path / "wastats.db")
    server = Server(f"sqlite:///{tmp_path / 'wastats.db'}", tmp_path, workers=2)
    try:
        server.start()
    finally:
        server.stop()
    assert "warning: 2 workers on SQLite" in " ".join(server.logs().split())
