"""Plan subscriptions and monitored items from the configuration (pure functions).

Settings are layered: a node's own value wins, then its group's, then the source's, then the
defaults below. Each group (the top-level `nodes` form the group "default") becomes one
subscription with its own publishing interval.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from asyncua import ua

from drivers.opcua.config import MonitoringOptions, OpcUaNode, OpcUaSourceConfig

T = TypeVar("T")

DEFAULTS: dict[str, Any] = {
    "sampling_interval_ms": 500.0,
    "queue_size": 1,
    "discard_oldest": True,
    "trigger": None,
    "deadband_type": "none",
    "deadband_value": 0.0,
}

TRIGGERS = {
    "status": ua.DataChangeTrigger.Status,
    "status-value": ua.DataChangeTrigger.StatusValue,
    "status-value-timestamp": ua.DataChangeTrigger.StatusValueTimestamp,
}
DEADBAND_TYPES = {
    "none": ua.DeadbandType.None_,
    "absolute": ua.DeadbandType.Absolute,
    "percent": ua.DeadbandType.Percent,
}


@dataclass(frozen=True)
class ItemSettings:
    sampling_interval_ms: float
    queue_size: int
    discard_oldest: bool
    trigger: str | None
    deadband_type: str
    deadband_value: float


@dataclass(frozen=True)
class GroupPlan:
    name: str
    publishing_interval_ms: float
    nodes: list[tuple[OpcUaNode, ItemSettings]]


def layered_settings(*layers: MonitoringOptions) -> ItemSettings:
    """Merge monitoring options, the first layer that sets a field winning."""
    values = {}
    for key, default in DEFAULTS.items():
        chosen = default
        for layer in layers:
            value = getattr(layer, key)
            if value is not None:
                chosen = value
                break
        values[key] = chosen
    return ItemSettings(**values)


def plan_groups(config: OpcUaSourceConfig) -> list[GroupPlan]:
    """Return one plan per subscription: the top-level nodes first, then each configured group."""
    plans = []
    if config.nodes:
        nodes = [(node, layered_settings(node, config)) for node in config.nodes]
        plans.append(GroupPlan("default", config.publishing_interval_ms, nodes))
    for group in config.groups:
        nodes = [(node, layered_settings(node, group, config)) for node in group.nodes]
        interval = group.publishing_interval_ms or config.publishing_interval_ms
        plans.append(GroupPlan(group.name, interval, nodes))
    return plans


def all_nodes(config: OpcUaSourceConfig) -> list[OpcUaNode]:
    return [node for plan in plan_groups(config) for node, _ in plan.nodes]


def data_change_filter(settings: ItemSettings) -> ua.DataChangeFilter | None:
    """Return the filter for the settings, or None to let the server apply its default
    (trigger status-value, no deadband; OPC UA Part 4, DataChangeFilter)."""
    if settings.trigger is None and settings.deadband_type == "none":
        return None
    data_filter = ua.DataChangeFilter()
    data_filter.Trigger = TRIGGERS[settings.trigger or "status-value"]
    data_filter.DeadbandType = DEADBAND_TYPES[settings.deadband_type]
    data_filter.DeadbandValue = settings.deadband_value
    return data_filter


def monitored_item_request(node_id: ua.NodeId, handle: int, settings: ItemSettings) -> ua.MonitoredItemCreateRequest:
    parameters = ua.MonitoringParameters()
    parameters.ClientHandle = handle
    parameters.SamplingInterval = settings.sampling_interval_ms
    parameters.QueueSize = settings.queue_size
    parameters.DiscardOldest = settings.discard_oldest
    item_filter = data_change_filter(settings)
    if item_filter is not None:
        parameters.Filter = item_filter
    request = ua.MonitoredItemCreateRequest()
    request.ItemToMonitor = ua.ReadValueId(NodeId=node_id, AttributeId=ua.AttributeIds.Value)
    request.MonitoringMode = ua.MonitoringMode.Reporting
    request.RequestedParameters = parameters
    return request


def subscription_parameters(
    publishing_interval_ms: float, keepalive_count: int, missed_keepalives: float
) -> ua.CreateSubscriptionParameters:
    """Build the CreateSubscription request parameters.

    The lifetime count is at least three keep-alive counts (Part 4, CreateSubscription) and covers the time
    the client takes to notice a dead connection, so the server keeps the subscription meanwhile.
    """
    parameters = ua.CreateSubscriptionParameters()
    parameters.RequestedPublishingInterval = publishing_interval_ms
    parameters.RequestedMaxKeepAliveCount = keepalive_count
    parameters.RequestedLifetimeCount = max(3 * keepalive_count, int(keepalive_count * missed_keepalives) + 1)
    parameters.MaxNotificationsPerPublish = 10000
    parameters.PublishingEnabled = True
    parameters.Priority = 0
    return parameters


def chunk_size(configured: int | None, server_limit: int | None) -> int | None:
    """Items per call: the smaller of both limits; 0 or None from the server means no limit."""
    limits = [limit for limit in (configured, server_limit) if limit]
    return min(limits) if limits else None


def chunks(items: Sequence[T], size: int | None) -> Iterator[Sequence[T]]:
    if not size:
        if items:
            yield items
        return
    for start in range(0, len(items), size):
        yield items[start : start + size]


def keepalive_deadline_s(revised_interval_ms: float, revised_keepalive_count: int, missed: float) -> float:
    """Seconds without any publish response after which the connection counts as dead.

    A healthy server sends a keep-alive at least every interval x keep-alive count even when no
    value changes (Part 4, 5.13.1.1), so a quiet subscription never reaches this deadline.
    """
    return max(revised_interval_ms * max(revised_keepalive_count, 1) * missed / 1000.0, 1.0)
