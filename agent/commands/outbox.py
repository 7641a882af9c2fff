"""`plantgate outbox ...`: inspect the outbox and handle its dead letters, safe while the agent runs.

Subcommands: stats, list, show ID, requeue ID..., export FILE, purge, salvage FILE. The outbox
file comes from `--outbox FILE`, or from `outbox.path` in the configuration (`--config`).
Commands that change the file ask for confirmation on a terminal, or need `--yes`; each change
appends a line to `<outbox>.audit.log` (see `outbox.admin`).
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import sys
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from agent.config import DEFAULT_CONFIG_PATH, load_config
from agent.config_errors import ConfigError
from outbox import admin
from outbox.errors import OutboxError

DEFAULT_MAX_BYTES = 1024**3
DEFAULT_TELEMETRY_SHARE = 0.8


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "outbox",
        help="inspect the outbox; list, requeue, export, purge dead letters; salvage a damaged file",
        description=__doc__.split("\n\n", 1)[1] if __doc__ else None,
    )
    parser.set_defaults(handler=lambda args: _usage(parser))
    common = argparse.ArgumentParser(add_help=False)
    where = common.add_mutually_exclusive_group()
    where.add_argument(
        "--config",
        type=Path,
        default=None,
        help=f"TOML file naming the outbox (default {DEFAULT_CONFIG_PATH})",
    )
    where.add_argument("--outbox", type=Path, default=None, help="the outbox file itself")
    confirm = argparse.ArgumentParser(add_help=False)
    confirm.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    as_json = argparse.ArgumentParser(add_help=False)
    as_json.add_argument("--json", action="store_true", help="print JSON instead of text")

    commands = parser.add_subparsers(dest="outbox_command", metavar="ACTION")

    stats = commands.add_parser("stats", parents=[common, as_json], help="depth per lane, dead letters, sizes")
    stats.set_defaults(handler=_handle_stats)

    listing = commands.add_parser("list", parents=[common, as_json], help="list dead letters, oldest first")
    listing.add_argument("--limit", type=int, default=50, help="at most this many (default 50)")
    listing.add_argument("--status", type=int, help="only those the receiver rejected with this HTTP status")
    listing.add_argument("--source", help="only those from this source")
    listing.set_defaults(handler=_handle_list)

    show = commands.add_parser("show", parents=[common], help="print everything held on one record id, as JSON")
    show.add_argument("id", help="record id")
    show.set_defaults(handler=_handle_show)

    requeue = commands.add_parser("requeue", parents=[common, confirm], help="send dead letters again")
    requeue.add_argument("ids", nargs="+", metavar="ID", help="record ids of dead letters")
    requeue.set_defaults(handler=_handle_requeue)

    export = commands.add_parser("export", parents=[common, confirm], help="write dead letters as JSON lines")
    export.add_argument("file", type=Path, help="output file ('-' for standard output)")
    export.add_argument("--id", dest="ids", action="append", default=[], help="only this id (repeatable)")
    export.set_defaults(handler=_handle_export)

    purge = commands.add_parser("purge", parents=[common, confirm], help="delete dead letters for good")
    purge.add_argument("ids", nargs="*", metavar="ID", help="record ids of dead letters")
    purge.add_argument("--all", action="store_true", help="every dead letter")
    purge.add_argument("--older-than", type=float, metavar="DAYS", help="those that failed more than DAYS days ago")
    purge.add_argument("--status", type=int, help="those the receiver rejected with this HTTP status")
    purge.set_defaults(handler=_handle_purge)

    salvage = commands.add_parser(
        "salvage",
        parents=[common, confirm],
        help="copy readable rows of a damaged outbox file into the outbox",
    )
    salvage.add_argument("file", type=Path, help="the moved-aside file, e.g. outbox.sqlite.corrupt-20260301T060000Z")
    salvage.set_defaults(handler=_handle_salvage)


# -- handlers --------------------------------------------------------------------------------


def _handle_stats(args: argparse.Namespace) -> int:
    return _with_outbox(args, lambda connection, path: _print_stats(admin.stats(connection, path), args.json))


def _handle_list(args: argparse.Namespace) -> int:
    def run(connection: sqlite3.Connection, path: Path) -> int:
        entries = admin.list_dead_letters(connection, args.limit, status=args.status, source=args.source)
        if args.json:
            print(json.dumps(entries, indent=2, ensure_ascii=False))
            return 0
        if not entries:
            print("no dead letters")
            return 0
        print(f"{'RECORD ID':<36}  {'FAILED AT':<27}  {'HTTP':>4}  {'LANE':<11} SOURCE  SUBJECT  REASON")
        for entry in entries:
            print(
                f"{entry['id']:<36}  {entry['failed_at']:<27}  {entry['status'] or '-':>4}  {entry['lane']:<11} "
                f"{entry['source']}  {entry['subject']}  {entry['reason'][:80]}"
            )
        return 0

    return _with_outbox(args, run)


def _handle_show(args: argparse.Namespace) -> int:
    def run(connection: sqlite3.Connection, path: Path) -> int:
        entry = admin.show(connection, args.id)
        if entry is None:
            print(f"record {args.id} not found in {path}", file=sys.stderr)
            return 1
        print(json.dumps(entry, indent=2, ensure_ascii=False))
        return 0

    return _with_outbox(args, run)


def _handle_requeue(args: argparse.Namespace) -> int:
    def run(connection: sqlite3.Connection, path: Path) -> int:
        if not _confirm(args, f"Requeue {len(args.ids)} dead letter(s) in {path} for delivery?"):
            return 1
        requeued, missing = admin.requeue(connection, path, args.ids)
        print(f"requeued {len(requeued)} record(s)")
        for record_id in missing:
            print(f"not a dead letter: {record_id}", file=sys.stderr)
        return 1 if missing else 0

    return _with_outbox(args, run)


def _handle_export(args: argparse.Namespace) -> int:
    def run(connection: sqlite3.Connection, path: Path) -> int:
        if str(args.file) == "-":
            count = 0
            for entry in admin.iter_dead_letters(connection, args.ids):
                print(json.dumps(entry, ensure_ascii=False, separators=(",", ":")))
                count += 1
            print(f"exported {count} dead letter(s)", file=sys.stderr)
            return 0
        if args.file.exists() and not _confirm(args, f"{args.file} exists. Overwrite it?"):
            return 1
        count = admin.export(connection, args.file, args.ids)
        print(f"exported {count} dead letter(s) to {args.file}")
        return 0

    return _with_outbox(args, run)


def _handle_purge(args: argparse.Namespace) -> int:
    def run(connection: sqlite3.Connection, path: Path) -> int:
        failed_before = None
        if args.older_than is not None:
            failed_before = datetime.now(UTC) - timedelta(days=args.older_than)
        if not (args.ids or args.all or failed_before or args.status is not None):
            print("plantgate outbox purge: give ids, --all, --older-than DAYS or --status CODE", file=sys.stderr)
            return 2
        if not _confirm(args, f"Delete the chosen dead letters from {path} for good?"):
            return 1
        count = admin.purge(
            connection,
            path,
            ids=args.ids,
            everything=args.all,
            failed_before=failed_before,
            status=args.status,
        )
        print(f"purged {count} dead letter(s)")
        return 0

    return _with_outbox(args, run)


def _handle_salvage(args: argparse.Namespace) -> int:
    try:
        path, max_bytes, telemetry_share = _outbox_settings(args)
    except ConfigError as error:
        print(error.report(), file=sys.stderr)
        return 2
    if args.file.resolve() == path.resolve():
        print(
            f"plantgate outbox salvage: {args.file} is the live outbox; give the moved-aside file",
            file=sys.stderr,
        )
        return 2
    if not _confirm(args, f"Copy the readable rows of {args.file} into {path}?"):
        return 1
    try:
        report = admin.salvage(args.file, path, max_bytes=max_bytes, telemetry_share=telemetry_share)
    except (admin.AdminError, OutboxError, FileNotFoundError, OSError) as error:
        print(f"plantgate outbox salvage: {error}", file=sys.stderr)
        return 1
    print(report.summary())
    return 0


# -- helpers ---------------------------------------------------------------------------------


def _with_outbox(args: argparse.Namespace, action: Callable[[sqlite3.Connection, Path], int]) -> int:
    try:
        path, _, _ = _outbox_settings(args)
    except ConfigError as error:
        print(error.report(), file=sys.stderr)
        return 2
    try:
        connection = admin.open_outbox(path)
    except (admin.AdminError, OutboxError) as error:
        print(f"plantgate outbox: {error}", file=sys.stderr)
        return 1
    try:
        return action(connection, path)
    except admin.AdminError as error:
        print(f"plantgate outbox: {error}", file=sys.stderr)
        return 1
    except sqlite3.Error as error:
        print(f"plantgate outbox: {path} could not be read or changed: {error}", file=sys.stderr)
        return 1
    finally:
        connection.close()


def _outbox_settings(args: argparse.Namespace) -> tuple[Path, int, float]:
    """Find the outbox path and budget in --outbox or the configuration. Raises ConfigError."""
    if args.outbox is not None:
        return args.outbox, DEFAULT_MAX_BYTES, DEFAULT_TELEMETRY_SHARE
    settings = load_config(args.config or DEFAULT_CONFIG_PATH)
    return Path(settings.outbox.path), int(settings.outbox.max_bytes), settings.outbox.telemetry_share


def _confirm(args: argparse.Namespace, question: str) -> bool:
    if args.yes:
        return True
    if not sys.stdin.isatty():
        print(f"{question}\nplantgate outbox: no terminal to confirm on; add --yes to go ahead", file=sys.stderr)
        return False
    answer = input(f"{question} [y/N] ").strip().lower()
    return answer in ("y", "yes")


def _print_stats(stats: dict[str, Any], as_json: bool) -> int:
    if as_json:
        print(json.dumps(stats, indent=2, ensure_ascii=False))
        return 0
    print(f"outbox {stats['path']}: {stats['file_bytes']} bytes, write-ahead log {stats['wal_bytes']} bytes")
    for label, lane in stats["lanes"].items():
        oldest = lane["oldest_captured_at"] or "-"
        print(f"  {label:<11} {lane['records']:>9} records {lane['bytes']:>12} bytes  oldest {oldest}")
    by_status = ", ".join(f"{status}: {count}" for status, count in stats["dead_letters_by_status"].items())
    print(f"  dead letters {stats['dead_letters']}" + (f" ({by_status})" if by_status else ""))
    print(f"  delivered ids kept {stats['delivered_ids_kept']}")
    for name, value in stats["counters"].items():
        print(f"  {name} {value}")
    return 0


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    return 2
