"""SIGTERM as systemd sends it on `systemctl stop`, with a source capturing and a batch in flight."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sqlite3
import sys
import time
from collections.abc import Callable
from pathlib import Path

from agent.receiver import Receiver
from drivers.modbus.simulator import ModbusSimulator
from tests.conftest import REPO_ROOT

# The unit's TimeoutStopSec: after it, systemd kills the agent with SIGKILL.
TIMEOUT_STOP_S = 30.0


def write_config(tmp_path: Path, modbus_port: int, receiver_url: str) -> Path:
    config = tmp_path / "plantgate.toml"
    config.write_text(
        f"""
[agent]
site = "test"
gateway_id = "gw-1"

[central]
url = "{receiver_url}"
timeout_s = 120

[outbox]
path = "outbox.sqlite"

[health]
port = 0

[[sources]]
type = "modbus"
name = "meter"
host = "127.0.0.1"
port = {modbus_port}
unit_id = 1
poll_interval_ms = 200
points = [
    {{ name = "counter", table = "holding", address = 3, datatype = "uint32" }},
]
"""
    )
    return config


async def wait_for(condition: Callable[[], bool], within_s: float, what: str) -> None:
    deadline = time.monotonic() + within_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within_s} s waiting for {what}")
        await asyncio.sleep(0.1)


async def test_sigterm_keeps_in_flight_batch_and_exits_zero(tmp_path: Path) -> None:
    notify_path = tmp_path / "notify.sock"
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(notify_path))
    notify.setblocking(False)
    messages: list[str] = []

    def drain() -> list[str]:
        while True:
            try:
                messages.append(notify.recv(4096).decode())
            except BlockingIOError:
                return messages

    async with (
        ModbusSimulator(step_s=0.1) as simulator,
        Receiver(tmp_path / "receiver.sqlite") as receiver,
    ):
        # The receiver stores each batch, then delays the reply by a minute: the agent is
        # stopped while its first batch is in flight.
        receiver.stall(60, store_first=True)
        config = write_config(tmp_path, simulator.port, receiver.url)
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "agent",
            "run",
            "--config",
            str(config),
            cwd=REPO_ROOT,
            env={**os.environ, "NOTIFY_SOCKET": str(notify_path)},
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        try:
            await wait_for(lambda: any(m.startswith("READY=1") for m in drain()), 30, "READY=1")
            await wait_for(lambda: receiver.stats().unique_events > 0, 30, "a batch at the receiver")
            in_flight = {event.id for event in receiver.events()}
            # Let capture go on for a few polls while the batch hangs.
            await asyncio.sleep(1.0)

            started = time.monotonic()
            process.send_signal(signal.SIGTERM)
            output, _ = await asyncio.wait_for(process.communicate(), TIMEOUT_STOP_S)
            stop_took = time.monotonic() - started
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
            drain()
            notify.close()

    assert process.returncode == 0, output.decode()[-2000:]
    assert stop_took < TIMEOUT_STOP_S
    assert "STOPPING=1" in "\n".join(messages)

    connection = sqlite3.connect(tmp_path / "outbox.sqlite")
    try:
        assert connection.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        still_queued = {row[0] for row in connection.execute("SELECT id FROM records")}
    finally:
        connection.close()
    # The batch was never acknowledged, so every record of it is still in the outbox and is
    # sent again, with the same id, after the restart.
    assert in_flight
    assert in_flight <= still_queued
    # Capture went on while the batch was stalled, and those appends were committed too.
    assert len(still_queued) > len(in_flight)
