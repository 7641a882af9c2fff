"""The house tooling as part of the test command: ruff (lint and format) and mypy on the product code."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT


def tool(name: str) -> str:
    """The tool installed beside the Python that runs the tests (the project's virtual environment)."""
    path = shutil.which(name, path=str(Path(sys.executable).parent))
    if path is None:
        pytest.skip(f"{name} is not installed; install the test extra: pip install -e '.[test]'")
    return path


def test_ruff_finds_no_problems() -> None:
    result = subprocess.run([tool("ruff"), "check", "."], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)

    assert result.returncode == 0, result.stdout[-4000:]


def test_code_is_ruff_formatted() -> None:
    result = subprocess.run(
        [tool("ruff"), "format", "--check", "."], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120
    )

    assert result.returncode == 0, result.stdout[-4000:]


def test_mypy_finds_no_type_errors() -> None:
    result = subprocess.run([tool("mypy")], cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)

    assert result.returncode == 0, result.stdout[-4000:]
