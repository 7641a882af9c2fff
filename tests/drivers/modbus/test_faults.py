"""Device faults provoked for real on pymodbus servers: exception responses, a silent unit,
replies that arrive after their request timed out."""

from __future__ import annotations

import asyncio
import logging

import pytest

from drivers.modbus.source import ModbusSource
from outbox.records import Quality
from tests.drivers.modbus.proxy import mbap_proxy
from tests.drivers.modbus.servers import device, modbus_server, wait_until
from tests.drivers.modbus.test_source import ListSink, make_config, running

HOLDING = [100 + address for address in range(10)]


def register_points(*addresses: int) -> list[dict]:
    return [{"name": f"r{address}", "address": address} for address in addresses]


async def test_illegal_address_narrowed_and_reported_once(caplog: pytest.LogCaptureFixture) -> None:
    async def reject_address_5(function_code: int, address: int, count: int) -> int | None:
        return 2 if address <= 5 < address + count else None

    caplog.set_level(logging.WARNING, logger="drivers.modbus")
    async with modbus_server([device(1, HOLDING, hook=reject_address_5)]) as port:
        source = ModbusSource(make_config(port, register_points(4, 5, 6)))
        sink = ListSink()
        async with running(source, sink):
            await wait_until(lambda: len(sink.of("r6")) >= 5, 10, "5 polls of r6")

    assert [record.payload["value"] for record in sink.of("r4")] == [104] * len(sink.of("r4"))
    assert [record.payload["value"] for record in sink.of("r6")] == [106] * len(sink.of("r6"))
    assert all(record.quality == Quality.GOOD for record in sink.of("r4") + sink.of("r6"))

    (bad,) = sink.of("r5")
    assert bad.quality == Quality.BAD
    assert bad.payload["value"] is None
    assert bad.payload["exception_code"] == 2
    assert "illegal data address" in bad.payload["error"]

    warnings = [record.getMessage() for record in caplog.records if "'r5'" in record.getMessage()]
    assert len(warnings) == 1
    assert "exception 2" in warnings[0]
    assert source.status.details["illegal_points"] == ["r5"]
    # First poll: the request for 4..6, then its halves 4 and 5..6, then 5 and 6.
    # Later polls: one request for 4 and one for 6.
    polls = source.status.details["polls"]
    assert source.status.details["requests"] == 5 + 2 * (polls - 1)


async def test_transient_exception_is_bad_quality_every_poll() -> None:
    async def gateway_target_silent(function_code: int, address: int, count: int) -> int | None:
        return 11

    async with modbus_server([device(1, HOLDING, hook=gateway_target_silent)]) as port:
        source = ModbusSource(make_config(port, register_points(0, 1)))
        sink = ListSink()
        async with running(source, sink):
            await wait_until(lambda: len(sink.of("r0")) >= 3, 10, "3 polls")

    for record in sink.records:
        assert record.quality == Quality.BAD
        assert record.payload["value"] is None
        assert record.payload["exception_code"] == 11
    assert source.status.details["illegal_points"] == []
    assert source.status.details["last_fault"] == (
        "unit 1 holding 0..1: Modbus exception 11 (gateway target device failed to respond)"
    )
    # Both points stay in one request: a transient exception is not narrowed.
    assert source.status.details["requests"] == source.status.details["polls"]


