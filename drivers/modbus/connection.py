"""One Modbus connection (TCP, RTU over TCP, or RTU on a serial line) behind a small interface.

This is the driver edge: pymodbus results and exceptions become a `ReadOutcome` (values, a
Modbus exception code, or no response) or a `SourceUnavailable` (connection lost), so the
polling code never sees a library type. pymodbus's own reconnect and retries are switched
off because the source decides both.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any

from pymodbus import FramerType
from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient
from pymodbus.exceptions import ConnectionException, ModbusException, ModbusIOException

from drivers.base import SourceUnavailable
from drivers.modbus.config import ModbusSourceConfig
from drivers.modbus.plan import ReadRequest

log = logging.getLogger(__name__)

# pymodbus logs each timeout and each failed connect at WARNING or ERROR. This driver reports
# those itself, counted and once per state change, so pymodbus's own lines are limited to
# CRITICAL unless a logging configuration set a level for the "pymodbus" logger first.
_pymodbus_log = logging.getLogger("pymodbus")
if _pymodbus_log.level == logging.NOTSET:
    _pymodbus_log.setLevel(logging.CRITICAL)

# Exception codes of Modbus Application Protocol 1.1b3, section 7.
EXCEPTION_NAMES = {
    1: "illegal function",
    2: "illegal data address",
    3: "illegal data value",
    4: "server device failure",
    5: "acknowledge",
    6: "server device busy",
    8: "memory parity error",
    10: "gateway path unavailable",
    11: "gateway target device failed to respond",
}


def exception_name(code: int) -> str:
    return EXCEPTION_NAMES.get(code, f"exception code {code}")


@dataclass(frozen=True, slots=True)
class ReadOutcome:
    """What one read request produced: exactly one of `values`, `exception_code`, or `error`."""

    values: list[int] | list[bool] | None = None
    exception_code: int | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.values is not None


class ModbusConnection:
    """An open connection to one device or gateway. Use as `async with`; closing twice is safe.

    `__aenter__` raises `SourceUnavailable` when the connection cannot be opened, `read`
    raises it when the connection is lost.
    """

    def __init__(self, config: ModbusSourceConfig) -> None:
        self.config = config
        self.client: Any = None
        self._serial_line = config.transport != "tcp"
        self._quiet_s = config.inter_frame_delay_ms / 1000
        self._last_received = 0.0
        # Poll groups share the connection; the lock also covers the quiet time after a
        # reply, which pymodbus's own lock does not.
        self._lock = asyncio.Lock()

    def describe(self) -> str:
        if self.config.transport == "rtu" and self.config.serial is not None:
            return f"serial port {self.config.serial.port}"
        return f"{self.config.host}:{self.config.port} ({self.config.transport})"

    async def __aenter__(self) -> ModbusConnection:
        config = self.config
        common: dict[str, Any] = {
            "timeout": config.timeout_s,
            "retries": 0,
            "reconnect_delay": 0,
            "trace_packet": self._trace_packet,
        }
        if config.transport == "rtu":
            assert config.serial is not None
            serial = config.serial
            self.client = AsyncModbusSerialClient(
                serial.port,
                framer=FramerType.RTU,
                baudrate=serial.baudrate,
                bytesize=serial.bytesize,
                parity=serial.parity,
                stopbits=serial.stopbits,
                **common,
            )
        else:
            framer = FramerType.SOCKET if config.transport == "tcp" else FramerType.RTU
            assert config.host is not None
            self.client = AsyncModbusTcpClient(config.host, port=config.port, framer=framer, **common)

        try:
            connected = await self.client.connect()
        except BaseException:
            self.close()
            raise
        if not connected:
            self.close()
            raise SourceUnavailable(f"cannot connect to {self.describe()}")
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        client, self.client = self.client, None
        if client is not None:
            client.close()

    async def read(self, request: ReadRequest) -> ReadOutcome:
        """Send one read request and classify the reply.

        A reply whose function code, unit or length does not match the request is treated
        as no reply: on TCP pymodbus already drops replies with another transaction id, and
        on a serial line this check plus the quiet time after a timeout keep a late reply
        from being taken as the answer to the next request.
        """
        async with self._lock:
            return await self._read_locked(request)

    async def _read_locked(self, request: ReadRequest) -> ReadOutcome:
        client = self.client
        if client is None or not client.connected:
            raise SourceUnavailable(f"connection to {self.describe()} is closed")

        try:
            # The extra second covers pymodbus's own timeout, which is the one that fires.
            async with asyncio.timeout(self.config.timeout_s + 1.0):
                response = await self._send(client, request)
        except ConnectionException as error:
            raise SourceUnavailable(f"connection to {self.describe()} lost: {error}") from error
        except (ModbusIOException, TimeoutError) as error:
            if not client.connected:
                raise SourceUnavailable(f"connection to {self.describe()} lost: {error}") from error
            await self._settle_after_timeout()
            return ReadOutcome(error=f"no response within {self.config.timeout_s:g} s")
        except ModbusException as error:
            return ReadOutcome(error=f"invalid reply: {error}")

        if self._quiet_s:
            await asyncio.sleep(self._quiet_s)
        return classify_response(request, response)

    async def _send(self, client: Any, request: ReadRequest) -> Any:
        arguments = {"count": request.count, "device_id": request.unit}
        if request.table == "holding":
            return await client.read_holding_registers(request.address, **arguments)
        if request.table == "input":
            return await client.read_input_registers(request.address, **arguments)
        if request.table == "coil":
            return await client.read_coils(request.address, **arguments)
        return await client.read_discrete_inputs(request.address, **arguments)

    def _trace_packet(self, sending: bool, data: bytes) -> bytes:
        if not sending:
            self._last_received = time.monotonic()
        return data

    async def _settle_after_timeout(self) -> None:
        """Wait, after a request timed out on a serial line, until its late reply is over.

        RTU frames carry no transaction id, so a late reply that arrived during the next
        request would pass for its answer. Waiting here lets it arrive now, when pymodbus
        discards it as unrequested. The wait ends once bytes came and the line was then quiet
        for the inter-frame delay (at least 20 ms), or after `late_reply_wait_ms`.
        """
        if not self._serial_line:
            return
        quiet_s = max(self._quiet_s, 0.02)
        started = time.monotonic()
        deadline = started + self.config.late_reply_wait_ms / 1000
        while (now := time.monotonic()) < deadline:
            heard_late_reply = self._last_received > started
            if heard_late_reply and now - self._last_received >= quiet_s:
                return
            await asyncio.sleep(min(quiet_s, deadline - now))


def classify_response(request: ReadRequest, response: Any) -> ReadOutcome:
    """Turn a pymodbus response into a ReadOutcome, checking it answers `request`."""
    if response.isError():
        code = getattr(response, "exception_code", None)
        if code is None:
            return ReadOutcome(error=f"error reply {response!r}")
        return ReadOutcome(exception_code=int(code))

    if response.function_code != request.function_code:
        return ReadOutcome(
            error=f"reply has function code {response.function_code}, expected {request.function_code}"
        )
    if request.unit and response.dev_id != request.unit:
        return ReadOutcome(error=f"reply is from unit {response.dev_id}, expected {request.unit}")

    if request.table in ("coil", "discrete"):
        bits = list(response.bits)
        # Bits come padded to a whole byte (Modbus Application Protocol 1.1b3, 6.1).
        if len(bits) < request.count or len(bits) >= request.count + 8:
            return ReadOutcome(error=f"reply holds {len(bits)} bits, expected {request.count}")
        return ReadOutcome(values=[bool(bit) for bit in bits[: request.count]])

    registers = list(response.registers)
    if len(registers) != request.count:
        return ReadOutcome(error=f"reply holds {len(registers)} registers, expected {request.count}")
    return ReadOutcome(values=registers)
