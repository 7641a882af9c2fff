"""Walk a server's address space for `plantgate opcua browse`.

Each node is listed with its node id in the namespace-URI form (stable when namespace
indices move), browse name, node class, and for variables the data type and current value,
so an engineer can copy the ids into a configuration.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from asyncua import Client, ua

from drivers.opcua.addressing import format_node_id
from drivers.opcua.values import to_json

SERVER_OBJECT = ua.NodeId(ua.Int32(ua.ObjectIds.Server))


@dataclass(frozen=True)
class BrowsedNode:
    depth: int
    node_id: str
    browse_name: str
    node_class: str
    data_type: str | None = None
    value: Any = None
    status: str | None = None


async def walk(
    client: Client, start: ua.NodeId, depth: int, *, include_server: bool = False
) -> AsyncIterator[BrowsedNode]:
    """Yield the nodes below `start`, depth first, down to `depth` levels.

    The Server object (thousands of diagnostic nodes) is skipped unless `include_server`.
    """
    namespaces = await client.get_namespace_array()
    type_names: dict[ua.NodeId, str] = {}
    seen: set[ua.NodeId] = {start}

    async def children(parent: ua.NodeId, level: int) -> AsyncIterator[BrowsedNode]:
        references = await client.get_node(parent).get_children_descriptions()
        for reference in references:
            node_id = reference.NodeId
            node_id = ua.NodeId(node_id.Identifier, node_id.NamespaceIndex, node_id.NodeIdType)
            if node_id in seen or (node_id == SERVER_OBJECT and not include_server):
                continue
            seen.add(node_id)
            name = reference.BrowseName
            node = BrowsedNode(
                depth=level,
                node_id=format_node_id(node_id, namespaces),
                browse_name=f"{name.NamespaceIndex}:{name.Name}",
                node_class=reference.NodeClass.name,
            )
            if reference.NodeClass == ua.NodeClass.Variable:
                node = await _with_value(client, node, node_id, type_names)
            yield node
            if level < depth:
                async for child in children(node_id, level + 1):
                    yield child

    async for item in children(start, 1):
        yield item


async def _with_value(
    client: Client, node: BrowsedNode, node_id: ua.NodeId, type_names: dict[ua.NodeId, str]
) -> BrowsedNode:
    values = await client.get_node(node_id).read_attributes([ua.AttributeIds.DataType, ua.AttributeIds.Value])
    data_type_id = values[0].Value.Value if values[0].Value is not None else None
    data_type = None
    if isinstance(data_type_id, ua.NodeId):
        if data_type_id not in type_names:
            try:
                type_names[data_type_id] = (await client.get_node(data_type_id).read_browse_name()).Name
            except ua.UaStatusCodeError:
                type_names[data_type_id] = data_type_id.to_string()
        data_type = type_names[data_type_id]
    value = values[1]
    status = value.StatusCode.name if value.StatusCode is not None else None
    content = to_json(value.Value.Value) if value.Value is not None else None
    return BrowsedNode(node.depth, node.node_id, node.browse_name, node.node_class, data_type, content, status)
