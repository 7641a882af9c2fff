"""`plantgate simulate` serves what config/demo.toml reads: checked with `plantgate sample`, as a user would."""

from __future__ import annotations

import signal
import subprocess
import time
import tomllib
from pathlib import Path

from tests.agent.test_demo import demo_config_on_free_ports
from tests.conftest import REPO_ROOT, plantgate_command


def test_sample_reads_simulators_started_by_simulate(tmp_path: Path) -> None:
    config = demo_config_on_free_ports(tmp_path)
    sources = {source["type"]: source for source in tomllib.loads(config.read_text())["sources"]}
    opcua_port = sources["opcua"]["endpoint"].rsplit(":", 1)[1]
    modbus_port = str(sources["modbus"]["port"])
    simulators = subprocess.Popen(
        plantgate_command("simulate", "--opcua-port", opcua_port, "--modbus-port", modbus_port),
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert simulators.stdout is not None
        deadline = time.monotonic() + 60
        lines = []
        while time.monotonic() < deadline:
            line = simulators.stdout.readline()
            lines.append(line)
            if line.startswith("running until Ctrl-C") or not line:
                break

        result = subprocess.run(
            plantgate_command("sample", "--config", str(config)),
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=120,
        )
    finally:
        simulators.send_signal(signal.SIGINT)
        exit_code = simulators.wait(30)

    assert "running until Ctrl-C\n" in lines, lines
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Line1.Temperature" in result.stdout
    assert "temperature" in result.stdout
    assert exit_code == 0
