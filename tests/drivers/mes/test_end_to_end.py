"""MES transactions through the whole agent while the receiver is down, with telemetry waiting beside them.

Transactions posted during the outage must reach the receiver once each, in posting order, and
before any telemetry that was captured while they waited.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import aiohttp

from agent.config import Settings
from agent.receiver import Receiver
from agent.supervisor import Agent
from drivers.mes.intake import transaction_record_id
from drivers.mes.source import MesSource
from drivers.modbus.simulator import ModbusSimulator
from outbox.records import Lane
from tests.drivers.mes.conftest import TOKEN, goods_movement, production_confirmation, quality_result


def agent_settings(tmp_path: Path, modbus_port: int, central_url: str) -> Settings:
    token_file = tmp_path / "mes.token"
    token_file.write_text(TOKEN)
    return Settings(
        agent={"site": "plant1", "gateway_id": "gw-mes"},
        outbox={"path": str(tmp_path / "outbox.sqlite"), "max_bytes": "64MiB"},
        central={
            "url": central_url,
            "timeout_s": 2,
            "batch_max_records": 7,
            "retry_initial_s": 0.1,
            "retry_max_s": 0.3,
            "idle_poll_s": 0.1,
        },
        health={"listen": "127.0.0.1", "port": 0},
        sources=[
            {"type": "mes", "name": "mes-line1", "http": {"port": 0, "token_file": str(token_file)}},
            {
                "type": "modbus",
                "name": "line1-meter",
                "host": "127.0.0.1",
                "port": modbus_port,
                "poll_interval_ms": 100,
                "points": [{"name": "counter", "table": "holding", "address": 3, "datatype": "uint32"}],
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
            await asyncio.sleep(0.05)
    assert condition(), what


def waiting_telemetry(outbox_path: Path) -> set[str]:
    connection = sqlite3.connect(outbox_path)
    try:
        return {row[0] for row in connection.execute("SELECT id FROM records WHERE lane = ?", (int(Lane.TELEMETRY),))}
    finally:
        connection.close()


async def test_transactions_posted_during_outage_arrive_first_in_order(tmp_path: Path) -> None:
    examples = [goods_movement, production_confirmation, quality_result]
    posted: list[str] = []
    async with (
        ModbusSimulator(port=0, step_s=0.1) as modbus,
        Receiver(tmp_path / "receiver.sqlite") as receiver,
        aiohttp.ClientSession() as session,
    ):
        await receiver.go_down()
        agent = Agent(agent_settings(tmp_path, modbus.port, receiver.url))
        async with running(agent):
            assert agent.outbox is not None
            mes = next(source for source in agent.sources if isinstance(source, MesSource))
            url = f"http://127.0.0.1:{await mes.wait_listening()}/v1/transactions"
            headers = {"Authorization": f"Bearer {TOKEN}"}
            await wait_until(lambda: agent.outbox.depth() >= 10, 15, "telemetry waits in the outbox")

            for number in range(24):
                if number % 6 == 5:
                    batch = [examples[k % 3](f"T-{number:02d}-{k}") for k in range(3)]
                else:
                    batch = [examples[number % 3](f"T-{number:02d}")]
                async with session.post(url, json=batch, headers=headers) as response:
                    assert response.status == 201, await response.text()
                posted.extend(transaction["transaction_id"] for transaction in batch)
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.5)
            waiting = waiting_telemetry(tmp_path / "outbox.sqlite")

            await receiver.come_up()
            expected = [transaction_record_id("mes-line1", transaction_id) for transaction_id in posted]
            await wait_until(
                lambda: set(expected) <= {event.id for event in receiver.events()}, 30, "transactions arrive"
            )
            await wait_until(
                lambda: waiting <= {event.id for event in receiver.events()}, 30, "waiting telemetry arrives"
            )
            events = receiver.events()

    arrival = {event.id: event.arrival for event in events}
    transaction_events = [event for event in events if event.id in set(expected)]
    assert len(waiting) >= 10
    assert [event.id for event in transaction_events] == expected
    assert max(arrival[record_id] for record_id in expected) < min(arrival[record_id] for record_id in waiting)
    assert all(
        event.type.endswith(("goods_movement", "production_confirmation", "quality_result"))
        for event in transaction_events
    )
