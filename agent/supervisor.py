"""The supervisor: opens the outbox, starts the health server, the forwarder and every source as
children of one task group, and stops them in order.

Shutdown order matters for the guarantees. Sources stop first, so no new records arrive. Then
the forwarder is cancelled: a batch in flight either completed or stays in the outbox, because
records are only removed after the receiver acknowledged them. Last, the outbox commits what
is still queued and closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from datetime import timedelta
from typing import Any

from agent import __version__
from agent.config import Settings
from agent.forwarder import Forwarder
from agent.health import HealthServer
from agent.update.install import InstallLayout, update_report
from drivers.base import Source
from drivers.registry import build_source
from outbox.backoff import Backoff
from outbox.clock import SYSTEM_CLOCK, Clock
from outbox.errors import OutboxError
from outbox.lock import OutboxLock
from outbox.records import Record, format_time, parse_time
from outbox.store import Outbox

log = logging.getLogger(__name__)


class _Sink:
    """Record sink of the sources: the outbox, plus a wake-up for the forwarder after each commit.

    Counting uses the outbox's commit report rather than `append`'s return, so a record whose
    producer was cancelled while its commit completed is still counted (and in the ledger).
    """

    def __init__(self, outbox: Outbox, on_stored: Callable[[], None], ledger: list[str] | None) -> None:
        self._outbox = outbox
        self._on_stored = on_stored
        self._ledger = ledger
        self.stored = 0
        outbox.on_commit = self._committed

    def _committed(self, records: list[Record]) -> None:
        self.stored += len(records)
        if self._ledger is not None:
            self._ledger.extend(record.id for record in records)
        self._on_stored()

    async def append(self, records: Sequence[Record]) -> list[bool]:
        return await self._outbox.append(records)

    async def lookup(self, record_id: str) -> str | None:
        return await self._outbox.lookup(record_id)


class Agent:
    """Everything `plantgate run` runs for one configuration."""

    def __init__(self, settings: Settings, *, clock: Clock = SYSTEM_CLOCK) -> None:
        self.settings = settings
        self.clock = clock
        self.sources: list[Source] = [
            build_source(config, clock=clock) for config in settings.sources if config.enabled
        ]
        self.outbox: Outbox | None = None
        self.forwarder: Forwarder | None = None
        self.health: HealthServer | None = None
        self.sink: _Sink | None = None
        self.ready = asyncio.Event()
        self.stopping = False
        self.started_at = clock.now()
        self.started_monotonic = clock.monotonic()
        self.incidents: list[dict[str, Any]] = []
        # When set to a list, the id of every stored record is added to it in store order. Only the
        # demo and the tests use it: it grows with every record.
        self.ledger: list[str] | None = None
        # Called with the agent once it is ready and when it starts stopping (systemd notify hooks).
        self.on_ready: list[Callable[[Agent], Awaitable[None] | None]] = []
        self.on_stopping: list[Callable[[Agent], Awaitable[None] | None]] = []
        # Extra long-lived tasks (for example the systemd watchdog), started beside the forwarder.
        self.services: list[Callable[[Agent], Coroutine[Any, Any, None]]] = []
        self._source_tasks: list[asyncio.Task[None]] = []

    async def run(self, stop: asyncio.Event) -> None:
        """Run until `stop` is set, then shut down in order. Raises only on a startup failure."""
        settings = self.settings
        outbox = Outbox(
            settings.outbox.path,
            max_bytes=int(settings.outbox.max_bytes),
            telemetry_share=settings.outbox.telemetry_share,
            delivered_retention=timedelta(days=settings.outbox.delivered_retention_days),
            clock=self.clock,
        )
        with OutboxLock(settings.outbox.path):
            await self._run_with_outbox(outbox, stop)
        log.info("plantgate stopped")

    async def _run_with_outbox(self, outbox: Outbox, stop: asyncio.Event) -> None:
        settings = self.settings
        async with outbox:
            self.outbox = outbox
            incident = getattr(outbox, "startup_incident", None)
            if incident is not None:
                as_dict = getattr(incident, "as_dict", None)
                self.incidents.append(as_dict() if callable(as_dict) else {"message": str(incident)})
            self.forwarder = Forwarder(
                outbox,
                settings.central,
                site=settings.agent.site,
                gateway_id=settings.agent.gateway_id,
                clock=self.clock,
            )
            self.sink = _Sink(outbox, self._wake_forwarder, self.ledger)
            self.health = HealthServer(self, settings.health)
            async with self.health:
                await self._run_tasks(stop)

    async def _run_tasks(self, stop: asyncio.Event) -> None:
        assert self.forwarder is not None and self.sink is not None
        async with asyncio.TaskGroup() as core:
            forwarder_task = core.create_task(self.forwarder.run(), name="forwarder")
            service_tasks: list[asyncio.Task[None]] = [
                core.create_task(service(self), name="service") for service in self.services
            ]
            async with asyncio.TaskGroup() as producers:
                self._source_tasks = [
                    producers.create_task(self._run_source(source, self.sink), name=f"source-{source.name}")
                    for source in self.sources
                ]
                self.ready.set()
                log.info(
                    "plantgate ready",
                    extra={
                        "version": __version__,
                        "sources": len(self.sources),
                        "outbox": str(self.settings.outbox.path),
                        "health_port": self.health.port if self.health else None,
                    },
                )
                await _call_hooks(self.on_ready, self)
                await stop.wait()

                self.stopping = True
                log.info("plantgate stopping: sources first, then the forwarder, then the outbox")
                await _call_hooks(self.on_stopping, self)
                for task in self._source_tasks:
                    task.cancel()
            forwarder_task.cancel()
            for task in service_tasks:
                task.cancel()

    async def stop_sources(self) -> None:
        """Stop capturing but keep forwarding, so the backlog can drain (the demo uses this)."""
        for task in self._source_tasks:
            task.cancel()
        await asyncio.gather(*self._source_tasks, return_exceptions=True)

    async def _run_source(self, source: Source, sink: _Sink) -> None:
        """Run one source until cancelled. A bug that escapes it is logged and the source is restarted
        after a backoff, so it cannot take the other sources or the forwarder down."""
        backoff = Backoff(initial=1.0, maximum=60.0)
        while True:
            try:
                await source.run(sink)
                return
            except Exception as error:
                delay = backoff.next_delay()
                source.status.last_error = f"{type(error).__name__}: {error}"
                log.exception(
                    "source failed unexpectedly; restarting it",
                    extra={"source": source.name, "retry_in_s": round(delay, 1)},
                )
                await self.clock.sleep(delay)

    def _wake_forwarder(self) -> None:
        wake = getattr(self.forwarder, "wake", None)
        if callable(wake):
            wake()

    async def status(self) -> dict[str, Any]:
        """Build the `/status` document: agent, sources, outbox and forwarder."""
        now = self.clock.now()
        outbox: dict[str, Any] = {}
        if self.outbox is not None:
            stats = (await self.outbox.stats()).as_dict()
            stats["oldest_age_s"] = {
                lane: (round((now - parse_time(value)).total_seconds(), 3) if value else None)
                for lane, value in stats["oldest_captured_at"].items()
            }
            stats["writer_alive"] = self.outbox.writer_alive
            outbox = stats
        sources = [source.status.snapshot() for source in self.sources]
        forwarder = self._forwarder_status()
        return {
            "problems": summarise_problems(sources, outbox, forwarder, self.incidents),
            "agent": {
                "version": __version__,
                "site": self.settings.agent.site,
                "gateway_id": self.settings.agent.gateway_id,
                "started_at": format_time(self.started_at),
                "uptime_s": round(self.clock.monotonic() - self.started_monotonic, 3),
                "ready": self.is_ready(),
                "stopping": self.stopping,
            },
            "sources": sources,
            "outbox": outbox,
            "forwarder": forwarder,
            "incidents": self.incidents,
            "update": update_report(InstallLayout(self.settings.update.install_dir)),
        }

    def _forwarder_status(self) -> dict[str, Any]:
        """Return the forwarder's snapshot with its monotonic clock readings turned into seconds from now,
        because a raw monotonic reading means nothing to an operator."""
        if self.forwarder is None:
            return {}
        now = self.clock.monotonic()
        status: dict[str, Any] = {}
        for key, value in self.forwarder.status.snapshot().items():
            if not key.endswith("_monotonic"):
                status[key] = value
            elif value is None:
                status[key.removesuffix("_monotonic") + "_in_s"] = None
            elif value > now:
                status[key.removesuffix("_monotonic") + "_in_s"] = round(value - now, 3)
            else:
                status[key.removesuffix("_monotonic") + "_ago_s"] = round(now - value, 3)
        return status

    def is_ready(self) -> bool:
        return self.ready.is_set() and not self.stopping and self.outbox is not None and self.outbox.writer_alive


def summarise_problems(
    sources: list[dict[str, Any]], outbox: dict[str, Any], forwarder: dict[str, Any], incidents: list[dict[str, Any]]
) -> list[str]:
    """List, one line each, what needs an operator's attention, so `/status` shows it at a glance.

    An empty list means every source is connected, the outbox commits and the central endpoint
    accepts batches.
    """
    problems: list[str] = []
    for source in sources:
        if source["state"] != "connected":
            reason = f": {source['last_error']}" if source.get("last_error") else ""
            problems.append(f"source {source['name']} is {source['state']}{reason}")
    if outbox.get("condition"):
        problems.append(f"outbox: {outbox['condition']}: {outbox.get('last_error') or 'commits fail'}")
    if outbox and not outbox.get("writer_alive", True):
        problems.append("outbox: the writer task stopped; restart the agent")
    if forwarder.get("wan_state") == "down":
        problems.append(f"central endpoint unavailable: {forwarder.get('last_error') or 'no reply'}")
    if outbox.get("dead_letters"):
        problems.append(f"{outbox['dead_letters']} dead letter(s): see `plantgate outbox list`")
    if outbox.get("shed_records"):
        problems.append(f"{outbox['shed_records']} telemetry record(s) shed to stay within outbox.max_bytes")
    problems.extend(f"incident: {incident.get('message', incident)}" for incident in incidents)
    return problems


async def _call_hooks(hooks: list[Callable[[Agent], Awaitable[None] | None]], agent: Agent) -> None:
    for hook in hooks:
        try:
            result = hook(agent)
            if asyncio.iscoroutine(result):
                await result
        except Exception:
            log.exception("agent hook failed")


async def run_agent(settings: Settings, *, configure: Callable[[Agent], None] | None = None) -> int:
    """Run the daemon until SIGTERM or SIGINT; return the process exit code (0 on a clean stop)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)

    try:
        agent = Agent(settings)
    except Exception as error:
        log.error("plantgate could not start: %s", error)
        return 1
    if configure is not None:
        configure(agent)
    try:
        await agent.run(stop)
    except OutboxError as error:
        log.error("plantgate could not open or use the outbox: %s", error)
        return 1
    except OSError as error:
        # Startup problems such as a health port in use carry their own advice; no traceback needed.
        log.error("plantgate stopped: %s", error)
        return 1
    except Exception as error:
        log.exception("plantgate stopped on an error: %s", error)
        return 1
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(Exception):
                loop.remove_signal_handler(signum)
    return 0
