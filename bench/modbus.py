"""Benchmark: 100 Modbus TCP devices of 100 holding registers each, polled once per second.

Reports the agent process's CPU time per 1,000 polled values in three phases of one run:

1. baseline: a bare pymodbus client per device reading its 100 registers once per second
   (the least work that fetches the values at all);
2. sources: one ModbusSource per device, records counted but not stored;
3. sources + outbox: the same sources storing into a real outbox file.

and the number of requests sent against the minimum possible for the point map. The devices
run in a child process so that their CPU time is not counted.

    /work/venv/bin/python bench/modbus.py [--devices 100] [--registers 100] [--seconds 20]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from drivers.modbus.config import ModbusSourceConfig
from drivers.modbus.plan import PointSpan, minimum_requests
from drivers.modbus.source import ModbusSource
from outbox.records import Record
from outbox.store import Outbox


async def serve(devices: int, registers: int) -> None:
    """Child process: start the devices, print their ports as one JSON line, serve until killed."""
    from pymodbus.server import ModbusTcpServer
    from pymodbus.simulator import DataType, SimData, SimDevice

    servers = []
    for _ in range(devices):
        device = SimDevice(id=1, simdata=[SimData(0, values=list(range(registers)), datatype=DataType.REGISTERS)])
        server = ModbusTcpServer([device], address=("127.0.0.1", 0))
        await server.serve_forever(background=True)
        servers.append(server)
    ports = [server.transport.sockets[0].getsockname()[1] for server in servers]
    print(json.dumps(ports), flush=True)
    await asyncio.Event().wait()


class CountingSink:
    def __init__(self) -> None:
        self.values = 0

    async def append(self, records: list[Record]) -> list[bool]:
        self.values += len(records)
        return [True] * len(records)

    async def lookup(self, record_id: str) -> str | None:
        return None


def source_config(index: int, port: int, registers: int) -> ModbusSourceConfig:
    return ModbusSourceConfig.model_validate(
        {
            "type": "modbus",
            "name": f"device{index:03d}",
            "host": "127.0.0.1",
            "port": port,
            "poll_interval_ms": 1000,
            "timeout_s": 2.0,
            "points": [{"name": f"r{address}", "address": address} for address in range(registers)],
        }
    )


async def run_baseline(ports: list[int], registers: int, seconds: float) -> tuple[float, int]:
    """Poll with bare pymodbus clients; return CPU seconds and values read in the window."""
    from pymodbus.client import AsyncModbusTcpClient

    clients = [AsyncModbusTcpClient("127.0.0.1", port=port, retries=0, reconnect_delay=0) for port in ports]
    for client in clients:
        await client.connect()
    values = 0

    async def poll(client: Any) -> None:
        nonlocal values
        next_due = time.monotonic()
        while True:
            response = await client.read_holding_registers(0, count=registers, device_id=1)
            values += len(response.registers)
            next_due += 1.0
            await asyncio.sleep(max(0.0, next_due - time.monotonic()))

    result = await measure(seconds, [poll(client) for client in clients], lambda: values)
    for client in clients:
        client.close()
    return result


async def measure(seconds: float, coroutines: list[Any], count: Callable[[], int]) -> tuple[float, int]:
    """Run the coroutines; after a settling second, return the process CPU seconds used and
    the growth of `count()` over the next `seconds`."""
    tasks = [asyncio.ensure_future(coroutine) for coroutine in coroutines]
    await asyncio.sleep(1.5)  # connect and settle before measuring
    started, counted = time.process_time(), count()
    await asyncio.sleep(seconds)
    used, values = time.process_time() - started, count() - counted
    for task in tasks:
        task.cancel()
    _, pending = await asyncio.wait(tasks, timeout=30)
    if pending:
        raise RuntimeError(f"{len(pending)} task(s) did not stop within 30 s of being cancelled")
    for task in tasks:
        with contextlib.suppress(asyncio.CancelledError):
            await task
    return used, values


async def main(devices: int, registers: int, seconds: float) -> None:
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        __file__,
        "--serve",
        "--devices",
        str(devices),
        "--registers",
        str(registers),
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert child.stdout is not None
        ports = json.loads(await child.stdout.readline())
        await report(ports, registers, seconds)
    finally:
        child.kill()
        await child.wait()


async def report(ports: list[int], registers: int, seconds: float) -> None:
    print(f"{len(ports)} devices x {registers} registers, 1 poll/s, {seconds:g} s per phase, {os.cpu_count()} CPUs")

    cpu, values = await run_baseline(ports, registers, seconds)
    baseline = per_1000(cpu, values)
    print(f"baseline (bare pymodbus clients): {baseline:.2f} ms CPU per 1000 values ({values} values)")

    sources = [ModbusSource(source_config(index, port, registers)) for index, port in enumerate(ports)]
    sink = CountingSink()
    cpu, values = await measure(seconds, [source.run(sink) for source in sources], lambda: sink.values)
    result = per_1000(cpu, values)
    print(f"sources, records not stored: {result:.2f} ms CPU per 1000 values ({result / baseline:.2f}x baseline)")

    requests = sum(source.status.details["requests"] for source in sources)
    polls = sum(source.status.details["polls"] for source in sources)
    spans = [PointSpan(f"r{address}", 1, "holding", address, 1) for address in range(registers)]
    minimum = minimum_requests(spans, max_registers=125, max_bits=2000) * polls
    print(f"requests: {requests} for {polls} polls; minimum possible {minimum} ({requests / minimum:.2f}x)")

    with tempfile.TemporaryDirectory() as folder:
        async with Outbox(Path(folder) / "outbox.sqlite", max_bytes=8 * 1024**3) as outbox:
            sources = [ModbusSource(source_config(index, port, registers)) for index, port in enumerate(ports)]
            cpu, values = await measure(
                seconds,
                [source.run(outbox) for source in sources],
                lambda: sum(source.status.records_captured for source in sources),
            )
    result = per_1000(cpu, values)
    print(f"sources + outbox: {result:.2f} ms CPU per 1000 values ({result / baseline:.2f}x baseline)")


def per_1000(cpu_s: float, values: int) -> float:
    """CPU milliseconds per 1000 values."""
    return cpu_s * 1000 / max(values, 1) * 1000


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=100)
    parser.add_argument("--registers", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=20.0, help="length of each measured phase")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    arguments = parser.parse_args()
    if arguments.serve:
        asyncio.run(serve(arguments.devices, arguments.registers))
    else:
        asyncio.run(main(arguments.devices, arguments.registers, arguments.seconds))
