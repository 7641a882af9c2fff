"""Parsing node addresses against a namespace array (table tests)."""

from __future__ import annotations

import pytest
from asyncua import ua

from drivers.opcua.addressing import AddressError, browse_names, format_node_id, parse_node_id
from drivers.opcua.config import OpcUaNode

NAMESPACES = ["http://opcfoundation.org/UA/", "urn:server", "urn:plantgate:demo", "urn:other"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("ns=2;s=Line1.Speed", ua.NodeId("Line1.Speed", 2)),
        ("i=85", ua.NodeId(85, 0)),
        ("nsu=urn:plantgate:demo;s=Line1.Speed", ua.NodeId("Line1.Speed", 2)),
        ("nsu=urn:other;i=1005", ua.NodeId(1005, 3)),
    ],
)
def test_parse_node_id_forms(text, expected):
    assert parse_node_id(text, NAMESPACES) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("nsu=urn:missing;s=X", "namespace 'urn:missing' is not in the server's namespace array"),
        ("nsu=urn:plantgate:demo", "expected the form 'nsu=<namespace uri>;s=<name>'"),
        ("nsu=urn:plantgate:demo;ns=2;s=X", "either nsu= or ns=, not both"),
        ("Line1.Speed", "not a node id"),
    ],
)
def test_parse_node_id_errors_name_the_address(text, message):
    with pytest.raises(AddressError) as caught:
        parse_node_id(text, NAMESPACES)

    assert message in str(caught.value)
    assert caught.value.address == text


def test_browse_names_use_namespace_uri_and_prefixes():
    node = OpcUaNode(browse_path="Line1/0:Description/Speed", namespace="urn:plantgate:demo")

    assert browse_names(node, NAMESPACES) == [
        ua.QualifiedName("Line1", 2),
        ua.QualifiedName("Description", 0),
        ua.QualifiedName("Speed", 2),
    ]


def test_browse_names_reject_empty_element():
    node = OpcUaNode(browse_path="Line1//Speed", namespace="urn:plantgate:demo")

    with pytest.raises(AddressError, match="empty element"):
        browse_names(node, NAMESPACES)


def test_format_node_id_in_namespace_uri_form():
    assert format_node_id(ua.NodeId("Line1.Speed", 2), NAMESPACES) == "nsu=urn:plantgate:demo;s=Line1.Speed"
    assert format_node_id(ua.NodeId(85, 0), NAMESPACES) == "i=85"


def test_node_needs_exactly_one_address():
    with pytest.raises(ValueError, match="exactly one of node_id and browse_path"):
        OpcUaNode(node_id="i=85", browse_path="Server")
    with pytest.raises(ValueError, match="exactly one of node_id and browse_path"):
        OpcUaNode(name="nothing")
