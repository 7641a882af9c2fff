"""The whole path: an asyncua server and a pymodbus server, through the agent's outbox, to the receiver.

The receiver goes down for 10 s in the middle. Afterwards every record the agent stored must be
at the receiver exactly once (after its de-duplication), in capture order per source and tag.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import defaultdict
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from agent.config import Settings
from agent.receiver import Receiver
from agent.supervisor import Agent
from drivers.modbus.simulator import ModbusSimulator
from drivers.opcua.simulator import OpcUaSimulator


def agent_settings(tmp_path: Path, opcua_endpoint: str, modbus_port: int, central_url: str) -> Settings:
    return Settings(
        agent={"site": "plant1", "gateway_id": "gw-e2e"},
        outbox={"path": str(tmp_path / "outbox.sqlite"), "max_bytes": "64MiB"},
        central={
            "url": central_url,
            "timeout_s": 2,
            "batch_max_records": 50,
            "retry_initial_s": 0.2,
            "retry_max_s": 1.0,
            "idle_poll_s": 0.1,
        },
        health={"listen": "127.0.0.1", "port": 0},
        sources=[
            {
                "type": "opcua",
                "name": "line1-opcua",
                "endpoint": opcua_endpoint,
                "sampling_interval_ms": 100,
                "publishing_interval_ms": 100,
                "nodes": [
                    {"node_id": "ns=2;s=Line1.Temperature", "name": "Line1.Temperature"},
                    {"node_id": "ns=2;s=Line1.Pressure", "name": "Line1.Pressure"},
                    {"node_id": "ns=2;s=Line1.Speed", "name": "Line1.Speed"},
                ],
            },
            {
                "type": "modbus",
                "name": "line1-meter",
                "host": "127.0.0.1",
                "port": modbus_port,
                "poll_interval_ms": 200,
                "points": [
                    {"name": "temperature", "table": "holding", "address": 0, "datatype": "int16", "scale": 0.1},
                    {"name": "flow", "table": "holding", "address": 1, "datatype": "float32"},
                    {"name": "counter", "table": "holding", "address": 3, "datatype": "uint32"},
                    {"name": "status", "table": "input", "address": 0, "datatype": "uint16"},
                ],
            },
        ],
    )


@contextlib.asynccontextmanager
async def running(agent: Agent) -> AsyncIterator[Agent]:
    stop = asyncio.Event()
    task = asyncio.create_task(agent.run(stop))
    try:
        await asyncio.wait_for(agent.ready.wait(), 15)
        yield agent
    finally:
        stop.set()
        await asyncio.wait_for(task, 20)


async def wait_until(condition: Callable[[], bool], limit_s: float, what: str) -> None:
    async with asyncio.timeout(limit_s):
        while not condition():
            await asyncio.sleep(0.1)
    assert condition(), what


async def test_values_arrive_once_in_order_across_outage(tmp_path: Path) -> None:
    async with (
        OpcUaSimulator(port=0, update_interval_s=0.2) as opcua,
        ModbusSimulator(port=0, step_s=0.2) as modbus,
        Receiver(tmp_path / "receiver.sqlite") as receiver,
    ):
        agent = Agent(agent_settings(tmp_path, opcua.endpoint, modbus.port, receiver.url))
        agent.ledger = []
        async with running(agent):
            assert agent.outbox is not None
            await wait_until(lambda: receiver.stats().unique_events >= 40, 30, "values reach the receiver")

            await receiver.go_down(10)
            delivered_before_outage = receiver.stats().unique_events
            await wait_until(lambda: agent.outbox.depth() >= 30, 10, "a backlog builds while the receiver is down")
            backlog_during_outage = agent.outbox.depth()
            await wait_until(lambda: receiver.is_up, 15, "the receiver comes back")

            await asyncio.sleep(1.0)
            await agent.stop_sources()
            await wait_until(lambda: agent.outbox.depth() == 0, 60, "the backlog drains")
            stats = await agent.outbox.stats()
            events = receiver.events()
            receiver_stats = receiver.stats()

    stored_ids = agent.ledger
    received_ids = [event.id for event in events]
    assert backlog_during_outage >= 30
    assert receiver_stats.unique_events >= delivered_before_outage + backlog_during_outage
    assert len(stored_ids) == len(set(stored_ids)), "the agent stored one id twice"
    assert sorted(received_ids) == sorted(stored_ids), "receiver and agent disagree on the records"
    assert stats.dead_letters == 0
    assert stats.shed_records == 0
    assert {event.source for event in events} == {
        "/plantgate/plant1/gw-e2e/line1-opcua",
        "/plantgate/plant1/gw-e2e/line1-meter",
    }
    assert_in_capture_order(events)


def assert_in_capture_order(events: list[Any]) -> None:
    """Per source and subject, first arrivals must come in the order of their source timestamps."""
    times: dict[tuple[str, str], list[str]] = defaultdict(list)
    for event in sorted(events, key=lambda event: event.arrival):
        times[(event.source, event.subject)].append(event.time)
    assert len(times) == 7
    for key, series in times.items():
        assert series == sorted(series), f"{key} arrived out of order"
        assert len(series) == len(set(series)), f"{key} has two events with one timestamp"
