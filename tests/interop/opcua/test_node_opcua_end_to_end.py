"""The end-to-end path with an OPC UA server nobody here wrote: node-opcua, through the agent, to the receiver."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from agent.config import Settings
from agent.receiver import Receiver
from agent.supervisor import Agent
from tests.interop.opcua.test_node_opcua import node_opcua_server, node_project  # noqa: F401
from tests.test_end_to_end import running, wait_until

pytestmark = pytest.mark.node


def settings_for(tmp_path: Path, endpoint: str, central_url: str) -> Settings:
    return Settings(
        agent={"site": "plant2", "gateway_id": "gw-node"},
        outbox={"path": str(tmp_path / "outbox.sqlite")},
        central={"url": central_url, "timeout_s": 2, "retry_initial_s": 0.2, "retry_max_s": 1, "idle_poll_s": 0.1},
        health={"port": 0},
        sources=[
            {
                "type": "opcua",
                "name": "line2",
                "endpoint": endpoint,
                "sampling_interval_ms": 100,
                "publishing_interval_ms": 200,
                "nodes": [
                    {"node_id": "nsu=urn:plantgate:interop;s=Line2.Temperature", "name": "Line2.Temperature"},
                    {"node_id": "nsu=urn:plantgate:interop;s=Line2.Counter", "name": "Line2.Counter"},
                ],
            }
        ],
    )


async def test_node_opcua_values_reach_receiver_once(node_project: Path, tmp_path: Path) -> None:  # noqa: F811
    async with (
        node_opcua_server(node_project, tmp_path / "server-pki", secure=False) as endpoint,
        Receiver(tmp_path / "receiver.sqlite") as receiver,
    ):
        agent = Agent(settings_for(tmp_path, endpoint, receiver.url))
        agent.ledger = []
        async with running(agent):
            assert agent.outbox is not None
            await wait_until(lambda: receiver.stats().unique_events >= 5, 30, "values reach the receiver")
            await receiver.go_down()
            await wait_until(lambda: agent.outbox.depth() >= 3, 30, "a backlog builds while the receiver is down")
            await receiver.come_up()
            await asyncio.sleep(0.5)
            await agent.stop_sources()
            await wait_until(lambda: agent.outbox.depth() == 0, 30, "the backlog drains")
            events = receiver.events()

    assert sorted(event.id for event in events) == sorted(agent.ledger)
    assert {event.subject for event in events} == {"Line2.Temperature", "Line2.Counter"}
    counters = [
        event.data["value"] for event in sorted(events, key=lambda e: e.arrival) if event.subject == "Line2.Counter"
    ]
    assert counters == sorted(counters), "counter values arrived out of order"
