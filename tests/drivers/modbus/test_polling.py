"""Poll groups, overruns and report by exception, on a real pymodbus server."""

from __future__ import annotations

import asyncio

from drivers.modbus.source import ModbusSource
from outbox.records import Quality
from tests.drivers.modbus.servers import device, modbus_server, wait_until
from tests.drivers.modbus.test_source import ListSink, make_config, running

HOLDING = [100 + address for address in range(10)]


async def test_poll_groups_keep_their_own_intervals() -> None:
    async with modbus_server([device(1, HOLDING)]) as port:
        points = [
            {"name": "fast", "address": 0, "poll_interval_ms": 100},
            {"name": "slow", "address": 1, "poll_interval_ms": 500},
        ]
        source = ModbusSource(make_config(port, points))
        sink = ListSink()
        async with running(source, sink):
            await wait_until(lambda: len(sink.of("slow")) >= 3, 10, "3 slow polls")

    fast, slow = len(sink.of("fast")), len(sink.of("slow"))
    # About 5 fast polls per slow one; the bounds leave room for a loaded machine.
    assert 3 * slow <= fast <= 7 * slow, (fast, slow)
    assert {record.payload["value"] for record in sink.of("slow")} == {101}


async def test_overrunning_poll_is_counted_not_queued() -> None:
    async def slow_device(function_code: int, address: int, count: int) -> int | None:
        await asyncio.sleep(0.25)
        return None

    async with modbus_server([device(1, HOLDING, hook=slow_device)]) as port:
        source = ModbusSource(make_config(port, [{"name": "r0", "address": 0}], poll_interval_ms=100))
        sink = ListSink()
        async with running(source, sink):
            await wait_until(lambda: len(sink.records) >= 4, 10, "4 polls")
            await asyncio.sleep(0)

    details = source.status.details
    assert details["overruns"] >= 3
    assert details["skipped_polls"] >= details["overruns"]
    # Polls never pile up: each poll of 0.25 s is followed by the next free slot only.
    assert details["polls"] == len(sink.records)
    assert all(record.quality == Quality.GOOD for record in sink.records)


async def test_deadband_stores_changes_and_heartbeats() -> None:
    registers = list(HOLDING)
    async with modbus_server([device(1, registers)]) as port:
        points = [{"name": "r0", "address": 0, "deadband": 5, "heartbeat_s": 0.5}]
        source = ModbusSource(make_config(port, points, poll_interval_ms=50))
        sink = ListSink()
        async with running(source, sink):
            await wait_until(lambda: source.status.details["polls"] >= 30, 10, "30 polls")

    # 30 polls of an unchanged value over about 1.5 s: the first value plus a heartbeat every 0.5 s.
    assert 2 <= len(sink.records) <= 5, len(sink.records)
    assert all(record.payload["value"] == 100 for record in sink.records)
