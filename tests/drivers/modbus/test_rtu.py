"""Modbus RTU on a serial line (a pseudo-terminal pair) and RTU framed over TCP."""

from __future__ import annotations

import asyncio
from typing import Any

from pymodbus import FramerType

from drivers.modbus.config import ModbusSourceConfig
from drivers.modbus.source import ModbusSource
from outbox.records import Quality
from tests.drivers.modbus.serial_line import SerialLine, serial_server
from tests.drivers.modbus.servers import device, modbus_server, wait_until
from tests.drivers.modbus.test_source import ListSink, running

LATE_REPLY_WAIT_MS = 400
HOLDING = [100 + address for address in range(10)]

POINTS = [
    {"name": "u1_r0", "address": 0, "unit_id": 1},
    {"name": "u1_r5", "address": 5, "unit_id": 1},
    {"name": "u2_r0", "address": 0, "unit_id": 2},
]
EXPECTED = {"u1_r0": 100, "u1_r5": 105, "u2_r0": 200}


def rtu_config(path: str, **settings: Any) -> ModbusSourceConfig:
    values = {
        "type": "modbus",
        "name": "line1",
        "transport": "rtu",
        "serial": {"port": path, "baudrate": 19200, "parity": "N"},
        "poll_interval_ms": 200,
        "timeout_s": 0.3,
        "max_gap": 0,
        "reconnect_initial_s": 0.1,
        "reconnect_max_s": 0.5,
        "points": POINTS,
    }
    return ModbusSourceConfig.model_validate({**values, **settings})


def two_units() -> list:
    return [device(1, HOLDING), device(2, [200 + address for address in range(10)])]


def assert_never_wrong(sink: ListSink) -> None:
    """Every good record holds the value at its own address: no reply was mistaken for another."""
    for record in sink.records:
        if record.quality == Quality.GOOD:
            assert record.payload["value"] == EXPECTED[record.subject], record


async def test_rtu_reads_several_units_on_one_line() -> None:
    async with SerialLine() as line, serial_server(line.server_path, two_units()):
        source = ModbusSource(rtu_config(line.client_path))
        sink = ListSink()
        async with running(source, sink):
            await wait_until(lambda: len(sink.of("u2_r0")) >= 3, 15, "3 polls")

    for name in EXPECTED:
        assert sink.of(name)
        assert all(record.quality == Quality.GOOD for record in sink.of(name))
    assert_never_wrong(sink)


async def test_rtu_dead_unit_costs_one_timeout_per_poll() -> None:
    async with SerialLine() as line, serial_server(line.server_path, two_units()):
        line.faults.silent_units.add(2)
        source = ModbusSource(
            rtu_config(line.client_path, points=[*POINTS, {"name": "u2_r5", "address": 5, "unit_id": 2}])
        )
        sink = ListSink()
        async with running(source, sink):
            await wait_until(lambda: len(sink.of("u2_r0")) >= 4, 20, "4 polls")

    assert all(record.quality == Quality.GOOD for record in sink.of("u1_r0") + sink.of("u1_r5"))
    assert all(record.quality == Quality.BAD for record in sink.of("u2_r0") + sink.of("u2_r5"))
    # The second request for unit 2 in each poll is skipped, not sent into another timeout.
    assert line.faults.dropped_requests == source.status.details["no_responses"]
    assert source.status.details["no_responses"] <= len(sink.of("u2_r0"))
    assert_never_wrong(sink)


async def test_rtu_corrupted_reply_rejected_then_recovers() -> None:
    async with SerialLine() as line, serial_server(line.server_path, two_units()):
        source = ModbusSource(rtu_config(line.client_path, points=POINTS[:2]))
        sink = ListSink()
        async with running(source, sink):
            await wait_until(lambda: len(sink.of("u1_r0")) >= 2, 15, "first polls")
            line.faults.corrupt_replies = 1
            await wait_until(lambda: source.status.details["no_responses"] >= 1, 15, "a rejected reply")
            line.faults.garbage_before_replies = 1
            await wait_until(lambda: source.status.details["no_responses"] >= 2, 15, "garbage rejected")
            rejected_at = len(sink.records)
            await wait_until(lambda: len(sink.records) >= rejected_at + 4, 15, "polls after the faults")

    assert any(record.quality == Quality.BAD for record in sink.records)
    after = sink.records[rejected_at:]
    assert all(record.quality == Quality.GOOD for record in after)
    assert_never_wrong(sink)


async def test_rtu_late_reply_not_taken_for_next_request() -> None:
    async with SerialLine() as line, serial_server(line.server_path, two_units()):
        source = ModbusSource(rtu_config(line.client_path, points=POINTS[:2], late_reply_wait_ms=LATE_REPLY_WAIT_MS))
        sink = ListSink()
        async with running(source, sink):
            await wait_until(lambda: len(sink.of("u1_r5")) >= 2, 15, "first polls")
            # The reply to r5 comes 0.15 s after the 0.3 s timeout. The next poll reads r0
            # first, and its reply is held back, so the late r5 reply is the first frame
            # that arrives while r0 is outstanding.
            line.faults.reply_delays = [(5, 0.45), (0, 0.3)]
            await wait_until(lambda: source.status.details["no_responses"] >= 1, 15, "the timeout")
            count = len(sink.records)
            await wait_until(lambda: len(sink.records) >= count + 4, 15, "polls after the late reply")
            await asyncio.sleep(0)

    assert_never_wrong(sink)
    assert sink.records[-1].quality == Quality.GOOD


async def test_rtu_over_tcp_gateway() -> None:
    async with modbus_server(two_units(), framer=FramerType.RTU) as port:
        config = rtu_config("unused", transport="rtu-over-tcp", serial=None, host="127.0.0.1", port=port)
        source = ModbusSource(config)
        sink = ListSink()
        async with running(source, sink):
            await wait_until(lambda: len(sink.of("u2_r0")) >= 3, 15, "3 polls")

    assert all(record.quality == Quality.GOOD for record in sink.records)
    assert_never_wrong(sink)
