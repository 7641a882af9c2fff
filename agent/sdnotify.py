"""The systemd notification protocol (sd_notify) for a `Type=notify` service.

systemd passes the address of a datagram socket in `$NOTIFY_SOCKET`; each message is one
datagram of newline-separated `KEY=VALUE` lines (`READY=1`, `STATUS=...`, `STOPPING=1`,
`WATCHDOG=1`), as described in sd_notify(3). An address starting with `@` names a socket in
the Linux abstract namespace. Without `$NOTIFY_SOCKET` (started by hand, or in tests) every
call does nothing, so the agent needs no systemd to run.

The watchdog (`WatchdogSec=` in the unit) sets `$WATCHDOG_USEC`; systemd kills and restarts
the service if no `WATCHDOG=1` arrives within that time. `watchdog_loop` pings at half the
interval, and only while the caller's health check passes, so a hung agent is restarted.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
from collections.abc import Callable, Mapping
from types import TracebackType

from outbox.clock import SYSTEM_CLOCK, Clock

log = logging.getLogger(__name__)

# systemd truncates STATUS= text it shows; a one-line summary stays well below this.
MAX_STATUS_CHARS = 200


def socket_address(value: str) -> str | bytes | None:
    """Translate a `$NOTIFY_SOCKET` value into an AF_UNIX address, or None if it is unusable.

    `@name` is the abstract socket `\\0name`; a path must be absolute. systemd also accepts
    `vsock:` addresses for virtual machines, which this agent does not use.
    """
    if not value:
        return None
    if value.startswith("@"):
        return b"\0" + value[1:].encode()
    if value.startswith("/"):
        return value
    return None


def watchdog_ping_interval(
    usec: str | None, pid: str | None, own_pid: int, launcher_pid: int | None = None
) -> float | None:
    """Return the seconds between watchdog pings (half of `$WATCHDOG_USEC`), or None when no
    watchdog applies to this process.

    `$WATCHDOG_PID`, when set, names the process the watchdog is meant for; a child that
    inherited the variables must not ping on its parent's behalf. The one exception is
    `launcher_pid`: the PyInstaller one-file binary runs the agent in a child of its
    bootloader, and systemd treats the bootloader as the main process.
    """
    if not usec:
        return None
    if pid and pid.strip() not in (str(own_pid), str(launcher_pid)):
        return None
    try:
        microseconds = int(usec)
    except ValueError:
        log.warning("ignoring WATCHDOG_USEC=%r: not an integer number of microseconds", usec)
        return None
    if microseconds <= 0:
        return None
    return microseconds / 1_000_000 / 2


def one_line(text: str) -> str:
    """Make `text` fit a single STATUS= line: no newlines, at most MAX_STATUS_CHARS characters."""
    flat = " ".join(text.split())
    if len(flat) > MAX_STATUS_CHARS:
        flat = flat[: MAX_STATUS_CHARS - 3] + "..."
    return flat


class Notifier:
    """Sends sd_notify messages to the socket in `$NOTIFY_SOCKET`; does nothing without one.

    A failed send is logged once and counted, never raised: losing a status line must not stop
    the agent. (A missing READY=1 makes systemd fail the start after `TimeoutStartSec`, which
    is the right outcome when the socket is gone.) Use it as a context manager or call
    `close()`; closing twice is safe.
    """

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        self._address = socket_address(env.get("NOTIFY_SOCKET", ""))
        self._watchdog_usec = env.get("WATCHDOG_USEC")
        self._watchdog_pid = env.get("WATCHDOG_PID")
        self._socket: socket.socket | None = None
        self.failed_sends = 0
        if env.get("NOTIFY_SOCKET") and self._address is None:
            log.warning("ignoring NOTIFY_SOCKET=%r: expected an absolute path or @abstract-name", env["NOTIFY_SOCKET"])

    @property
    def enabled(self) -> bool:
        return self._address is not None

    def ready(self, status: str | None = None) -> None:
        self._send("READY=1", status)

    def status(self, text: str) -> None:
        self._send(None, text)

    def stopping(self, status: str | None = None) -> None:
        self._send("STOPPING=1", status)

    def watchdog(self) -> None:
        self._send("WATCHDOG=1", None)

    def watchdog_interval(self) -> float | None:
        """Seconds between watchdog pings (half of `WatchdogSec`), or None without a watchdog."""
        # A frozen one-file binary is two processes: the bootloader (systemd's main PID) and the
        # agent it starts. The unit sets NotifyAccess=all so the agent's messages are accepted.
        launcher = os.getppid() if getattr(sys, "frozen", False) else None
        return watchdog_ping_interval(self._watchdog_usec, self._watchdog_pid, os.getpid(), launcher)

    def _send(self, line: str | None, status: str | None) -> None:
        if self._address is None:
            return
        lines = [line] if line else []
        if status is not None:
            lines.append(f"STATUS={one_line(status)}")
        if not lines:
            return
        try:
            if self._socket is None:
                self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._socket.sendto("\n".join(lines).encode(), self._address)
        except OSError as error:
            self.failed_sends += 1
            if self.failed_sends == 1:
                log.warning(
                    "sd_notify to %s failed: %s (further failures are counted, not logged)",
                    self._address,
                    error,
                )

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None

    def __enter__(self) -> Notifier:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


async def watchdog_loop(notifier: Notifier, is_healthy: Callable[[], bool], clock: Clock = SYSTEM_CLOCK) -> None:
    """Send WATCHDOG=1 every half `WatchdogSec` while `is_healthy()` returns True; run until cancelled.

    The loop runs on the agent's event loop, so a blocked loop stops the pings by itself;
    `is_healthy` adds the checks the loop cannot see (the outbox writer alive, the forwarder
    progressing). Returns at once when no watchdog is configured.
    """
    interval = notifier.watchdog_interval()
    if interval is None:
        return

    healthy_before = True
    while True:
        try:
            healthy = is_healthy()
        except Exception:
            log.exception("watchdog health check raised; treating the agent as unhealthy")
            healthy = False
        if healthy:
            notifier.watchdog()
            if not healthy_before:
                log.info("watchdog pings resumed: the agent is making progress again")
        elif healthy_before:
            log.warning(
                "watchdog pings withheld: the agent is not making progress; systemd restarts it if this lasts %.0f s",
                interval * 2,
            )
        healthy_before = healthy
        await clock.sleep(interval)
