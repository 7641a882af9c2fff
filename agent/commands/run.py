"""`plantgate run --config PATH`: the daemon."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from agent.config import DEFAULT_CONFIG_PATH, load_config
from agent.config_errors import ConfigError


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "run",
        help="run the agent (the systemd service runs this)",
        description=(
            "Run the agent until SIGTERM or SIGINT: capture from every configured source into the outbox "
            "and forward to the central endpoint. Exits 2 on an invalid configuration (same messages as "
            "check-config), 1 if the outbox cannot be opened, 0 after a clean stop."
        ),
    )
    parser.add_argument(
        "--config", type=Path, default=DEFAULT_CONFIG_PATH, help=f"TOML file (default {DEFAULT_CONFIG_PATH})"
    )
    parser.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    try:
        settings = load_config(args.config)
    except ConfigError as error:
        print(error.report(), file=sys.stderr)
        print("plantgate: not started because the configuration is invalid", file=sys.stderr)
        return 2

    from agent import systemd
    from agent.logs import setup_logging
    from agent.sdnotify import Notifier
    from agent.supervisor import run_agent

    setup_logging(settings.logging.level, settings.logging.format)
    with Notifier() as notifier:
        return asyncio.run(run_agent(settings, configure=lambda agent: systemd.attach(agent, notifier)))
