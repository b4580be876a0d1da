"""The `wastats` command through Typer's runner, against the real databases."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

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
    ("args", "message"),
    [
        (["--whatsapp", "12-34"], "'12-34' is not a phone number: expected 8 to 15 digits"),
        (["--whatsapp", "972501234567", "--waba-id", "a b"], "'a b' is not a valid WABA id"),
    ],
)
def test_numbers_add_bad_input(database_url: str, args: list[str], message: str) -> None:
    a = create(database_url)
    code, out, err = run(
        database_url, "numbers", "add", "--account", a["client_id"], "--phone-number-id", "1", *args
    )
    assert code == 1
    assert message in err


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
    assert "run `wastats db upgrade`" in err
    code, out, _ = run(url, "db", "upgrade")
    assert code == 0
    assert "Upgraded the schema from empty" in out
    code, out, _ = run(url, "db", "upgrade")
    assert "up to date" in out
    assert run(url, "accounts", "list")[0] == 0
