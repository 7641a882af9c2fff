"""`plantgate demo`, run as a user runs it (shortened), must end with nothing lost."""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.conftest import REPO_ROOT, plantgate_command


def test_demo_survives_outage_and_reports_nothing_lost(tmp_path: Path) -> None:
    result = subprocess.run(
        plantgate_command("demo", "--duration", "10", "--outage-at", "3", "--outage", "4", "--data-dir", str(tmp_path)),
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=180,
    )

    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "the receiver goes down for 4 s" in result.stdout
    assert "WAN down" in result.stdout
    assert "nothing lost, nothing doubled" in result.stdout
    assert (tmp_path / "outbox.sqlite").exists()
    assert (tmp_path / "receiver.sqlite").exists()
