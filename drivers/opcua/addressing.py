"""Resolve configured node addresses to node ids of the connected server.

A namespace index is only valid for one server configuration: it can change when the server
restarts or is reconfigured (OPC UA Part 3, NodeId). Addresses written with the namespace URI
(`nsu=<uri>;s=Line1.Temperature`) or as a browse path are therefore resolved again against
the namespace array on every connect. Parsing is pure; only `resolve` talks to the server.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from asyncua import Client, ua

from drivers.opcua.config import OpcUaNode


class AddressError(Exception):
    """A configured address is invalid or does not resolve on the connected server."""

    def __init__(self, address: str, reason: str) -> None:
        super().__init__(f"node {address!r}: {reason}")
        self.address = address
        self.reason = reason


def split_namespace_uri(text: str) -> tuple[str | None, str]:
    """Split `nsu=<uri>;<identifier>` into the URI and the rest; other forms return (None, text)."""
    if not text.startswith("nsu="):
        return None, text
    uri, separator, rest = text[4:].partition(";")
    if not separator or not uri or not rest:
        raise AddressError(text, "expected the form 'nsu=<namespace uri>;s=<name>' (or i=, g=, b=)")
    return uri, rest


def namespace_index(namespaces: Sequence[str], uri: str, address: str) -> int:
    try:
        return list(namespaces).index(uri)
    except ValueError:
        raise AddressError(address, f"namespace {uri!r} is not in the server's namespace array") from None


def parse_node_id(text: str, namespaces: Sequence[str]) -> ua.NodeId:
    """Parse a node id in the `ns=`, `nsu=` or plain (`i=85`) form against a namespace array."""
    uri, rest = split_namespace_uri(text)
    if uri is not None:
        if rest.startswith("ns="):
            raise AddressError(text, "give either nsu= or ns=, not both")
        rest = f"ns={namespace_index(namespaces, uri, text)};{rest}"
    try:
        return ua.NodeId.from_string(rest)
    except (ValueError, ua.UaStringParsingError) as error:
        raise AddressError(text, f"not a node id ({error}); expected for example 'ns=2;s=Line1.Speed'") from error


def browse_names(node: OpcUaNode, namespaces: Sequence[str]) -> list[ua.QualifiedName]:
    """Turn `Line1/Temperature` (or `2:Line1/0:Name`) into qualified browse names.

    An element without an `N:` prefix takes the namespace of `node.namespace`, or 0 if unset.
    """
    assert node.browse_path is not None
    default_index = namespace_index(namespaces, node.namespace, node.address) if node.namespace else 0
    names = []
    for element in node.browse_path.strip("/").split("/"):
        prefix, separator, name = element.partition(":")
        if separator and prefix.isdigit():
            names.append(ua.QualifiedName(name, int(prefix)))
        elif element:
            names.append(ua.QualifiedName(element, default_index))
        else:
            raise AddressError(node.address, "empty element in browse_path; separate browse names by one '/'")
    return names


def format_node_id(node_id: ua.NodeId, namespaces: Sequence[str]) -> str:
    """Write a node id in the namespace-URI form, stable across namespace reordering."""
    text = node_id.to_string()
    index = node_id.NamespaceIndex
    if index == 0 or index >= len(namespaces):
        return text
    identifier = text.split(";", 1)[1]
    return f"nsu={namespaces[index]};{identifier}"


@dataclass(frozen=True)
class ResolvedNode:
    config: OpcUaNode
    node_id: ua.NodeId


async def resolve(client: Client, node: OpcUaNode, namespaces: Sequence[str]) -> ResolvedNode:
    """Find the node id of one configured node on the connected server.

    Raises `AddressError` naming the configured address if it does not resolve; connection
    errors pass through unchanged for the caller's reconnect logic.
    """
    if node.node_id is not None:
        return ResolvedNode(node, parse_node_id(node.node_id, namespaces))

    start = parse_node_id(node.start_node, namespaces)
    path = browse_names(node, namespaces)
    try:
        child = await client.get_node(start).get_child(path)
    except ua.UaStatusCodeError as error:
        raise AddressError(node.address, f"browse path does not resolve ({error})") from error
    return ResolvedNode(node, child.nodeid)


async def resolve_all(client: Client, nodes: Sequence[OpcUaNode]) -> tuple[list[ResolvedNode], list[AddressError]]:
    """Resolve every node; the ones that fail are returned as errors so the others keep flowing."""
    namespaces = await client.get_namespace_array()
    resolved: list[ResolvedNode] = []
    failed: list[AddressError] = []
    for node in nodes:
        try:
            resolved.append(await resolve(client, node, namespaces))
        except AddressError as error:
            failed.append(error)
    return resolved, failed
