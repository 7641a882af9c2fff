"""sd_notify against a real AF_UNIX datagram socket, as systemd would listen on it."""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.sdnotify import Notifier, one_line, socket_address, watchdog_loop, watchdog_ping_interval


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(5)
    yield sock, str(path)
    sock.close()


def receive_all(sock: socket.socket, wait: float = 0.2) -> list[str]:
    messages: list[str] = []
    sock.settimeout(wait)
    try:
        while True:
            messages.append(sock.recv(4096).decode())
    except TimeoutError:
        return messages


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("/run/systemd/notify", "/run/systemd/notify"),
        ("@sd-notify-42", b"\0sd-notify-42"),
        ("", None),
        ("relative/path", None),
        ("vsock:2:1234", None),
    ],
)
def test_socket_address_forms(value: str, expected: str | bytes | None) -> None:
    assert socket_address(value) == expected


@pytest.mark.parametrize(
    ("usec", "pid", "expected"),
    [
        ("30000000", None, 15.0),
        ("30000000", "1000", 15.0),
        ("30000000", "999", None),
        ("1000000", "", 0.5),
        (None, None, None),
        ("", None, None),
        ("0", None, None),
        ("-5", None, None),
        ("thirty", None, None),
    ],
)
def test_watchdog_ping_interval_table(usec: str | None, pid: str | None, expected: float | None) -> None:
    assert watchdog_ping_interval(usec, pid, own_pid=1000) == expected


def test_watchdog_ping_interval_accepts_onefile_bootloader() -> None:
    assert watchdog_ping_interval("30000000", "999", own_pid=1000, launcher_pid=999) == 15.0
    assert watchdog_ping_interval("30000000", "998", own_pid=1000, launcher_pid=999) is None


def test_one_line_flattens_and_truncates() -> None:
    assert one_line("backlog 3\nWAN up") == "backlog 3 WAN up"
    long = one_line("x" * 500)
    assert len(long) == 200
    assert long.endswith("...")


def test_notifier_sends_messages_in_order(listener: tuple[socket.socket, str]) -> None:
    sock, path = listener
    with Notifier({"NOTIFY_SOCKET": path}) as notifier:
        assert notifier.enabled
        notifier.ready("started")
        notifier.status("backlog 0, WAN up")
        notifier.watchdog()
        notifier.stopping()

    messages = receive_all(sock)
    assert messages == [
        "READY=1\nSTATUS=started",
        "STATUS=backlog 0, WAN up",
        "WATCHDOG=1",
        "STOPPING=1",
    ]


def test_notifier_reaches_abstract_socket() -> None:
    name = f"plantgate-test-{os.getpid()}-{time.monotonic_ns()}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(b"\0" + name.encode())
    try:
        with Notifier({"NOTIFY_SOCKET": "@" + name}) as notifier:
            notifier.ready()
        assert receive_all(sock) == ["READY=1"]
    finally:
        sock.close()


def test_notifier_without_socket_does_nothing() -> None:
    notifier = Notifier({})
    assert not notifier.enabled
    notifier.ready()
    notifier.status("x")
    assert notifier.watchdog_interval() is None
    notifier.close()
    notifier.close()


def test_notifier_counts_failed_sends(tmp_path: Path) -> None:
    notifier = Notifier({"NOTIFY_SOCKET": str(tmp_path / "nobody-listens.sock")})
    notifier.ready()
    notifier.status("x")
    assert notifier.failed_sends == 2
    notifier.close()


async def test_watchdog_loop_pings_only_while_healthy(listener: tuple[socket.socket, str]) -> None:
    sock, path = listener
    healthy = True
    notifier = Notifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "100000", "WATCHDOG_PID": str(os.getpid())})
    task = asyncio.create_task(watchdog_loop(notifier, lambda: healthy))
    try:
        await asyncio.sleep(0.32)
        pings_healthy = len(receive_all(sock, wait=0.01))
        healthy = False
        receive_all(sock, wait=0.06)  # a ping already on its way
        await asyncio.sleep(0.3)
        pings_unhealthy = len(receive_all(sock, wait=0.01))
        healthy = True
        await asyncio.sleep(0.15)
        pings_resumed = len(receive_all(sock, wait=0.01))
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        notifier.close()

    assert pings_healthy >= 3
    assert pings_unhealthy == 0
    assert pings_resumed >= 1


async def test_watchdog_stops_while_event_loop_hangs(listener: tuple[socket.socket, str]) -> None:
    sock, path = listener
    notifier = Notifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "100000"})
    task = asyncio.create_task(watchdog_loop(notifier, lambda: True))
    try:
        await asyncio.sleep(0.2)
        assert receive_all(sock, wait=0.01)

        # A blocking call on the event loop: no coroutine runs, so no ping can be sent.
        time.sleep(0.4)
        assert receive_all(sock, wait=0.01) == []

        await asyncio.sleep(0.2)
        assert receive_all(sock, wait=0.01)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        notifier.close()


async def test_watchdog_loop_returns_without_watchdog(listener: tuple[socket.socket, str]) -> None:
    sock, path = listener
    notifier = Notifier({"NOTIFY_SOCKET": path})
    await asyncio.wait_for(watchdog_loop(notifier, lambda: True), timeout=1)
    assert receive_all(sock) == []
    notifier.close()
