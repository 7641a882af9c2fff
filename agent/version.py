"""The build commit baked into a packaged binary, or read from git in a source checkout."""

from __future__ import annotations

import subprocess
from pathlib import Path


def build_commit() -> str:
    try:
        from agent import _build  # type: ignore[attr-defined]  # written by packaging/build.py

        return str(_build.COMMIT)
    except ImportError:
        pass
    root = Path(__file__).resolve().parent.parent
    try:
        result = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--short=12", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return result.stdout.strip() or "unknown"
