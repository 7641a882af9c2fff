"""Configuration of a Modbus source."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from drivers.config_base import SourceConfigBase, StrictModel

Datatype = Literal["int16", "uint16", "int32", "uint32", "float32"]
Order = Literal["big", "little"]


class ModbusPoint(StrictModel):
    name: str = Field(min_length=1)
    table: Literal["holding", "input"] = "holding"
    address: int = Field(ge=0, le=65535, description="zero-based register address")
    datatype: Datatype = "uint16"
    byte_order: Order = Field(default="big", description="byte order within each 16-bit register")
    word_order: Order = Field(default="big", description="register order of 32-bit values")
    scale: float = 1.0
    offset: float = 0.0
    unit: str | None = None


class ModbusSourceConfig(SourceConfigBase):
    type: Literal["modbus"]
    host: str = Field(min_length=1)
    port: int = Field(default=502, ge=1, le=65535)
    unit_id: int = Field(default=1, ge=0, le=255)
    poll_interval_ms: float = Field(default=1000.0, gt=0)
    timeout_s: float = Field(default=3.0, gt=0)
    points: list[ModbusPoint] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique_point_names(self) -> ModbusSourceConfig:
        seen: set[str] = set()
        for point in self.points:
            if point.name in seen:
                raise ValueError(f"point name {point.name!r} is used twice; names must be unique per source")
            seen.add(point.name)
        return self
