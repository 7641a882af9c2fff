"""A Modbus TCP proxy on 127.0.0.1 that can drop requests for chosen units, to make a unit
fall silent behind a working connection, as a dead device behind a gateway does."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator


class MbapProxy:
    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.silent_units: set[int] = set()
        self.dropped = 0
        self.handlers: set[asyncio.Task[None]] = set()
        self.writers: set[asyncio.StreamWriter] = set()

    async def _pipe_requests(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # MBAP header (Modbus Messaging on TCP/IP Implementation Guide): transaction id, protocol id,
        # length of what follows, unit id.
        while True:
            header = await reader.readexactly(6)
            body = await reader.readexactly(int.from_bytes(header[4:6], "big"))
            if body[0] in self.silent_units:
                self.dropped += 1
                continue
            writer.write(header + body)
            await writer.drain()

    async def _pipe_replies(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(4096):
            writer.write(data)
            await writer.drain()

    async def _handle(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.handlers.add(task)
        upstream_reader, upstream_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        self.writers |= {client_writer, upstream_writer}
        try:
            async with asyncio.TaskGroup() as tasks:
                tasks.create_task(self._pipe_requests(client_reader, upstream_writer))
                tasks.create_task(self._pipe_replies(upstream_reader, client_writer))
        except* (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            upstream_writer.close()
            client_writer.close()


@contextlib.asynccontextmanager
async def mbap_proxy(upstream_port: int) -> AsyncIterator[tuple[MbapProxy, int]]:
    proxy = MbapProxy(upstream_port)
    server = await asyncio.start_server(proxy._handle, "127.0.0.1", 0)
    try:
        yield proxy, server.sockets[0].getsockname()[1]
    finally:
        server.close()
        for writer in proxy.writers:
            writer.close()
        # Python 3.11's Server.wait_closed does not wait for connection handlers.
        if proxy.handlers:
            await asyncio.wait(proxy.handlers, timeout=5)
        await server.wait_closed()
