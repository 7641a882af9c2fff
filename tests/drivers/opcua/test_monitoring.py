"""Subscription planning: layered settings, data-change filters, chunking (table tests)."""

from __future__ import annotations

import pytest
from asyncua import ua

from drivers.opcua.monitoring import (
    chunk_size,
    chunks,
    data_change_filter,
    keepalive_deadline_s,
    layered_settings,
    plan_groups,
    subscription_parameters,
)
from tests.drivers.opcua.conftest import source_config


def test_settings_node_over_group_over_source():
    config = source_config(
        "opc.tcp://127.0.0.1:4840",
        sampling_interval_ms=250,
        queue_size=5,
        nodes=[{"node_id": "ns=2;s=A", "sampling_interval_ms": 50}],
        groups=[
            {
                "name": "slow",
                "publishing_interval_ms": 5000,
                "queue_size": 10,
                "trigger": "status-value-timestamp",
                "nodes": [{"node_id": "ns=2;s=B"}, {"node_id": "ns=2;s=C", "queue_size": 1, "discard_oldest": False}],
            }
        ],
    )

    default, slow = plan_groups(config)

    assert default.name == "default"
    assert default.publishing_interval_ms == 100
    settings_a = default.nodes[0][1]
    assert (settings_a.sampling_interval_ms, settings_a.queue_size) == (50, 5)
    assert slow.publishing_interval_ms == 5000
    settings_b, settings_c = (settings for _, settings in slow.nodes)
    assert (settings_b.sampling_interval_ms, settings_b.queue_size, settings_b.trigger) == (
        250,
        10,
        "status-value-timestamp",
    )
    assert (settings_c.queue_size, settings_c.discard_oldest) == (1, False)
    assert settings_b.discard_oldest is True


@pytest.mark.parametrize(
    ("options", "trigger", "deadband_type", "deadband_value"),
    [
        ({"trigger": "status"}, ua.DataChangeTrigger.Status, ua.DeadbandType.None_, 0.0),
        ({"trigger": "status-value-timestamp"}, ua.DataChangeTrigger.StatusValueTimestamp, ua.DeadbandType.None_, 0.0),
        (
            {"deadband_type": "absolute", "deadband_value": 0.5},
            ua.DataChangeTrigger.StatusValue,
            ua.DeadbandType.Absolute,
            0.5,
        ),
        (
            {"deadband_type": "percent", "deadband_value": 2.0},
            ua.DataChangeTrigger.StatusValue,
            ua.DeadbandType.Percent,
            2.0,
        ),
    ],
)
def test_data_change_filter_from_settings(options, trigger, deadband_type, deadband_value):
    config = source_config("opc.tcp://127.0.0.1:4840", nodes=[{"node_id": "ns=2;s=A", **options}])
    settings = plan_groups(config)[0].nodes[0][1]

    item_filter = data_change_filter(settings)

    assert item_filter is not None
    assert (item_filter.Trigger, item_filter.DeadbandType, item_filter.DeadbandValue) == (
        trigger,
        deadband_type,
        deadband_value,
    )


def test_no_filter_leaves_server_default():
    config = source_config("opc.tcp://127.0.0.1:4840")

    assert data_change_filter(layered_settings(config.nodes[0], config)) is None


@pytest.mark.parametrize(
    ("configured", "server", "expected"),
    [(None, None, None), (None, 0, None), (None, 1000, 1000), (500, 1000, 500), (2000, 1000, 1000), (100, None, 100)],
)
def test_chunk_size_takes_smaller_limit(configured, server, expected):
    assert chunk_size(configured, server) == expected


@pytest.mark.parametrize(
    ("count", "size", "lengths"),
    [(0, 10, []), (5, None, [5]), (10, 3, [3, 3, 3, 1]), (6, 3, [3, 3]), (0, None, [])],
)
def test_chunks_cover_every_item_once(count, size, lengths):
    items = list(range(count))

    parts = list(chunks(items, size))

    assert [len(part) for part in parts] == lengths
    assert [item for part in parts for item in part] == items


def test_keepalive_deadline_covers_missed_keepalives():
    assert keepalive_deadline_s(1000, 10, 3) == 30.0
    assert keepalive_deadline_s(100, 2, 1) == 1.0  # never shorter than one second


def test_subscription_lifetime_at_least_three_keepalives():
    parameters = subscription_parameters(500, 10, 1.5)

    assert parameters.RequestedMaxKeepAliveCount == 10
    assert parameters.RequestedLifetimeCount >= 30
