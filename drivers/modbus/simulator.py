"""A small Modbus TCP device for the demo and the tests: a real pymodbus server on 127.0.0.1.

Unit 1 holds, in holding registers:

====  =====================================================  ========================
addr  value                                                  point settings
====  =====================================================  ========================
0     temperature in tenths of a degree (int16, ~21.5 C)     datatype int16, scale 0.1
1-2   flow in m3/h (float32, high word first)                datatype float32
3-4   counter, +1 per step (uint32, high word first)         datatype uint32
====  =====================================================  ========================

and input register 0: status (uint16, 1 running, 2 idle). The values change every
`step_s` seconds (0.5 by default); they are computed from the step number when a request
reads them, so the simulator runs no background task.
"""

from __future__ import annotations

import math
import time
from typing import Any

from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from drivers.modbus.decode import encode_value

UNIT_ID = 1
HOLDING_REGISTERS = 10
INPUT_REGISTERS = 4
_HOLDING_FUNCTIONS = frozenset({3, 6, 16, 22, 23})


def values_at(step: int) -> dict[str, float | int]:
    """Return the simulated readings at one step, in engineering units."""
    return {
        "temperature": round(21.5 + 1.5 * math.sin(step / 10), 1),
        "flow": 12.5 + 2.0 * math.cos(step / 7),
        "counter": step % 2**32,
        "status": 1 if (step // 20) % 4 else 2,
    }


def holding_registers_at(step: int) -> list[int]:
    values = values_at(step)
    registers = encode_value(round(values["temperature"] * 10), "int16")
    registers += encode_value(values["flow"], "float32")
    registers += encode_value(int(values["counter"]), "uint32")
    return registers


class ModbusSimulator:
    """The simulated device. `async with ModbusSimulator() as sim:` then connect to
    `sim.host`:`sim.port`. Port 0 (the default) takes a free port. Closing twice is safe."""

    def __init__(self, port: int = 0, *, host: str = "127.0.0.1", step_s: float = 0.5) -> None:
        self.host = host
        self.port = port
        self.step_s = step_s
        self._started = time.monotonic()
        self._server: ModbusTcpServer | None = None

    def step(self) -> int:
        return int((time.monotonic() - self._started) / self.step_s)

    async def _refresh(
        self,
        function_code: int,
        start_address: int,
        address: int,
        count: int,
        registers: list[int],
        set_values: list[int] | list[bool] | None,
    ) -> None:
        step = self.step()
        if function_code in _HOLDING_FUNCTIONS:
            fresh = holding_registers_at(step)
            registers[: len(fresh)] = fresh
        elif function_code == 4:
            registers[0] = int(values_at(step)["status"])
        return None

    async def __aenter__(self) -> ModbusSimulator:
        device = SimDevice(
            id=UNIT_ID,
            simdata=(
                [SimData(0, count=16, values=False, datatype=DataType.BITS)],
                [SimData(0, count=16, values=False, datatype=DataType.BITS)],
                [SimData(0, count=HOLDING_REGISTERS, values=0, datatype=DataType.REGISTERS)],
                [SimData(0, count=INPUT_REGISTERS, values=0, datatype=DataType.REGISTERS)],
            ),
            action=self._refresh,
        )
        self._server = ModbusTcpServer([device], address=(self.host, self.port))
        await self._server.serve_forever(background=True)
        transport: Any = self._server.transport
        if transport is None:
            raise OSError(f"Modbus simulator could not listen on {self.host}:{self.port}")
        self.port = transport.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            await server.shutdown()
