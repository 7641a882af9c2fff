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
        description=(
            "Validate a configuration file without starting anything. Exit 0 and print a summary of what "
            "would run if it is valid (with warnings for files that do not exist yet); print every problem "
            "with its key path and exit 2 if not. Environment overrides (PLANTGATE_...) are applied."
        ),
    )
    parser.add_argument(
        "path", nargs="?", type=Path, help=f"TOML file (default {DEFAULT_CONFIG_PATH}); --config PATH works too"
    )
    parser.add_argument("--config", dest="config_path", type=Path, help=argparse.SUPPRESS)
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


def missing_files(settings: Settings) -> list[str]:
    """Warnings for referenced files that do not exist here (secrets may only appear at run time,
    for example through systemd's LoadCredential, so these are not errors)."""
    warnings: list[str] = []
    central = settings.central
    for key in ("token_file", "ca_file", "client_cert_file", "client_key_file"):
        path = getattr(central, key)
        if path is not None and not path.exists():
            warnings.append(f"central.{key}: {path} does not exist")
    for index, source in enumerate(settings.sources):
        http = getattr(source, "http", None)
        token_file = getattr(http, "token_file", None)
        if token_file is not None and not token_file.exists():
            warnings.append(f"sources[{index}].http.token_file: {token_file} does not exist")
    if not settings.outbox.path.parent.exists():
        warnings.append(
            f"outbox.path: folder {settings.outbox.path.parent} does not exist; plantgate run will create it"
        )
    if not settings.sources:
        warnings.append("sources: no source is configured, so nothing will be captured")
    return warnings


def handle(args: argparse.Namespace) -> int:
    path = args.config_path or args.path or DEFAULT_CONFIG_PATH
    try:
        settings = load_config(path)
    except ConfigError as error:
        print(error.report(), file=sys.stderr)
        return 2
    print(f"{path}: valid")
    print(summarise(settings))
    for warning in missing_files(settings):
        print(f"warning: {warning}")
    return 0
