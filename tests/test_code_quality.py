"""The code standards as tests, so CI holds them: `mypy --strict`, `ruff check`, `ruff format`,
and the layers (`lint-imports`, the contracts in pyproject.toml's `[tool.importlinter]`).

They run the tools the test extras install, from this interpreter's environment, on the whole
checkout; each failure prints the tool's own report."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize(
    "command",
    [
        pytest.param([sys.executable, "-m", "mypy"], id="mypy-strict"),
        pytest.param([sys.executable, "-m", "ruff", "check", "."], id="ruff-check"),
        pytest.param([sys.executable, "-m", "ruff", "format", "--check", "."], id="ruff-format"),
        pytest.param(
            [str(Path(sys.executable).with_name("lint-imports")), "--no-cache"], id="import-layers"
        ),
    ],
)
def test_tool_is_clean(command: list[str]) -> None:
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
