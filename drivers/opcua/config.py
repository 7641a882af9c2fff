"""Configuration of an OPC UA source."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from drivers.config_base import SourceConfigBase, StrictModel


class OpcUaNode(StrictModel):
    node_id: str = Field(min_length=1, description="node id, such as 'ns=2;s=Line1.Temperature'")
    name: str | None = Field(default=None, description="subject of the records; defaults to node_id")
    sampling_interval_ms: float | None = Field(default=None, ge=0)

    @property
    def subject(self) -> str:
        return self.name or self.node_id


class OpcUaSourceConfig(SourceConfigBase):
    type: Literal["opcua"]
    endpoint: str = Field(description="opc.tcp://host:port/path")
    sampling_interval_ms: float = Field(default=500.0, ge=0)
    publishing_interval_ms: float = Field(default=1000.0, gt=0)
    timeout_s: float = Field(default=10.0, gt=0)
    nodes: list[OpcUaNode] = Field(min_length=1)

    @field_validator("endpoint")
    @classmethod
    def _endpoint_scheme(cls, value: str) -> str:
        if not value.startswith("opc.tcp://"):
            raise ValueError(f"{value!r} must start with 'opc.tcp://'")
        return value
