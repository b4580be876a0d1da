"""Docs that must not drift from the code."""

from __future__ import annotations

from pathlib import Path

from wastats.settings import Settings

ROOT = Path(__file__).resolve().parents[1]


def test_every_setting_is_documented() -> None:
    text = (ROOT / "docs" / "configuration.md").read_text()
    for name in Settings.model_fields:
        assert f"`WASTATS_{name.upper()}`" in text, name


def test_secrets_are_hidden_in_reprs() -> None:
    settings = Settings(_env_file=None, meta_app_secret="s3cr3t-app", secret_key="s3cr3t-key")  # type: ignore[call-arg]
    assert "s3cr3t" not in repr(settings)
    assert "s3cr3t" not in str(settings)


def test_readme_links_exist() -> None:
    readme = (ROOT / "README.md").read_text()
    for target in (
        "docs/configuration.md",
        "docs/api.md",
        "docs/development.md",
        "docs/counting.md",
        "docs/benchmarks.md",
    ):
        assert target in readme
        assert (ROOT / target).exists(), target


def test_ci_runs_the_readme_test_command() -> None:
    """CI must run exactly what the README tells a new user to run, so a green CI means it works."""
    readme = (ROOT / "README.md").read_text()
    commands = [line for line in readme.splitlines() if line.endswith("scripts/test")]
    assert len(commands) == 1, commands
    ci = (ROOT / ".ci" / "run").read_text()
    assert commands[0] in ci.splitlines()
