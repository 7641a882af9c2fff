"""The OPC UA source against a real asyncua server, storing into a real outbox."""

from __future__ import annotations

from asyncua import ua

from drivers.base import SourceState
from drivers.opcua.simulator import OpcUaSimulator
from drivers.opcua.source import OpcUaSource
from outbox.records import Lane, Quality
from tests.drivers.opcua.conftest import running, source_config, stored_records, wait_for


async def subjects_stored(outbox, subjects):
    stored = {record.subject for record in await stored_records(outbox)}
    return subjects <= stored


async def test_subscription_stores_every_node(simulator, outbox):
    source = OpcUaSource(source_config(simulator.endpoint))
    expected = {"Line1.Temperature", "ns=2;s=Line1.Pressure", "ns=2;s=Line1.Speed", "ns=2;s=Line1.Running"}

    async with running(source, outbox):
        await wait_for(lambda: subjects_stored(outbox, expected))

    records = await stored_records(outbox)
    temperature = next(record for record in records if record.subject == "Line1.Temperature")
    assert temperature.lane == Lane.TELEMETRY
    assert temperature.kind == "opcua.datachange"
    assert temperature.quality == Quality.GOOD
    assert isinstance(temperature.payload["value"], float)
    assert temperature.payload["status"] == "Good"
    assert temperature.payload["status_code"] == 0
    assert temperature.payload["node_id"] == "ns=2;s=Line1.Temperature"
    assert temperature.payload["source_timestamp"] is not None
    assert temperature.payload["server_timestamp"] is not None
    assert temperature.source_time is not None
    assert source.status.state == SourceState.STOPPED
    assert source.status.records_captured >= 4


async def test_bad_and_uncertain_values_stored_as_such(outbox):
    async with OpcUaSimulator(update_interval_s=0) as server:
        source = OpcUaSource(source_config(server.endpoint))
        async with running(source, outbox):
            await wait_for(lambda: subjects_stored(outbox, {"ns=2;s=Line1.Speed"}))
            await server.write("Speed", 0, ua.StatusCodes.BadSensorFailure)
            await wait_for(lambda: _has_quality(outbox, "ns=2;s=Line1.Speed", Quality.BAD))
            await server.write("Speed", 17, ua.StatusCodes.UncertainLastUsableValue)
            await wait_for(lambda: _has_quality(outbox, "ns=2;s=Line1.Speed", Quality.UNCERTAIN))

    records = [record for record in await stored_records(outbox) if record.subject == "ns=2;s=Line1.Speed"]
    bad = next(record for record in records if record.quality == Quality.BAD)
    assert bad.payload["status"] == "BadSensorFailure"
    # Part 4 (DataValue): a server may send no value with a Bad status, and the last good one is not filled in.
    assert bad.payload["value"] is None
    uncertain = next(record for record in records if record.quality == Quality.UNCERTAIN)
    assert uncertain.payload["status"] == "UncertainLastUsableValue"
    assert uncertain.payload["value"] == 17


async def _has_quality(outbox, subject, quality):
    return any(r.subject == subject and r.quality == quality for r in await stored_records(outbox))


async def test_values_flow_again_after_server_restart(outbox):
    first = OpcUaSimulator(update_interval_s=0.2)
    await first.start()
    port = first.port
    source = OpcUaSource(source_config(first.endpoint))
    async with running(source, outbox):
        await wait_for(lambda: subjects_stored(outbox, {"Line1.Temperature"}))
        await first.stop()
        await wait_for(lambda: source.status.state == SourceState.DISCONNECTED)
        before = len(await stored_records(outbox))

        async with OpcUaSimulator(port, update_interval_s=0.2):
            await wait_for(lambda: source.status.state == SourceState.CONNECTED)
            await wait_for(lambda: _count_above(outbox, before + 4))

    assert source.status.connects == 2
    assert source.status.last_error is not None


async def _count_above(outbox, count):
    return len(await stored_records(outbox)) >= count


async def test_sample_reads_every_node_once(simulator):
    source = OpcUaSource(source_config(simulator.endpoint))

    records = await source.sample()

    assert [record.subject for record in records] == [
        "Line1.Temperature",
        "ns=2;s=Line1.Pressure",
        "ns=2;s=Line1.Speed",
        "ns=2;s=Line1.Running",
    ]
    assert all(record.quality == Quality.GOOD for record in records)
    assert isinstance(records[3].payload["value"], bool)


async def test_same_change_read_twice_gives_same_id():
    async with OpcUaSimulator(update_interval_s=0) as quiet:
        source = OpcUaSource(source_config(quiet.endpoint))
        first = await source.sample()
        second = await source.sample()
    assert [record.id for record in first] == [record.id for record in second]
