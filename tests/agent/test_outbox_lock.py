"""Two agents must never forward from one outbox: the second refuses to start and names the first."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

from tests.conftest import REPO_ROOT, free_port, plantgate_command

CONFIG = """
[agent]
site = "plant1"
gateway_id = "gw-lock"

[outbox]
path = "{outbox}"

[central]
url = "http://127.0.0.1:{central_port}/v1/events"

[health]
port = 0
"""


def test_second_agent_on_same_outbox_refuses_to_start(tmp_path: Path) -> None:
    config = tmp_path / "plantgate.toml"
    config.write_text(CONFIG.format(outbox=tmp_path / "outbox.sqlite", central_port=free_port()))
    first = subprocess.Popen(plantgate_command("run", "--config", str(config)), cwd=REPO_ROOT, stderr=subprocess.PIPE)
    try:
        lock = tmp_path / "outbox.sqlite.lock"
        deadline = time.monotonic() + 30
        while not (lock.exists() and lock.read_text().strip()) and time.monotonic() < deadline:
            time.sleep(0.1)

        second = subprocess.run(
            plantgate_command("run", "--config", str(config)), cwd=REPO_ROOT, capture_output=True, text=True, timeout=60
        )
    finally:
        first.send_signal(signal.SIGTERM)
        first_code = first.wait(30)

    assert second.returncode == 1
    assert f"is in use by another plantgate process (pid {first.pid})" in second.stderr
    assert first_code == 0


def test_lock_of_killed_agent_does_not_block_restart(tmp_path: Path) -> None:
    config = tmp_path / "plantgate.toml"
    config.write_text(CONFIG.format(outbox=tmp_path / "outbox.sqlite", central_port=free_port()))
    first = subprocess.Popen(plantgate_command("run", "--config", str(config)), cwd=REPO_ROOT)
    lock = tmp_path / "outbox.sqlite.lock"
    deadline = time.monotonic() + 30
    while not (lock.exists() and lock.read_text().strip()) and time.monotonic() < deadline:
        time.sleep(0.1)
    os.kill(first.pid, signal.SIGKILL)
    first.wait(10)

    second = subprocess.Popen(plantgate_command("run", "--config", str(config)), cwd=REPO_ROOT)
    try:
        deadline = time.monotonic() + 30
        while lock.read_text().strip() != str(second.pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert second.poll() is None, "the restarted agent exited"
        assert lock.read_text().strip() == str(second.pid)
    finally:
        second.send_signal(signal.SIGTERM)
        assert second.wait(30) == 0
