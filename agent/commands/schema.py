"""`plantgate schema TYPE`: print the JSON Schema of one MES transaction type."""

from __future__ import annotations

import argparse
import json
import sys

from drivers.mes.transactions import TRANSACTION_TYPES, json_schema


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "schema",
        help="print the JSON Schema of an MES transaction type",
        description="Print the JSON Schema (draft 2020-12) that a transaction of TYPE must match "
        "when posted to the MES HTTP API or dropped as a file. Without TYPE, list the types.",
    )
    parser.add_argument("transaction_type", nargs="?", metavar="TYPE", help=", ".join(TRANSACTION_TYPES))
    parser.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    if args.transaction_type is None:
        for name, model in TRANSACTION_TYPES.items():
            summary = (model.__doc__ or "").strip().splitlines()[0]
            print(f"{name:<26} {summary}")
        return 0
    if args.transaction_type not in TRANSACTION_TYPES:
        print(
            f"plantgate schema: unknown transaction type {args.transaction_type!r}; "
            f"use one of {', '.join(TRANSACTION_TYPES)}",
            file=sys.stderr,
        )
        return 2
    print(json.dumps(json_schema(args.transaction_type), indent=2))
    return 0
