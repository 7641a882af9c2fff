"""The local health server: `/healthz`, `/readyz`, `/status` (JSON) and `/metrics` (Prometheus).

It listens on 127.0.0.1:8787 by default. `/status` and `/metrics` show the same figures: each
source's state, the outbox depth, age and size per lane, dead letters and shed records, and the
forwarder's last success, last error and consecutive failures.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from agent.config import HealthSection
from outbox.records import parse_time

if TYPE_CHECKING:
    from agent.supervisor import Agent

log = logging.getLogger(__name__)


class HealthServer:
    """aiohttp server for the agent's health endpoints. `async with` starts and stops it."""

    def __init__(self, agent: Agent, config: HealthSection) -> None:
        self.agent = agent
        self.config = config
        self.port: int | None = None
        self._runner: web.AppRunner | None = None

    async def __aenter__(self) -> HealthServer:
        if not self.config.enabled:
            return self
        app = web.Application()
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/status", self._status)
        app.router.add_get("/metrics", self._metrics)
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, self.config.listen, self.config.port, reuse_address=True)
        try:
            await site.start()
        except OSError as error:
            await runner.cleanup()
            raise OSError(
                f"health server cannot listen on {self.config.listen}:{self.config.port}: {error.strerror}. "
                f"Set health.port to a free port or health.enabled = false."
            ) from error
        self._runner = runner
        server = site._server
        sockets = getattr(server, "sockets", None) or []
        self.port = sockets[0].getsockname()[1] if sockets else self.config.port
        log.info("health server listening", extra={"address": f"http://{self.config.listen}:{self.port}"})
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()

    async def _healthz(self, request: web.Request) -> web.Response:
        # A response at all proves the event loop runs. The outbox writer task must be alive too.
        outbox = self.agent.outbox
        if outbox is not None and not outbox.writer_alive:
            return web.json_response({"status": "failing", "reason": "outbox writer stopped"}, status=503)
        return web.json_response({"status": "alive"})

    async def _readyz(self, request: web.Request) -> web.Response:
        if self.agent.is_ready():
            return web.json_response({"status": "ready"})
        return web.json_response({"status": "not ready"}, status=503)

    async def _status(self, request: web.Request) -> web.Response:
        document = await self.agent.status()
        return web.Response(text=json.dumps(document, indent=2, default=str), content_type="application/json")

    async def _metrics(self, request: web.Request) -> web.Response:
        document = await self.agent.status()
        registry = CollectorRegistry(auto_describe=False)
        registry.register(_StatusCollector(document))
        body = generate_latest(registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


def _timestamp(value: Any) -> float | None:
    if not value:
        return None
    try:
        return parse_time(str(value)).timestamp()
    except ValueError:
        return None


class _StatusCollector:
    """Prometheus collector over one `/status` document, so both endpoints show the same figures."""

    def __init__(self, document: dict[str, Any]) -> None:
        self.document = document

    def collect(self) -> Iterator[Metric]:
        agent = self.document["agent"]
        outbox = self.document.get("outbox") or {}
        forwarder = self.document.get("forwarder") or {}

        yield _gauge("plantgate_ready", "1 when the agent is ready", agent["ready"])
        yield _gauge("plantgate_uptime_seconds", "seconds since the agent started", agent["uptime_s"])
        yield from _source_metrics(self.document["sources"])
        if outbox:
            yield from _outbox_metrics(outbox)
        if forwarder:
            yield from _forwarder_metrics(forwarder)


def _gauge(name: str, documentation: str, value: Any, labels: dict[str, str] | None = None) -> Metric:
    family = GaugeMetricFamily(name, documentation, labels=list(labels or {}))
    family.add_metric(list((labels or {}).values()), float(value or 0))
    return family


def _source_metrics(sources: list[dict[str, Any]]) -> Iterator[Metric]:
    connected = GaugeMetricFamily(
        "plantgate_source_connected", "1 while the source is connected", labels=["source", "type"]
    )
    captured = CounterMetricFamily(
        "plantgate_source_records_captured", "records captured by the source", labels=["source"]
    )
    last_value = GaugeMetricFamily(
        "plantgate_source_last_value_timestamp_seconds", "time of the last captured value", labels=["source"]
    )
    for source in sources:
        connected.add_metric([source["name"], source["type"]], 1.0 if source["state"] == "connected" else 0.0)
        captured.add_metric([source["name"]], float(source.get("records_captured", 0)))
        stamp = _timestamp(source.get("last_value_at"))
        if stamp is not None:
            last_value.add_metric([source["name"]], stamp)
    yield from (connected, captured, last_value)


def _outbox_metrics(outbox: dict[str, Any]) -> Iterator[Metric]:
    depth = GaugeMetricFamily("plantgate_outbox_records", "undelivered records", labels=["lane"])
    size = GaugeMetricFamily("plantgate_outbox_record_bytes", "bytes of undelivered records", labels=["lane"])
    age = GaugeMetricFamily(
        "plantgate_outbox_oldest_record_age_seconds", "age of the oldest undelivered record", labels=["lane"]
    )
    for lane, count in outbox["depth"].items():
        depth.add_metric([lane], float(count))
        size.add_metric([lane], float(outbox["bytes_by_lane"].get(lane, 0)))
        age.add_metric([lane], float(outbox["oldest_age_s"].get(lane) or 0))
    yield from (depth, size, age)

    yield _gauge("plantgate_outbox_budget_bytes", "outbox size budget (outbox.max_bytes)", outbox["max_bytes"])
    yield _gauge("plantgate_outbox_used_bytes", "bytes counted against the budget", outbox["bytes_used"])
    yield _gauge("plantgate_outbox_dead_letters", "records in the dead-letter table", outbox["dead_letters"])
    files = GaugeMetricFamily("plantgate_outbox_file_bytes", "size of the outbox files on disk", labels=["file"])
    files.add_metric(["database"], float(outbox.get("file_bytes", 0)))
    files.add_metric(["wal"], float(outbox.get("wal_bytes", 0)))
    yield files
    shed = CounterMetricFamily(
        "plantgate_outbox_shed_records", "telemetry records shed to stay within budget", labels=["source"]
    )
    for source, count in (outbox.get("shed_by_source") or {}).items():
        shed.add_metric([source], float(count))
    yield shed
    yield _gauge("plantgate_outbox_error", "1 while the last outbox commit failed", bool(outbox.get("last_error")))


def _forwarder_metrics(forwarder: dict[str, Any]) -> Iterator[Metric]:
    yield _gauge("plantgate_wan_up", "1 while the central endpoint accepts batches", forwarder.get("wan_state") == "up")
    delivered = CounterMetricFamily("plantgate_forwarder_delivered_records", "records acknowledged by the receiver")
    delivered.add_metric([], float(forwarder.get("delivered_records", 0)))
    yield delivered
    yield _gauge(
        "plantgate_forwarder_consecutive_failures",
        "failed delivery attempts since the last success",
        forwarder.get("consecutive_failures", 0),
    )
    stamp = _timestamp(forwarder.get("last_success_at"))
    if stamp is not None:
        yield _gauge("plantgate_forwarder_last_success_timestamp_seconds", "time of the last acknowledged batch", stamp)
    dead = CounterMetricFamily("plantgate_forwarder_dead_lettered_records", "records the receiver rejected")
    dead.add_metric([], float(forwarder.get("dead_lettered", 0)))
    yield dead
