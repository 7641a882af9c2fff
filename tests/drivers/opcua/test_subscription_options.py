"""Subscription options, polling mode, value types and events against a real asyncua server."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

from asyncua import ua

from drivers.opcua.simulator import OpcUaSimulator
from drivers.opcua.source import OpcUaSource
from outbox.records import Lane, Quality
from tests.drivers.opcua.conftest import running, source_config, stored_records, wait_for

SPACING_S = 0.3  # between writes: more than one sampling and one publishing interval


# One monitored item per option on the same node, so one server and one write sequence check all.
# Each is addressed in another form: a record's id comes from the address, and one address
# configured twice would give the same ids.
OPTION_NODES = {
    "plain": {"node_id": "ns=2;s=Line1.Temperature"},
    "status-value": {"node_id": "nsu=urn:plantgate:demo;s=Line1.Temperature", "trigger": "status-value"},
    "status": {"browse_path": "Line1/Temperature", "namespace": "urn:plantgate:demo", "trigger": "status"},
    "status-value-timestamp": {"browse_path": "2:Line1/2:Temperature", "trigger": "status-value-timestamp"},
    "absolute-deadband": {
        "browse_path": "0:Objects/2:Line1/2:Temperature",
        "start_node": "i=84",
        "deadband_type": "absolute",
        "deadband_value": 1.0,
    },
}
# After the initial 10.0: the same value with a new timestamp, small and large changes, then the
# last value again with an Uncertain status.
WRITES = [10.0, 10.2, 10.5, 12.0, 12.4]


async def test_each_filter_option_reports_its_changes(outbox):
    async with OpcUaSimulator(update_interval_s=0) as server:
        await server.write("Temperature", 10.0)
        nodes = [{"name": name, **options} for name, options in OPTION_NODES.items()]
        source = OpcUaSource(source_config(server.endpoint, nodes=nodes))
        async with running(source, outbox):
            await wait_for(lambda: _subject_count(outbox, len(OPTION_NODES)))
            for value in WRITES:
                await asyncio.sleep(SPACING_S)
                await server.write("Temperature", value)
            await asyncio.sleep(SPACING_S)
            await server.write("Temperature", 12.4, ua.StatusCodes.UncertainSensorNotAccurate)
            await asyncio.sleep(3 * SPACING_S)

    records = await stored_records(outbox)
    stored = {name: [(r.payload["value"], r.quality) for r in records if r.subject == name] for name in OPTION_NODES}
    good, uncertain = Quality.GOOD, Quality.UNCERTAIN
    changes = [(10.0, good), (10.2, good), (10.5, good), (12.0, good), (12.4, good), (12.4, uncertain)]
    assert stored["plain"] == changes
    assert stored["status-value"] == changes
    assert stored["status-value-timestamp"] == [(10.0, good), *changes]
    assert stored["status"] == [(10.0, good), (12.4, uncertain)]
    # NOTE: Part 4 (DataChangeFilter) reports a status change whatever the deadband, but the asyncua 2.1
    # server applies the deadband to it too, so only the value changes are checked here.
    assert stored["absolute-deadband"][:2] == [(10.0, good), (12.0, good)]


async def test_monitored_items_created_in_chunks(simulator, outbox):
    source = OpcUaSource(source_config(simulator.endpoint, max_items_per_call=1))
    async with running(source, outbox):
        await wait_for(lambda: _subject_count(outbox, 4))

    assert source.status.details["unresolved"] == []


async def _subject_count(outbox, count):
    return len({record.subject for record in await stored_records(outbox)}) >= count


async def test_groups_get_their_own_subscription(simulator, outbox):
    groups = [
        {"name": "fast", "publishing_interval_ms": 100, "nodes": [{"node_id": "ns=2;s=Line1.Speed", "name": "speed"}]},
        {
            "name": "slow",
            "publishing_interval_ms": 400,
            "nodes": [{"node_id": "ns=2;s=Line1.Running", "name": "running"}],
        },
    ]
    source = OpcUaSource(source_config(simulator.endpoint, nodes=[], groups=groups))
    async with running(source, outbox):
        await wait_for(lambda: _subject_count(outbox, 2))

    assert {record.subject for record in await stored_records(outbox)} == {"speed", "running"}


async def test_polling_mode_reads_at_interval_without_duplicates(outbox):
    async with OpcUaSimulator(update_interval_s=0) as server:
        config = source_config(server.endpoint, mode="polling", poll_interval_ms=100)
        source = OpcUaSource(config)
        async with running(source, outbox):
            await wait_for(lambda: _subject_count(outbox, 4))
            await asyncio.sleep(0.5)  # five polls of unchanged values
            unchanged = len(await stored_records(outbox))
            await server.write("Speed", 999)
            await wait_for(lambda: _contains_value(outbox, 999))

    assert unchanged == 4
    assert len(await stored_records(outbox)) == 5


async def _contains_value(outbox, value):
    return value in [record.payload["value"] for record in await stored_records(outbox)]


async def test_builtin_types_become_json(outbox):
    stamp = datetime(2026, 12, 4, 8, 30, tzinfo=UTC)
    typed = {
        "Doubles": ua.Variant([1.5, 2.5, float("nan")], ua.VariantType.Double),
        "Stamp": ua.Variant(stamp, ua.VariantType.DateTime),
        "Text": ua.Variant(ua.LocalizedText("Anlage läuft", "de-DE"), ua.VariantType.LocalizedText),
        "Bytes": ua.Variant(b"\x00\x10\xff", ua.VariantType.ByteString),
        "Range": ua.Variant(ua.Range(Low=0.0, High=120.0), ua.VariantType.ExtensionObject),
        "Unknown": ua.Variant(ua.ExtensionObject(ua.NodeId(9001, 2), b"\x01\x02"), ua.VariantType.ExtensionObject),
    }
    async with OpcUaSimulator(update_interval_s=0) as server:
        line = server.server.get_node(ua.NodeId("Line1", server.namespace_index))
        for name, variant in typed.items():
            # The server cannot guess the data type of an unknown structure; declare it as Structure.
            datatype = ua.NodeId(ua.ObjectIds.Structure) if name == "Unknown" else None
            node_id = ua.NodeId(f"Line1.{name}", server.namespace_index)
            await line.add_variable(node_id, name, variant, datatype=datatype)
        nodes = [{"node_id": f"nsu=urn:plantgate:demo;s=Line1.{name}", "name": name} for name in typed]
        source = OpcUaSource(source_config(server.endpoint, nodes=nodes))
        async with running(source, outbox):
            await wait_for(lambda: _subject_count(outbox, len(typed)))

    payloads = {record.subject: record.payload for record in await stored_records(outbox)}
    assert payloads["Doubles"]["value"] == [1.5, 2.5, "NaN"]
    assert payloads["Stamp"]["value"] == "2026-12-04T08:30:00.000000Z"
    assert payloads["Text"]["value"] == {"text": "Anlage läuft", "locale": "de-DE"}
    assert payloads["Bytes"]["value"] == "ABD/"
    assert payloads["Range"]["value"] == {"Low": 0.0, "High": 120.0}
    assert payloads["Unknown"]["value"] == {"type_id": "ns=2;i=9001", "body": "AQI="}
    assert payloads["Unknown"]["datatype"] == "ExtensionObject"


async def test_events_stored_in_event_lane(outbox):
    async with OpcUaSimulator(update_interval_s=0) as server:
        events = [{"name": "alarms", "fields": ["EventId", "Time", "Message", "Severity", "SourceName"]}]
        source = OpcUaSource(source_config(server.endpoint, nodes=[], events=events))
        generator = await server.server.get_event_generator()
        async with running(source, outbox):
            await wait_for(lambda: source.status.connects == 1)
            await asyncio.sleep(0.5)
            generator.event.Message = ua.LocalizedText("Door 3 open")
            generator.event.Severity = 700
            await generator.trigger()
            await wait_for(lambda: stored_records(outbox))

    (record,) = await stored_records(outbox)
    assert record.lane == Lane.EVENT
    assert record.kind == "opcua.event"
    assert record.subject == "alarms"
    assert record.payload["Message"] == {"text": "Door 3 open", "locale": None}
    assert record.payload["Severity"] == 700
    assert record.payload["EventId"]
    assert record.source_time is not None
