"""`plantgate simulate`: the demo's OPC UA and Modbus simulation servers on their own, until Ctrl-C.

For trying a configuration, `plantgate sample` or `plantgate opcua browse` without plant
equipment. Both listen on 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "simulate",
        help="run the demo's OPC UA and Modbus simulation servers on 127.0.0.1 until stopped",
        description=(
            "Run an OPC UA server (namespace urn:plantgate:demo, variables ns=2;s=Line1.Temperature, "
            "Line1.Pressure, Line1.Speed, Line1.Running) and a Modbus TCP server (unit 1: holding "
            "register 0 int16 temperature x10, 1-2 float32 flow, 3-4 uint32 counter; input register 0 "
            "uint16 status) on 127.0.0.1, with values changing every 0.5 s, until SIGINT or SIGTERM. "
            "config/demo.toml reads them."
        ),
    )
    parser.add_argument("--opcua-port", type=int, default=48401, help="OPC UA port; 0 to not start it (default 48401)")
    parser.add_argument(
        "--modbus-port", type=int, default=15021, help="Modbus TCP port; 0 to not start it (default 15021)"
    )
    parser.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    if not args.opcua_port and not args.modbus_port:
        print("plantgate simulate: both servers are off; give --opcua-port or --modbus-port", file=sys.stderr)
        return 2
    try:
        asyncio.run(_simulate(args.opcua_port, args.modbus_port))
    except OSError as error:
        print(f"plantgate simulate: {error}; choose another port with --opcua-port or --modbus-port", file=sys.stderr)
        return 1
    return 0


async def _simulate(opcua_port: int, modbus_port: int) -> None:
    from drivers.modbus.simulator import ModbusSimulator
    from drivers.opcua.simulator import OpcUaSimulator

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)

    async with contextlib.AsyncExitStack() as servers:
        if opcua_port:
            opcua = await servers.enter_async_context(OpcUaSimulator(port=opcua_port))
            print(f"OPC UA simulator: {opcua.endpoint} (namespace urn:plantgate:demo)", flush=True)
        if modbus_port:
            modbus = await servers.enter_async_context(ModbusSimulator(port=modbus_port))
            print(f"Modbus TCP simulator: 127.0.0.1:{modbus.port}, unit 1", flush=True)
        print("running until Ctrl-C", flush=True)
        await stop.wait()
