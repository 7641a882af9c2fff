"""`plantgate sample --config PATH`: read every configured source once and print what would be stored.

A dry run: nothing is written to the outbox. Exits 0 if every enabled source was read, 1 if
any failed (each failure is printed), 2 if the configuration is invalid.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any

from agent.config import DEFAULT_CONFIG_PATH, load_config
from agent.config_errors import ConfigError


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "sample",
        help="read every configured source once and print the records it would store",
        description="A dry run: read each enabled source once, print its records, store nothing.",
    )
    parser.add_argument(
        "--config", type=Path, default=DEFAULT_CONFIG_PATH, help=f"TOML file (default {DEFAULT_CONFIG_PATH})"
    )
    parser.add_argument("--json", action="store_true", help="print each record as one JSON line")
    parser.add_argument("--source", action="append", help="sample only this source (repeatable)")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds allowed per source (default 30)")
    parser.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    try:
        settings = load_config(args.config)
    except ConfigError as error:
        print(error.report(), file=sys.stderr)
        return 2
    import logging

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    sources = [source for source in settings.sources if source.enabled]
    if args.source:
        unknown = sorted(set(args.source) - {source.name for source in sources})
        if unknown:
            print(f"plantgate sample: no enabled source named {', '.join(unknown)}", file=sys.stderr)
            return 2
        sources = [source for source in sources if source.name in args.source]
    return asyncio.run(_sample_all(sources, args))


async def _sample_all(configs: list[Any], args: argparse.Namespace) -> int:
    from drivers.registry import build_source

    failures = 0
    for config in configs:
        source = build_source(config)
        try:
            async with asyncio.timeout(args.timeout):
                records = await source.sample()
        except NotImplementedError as error:
            print(f"{config.name}: skipped: {error}", file=sys.stderr)
            continue
        except TimeoutError:
            failures += 1
            print(
                f"{config.name}: failed: timed out after {args.timeout:g} s; check the endpoint or raise --timeout",
                file=sys.stderr,
            )
            continue
        except Exception as error:
            failures += 1
            print(f"{config.name}: failed: {error}", file=sys.stderr)
            continue
        if not args.json:
            print(f"{config.name} ({config.type}): {len(records)} record(s)")
        for record in records:
            print(_json_line(record) if args.json else _text_line(record))
    return 1 if failures else 0


def _text_line(record: Any) -> str:
    payload = record.payload
    value = json.dumps(payload.get("value"), ensure_ascii=False) if "value" in payload else record.payload_json
    status = payload.get("status")
    suffix = f" ({status})" if status and record.quality != "good" else ""
    return f"  {record.subject:<32} {record.quality:<9} {value}{suffix}"


def _json_line(record: Any) -> str:
    from outbox.records import format_time

    return json.dumps(
        {
            "id": record.id,
            "source": record.source,
            "lane": record.lane.label,
            "kind": record.kind,
            "subject": record.subject,
            "source_time": format_time(record.source_time) if record.source_time else None,
            "captured_at": format_time(record.captured_at),
            "quality": record.quality,
            # The stored form, in which NaN and infinities are already strings.
            "payload": json.loads(record.payload_json),
        },
        ensure_ascii=False,
    )
