"""Connect the supervisor to systemd through sd_notify: READY, STATUS, STOPPING and WATCHDOG.

READY=1 goes out from the supervisor's ready hook, which runs once the outbox is open, the
health server listens and every source task has started. A one-line STATUS= summary follows
every few seconds, STOPPING=1 when shutdown begins, and WATCHDOG=1 only while the event
loop runs, the outbox writer is alive and the forwarder makes progress (or waits idle).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from agent.config import CentralSection
from agent.sdnotify import Notifier, watchdog_loop

if TYPE_CHECKING:
    from agent.supervisor import Agent

log = logging.getLogger(__name__)

STATUS_INTERVAL_S = 5.0
# Slack added to the forwarder's longest legitimate pause before it counts as stuck.
STALL_SLACK_S = 60.0


def forwarder_stall_limit(central: CentralSection) -> float:
    """Seconds without a forwarder step after which the forwarder counts as stuck.

    One step may wait out the longest retry delay, and a bisected batch makes a few requests
    that each may run into the request timeout.
    """
    return central.retry_max_s + 4 * central.timeout_s + central.idle_poll_s + STALL_SLACK_S


def is_progressing(now: float, last_progress: float | None, started: float, stall_limit: float) -> bool:
    """True while the forwarder's last step (or, before its first step, the agent's start) lies
    within `stall_limit` seconds of `now`."""
    reference = started if last_progress is None else last_progress
    return now - reference <= stall_limit


def status_line(outbox: Mapping[str, Any], forwarder: Mapping[str, Any]) -> str:
    """One-line summary for `systemctl status`: backlog per lane, WAN state, dead letters, shed."""
    depth = outbox.get("depth", {})
    backlog = sum(int(count) for count in depth.values())
    lanes = ", ".join(f"{lane} {count}" for lane, count in depth.items())
    parts = [f"backlog {backlog}" + (f" ({lanes})" if lanes else "")]
    parts.append(f"WAN {forwarder.get('wan_state', 'unknown')}")
    if outbox.get("dead_letters"):
        parts.append(f"{outbox['dead_letters']} dead-lettered")
    if outbox.get("shed_records"):
        parts.append(f"{outbox['shed_records']} telemetry shed")
    return ", ".join(parts)


async def summary(agent: Agent) -> str:
    outbox = (await agent.outbox.stats()).as_dict() if agent.outbox is not None else {}
    forwarder = agent.forwarder.status.snapshot() if agent.forwarder is not None else {}
    return status_line(outbox, forwarder)


def attach(agent: Agent, notifier: Notifier) -> None:
    """Add the notify hooks and tasks to `agent`; does nothing when systemd did not ask for them."""
    if not notifier.enabled:
        return
    stall_limit = forwarder_stall_limit(agent.settings.central)

    async def on_ready(agent: Agent) -> None:
        notifier.ready(f"ready: {await summary(agent)}")

    def on_stopping(agent: Agent) -> None:
        notifier.stopping("stopping: sources first, then the forwarder, then the outbox")

    async def report_status(agent: Agent) -> None:
        await agent.ready.wait()
        while True:
            await agent.clock.sleep(STATUS_INTERVAL_S)
            if agent.stopping:
                return
            try:
                notifier.status(await summary(agent))
            except Exception:
                # The summary reads outbox statistics; a failure there is reported by /status
                # and the watchdog, and must not end the STATUS loop.
                log.debug("could not build the STATUS summary", exc_info=True)

    def is_healthy() -> bool:
        if agent.outbox is None or not agent.outbox.writer_alive:
            return False
        if agent.forwarder is None:
            return True
        last = agent.forwarder.status.last_progress_monotonic
        return is_progressing(agent.clock.monotonic(), last, agent.started_monotonic, stall_limit)

    async def watchdog(agent: Agent) -> None:
        await watchdog_loop(notifier, is_healthy, agent.clock)

    agent.on_ready.append(on_ready)
    agent.on_stopping.append(on_stopping)
    agent.services.append(report_status)
    agent.services.append(watchdog)
