"""A small OPC UA server with changing line values, for the demo and the tests.

`OpcUaSimulator` runs an asyncua server on 127.0.0.1 with the namespace `urn:plantgate:demo`
(index 2 unless `extra_namespaces` are registered first) and four variables under the object
`Line1`: Temperature (Double), Pressure (Double), Speed (Int32) and Running (Boolean). A task
updates them every `update_interval_s` with plausible values.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC
from typing import Any

from asyncua import Server, ua
from asyncua.common.node import Node

log = logging.getLogger(__name__)

DEMO_NAMESPACE = "urn:plantgate:demo"
DEMO_VARIABLES: dict[str, tuple[Any, ua.VariantType]] = {
    "Temperature": (21.5, ua.VariantType.Double),
    "Pressure": (1.013, ua.VariantType.Double),
    "Speed": (1200, ua.VariantType.Int32),
    "Running": (True, ua.VariantType.Boolean),
}


def demo_values(step: int) -> dict[str, Any]:
    """Return the line values for update number `step`: slow waves, a stop every 40 steps."""
    running = step % 40 < 36
    return {
        "Temperature": round(60.0 + 8.0 * math.sin(step / 10), 3),
        "Pressure": round(2.5 + 0.3 * math.sin(step / 7), 4),
        "Speed": 1200 + (step * 37) % 300 if running else 0,
        "Running": running,
    }


class OpcUaSimulator:
    """Async context manager running the demo server; `endpoint` is its opc.tcp URL once started.

    `port=0` picks a free port; the chosen one stays in `port`, so a test can stop the simulator
    and start a new one on the same port. `extra_namespaces` are registered before the demo
    namespace, which moves it to a higher index (a server reconfigured between restarts).
    `configure` is awaited with the initialised server before it starts (to set up security).
    """

    def __init__(
        self,
        port: int = 0,
        *,
        update_interval_s: float = 0.5,
        extra_namespaces: Sequence[str] = (),
        configure: Callable[[Server], Awaitable[None]] | None = None,
    ) -> None:
        self.port = port
        self.update_interval_s = update_interval_s
        self.extra_namespaces = list(extra_namespaces)
        self.server = Server()
        self.configure = configure
        self.namespace_index = 0
        self.variables: dict[str, Node] = {}
        self._updater: asyncio.Task[None] | None = None
        self._started = False

    @property
    def endpoint(self) -> str:
        return f"opc.tcp://127.0.0.1:{self.port}"

    async def __aenter__(self) -> OpcUaSimulator:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def start(self) -> None:
        server = self.server
        await server.init()
        server.set_endpoint(f"opc.tcp://127.0.0.1:{self.port}")
        server.set_server_name("plantgate demo line")
        if self.configure is not None:
            await self.configure(server)
        for uri in self.extra_namespaces:
            await server.register_namespace(uri)
        self.namespace_index = await server.register_namespace(DEMO_NAMESPACE)
        line = await server.nodes.objects.add_object(
            self._node_id("Line1"), ua.QualifiedName("Line1", self.namespace_index)
        )
        for name, (initial, variant_type) in DEMO_VARIABLES.items():
            node = await line.add_variable(
                self._node_id(f"Line1.{name}"),
                ua.QualifiedName(name, self.namespace_index),
                ua.Variant(initial, variant_type),
            )
            self.variables[name] = node
        await server.start()
        assert server.bserver is not None
        self.port = server.bserver.port
        self._started = True
        if self.update_interval_s > 0:
            self._updater = asyncio.create_task(self._update_loop(), name="opcua-simulator-update")
        log.debug("OPC UA simulator listening on %s", self.endpoint)

    async def stop(self) -> None:
        """Stop updating and close the server. Safe to call twice."""
        if self._updater is not None:
            self._updater.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._updater
            self._updater = None
        if self._started:
            self._started = False
            await self.server.stop()

    async def write(self, name: str, value: Any, status: int = ua.StatusCodes.Good) -> None:
        """Set one variable, stamped now, with the given status code (to produce Bad or Uncertain values)."""
        _, variant_type = DEMO_VARIABLES.get(name, (None, None))
        variant = ua.Variant(value, variant_type) if variant_type else ua.Variant(value)
        now = ua.DateTime.now(UTC)
        data_value = ua.DataValue(
            variant, StatusCode=ua.StatusCode(ua.UInt32(status)), SourceTimestamp=now, ServerTimestamp=now
        )
        await self.variables[name].write_value(data_value)

    def _node_id(self, name: str) -> ua.NodeId:
        return ua.NodeId(ua.String(name), ua.Int16(self.namespace_index))

    async def _update_loop(self) -> None:
        step = 0
        while True:
            await asyncio.sleep(self.update_interval_s)
            step += 1
            for name, value in demo_values(step).items():
                await self.write(name, value)
