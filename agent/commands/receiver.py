"""`plantgate receiver --listen HOST --port N --db FILE`: run the stand-in central receiver.

For demos and tests on one machine: it stores what a gateway forwards, and faults can be
injected over POST /v1/control (see `agent.receiver`).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import ssl
import sys
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "receiver",
        help="run a stand-in central receiver that stores forwarded CloudEvents in a SQLite file",
        description=(
            "Serve POST /v1/events (CloudEvents batches), GET /v1/stats and POST /v1/control."
            " Prints the events URL once listening; stops on SIGINT or SIGTERM."
        ),
    )
    parser.add_argument("--listen", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    # 8788 is the MES API's default port, so the stand-in receiver uses another.
    parser.add_argument("--port", type=int, default=8090, help="TCP port; 0 picks a free one (default 8090)")
    parser.add_argument("--db", type=Path, required=True, help="SQLite ledger file; created if missing")
    parser.add_argument("--token-file", type=Path, help="file with the bearer token that requests must carry")
    parser.add_argument("--tls-cert", type=Path, help="PEM certificate chain; serves HTTPS with --tls-key")
    parser.add_argument("--tls-key", type=Path, help="PEM private key of --tls-cert")
    parser.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    from agent.receiver import Receiver, serve_until_stopped

    if (args.tls_cert is None) != (args.tls_key is None):
        print("plantgate receiver: --tls-cert and --tls-key must be given together", file=sys.stderr)
        return 2
    if not 0 <= args.port <= 65535:
        print(f"plantgate receiver: --port {args.port} is invalid; use 0 to 65535", file=sys.stderr)
        return 2

    try:
        token = args.token_file.read_text().strip() if args.token_file else None
        ssl_context = None
        if args.tls_cert is not None:
            ssl_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            ssl_context.load_cert_chain(args.tls_cert, args.tls_key)
    except (OSError, ssl.SSLError) as error:
        print(f"plantgate receiver: cannot read the token or TLS files: {error}", file=sys.stderr)
        return 2

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    receiver = Receiver(args.db, host=args.listen, port=args.port, token=token, ssl_context=ssl_context)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        await serve_until_stopped(receiver, stop)

    try:
        asyncio.run(main())
    except OSError as error:
        print(f"plantgate receiver: cannot listen on {args.listen}:{args.port}: {error}", file=sys.stderr)
        return 1
    return 0
