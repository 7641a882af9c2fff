"""`plantgate demo`, run as a user runs it (shortened), must end with nothing lost."""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.conftest import REPO_ROOT, free_port, plantgate_command

DEMO_PORTS = {"48401": "opcua", "15021": "modbus", "18081": "receiver", "18787": "health"}


def demo_config_on_free_ports(tmp_path: Path) -> Path:
    """A copy of config/demo.toml on ports that are free now, so the test does not depend on the
    fixed demo ports (a user may be running the demo on this machine)."""
    text = (REPO_ROOT / "config" / "demo.toml").read_text()
    for port in DEMO_PORTS:
        assert port in text, f"config/demo.toml no longer uses port {port}; update this test"
        text = text.replace(port, str(free_port()))
    path = tmp_path / "demo.toml"
    path.write_text(text)
    return path


def test_demo_survives_outage_and_reports_nothing_lost(tmp_path: Path) -> None:
    config = demo_config_on_free_ports(tmp_path)
    data = tmp_path / "data"

    result = subprocess.run(
        plantgate_command(
            "demo",
            "--config",
            str(config),
            "--duration",
            "10",
            "--outage-at",
            "3",
            "--outage",
            "4",
            "--data-dir",
            str(data),
        ),
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=180,
    )

    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "the receiver goes down for 4 s" in result.stdout
    assert "WAN down" in result.stdout
    assert "nothing lost, nothing doubled" in result.stdout
    assert (data / "outbox.sqlite").exists()
    assert (data / "receiver.sqlite").exists()
