"""`plantgate opcua browse` and `plantgate opcua trust`: tools for writing an OPC UA configuration."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any

from agent.config import load_config
from agent.config_errors import ConfigError


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("opcua", help="browse an OPC UA server, trust its certificate")
    commands = parser.add_subparsers(dest="opcua_command", metavar="COMMAND", required=True)

    browse = commands.add_parser(
        "browse",
        help="list nodes with node id, browse name, data type and current value",
        description="Connect to ENDPOINT and list the nodes below --node (default: the Objects folder).",
    )
    browse.add_argument("endpoint", help="opc.tcp://host:port/path")
    browse.add_argument("--node", default="i=85", help="node id to start from (default i=85, Objects)")
    browse.add_argument("--depth", type=int, default=3, help="levels to descend (default 3)")
    browse.add_argument("--include-server", action="store_true", help="also list the Server object's nodes")
    browse.add_argument("--toml", action="store_true", help="print the variables as a TOML `nodes` list")
    browse.add_argument("--username", help="user name (default: anonymous)")
    browse.add_argument("--password-file", type=Path, help="file holding the password")
    browse.add_argument("--policy", default="None", help="security policy, such as Basic256Sha256")
    browse.add_argument("--mode", default="None", help="security mode: Sign or SignAndEncrypt")
    browse.add_argument("--pki-dir", type=Path, default=Path("pki"), help="PKI folder (default ./pki)")
    browse.add_argument("--timeout", type=float, default=10.0, help="seconds per request (default 10)")
    browse.set_defaults(handler=handle_browse)

    trust = commands.add_parser(
        "trust",
        help="trust a server certificate (move it from rejected/ to trusted/)",
        description="Copy CERTIFICATE (DER or PEM) into the PKI folder's trusted/ and remove it from rejected/.",
    )
    trust.add_argument("certificate", type=Path, help="certificate file, usually in <pki>/rejected/certs/")
    where = trust.add_mutually_exclusive_group(required=True)
    where.add_argument("--pki-dir", type=Path, help="PKI folder")
    where.add_argument("--config", type=Path, help="configuration file; its OPC UA sources' PKI folders are used")
    trust.set_defaults(handler=handle_trust)


def handle_browse(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from drivers.opcua.config import OpcUaSourceConfig

    try:
        config = OpcUaSourceConfig.model_validate(
            {
                "type": "opcua",
                "name": "browse",
                "endpoint": args.endpoint,
                "timeout_s": args.timeout,
                "username": args.username,
                "password_file": args.password_file,
                "security": {"policy": args.policy, "mode": args.mode, "pki_dir": args.pki_dir},
                "nodes": [{"node_id": args.node}],
            }
        )
    except ValidationError as error:
        for problem in error.errors():
            location = ".".join(str(part) for part in problem["loc"])
            print(f"plantgate opcua browse: {location}: {problem['msg']}", file=sys.stderr)
        return 2
    return asyncio.run(_browse(config, args))


async def _browse(config: Any, args: argparse.Namespace) -> int:
    from drivers.base import SourceUnavailable
    from drivers.opcua.addressing import AddressError, parse_node_id
    from drivers.opcua.browse import walk
    from drivers.opcua.security import SecurityRejected
    from drivers.opcua.session import OpcUaSession

    try:
        async with OpcUaSession(config, probe_interval_s=5.0, session_timeout_s=60.0) as session:
            client = session.client
            assert client is not None
            start = parse_node_id(args.node, await client.get_namespace_array())
            count = 0
            async for node in walk(client, start, args.depth, include_server=args.include_server):
                count += 1
                print(_toml_line(node) if args.toml else _text_line(node))
    except (SourceUnavailable, SecurityRejected, AddressError) as error:
        print(f"plantgate opcua browse: {error}", file=sys.stderr)
        return 1
    if count == 0:
        print(f"no nodes below {args.node}", file=sys.stderr)
    return 0


def _text_line(node: Any) -> str:
    name = "  " * (node.depth - 1) + node.browse_name
    kind = node.data_type if node.node_class == "Variable" else node.node_class
    line = f"{name:<40} {kind or '?':<16} {node.node_id}"
    if node.node_class == "Variable":
        value = json.dumps(node.value, ensure_ascii=False)
        if len(value) > 60:
            value = value[:57] + "..."
        line += f"  = {value}"
        if node.status and node.status != "Good":
            line += f" ({node.status})"
    return line


def _toml_line(node: Any) -> str:
    if node.node_class != "Variable":
        return f"# {'  ' * (node.depth - 1)}{node.browse_name} ({node.node_class})"
    name = node.browse_name.split(":", 1)[-1]
    line = f"{{ node_id = {json.dumps(node.node_id)}, name = {json.dumps(name)} }},  # {node.data_type}"
    if node.browse_name.startswith("0:"):
        # Standard nodes of namespace 0 (method arguments, server diagnostics) are rarely wanted.
        return f"    # {line} (standard node)"
    return f"    {line}"


def handle_trust(args: argparse.Namespace) -> int:
    from drivers.opcua.security import PkiPaths, trust_certificate

    if not args.certificate.is_file():
        print(f"plantgate opcua trust: {args.certificate} not found", file=sys.stderr)
        return 1
    if args.pki_dir is not None:
        folders = [args.pki_dir]
    else:
        try:
            settings = load_config(args.config)
        except ConfigError as error:
            print(error.report(), file=sys.stderr)
            return 2
        folders = sorted({source.security.pki_dir for source in settings.sources if source.type == "opcua"})
        if not folders:
            print(f"plantgate opcua trust: {args.config} has no OPC UA source", file=sys.stderr)
            return 2
    for folder in folders:
        try:
            target = trust_certificate(PkiPaths(folder), args.certificate)
        except ValueError as error:
            print(f"plantgate opcua trust: {args.certificate} is not a certificate: {error}", file=sys.stderr)
            return 1
        print(f"trusted: {target}")
    print("the agent uses it on its next connect attempt; no restart needed")
    return 0
