"""Configuration of a Modbus source: the connection, its timing, and the point map.

Addresses are zero-based protocol addresses, as sent in the request PDU. The traditional
five- or six-digit reference notation ("40001", "300010") is accepted as a quoted string
instead: the first digit names the table and the rest is one-based. See docs/modbus.md.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from drivers.config_base import SourceConfigBase, StrictModel
from drivers.modbus.decode import BIT_TABLES, register_count

Table = Literal["holding", "input", "coil", "discrete"]
Datatype = Literal["int16", "uint16", "int32", "uint32", "float32", "int64", "uint64", "float64", "bool", "string"]
Order = Literal["big", "little"]
Transport = Literal["tcp", "rtu-over-tcp", "rtu"]

# Leading digit of the reference notation -> table (Modbus Application Protocol 1.1b3, 4.3:
# the data model's four primary tables).
REFERENCE_PREFIXES: dict[str, str] = {"0": "coil", "1": "discrete", "3": "input", "4": "holding"}

# Request size limits of Modbus Application Protocol 1.1b3, 6.1 to 6.4: Read Coils and Read
# Discrete Inputs return at most 2000 bits, Read Holding/Input Registers at most 125 registers.
MAX_BITS_PER_READ = 2000
MAX_REGISTERS_PER_READ = 125


def parse_reference(text: str) -> tuple[str, int]:
    """Turn a reference such as "40001" or "300010" into (table, zero-based address).

    Raises ValueError naming the reference and the accepted forms.
    """
    text = text.strip()
    if not text.isdigit() or len(text) not in (5, 6) or text[0] not in REFERENCE_PREFIXES:
        raise ValueError(
            f"address {text!r} is not a reference of the form 0xxxx, 1xxxx, 3xxxx or 4xxxx "
            "(5 or 6 digits, quoted); write a zero-based address as a bare integer instead"
        )
    number = int(text[1:])
    if number < 1:
        raise ValueError(f"address {text!r}: references start at 1 (for example '40001' is address 0)")
    if number > 65536:
        raise ValueError(f"address {text!r} is beyond the last register 65536 of the table")
    return REFERENCE_PREFIXES[text[0]], number - 1


class ModbusPoint(StrictModel):
    name: str = Field(min_length=1)
    table: Table = "holding"
    address: int = Field(ge=0, le=65535, description="zero-based address, or a quoted '40001'-style reference")
    datatype: Datatype = "uint16"
    bit: int | None = Field(default=None, ge=0, le=15, description="bit of a register for datatype bool")
    length: int | None = Field(default=None, ge=1, le=MAX_REGISTERS_PER_READ, description="registers of a string")
    byte_order: Order = Field(default="big", description="byte order within each 16-bit register")
    word_order: Order = Field(default="big", description="register order of 32- and 64-bit values")
    scale: float = 1.0
    offset: float = 0.0
    unit: str | None = None
    unit_id: int | None = Field(default=None, ge=0, le=255, description="overrides the source's unit_id")
    poll_interval_ms: float | None = Field(default=None, gt=0, description="overrides the source's interval")
    deadband: float | None = Field(default=None, ge=0, description="report only changes beyond this")
    heartbeat_s: float | None = Field(default=None, gt=0, description="with deadband: report at least this often")

    @model_validator(mode="before")
    @classmethod
    def _resolve_reference(cls, data: Any) -> Any:
        if not isinstance(data, dict) or not isinstance(data.get("address"), str):
            return data
        table, address = parse_reference(data["address"])
        given = data.get("table")
        if given is not None and given != table:
            raise ValueError(
                f"address {data['address']!r} is in the {table} table but table is {given!r}; "
                "remove table or make the two agree"
            )
        return {**data, "table": table, "address": address}

    @model_validator(mode="after")
    def _check_shape(self) -> ModbusPoint:
        in_bit_table = self.table in BIT_TABLES
        if in_bit_table and self.datatype != "bool":
            raise ValueError(
                f"point {self.name!r}: a {self.table} is a single bit, so datatype must be 'bool', "
                f"not {self.datatype!r}"
            )
        if self.bit is not None and (in_bit_table or self.datatype != "bool"):
            raise ValueError(f"point {self.name!r}: bit is only for datatype 'bool' in a holding or input register")
        if self.datatype == "string" and self.length is None:
            raise ValueError(f"point {self.name!r}: datatype 'string' needs length (number of registers)")
        if self.datatype != "string" and self.length is not None:
            raise ValueError(f"point {self.name!r}: length is only for datatype 'string'")
        if self.heartbeat_s is not None and self.deadband is None:
            raise ValueError(f"point {self.name!r}: heartbeat_s needs a deadband (report by exception)")
        end = self.address + self.count
        if end > 65536:
            raise ValueError(f"point {self.name!r}: address {self.address} + {self.count} runs past 65535")
        return self

    @property
    def count(self) -> int:
        """Registers (or bits, for coils and discrete inputs) this point occupies."""
        if self.table in BIT_TABLES:
            return 1
        return register_count(self.datatype, self.length)


class SerialSettings(StrictModel):
    """The serial line of an RTU source."""

    port: str = Field(min_length=1, description="device path, such as /dev/ttyUSB0")
    baudrate: int = Field(default=19200, gt=0)
    bytesize: Literal[7, 8] = 8
    parity: Literal["N", "E", "O"] = "E"
    stopbits: Literal[1, 2] = 1


class ModbusSourceConfig(SourceConfigBase):
    type: Literal["modbus"]
    transport: Transport = "tcp"
    host: str | None = Field(default=None, min_length=1)
    port: int = Field(default=502, ge=1, le=65535)
    serial: SerialSettings | None = None
    unit_id: int = Field(default=1, ge=0, le=255)
    poll_interval_ms: float = Field(default=1000.0, gt=0)
    timeout_s: float = Field(default=3.0, gt=0)
    inter_frame_delay_ms: float = Field(
        default=0.0, ge=0, description="quiet time after each serial reply before the next request"
    )
    late_reply_wait_ms: float = Field(
        default=200.0, ge=0, description="serial lines: how long to wait for a late reply after a timeout"
    )
    max_registers_per_request: int = Field(default=MAX_REGISTERS_PER_READ, ge=1, le=MAX_REGISTERS_PER_READ)
    max_bits_per_request: int = Field(default=MAX_BITS_PER_READ, ge=1, le=MAX_BITS_PER_READ)
    max_gap: int = Field(default=16, ge=0, description="unused addresses one request may read across")
    illegal_address_retry_s: float = Field(default=300.0, gt=0)
    points: list[ModbusPoint] = Field(min_length=1)

    @model_validator(mode="after")
    def _check_source(self) -> ModbusSourceConfig:
        if self.transport == "rtu":
            if self.serial is None:
                raise ValueError("transport 'rtu' needs a [serial] table with at least port")
        elif self.host is None:
            raise ValueError(f"transport {self.transport!r} needs host")

        seen: set[str] = set()
        for point in self.points:
            if point.name in seen:
                raise ValueError(f"point name {point.name!r} is used twice; names must be unique per source")
            seen.add(point.name)
            if point.count > self.max_registers_per_request:
                raise ValueError(
                    f"point {point.name!r} needs {point.count} registers but max_registers_per_request "
                    f"is {self.max_registers_per_request}"
                )
        return self

    def unit_of(self, point: ModbusPoint) -> int:
        return self.unit_id if point.unit_id is None else point.unit_id

    def interval_of(self, point: ModbusPoint) -> float:
        """Poll interval of a point in milliseconds."""
        return self.poll_interval_ms if point.poll_interval_ms is None else point.poll_interval_ms

    def describe(self) -> str:
        where = self.serial.port if self.transport == "rtu" and self.serial else f"{self.host}:{self.port}"
        return f"{self.transport} {where}, {len(self.points)} point(s) every {self.poll_interval_ms:g} ms"
