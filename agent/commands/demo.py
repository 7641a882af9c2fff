"""`plantgate demo`: the whole path on one machine, including a WAN outage.

Starts, in one process and on loopback only, an OPC UA simulation server, a Modbus simulation
server, the receiver and the agent with config/demo.toml. It prints what flows every two seconds,
takes the receiver down for a while, shows the backlog building up and draining, and ends by
comparing what the agent stored with what the receiver holds.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import tempfile
from pathlib import Path
from typing import Any

from agent.config import load_config
from agent.config_errors import ConfigError

DEMO_CONFIG = Path(__file__).resolve().parents[2] / "config" / "demo.toml"


class _DefaultsFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Show defaults in the help, except for options whose absence has its own meaning (None)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None:
            return action.help
        return super()._get_help_string(action)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="run simulators, a receiver and the agent together and show an outage and the catch-up",
        description=(
            "Start an OPC UA simulator, a Modbus simulator, a stand-in receiver and the agent on "
            "127.0.0.1 (ports from the demo configuration), print what flows every two seconds, take "
            "the receiver down for a while, and end by comparing what the agent stored with what the "
            "receiver holds. Exit 0 if nothing was lost."
        ),
        formatter_class=_DefaultsFormatter,
    )
    parser.add_argument("--config", type=Path, default=DEMO_CONFIG, help="demo configuration")
    parser.add_argument("--duration", type=float, default=40.0, help="seconds of capture")
    parser.add_argument("--outage-at", type=float, default=10.0, help="seconds before the receiver goes down")
    parser.add_argument("--outage", type=float, default=12.0, help="seconds the receiver stays down")
    parser.add_argument(
        "--data-dir", type=Path, help="keep the outbox and receiver files here; a new temporary folder if not given"
    )
    parser.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    data_dir = args.data_dir or Path(tempfile.mkdtemp(prefix="plantgate-demo-"))
    data_dir.mkdir(parents=True, exist_ok=True)
    try:
        settings = load_config(args.config, overrides=_outbox_override(args.config, data_dir))
    except ConfigError as error:
        print(error.report(), file=sys.stderr)
        return 2

    from agent.logs import setup_logging

    setup_logging("INFO", "text")
    logging.getLogger("agent.supervisor").setLevel(logging.WARNING)
    try:
        return asyncio.run(_demo(settings, data_dir, args))
    except OSError as error:
        print(f"plantgate demo: {error}", file=sys.stderr)
        return 1


def _busy_ports(ports: dict[str, int | None]) -> list[str]:
    """Name each demo port that another program already listens on, before anything starts."""
    import socket

    busy = []
    for role, port in ports.items():
        if not port:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(("127.0.0.1", port))
            except OSError as error:
                busy.append(f"port {port} for the {role} is not free on 127.0.0.1: {error.strerror}")
    return busy


def _outbox_override(path: Path, data_dir: Path) -> dict[str, Any]:
    from agent.config import read_toml

    outbox = dict(read_toml(path).get("outbox", {}))
    outbox["path"] = str(data_dir / "outbox.sqlite")
    return {"outbox": outbox}


async def _demo(settings: Any, data_dir: Path, args: argparse.Namespace) -> int:
    from urllib.parse import urlsplit

    from agent.receiver import Receiver
    from agent.supervisor import Agent
    from drivers.modbus.simulator import ModbusSimulator
    from drivers.opcua.simulator import OpcUaSimulator

    opcua_port = urlsplit(next(s.endpoint for s in settings.sources if s.type == "opcua")).port
    modbus_port = next(s.port for s in settings.sources if s.type == "modbus")
    receiver_url = urlsplit(str(settings.central.url))

    busy = _busy_ports(
        {
            "OPC UA simulator": opcua_port,
            "Modbus simulator": modbus_port,
            "receiver": receiver_url.port,
            "health server": settings.health.port,
        }
    )
    if busy:
        for line in busy:
            print(f"plantgate demo: {line}", file=sys.stderr)
        print(
            f"plantgate demo: stop the program that holds the port (`ss -ltnp` shows it), or copy "
            f"{args.config} with other ports and pass it with --config",
            file=sys.stderr,
        )
        return 1

    print(f"plantgate demo: data in {data_dir}")
    async with (
        OpcUaSimulator(port=opcua_port),
        ModbusSimulator(port=modbus_port),
        Receiver(data_dir / "receiver.sqlite", host="127.0.0.1", port=receiver_url.port) as receiver,
    ):
        print(f"  OPC UA simulator on port {opcua_port}, Modbus simulator on port {modbus_port}")
        print(f"  receiver on {receiver.url}; health server on http://127.0.0.1:{settings.health.port}/status")
        agent = Agent(settings)
        stop = asyncio.Event()
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(agent.run(stop))
            await agent.ready.wait()
            await _narrate(agent, receiver, args)
            stop.set()
        return await _final_check(agent, receiver, data_dir)


async def _narrate(agent: Any, receiver: Any, args: argparse.Namespace) -> None:
    loop = asyncio.get_running_loop()
    started = loop.time()
    outage_started = False
    while (elapsed := loop.time() - started) < args.duration:
        if not outage_started and elapsed >= args.outage_at:
            outage_started = True
            print(f"\n== the receiver goes down for {args.outage:.0f} s: capture goes on, the backlog grows ==\n")
            await receiver.go_down(args.outage)
        await _print_line(agent, receiver, elapsed)
        await asyncio.sleep(2.0)

    print("\n== capture ends; waiting for the backlog to drain ==\n")
    await agent.stop_sources()
    deadline = loop.time() + 60
    while agent.outbox.depth() > 0 and loop.time() < deadline:
        await _print_line(agent, receiver, loop.time() - started)
        await asyncio.sleep(1.0)


async def _print_line(agent: Any, receiver: Any, elapsed: float) -> None:
    status = await agent.status()
    captured = ", ".join(f"{s['name']} {s['records_captured']}" for s in status["sources"])
    outbox = status["outbox"]
    backlog = sum(outbox["depth"].values())
    oldest = max((age for age in outbox["oldest_age_s"].values() if age is not None), default=0.0)
    stats = await _receiver_stats(receiver)
    wan = status["forwarder"].get("wan_state", "?")
    print(
        f"t={elapsed:5.1f}s  captured: {captured} | outbox backlog {backlog:4d} (oldest {oldest:4.1f} s) "
        f"| WAN {wan:7s} | receiver: {stats['unique_events']} unique, {stats['duplicates']} duplicates"
    )


async def _receiver_stats(receiver: Any) -> dict[str, int]:
    stats = receiver.stats()
    if asyncio.iscoroutine(stats):
        stats = await stats
    if not isinstance(stats, dict):
        stats = vars(stats)
    return stats


async def _final_check(agent: Any, receiver: Any, data_dir: Path) -> int:
    """Compare what the agent stored with what the receiver stored, print the result, and return 0 if nothing is missing."""
    import sqlite3

    connection = sqlite3.connect(agent.settings.outbox.path)
    try:
        (waiting,) = connection.execute("SELECT COUNT(*) FROM records").fetchone()
        (dead,) = connection.execute("SELECT COUNT(*) FROM dead_letters").fetchone()
        counters = dict(connection.execute("SELECT name, value FROM counters").fetchall())
    finally:
        connection.close()
    shed = counters.get("shed_records", 0)
    stored = agent.sink.stored
    stats = await _receiver_stats(receiver)
    missing = stored - shed - dead - waiting - stats["unique_events"]

    print("\n== result ==")
    print(f"  records stored by the agent: {stored}")
    print(
        f"  unique events at the receiver: {stats['unique_events']} (it dropped {stats['duplicates']} re-sent duplicates)"
    )
    print(f"  still in the outbox: {waiting}; dead letters: {dead}; telemetry shed by budget: {shed}")
    ok = waiting == 0 and dead == 0 and missing == 0
    print(f"  {'nothing lost, nothing doubled' if ok else f'{missing} records unaccounted for; see /status'}")
    print(f"  outbox and receiver files: {data_dir}")
    return 0 if ok else 1
