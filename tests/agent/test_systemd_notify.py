"""The agent's sd_notify messages, received on a real AF_UNIX datagram socket as systemd would."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent import systemd
from agent.config import CentralSection, load_config
from agent.sdnotify import Notifier
from agent.supervisor import Agent
from tests.conftest import REPO_ROOT, free_port, plantgate_command


def write_config(tmp_path: Path, *, idle_poll_s: float = 1.0) -> Path:
    config = tmp_path / "plantgate.toml"
    config.write_text(
        f"""
[agent]
site = "test"
gateway_id = "gw-1"

[central]
url = "http://127.0.0.1:{free_port()}/ingest"
idle_poll_s = {idle_poll_s}

[outbox]
path = "outbox.sqlite"

[health]
port = 0
"""
    )
    return config


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    yield sock, path
    sock.close()


def receive(sock: socket.socket, timeout: float) -> list[str]:
    """Every datagram that arrives within `timeout` seconds."""
    messages: list[str] = []
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        sock.settimeout(left)
        try:
            messages.append(sock.recv(4096).decode())
        except TimeoutError:
            break
    return messages


def receive_until(sock: socket.socket, prefix: str, timeout: float) -> list[str]:
    messages: list[str] = []
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        sock.settimeout(left)
        try:
            message = sock.recv(4096).decode()
        except TimeoutError:
            break
        messages.append(message)
        if message.startswith(prefix):
            return messages
    raise AssertionError(f"no {prefix} message within {timeout} s; received {messages}")


@pytest.mark.parametrize(
    ("now", "last", "expected"),
    [
        (100.0, None, True),
        (100.0 + 401, None, False),
        (1000.0, 990.0, True),
        (1000.0, 1000.0 - 399, True),
        (1000.0, 1000.0 - 401, False),
    ],
)
def test_forwarder_progress_table(now: float, last: float | None, expected: bool) -> None:
    assert systemd.is_progressing(now, last, started=100.0, stall_limit=400.0) is expected


def test_stall_limit_covers_longest_retry() -> None:
    central = CentralSection(url="http://127.0.0.1:1/", retry_max_s=300, timeout_s=30, idle_poll_s=1)
    assert systemd.forwarder_stall_limit(central) == 300 + 4 * 30 + 1 + systemd.STALL_SLACK_S


@pytest.mark.parametrize(
    ("outbox", "forwarder", "expected"),
    [
        ({}, {}, "backlog 0, WAN unknown"),
        (
            {"depth": {"transaction": 1, "event": 0, "telemetry": 41}},
            {"wan_state": "up"},
            "backlog 42 (transaction 1, event 0, telemetry 41), WAN up",
        ),
        (
            {"depth": {"telemetry": 5}, "dead_letters": 2, "shed_records": 7},
            {"wan_state": "down"},
            "backlog 5 (telemetry 5), WAN down, 2 dead-lettered, 7 telemetry shed",
        ),
    ],
)
def test_status_line_table(outbox: dict[str, object], forwarder: dict[str, object], expected: str) -> None:
    assert systemd.status_line(outbox, forwarder) == expected


def test_agent_sends_ready_status_stopping_in_order(tmp_path: Path, notify_socket: tuple[socket.socket, str]) -> None:
    sock, path = notify_socket
    config = write_config(tmp_path)
    env = {**os.environ, "NOTIFY_SOCKET": path, "WATCHDOG_USEC": "1000000"}
    process = subprocess.Popen(
        plantgate_command("run", "--config", str(config)),
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        startup = receive_until(sock, "READY=1", timeout=30)
        running = receive(sock, timeout=systemd.STATUS_INTERVAL_S + 1.5)
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=30)
        shutdown = receive(sock, timeout=0.5)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()

    assert process.returncode == 0, output
    ready = startup[-1]
    assert ready.startswith("READY=1\nSTATUS=ready: backlog 0")
    assert all(message == "WATCHDOG=1" for message in startup[:-1])

    statuses = [m for m in running if m.startswith("STATUS=")]
    assert statuses
    assert statuses[0].startswith("STATUS=backlog 0")
    assert "WAN " in statuses[0]
    assert running.count("WATCHDOG=1") >= 8

    stopping = [m for m in running + shutdown if m.startswith("STOPPING=1")]
    assert len(stopping) == 1
    after_stopping = (running + shutdown)[(running + shutdown).index(stopping[0]) + 1 :]
    assert not any(m.startswith(("READY=1", "STATUS=")) for m in after_stopping)


def test_agent_without_notify_socket_runs_and_stops(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC")}
    process = subprocess.Popen(
        plantgate_command("run", "--config", str(config)),
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while not (tmp_path / "outbox.sqlite").exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(1)
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 0, output


async def test_watchdog_withheld_while_loop_hangs_or_forwarder_stalls(
    tmp_path: Path, notify_socket: tuple[socket.socket, str]
) -> None:
    sock, path = notify_socket
    sock.setblocking(False)
    settings = load_config(write_config(tmp_path, idle_poll_s=3600))
    agent = Agent(settings)
    notifier = Notifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "200000"})
    systemd.attach(agent, notifier)
    stop = asyncio.Event()
    run = asyncio.create_task(agent.run(stop))

    def drain() -> list[str]:
        messages = []
        while True:
            try:
                messages.append(sock.recv(4096).decode())
            except BlockingIOError:
                return messages

    try:
        await asyncio.wait_for(agent.ready.wait(), timeout=30)
        await asyncio.sleep(0.5)
        assert "WATCHDOG=1" in drain()

        # The event loop blocks: nothing on it runs, so no ping can be sent.
        time.sleep(0.6)
        assert drain() == []
        await asyncio.sleep(0.5)
        assert "WATCHDOG=1" in drain()

        # The forwarder stops making progress: with idle_poll_s = 3600 its next step is an hour away.
        assert agent.forwarder is not None
        agent.forwarder.status.last_progress_monotonic = time.monotonic() - 10_000
        await asyncio.sleep(0.15)
        drain()
        await asyncio.sleep(0.6)
        assert "WATCHDOG=1" not in drain()
    finally:
        stop.set()
        await asyncio.wait_for(run, timeout=30)
        notifier.close()
