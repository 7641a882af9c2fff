"""`plantgate check-config PATH`: validate a configuration file without starting anything."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from agent.config import DEFAULT_CONFIG_PATH, Settings, load_config
from agent.config_errors import ConfigError


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "check-config",
        help="validate a configuration file and summarise what would run",
        description="Exit 0 and print a summary if the file is valid; print every problem and exit 2 if not.",
    )
    parser.add_argument("path", nargs="?", type=Path, default=DEFAULT_CONFIG_PATH, help="TOML file")
    parser.set_defaults(handler=handle)


def summarise(settings: Settings) -> str:
    lines = [
        f"site {settings.agent.site}, gateway {settings.agent.gateway_id}",
        f"outbox {settings.outbox.path} (budget {settings.outbox.max_bytes.human_readable()}, "
        f"telemetry share {settings.outbox.telemetry_share:.0%})",
        f"central endpoint {settings.central.url} (batches of up to {settings.central.batch_max_records} "
        f"records, gzip {'on' if settings.central.gzip else 'off'})",
    ]
    if settings.health.enabled:
        lines.append(f"health server http://{settings.health.listen}:{settings.health.port}/status")
    else:
        lines.append("health server disabled")
    lines.append(f"{len(settings.sources)} source(s):")
    for source in settings.sources:
        state = "" if source.enabled else " (disabled)"
        lines.append(f"  {source.name}: {source.type}{state}, {describe_source(source)}")
    return "\n".join(lines)


def describe_source(source: object) -> str:
    describe = getattr(source, "describe", None)
    if callable(describe):
        return str(describe())
    for attribute, label in (("nodes", "node"), ("points", "point")):
        items = getattr(source, attribute, None)
        if items is not None:
            return f"{len(items)} {label}(s)"
    return ""


def handle(args: argparse.Namespace) -> int:
    try:
        settings = load_config(args.path)
    except ConfigError as error:
        print(error.report(), file=sys.stderr)
        return 2
    print(f"{args.path}: valid")
    print(summarise(settings))
    return 0
