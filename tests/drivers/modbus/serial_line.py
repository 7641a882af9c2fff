"""A simulated RS-485 line between two pseudo-terminals, with hooks to provoke line faults.

The source opens `client_path` and a pymodbus serial server opens `server_path`, both as
ordinary serial ports through pyserial. The test relays bytes between the two pty masters,
so it can drop requests for a unit (a dead device), hold back a reply (a slow device),
corrupt a reply (noise) or send garbage bytes on the line.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import tty
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

# Read requests (function codes 1 to 4) are 8 bytes in RTU framing: unit, function code,
# address, count, CRC.
READ_REQUEST_BYTES = 8


@dataclass
class LineFaults:
    silent_units: set[int] = field(default_factory=set)
    # (register address, seconds): the next reply to a request for that address is held
    # back that long. Entries are used in order.
    reply_delays: list[tuple[int, float]] = field(default_factory=list)
    corrupt_replies: int = 0  # number of next replies to corrupt
    garbage_before_replies: int = 0  # number of next replies to precede with garbage
    dropped_requests: int = 0


class SerialLine:
    def __init__(self) -> None:
        self.faults = LineFaults()
        self._client_master, client_slave = os.openpty()
        self._server_master, server_slave = os.openpty()
        for descriptor in (self._client_master, self._server_master, client_slave, server_slave):
            tty.setraw(descriptor)
        self.client_path = os.ttyname(client_slave)
        self.server_path = os.ttyname(server_slave)
        # Keep the slave ends open so the line does not hang up between opens.
        self._slaves = (client_slave, server_slave)
        self._request_buffer = b""
        self._last_request_address = -1
        self._tasks: set[asyncio.Task[None]] = set()

    def _on_request_bytes(self) -> None:
        self._request_buffer += os.read(self._client_master, 4096)
        while len(self._request_buffer) >= READ_REQUEST_BYTES:
            frame, self._request_buffer = (
                self._request_buffer[:READ_REQUEST_BYTES],
                self._request_buffer[READ_REQUEST_BYTES:],
            )
            if frame[0] in self.faults.silent_units:
                self.faults.dropped_requests += 1
                continue
            self._last_request_address = int.from_bytes(frame[2:4], "big")
            os.write(self._server_master, frame)

    def _on_reply_bytes(self) -> None:
        data = os.read(self._server_master, 4096)
        faults = self.faults
        if faults.corrupt_replies:
            faults.corrupt_replies -= 1
            data = data[:-3] + bytes([data[-3] ^ 0x5A]) + data[-2:]
        if faults.garbage_before_replies:
            faults.garbage_before_replies -= 1
            data = bytes([0x01, 0x03, 0xFF, 0x42, 0x00]) + data
        delay = 0.0
        if faults.reply_delays and faults.reply_delays[0][0] == self._last_request_address:
            delay = faults.reply_delays.pop(0)[1]
        if delay:
            task = asyncio.get_running_loop().create_task(self._deliver_later(data, delay))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        else:
            os.write(self._client_master, data)

    async def _deliver_later(self, data: bytes, delay: float) -> None:
        await asyncio.sleep(delay)
        os.write(self._client_master, data)

    async def __aenter__(self) -> SerialLine:
        loop = asyncio.get_running_loop()
        loop.add_reader(self._client_master, self._on_request_bytes)
        loop.add_reader(self._server_master, self._on_reply_bytes)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        loop = asyncio.get_running_loop()
        loop.remove_reader(self._client_master)
        loop.remove_reader(self._server_master)
        for task in self._tasks:
            task.cancel()
        for descriptor in (self._client_master, self._server_master, *self._slaves):
            with contextlib.suppress(OSError):
                os.close(descriptor)


@contextlib.asynccontextmanager
async def serial_server(path: str, devices: list) -> AsyncIterator[None]:
    from pymodbus.server import ModbusSerialServer

    server = ModbusSerialServer(devices, port=path, baudrate=19200)
    await server.serve_forever(background=True)
    try:
        yield
    finally:
        await server.shutdown()
