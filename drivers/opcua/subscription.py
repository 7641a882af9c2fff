"""Create the subscriptions, monitored items and event items of one session.

asyncua delivers notifications into a bounded queue per subscription (its iterator mode);
the source's consumer tasks drain those queues. The queue here counts what it drops when the
consumer falls behind, so shed telemetry is reported instead of lost silently.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any

from asyncua import Client, ua
from asyncua.common.subscription import Subscription

from drivers.opcua.addressing import AddressError, ResolvedNode, parse_node_id
from drivers.opcua.config import EventSubscription, OpcUaSourceConfig
from drivers.opcua.monitoring import (
    GroupPlan,
    chunks,
    keepalive_deadline_s,
    monitored_item_request,
    subscription_parameters,
)

log = logging.getLogger(__name__)

NOTIFICATION_QUEUE_SIZE = 20_000


class CountingQueue(asyncio.Queue[Any]):
    """A bounded queue that, when full, drops its oldest entry and counts it."""

    def __init__(self, maxsize: int) -> None:
        super().__init__(maxsize)
        self.dropped = 0

    def put_nowait(self, item: Any) -> None:
        if self.full() and item is not None:
            self.get_nowait()
            self.dropped += 1
        super().put_nowait(item)


@dataclass
class ActiveSubscription:
    name: str
    subscription: Subscription
    queue: CountingQueue
    deadline_s: float
    items: dict[int, ResolvedNode] = field(default_factory=dict)
    events: dict[int, EventSubscription] = field(default_factory=dict)
    failed: list[AddressError] = field(default_factory=list)

    def publish_age_s(self, now: float) -> float | None:
        """Seconds since the last publish response (data or keep-alive), on asyncua's clock
        (`time.monotonic`), or None before the first one."""
        last = self.subscription.last_publish_at
        return None if last is None else now - last


async def read_operation_limit(client: Client, object_id: int) -> int | None:
    """Read one ServerCapabilities/OperationLimits value; None where the server does not offer it."""
    try:
        value = await client.get_node(ua.NodeId(ua.Int32(object_id))).read_value()
    except ua.UaStatusCodeError:
        return None
    return int(value) if value else None


async def open_subscription(
    client: Client, name: str, config: OpcUaSourceConfig, interval_ms: float
) -> ActiveSubscription:
    parameters = subscription_parameters(interval_ms, config.keepalive_count, config.missed_keepalives)
    subscription = await client.create_subscription(parameters, None, queue_maxsize=NOTIFICATION_QUEUE_SIZE)
    queue = CountingQueue(NOTIFICATION_QUEUE_SIZE)
    # NOTE: replaces asyncua's private iterator queue (asyncua 2.1) with one that counts drops;
    # done before any monitored item exists, so no notification is lost in the swap.
    subscription._event_queue = queue
    revised = subscription.parameters
    deadline = keepalive_deadline_s(
        revised.RequestedPublishingInterval, revised.RequestedMaxKeepAliveCount, config.missed_keepalives
    )
    return ActiveSubscription(name, subscription, queue, deadline)


async def subscribe_group(
    client: Client,
    config: OpcUaSourceConfig,
    plan: GroupPlan,
    resolved: dict[str, ResolvedNode],
    items_per_call: int | None,
) -> ActiveSubscription:
    """Create one subscription and its monitored items, in chunks of `items_per_call`.

    An item the server rejects (unknown node, unsupported filter) is reported in `failed`
    with its configured address; the other items keep flowing.
    """
    active = await open_subscription(client, plan.name, config, plan.publishing_interval_ms)
    requests: list[tuple[ua.MonitoredItemCreateRequest, ResolvedNode]] = []
    for handle, (node, settings) in enumerate(plan.nodes, start=1):
        target = resolved.get(node.address)
        if target is None:
            continue
        requests.append((monitored_item_request(target.node_id, handle, settings), target))

    for chunk in chunks(requests, items_per_call):
        results = await active.subscription.create_monitored_items([request for request, _ in chunk])
        for (request, target), result in zip(chunk, results, strict=True):
            if isinstance(result, ua.StatusCode):
                active.failed.append(AddressError(target.config.address, f"monitored item rejected: {result.name}"))
            else:
                active.items[request.RequestedParameters.ClientHandle] = target
    return active


def event_filter(fields: list[str], event_type: ua.NodeId) -> ua.EventFilter:
    """Select the named fields of the event type (OPC UA Part 4, EventFilter)."""
    event_filter = ua.EventFilter()
    for name in fields:
        operand = ua.SimpleAttributeOperand()
        operand.TypeDefinitionId = event_type
        operand.BrowsePath = [ua.QualifiedName(part, 0) for part in name.split("/")]
        operand.AttributeId = ua.AttributeIds.Value
        event_filter.SelectClauses.append(operand)
    return event_filter


async def subscribe_events(client: Client, config: OpcUaSourceConfig, namespaces: list[str]) -> ActiveSubscription:
    """Subscribe to every configured event notifier, all in one subscription."""
    active = await open_subscription(client, "events", config, config.publishing_interval_ms)
    for handle, spec in enumerate(config.events, start=100_001):
        try:
            notifier = parse_node_id(spec.notifier, namespaces)
            event_type = parse_node_id(spec.event_type, namespaces)
        except AddressError as error:
            active.failed.append(error)
            continue
        parameters = ua.MonitoringParameters()
        parameters.ClientHandle = handle
        parameters.QueueSize = spec.queue_size
        parameters.DiscardOldest = True
        parameters.Filter = event_filter(spec.fields, event_type)
        request = ua.MonitoredItemCreateRequest()
        request.ItemToMonitor = ua.ReadValueId(NodeId=notifier, AttributeId=ua.AttributeIds.EventNotifier)
        request.MonitoringMode = ua.MonitoringMode.Reporting
        request.RequestedParameters = parameters
        (result,) = await active.subscription.create_monitored_items([request])
        if isinstance(result, ua.StatusCode):
            active.failed.append(AddressError(spec.notifier, f"event item rejected: {result.name}"))
        else:
            active.events[result] = spec  # notifications carry the server handle
    return active
