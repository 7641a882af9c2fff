"""The Modbus source end to end: real pymodbus servers, a real outbox file."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from drivers.base import SourceState, SourceUnavailable
from drivers.modbus.config import ModbusSourceConfig
from drivers.modbus.simulator import ModbusSimulator
from drivers.modbus.source import ModbusSource
from outbox.records import Lane, Quality, Record, format_time, record_id
from outbox.store import Outbox
from tests.drivers.modbus.servers import wait_until

SIMULATOR_POINTS = [
    {"name": "temperature", "address": 0, "datatype": "int16", "scale": 0.1, "unit": "degC"},
    {"name": "flow", "address": 1, "datatype": "float32", "unit": "m3/h"},
    {"name": "counter", "address": "40004", "datatype": "uint32"},
    {"name": "status", "table": "input", "address": 0},
]


def make_config(port: int, points: list[dict[str, Any]], **settings: Any) -> ModbusSourceConfig:
    values = {
        "type": "modbus",
        "name": "press",
        "host": "127.0.0.1",
        "port": port,
        "poll_interval_ms": 100,
        "timeout_s": 0.5,
        "reconnect_initial_s": 0.1,
        "reconnect_max_s": 0.5,
        "points": points,
    }
    return ModbusSourceConfig.model_validate({**values, **settings})


@contextlib.asynccontextmanager
async def running(source: ModbusSource, sink: Any) -> AsyncIterator[None]:
    task = asyncio.create_task(source.run(sink))
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        assert source.status.state == SourceState.STOPPED


class ListSink:
    """Keeps appended records in memory; for tests that look at records, not storage."""

    def __init__(self) -> None:
        self.records: list[Record] = []

    async def append(self, records: list[Record]) -> list[bool]:
        self.records.extend(records)
        return [True] * len(records)

    async def lookup(self, record_id: str) -> str | None:
        return None

    def of(self, subject: str) -> list[Record]:
        return [record for record in self.records if record.subject == subject]


async def stored_records(outbox: Outbox) -> list[Record]:
    return [stored.record for stored in await outbox.next_batch(100_000, 1 << 30)]


async def test_source_stores_simulator_values_in_outbox(tmp_path: Path) -> None:
    async with ModbusSimulator() as simulator, Outbox(tmp_path / "outbox.sqlite") as outbox:
        source = ModbusSource(make_config(simulator.port, SIMULATOR_POINTS))
        async with running(source, outbox):
            await wait_until(lambda: source.status.records_captured >= 20, 10, "20 stored records")

        records = await stored_records(outbox)

    subjects = {record.subject for record in records}
    assert subjects == {"temperature", "flow", "counter", "status"}
    for record in records:
        assert record.lane == Lane.TELEMETRY
        assert record.kind == "modbus.poll"
        assert record.source == "press"
        assert record.quality == Quality.GOOD
    temperature = next(record for record in records if record.subject == "temperature")
    assert 19.9 <= temperature.payload["value"] <= 23.1
    assert temperature.payload["unit"] == "degC"
    assert temperature.payload["table"] == "holding"
    assert temperature.payload["address"] == 0
    assert len(temperature.payload["raw"]) == 1
    counter = [record.payload["value"] for record in records if record.subject == "counter"]
    assert counter == sorted(counter)
    assert {record.payload["value"] for record in records if record.subject == "status"} <= {1, 2}


async def test_source_record_id_names_scheduled_poll(tmp_path: Path) -> None:
    async with ModbusSimulator() as simulator:
        source = ModbusSource(make_config(simulator.port, SIMULATOR_POINTS[:1], poll_interval_ms=200))
        sink = ListSink()
        async with running(source, sink):
            await wait_until(lambda: len(sink.records) >= 3, 10, "3 records")

    for record in sink.records:
        assert record.source_time is not None
        epoch_ms = int(record.source_time.timestamp() * 1000)
        scheduled = datetime.fromtimestamp((epoch_ms - epoch_ms % 200) / 1000, UTC)
        assert record.id == record_id("press", "temperature", format_time(scheduled))
    assert len({record.id for record in sink.records}) == len(sink.records)


async def test_source_resumes_after_server_restart(tmp_path: Path) -> None:
    async with Outbox(tmp_path / "outbox.sqlite") as outbox:
        async with ModbusSimulator() as simulator:
            port = simulator.port
            source = ModbusSource(make_config(port, SIMULATOR_POINTS))
            async with running(source, outbox):
                await wait_until(lambda: source.status.records_captured >= 8, 10, "first records")

                await simulator.close()
                await wait_until(lambda: source.status.state == SourceState.DISCONNECTED, 10, "disconnect")
                assert source.status.last_error
                captured_while_down = source.status.records_captured
                await asyncio.sleep(0.5)
                assert source.status.records_captured == captured_while_down

                async with ModbusSimulator(port):
                    await wait_until(lambda: source.status.state == SourceState.CONNECTED, 10, "reconnect")
                    await wait_until(
                        lambda: source.status.records_captured >= captured_while_down + 8,
                        10,
                        "records after restart",
                    )
        assert source.status.connects == 2
        records = await stored_records(outbox)
    assert len(records) == source.status.records_captured
    assert all(record.quality == Quality.GOOD for record in records)


async def test_source_unreachable_device_does_not_raise() -> None:
    async with ModbusSimulator() as simulator:
        port = simulator.port
    source = ModbusSource(make_config(port, SIMULATOR_POINTS))
    async with running(source, ListSink()):
        await wait_until(lambda: source.status.state == SourceState.DISCONNECTED, 10, "disconnected state")
        assert "cannot connect to 127.0.0.1" in str(source.status.last_error)


async def test_sample_reads_every_point_once() -> None:
    async with ModbusSimulator() as simulator:
        records = await ModbusSource(make_config(simulator.port, SIMULATOR_POINTS)).sample()
    assert sorted(record.subject for record in records) == ["counter", "flow", "status", "temperature"]
    assert all(record.quality == Quality.GOOD for record in records)


async def test_sample_raises_when_device_unreachable() -> None:
    async with ModbusSimulator() as simulator:
        port = simulator.port
    with pytest.raises(SourceUnavailable, match="cannot connect"):
        await ModbusSource(make_config(port, SIMULATOR_POINTS)).sample()
