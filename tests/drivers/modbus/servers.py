"""Real pymodbus servers for the Modbus tests, with hooks to provoke device faults."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from pymodbus import FramerType
from pymodbus.constants import ExcCodes
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

# Called as hook(function_code, address, count) before the server replies to a read. It may sleep
# (a slow device) or return an exception code to send instead of the data.
Hook = Callable[[int, int, int], Awaitable[int | None]]


def device(unit: int, holding: list[int], inputs: list[int] | None = None, hook: Hook | None = None) -> SimDevice:
    """A device whose holding and input registers start at address 0 with the given values."""

    async def action(function_code: int, start: int, address: int, count: int, registers: Any, values: Any):
        if hook is None:
            return None
        code = await hook(function_code, address, count)
        return ExcCodes(code) if code else None

    inputs = inputs or [0]
    return SimDevice(
        id=unit,
        simdata=(
            [SimData(0, count=16, values=False, datatype=DataType.BITS)],
            [SimData(0, count=16, values=False, datatype=DataType.BITS)],
            [SimData(0, values=holding, datatype=DataType.REGISTERS)],
            [SimData(0, values=inputs, datatype=DataType.REGISTERS)],
        ),
        action=action,
    )


@contextlib.asynccontextmanager
async def modbus_server(
    devices: list[SimDevice],
    *,
    port: int = 0,
    framer: FramerType = FramerType.SOCKET,
    ignore_missing: bool = False,
) -> AsyncIterator[int]:
    """Serve `devices` on 127.0.0.1 and yield the port."""
    server = ModbusTcpServer(devices, address=("127.0.0.1", port), framer=framer, ignore_missing_devices=ignore_missing)
    await server.serve_forever(background=True)
    try:
        yield server.transport.sockets[0].getsockname()[1]
    finally:
        await server.shutdown()


async def wait_until(condition: Callable[[], bool], within_s: float, what: str) -> None:
    deadline = asyncio.get_running_loop().time() + within_s
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out after {within_s} s waiting for {what}")
        await asyncio.sleep(0.05)
