"""Connection life: a hung server, a quiet subscription, namespace reordering on restart."""

from __future__ import annotations

import asyncio

from drivers.base import SourceState
from drivers.opcua.simulator import OpcUaSimulator
from drivers.opcua.source import OpcUaSource
from tests.drivers.opcua.conftest import running, source_config, stored_records, wait_for
from tests.drivers.opcua.proxy import PausableProxy


async def test_hung_server_detected_and_session_rebuilt(simulator, outbox):
    async with PausableProxy(simulator.port) as proxy:
        config = source_config(proxy.endpoint, keepalive_count=3, missed_keepalives=3, timeout_s=1.0)
        source = OpcUaSource(config)
        async with running(source, outbox):
            await wait_for(lambda: source.status.state == SourceState.CONNECTED)
            proxy.pause()
            await wait_for(lambda: source.status.state == SourceState.DISCONNECTED, limit_s=10)
            assert source.status.last_error
            proxy.resume()
            await wait_for(lambda: source.status.connects >= 2, limit_s=15)
            before = len(await stored_records(outbox))
            await wait_for(lambda: _more_than(outbox, before + 2))

    assert proxy.connections >= 2


async def _more_than(outbox, count):
    return len(await stored_records(outbox)) > count


async def test_quiet_subscription_is_not_mistaken_for_dead(outbox):
    async with OpcUaSimulator(update_interval_s=0) as quiet:
        config = source_config(quiet.endpoint, keepalive_count=2, missed_keepalives=2)
        source = OpcUaSource(config)
        async with running(source, outbox):
            await wait_for(lambda: source.status.state == SourceState.CONNECTED)
            # Five keep-alive deadlines (2 x 100 ms x 2 each) without a single value change.
            await asyncio.sleep(2.0)

    assert source.status.connects == 1
    assert source.status.last_error is None


async def test_namespace_moved_on_restart_resolved_again(outbox):
    nodes = [
        {"node_id": "nsu=urn:plantgate:demo;s=Line1.Speed", "name": "speed"},
        {"browse_path": "Line1/Temperature", "namespace": "urn:plantgate:demo", "name": "temperature"},
    ]
    first = OpcUaSimulator(update_interval_s=0.2)
    await first.start()
    port = first.port
    assert first.namespace_index == 2
    source = OpcUaSource(source_config(first.endpoint, nodes=nodes))
    async with running(source, outbox):
        await wait_for(lambda: _has_both(outbox))
        await first.stop()
        await wait_for(lambda: source.status.state == SourceState.DISCONNECTED)

        async with OpcUaSimulator(
            port, update_interval_s=0.2, extra_namespaces=["urn:other:a", "urn:other:b"]
        ) as moved:
            assert moved.namespace_index == 4
            before = len(await stored_records(outbox))
            await wait_for(lambda: source.status.connects == 2)
            await wait_for(lambda: _more_than(outbox, before + 2))

    records = await stored_records(outbox)
    assert {record.subject for record in records[before:]} == {"speed", "temperature"}
    assert source.status.details["unresolved"] == []


async def _has_both(outbox):
    return {record.subject for record in await stored_records(outbox)} >= {"speed", "temperature"}


async def test_unresolved_node_reported_while_others_flow(simulator, outbox):
    nodes = [
        {"node_id": "nsu=urn:plantgate:demo;s=Line1.Speed", "name": "speed"},
        {"node_id": "nsu=urn:plantgate:missing;s=Line1.Speed", "name": "missing namespace"},
        {"node_id": "ns=2;s=Line1.NoSuchNode", "name": "missing node"},
        {"browse_path": "Line1/NoSuchChild", "namespace": "urn:plantgate:demo", "name": "missing child"},
    ]
    source = OpcUaSource(source_config(simulator.endpoint, nodes=nodes))
    async with running(source, outbox):
        await wait_for(lambda: _count_subject(outbox, "speed", 2))

    assert source.status.details["unresolved"] == sorted(
        [
            "nsu=urn:plantgate:missing;s=Line1.Speed",
            "ns=2;s=Line1.NoSuchNode",
            "nsu=urn:plantgate:demo;i=85/Line1/NoSuchChild",
        ]
    )
    assert {record.subject for record in await stored_records(outbox)} == {"speed"}
    assert source.status.state == SourceState.STOPPED


async def _count_subject(outbox, subject, count):
    return len([r for r in await stored_records(outbox) if r.subject == subject]) >= count


async def test_dropped_connection_leaves_one_session_on_server(simulator, outbox):
    service = simulator.server.iserver
    async with PausableProxy(simulator.port) as proxy:
        source = OpcUaSource(source_config(proxy.endpoint, reconnect_initial_s=0.05, reconnect_max_s=0.1))
        async with running(source, outbox):
            await wait_for(lambda: source.status.state == SourceState.CONNECTED)
            for expected in (2, 3, 4):
                proxy.drop()
                await wait_for(
                    lambda n=expected: source.status.connects == n and source.status.state == SourceState.CONNECTED
                )
            await asyncio.sleep(0.3)
            sessions = len(service._external_sessions)
            subscriptions = len(service.subscription_service.subscriptions)
            count = len(await stored_records(outbox))
            await wait_for(lambda: _more_than(outbox, count))

    # The session of each lost connection was reactivated, its subscription replaced.
    assert sessions == 1
    assert subscriptions == 1
