"""Shared helpers for the OPC UA source tests: a simulator, a real outbox, a running source."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from drivers.opcua.config import OpcUaSourceConfig
from drivers.opcua.simulator import OpcUaSimulator
from drivers.opcua.source import OpcUaSource
from outbox.records import Record
from outbox.store import Outbox

# asyncua logs every publish response at INFO; keep test output readable.
logging.getLogger("asyncua").setLevel(logging.WARNING)

DEMO_NODES = [
    {"node_id": "ns=2;s=Line1.Temperature", "name": "Line1.Temperature"},
    {"node_id": "ns=2;s=Line1.Pressure"},
    {"node_id": "ns=2;s=Line1.Speed"},
    {"node_id": "ns=2;s=Line1.Running"},
]


def source_config(endpoint: str, **overrides: Any) -> OpcUaSourceConfig:
    values: dict[str, Any] = {
        "type": "opcua",
        "name": "line1",
        "endpoint": endpoint,
        "nodes": DEMO_NODES,
        "sampling_interval_ms": 100,
        "publishing_interval_ms": 100,
        "reconnect_initial_s": 0.2,
        "reconnect_max_s": 1.0,
        "timeout_s": 2.0,
    }
    values.update(overrides)
    return OpcUaSourceConfig.model_validate(values)


async def stored_records(outbox: Outbox) -> list[Record]:
    return [stored.record for stored in await outbox.next_batch(100_000, 1 << 30)]


async def wait_for(predicate: Callable[[], Any], limit_s: float = 15.0, interval: float = 0.1) -> Any:
    """Poll an async or sync predicate until it returns something truthy; fail after `limit_s`."""
    deadline = asyncio.get_running_loop().time() + limit_s
    while True:
        result = predicate()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return result
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"condition not met within {limit_s} s")
        await asyncio.sleep(interval)


@pytest.fixture
async def simulator() -> AsyncIterator[OpcUaSimulator]:
    async with OpcUaSimulator(update_interval_s=0.2) as server:
        yield server


@pytest.fixture
async def outbox(tmp_path: Path) -> AsyncIterator[Outbox]:
    async with Outbox(tmp_path / "outbox.sqlite") as store:
        yield store


@contextlib.asynccontextmanager
async def running(source: OpcUaSource, sink: Any) -> AsyncIterator[asyncio.Task[None]]:
    """Run the source in a task for the duration of the block, then cancel it."""
    task = asyncio.create_task(source.run(sink))
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
