"""Shared fixtures: the repository root, and helpers to run `plantgate` as a real subprocess."""

from __future__ import annotations

import socket
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def repo_root() -> Path:
    return REPO_ROOT


def plantgate_command(*args: str) -> list[str]:
    """The command line that runs plantgate from this checkout, without relying on an installed script."""
    return [sys.executable, "-m", "agent", *args]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (for servers that need a fixed port up front)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])
