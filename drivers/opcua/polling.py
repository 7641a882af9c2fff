"""Read the Value attribute of many nodes in as few Read requests as the server allows."""

from __future__ import annotations

from collections.abc import Sequence

from asyncua import Client, ua

from drivers.opcua.monitoring import chunks


async def read_values(client: Client, node_ids: Sequence[ua.NodeId], per_call: int | None) -> list[ua.DataValue]:
    """Read each node's value with both timestamps (OPC UA Part 4, Read service), `per_call` at a time.

    A node the server cannot read comes back as a DataValue with a Bad status, not an error.
    """
    values: list[ua.DataValue] = []
    for chunk in chunks(list(node_ids), per_call):
        parameters = ua.ReadParameters()
        parameters.TimestampsToReturn = ua.TimestampsToReturn.Both
        parameters.NodesToRead = [
            ua.ReadValueId(NodeId=node_id, AttributeId=ua.AttributeIds.Value) for node_id in chunk
        ]
        values.extend(await client.uaclient.read(parameters))
    return values
