"""Build a Source from its configuration, by the configuration's `type`."""

from __future__ import annotations

import importlib
from typing import Any

from drivers.base import Source
from outbox.clock import SYSTEM_CLOCK, Clock

# type -> "module:class". Imported only when a source of that type is configured, so a
# gateway that runs only Modbus never loads the OPC UA stack.
SOURCE_CLASSES: dict[str, str] = {
    "opcua": "drivers.opcua.source:OpcUaSource",
    "modbus": "drivers.modbus.source:ModbusSource",
    "mes": "drivers.mes.source:MesSource",
}


def build_source(config: Any, *, clock: Clock = SYSTEM_CLOCK) -> Source:
    """Create the source for one validated source configuration (not yet started)."""
    module_name, class_name = SOURCE_CLASSES[config.type].split(":")
    cls = getattr(importlib.import_module(module_name), class_name)
    source: Source = cls(config, clock=clock)
    return source