async def test_silent_unit_does_not_stop_other_units(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    # The proxy drops every request for unit 2, like a dead device behind a gateway.
    async with (
        modbus_server([device(1, HOLDING), device(2, HOLDING)]) as server_port,
        mbap_proxy(server_port) as (
            proxy,
            port,
        ),
    ):
        proxy.silent_units.add(2)
        points = [
            {"name": "alive", "address": 0, "unit_id": 1},
            {"name": "dead_a", "address": 0, "unit_id": 2},
            {"name": "dead_b", "table": "input", "address": 0, "unit_id": 2},
        ]
        source = ModbusSource(make_config(port, points, timeout_s=0.3, poll_interval_ms=200))
        sink = ListSink()
        async with running(source, sink):
            await wait_until(lambda: len(sink.of("alive")) >= 4, 15, "4 polls of the live unit")

    assert all(record.quality == Quality.GOOD and record.payload["value"] == 100 for record in sink.of("alive"))
    assert sink.of("dead_a")
    for record in sink.of("dead_a"):
        assert record.quality == Quality.BAD
        assert record.payload["error"].startswith("no response")
    for record in sink.of("dead_b"):
        assert record.quality == Quality.BAD
        assert "did not respond earlier in this poll" in record.payload["error"]
    # One timeout per poll for the dead unit, not one per request.
    assert source.status.details["no_responses"] == len(sink.of("dead_a"))
    # The source counts the timeouts; pymodbus does not log a line for each.
    assert not [record for record in caplog.records if record.name.startswith("pymodbus")]


async def test_late_reply_is_not_taken_for_next_request() -> None:
    delayed = {"holding": 0}

    async def delay_every_second_holding_read(function_code: int, address: int, count: int) -> int | None:
        if function_code == 3:
            delayed["holding"] += 1
            if delayed["holding"] % 2 == 0:
                await asyncio.sleep(0.5)  # beyond the client's 0.3 s timeout
        return None

    async with modbus_server([device(1, HOLDING, inputs=[7, 8], hook=delay_every_second_holding_read)]) as port:
        points = [{"name": "holding0", "address": 0}, {"name": "input0", "table": "input", "address": 0}]
        source = ModbusSource(make_config(port, points, timeout_s=0.3, poll_interval_ms=200))
        sink = ListSink()
        async with running(source, sink):
            await wait_until(lambda: len(sink.of("input0")) >= 6, 15, "6 polls")
            await wait_until(lambda: source.status.details["no_responses"] >= 2, 15, "2 timeouts")

    good_holding = [record for record in sink.of("holding0") if record.quality == Quality.GOOD]
    good_input = [record for record in sink.of("input0") if record.quality == Quality.GOOD]
    assert good_holding
    assert good_input
    assert {record.payload["value"] for record in good_holding} == {100}
    assert {record.payload["value"] for record in good_input} == {7}


async def test_hole_in_device_map_is_not_read_across() -> None:
    # Address 5 is no point but lies in the gap between two points that would be coalesced.
    async def reject_address_5(function_code: int, address: int, count: int) -> int | None:
        return 2 if address <= 5 < address + count else None

    async with modbus_server([device(1, HOLDING, hook=reject_address_5)]) as port:
        source = ModbusSource(make_config(port, register_points(4, 6)))
        sink = ListSink()
        async with running(source, sink):
            await wait_until(lambda: len(sink.of("r6")) >= 4, 10, "4 polls")

    assert all(record.quality == Quality.GOOD for record in sink.records)
    assert {record.payload["value"] for record in sink.of("r4")} == {104}
    assert {record.payload["value"] for record in sink.of("r6")} == {106}
    assert source.status.details["illegal_points"] == []
    # First poll: 4..6 rejected, then 4 and 6 alone. Later polls: 4 and 6 alone.
    polls = source.status.details["polls"]
    assert source.status.details["requests"] == 3 + 2 * (polls - 1)


async def test_connection_without_replies_is_reopened(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="drivers.modbus")
    # All requests vanish, as on a half-open connection to a device that restarted.
    async with modbus_server([device(1, HOLDING)]) as server_port, mbap_proxy(server_port) as (proxy, port):
        source = ModbusSource(make_config(port, register_points(0), timeout_s=0.2, poll_interval_ms=100))
        sink = ListSink()
        async with running(source, sink):
            await wait_until(lambda: len(sink.records) >= 2, 10, "first polls")
            proxy.silent_units.add(1)
            await wait_until(lambda: source.status.connects >= 2, 15, "a reconnect")

            proxy.silent_units.clear()
            await wait_until(
                lambda: all(record.quality == Quality.GOOD for record in sink.records[-3:]),
                15,
                "3 good polls after the replies return",
            )

    assert any("no reply from 127.0.0.1" in record.getMessage() for record in caplog.records)
    assert any("in 3 polls in a row" in record.getMessage() for record in caplog.records)
    assert any(record.quality == Quality.BAD for record in sink.records)
