"""Decoding of Modbus registers and bits into point values.

Modbus itself only carries 16-bit registers, each sent high byte first (Modbus Application
Protocol 1.1b3, 4.2). Wider values span consecutive registers, and devices disagree on both
the byte order inside a register and the register (word) order, so each point states both:

=========  ===========  ===========  ==================================
order      byte_order   word_order   bytes of 0x11223344 on the wire
=========  ===========  ===========  ==================================
ABCD       big          big          11 22 | 33 44
CDAB       big          little       33 44 | 11 22
BADC       little       big          22 11 | 44 33
DCBA       little       little       44 33 | 22 11
=========  ===========  ===========  ==================================

64-bit values follow the same two rules over four registers.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from decimal import Decimal

BIT_TABLES = frozenset({"coil", "discrete"})

# datatype -> (struct format, registers)
_NUMERIC_FORMATS: dict[str, tuple[str, int]] = {
    "int16": (">h", 1),
    "uint16": (">H", 1),
    "int32": (">i", 2),
    "uint32": (">I", 2),
    "float32": (">f", 2),
    "int64": (">q", 4),
    "uint64": (">Q", 4),
    "float64": (">d", 4),
}


def register_count(datatype: str, length: int | None = None) -> int:
    """Number of 16-bit registers a value of `datatype` occupies (`length` for strings)."""
    if datatype == "bool":
        return 1
    if datatype == "string":
        if length is None:
            raise ValueError("a string needs its length in registers")
        return length
    return _NUMERIC_FORMATS[datatype][1]


def registers_to_bytes(registers: Sequence[int], byte_order: str, word_order: str) -> bytes:
    """Put registers into one big-endian byte string, undoing the device's byte and word order."""
    words = list(registers)
    if word_order == "little":
        words.reverse()
    data = bytearray()
    for word in words:
        high, low = (word >> 8) & 0xFF, word & 0xFF
        data += bytes((low, high)) if byte_order == "little" else bytes((high, low))
    return bytes(data)


def bytes_to_registers(data: bytes, byte_order: str, word_order: str) -> list[int]:
    """Inverse of `registers_to_bytes`: the registers a device with that order would hold."""
    words = []
    for index in range(0, len(data), 2):
        high, low = data[index], data[index + 1]
        if byte_order == "little":
            high, low = low, high
        words.append((high << 8) | low)
    if word_order == "little":
        words.reverse()
    return words


def decode_registers(
    registers: Sequence[int],
    datatype: str,
    *,
    byte_order: str = "big",
    word_order: str = "big",
    bit: int | None = None,
) -> int | float | bool | str:
    """Decode the registers of one point, before scale and offset.

    `registers` must hold exactly `register_count(datatype)` values (ValueError otherwise).
    A bool from a register takes bit `bit` (0 is the least significant bit) and ignores the
    byte order. A string takes its bytes in register order, each register's bytes in
    `byte_order`, and ends at the first NUL byte. Undecodable bytes become U+FFFD.
    """
    if datatype == "bool":
        if len(registers) != 1:
            raise ValueError(f"bool from a register needs 1 register, got {len(registers)}")
        return bool((registers[0] >> (bit or 0)) & 1)

    if datatype == "string":
        data = registers_to_bytes(registers, byte_order, "big")
        return data.split(b"\x00", 1)[0].decode("utf-8", errors="replace")

    fmt, count = _NUMERIC_FORMATS[datatype]
    if len(registers) != count:
        raise ValueError(f"{datatype} needs {count} register(s), got {len(registers)}")
    value: int | float = struct.unpack(fmt, registers_to_bytes(registers, byte_order, word_order))[0]
    return value


def encode_value(
    value: int | float | str,
    datatype: str,
    *,
    byte_order: str = "big",
    word_order: str = "big",
    length: int = 0,
) -> list[int]:
    """Registers that hold `value` in the given order; the inverse of `decode_registers`.

    Used by the simulator and the tests to build device memory.
    """
    if datatype == "string":
        raw = str(value).encode("utf-8")[: length * 2].ljust(length * 2, b"\x00")
        return bytes_to_registers(raw, byte_order, "big")
    fmt, _ = _NUMERIC_FORMATS[datatype]
    return bytes_to_registers(struct.pack(fmt, value), byte_order, word_order)


def apply_scale(value: int | float | bool | str, scale: float, offset: float) -> int | float | bool | str:
    """Engineering value = raw * scale + offset. Integers stay integers when no scaling is set."""
    if isinstance(value, bool | str):
        return value
    if scale == 1.0 and offset == 0.0:
        return value
    if value != value or value in (float("inf"), float("-inf")):
        return value * scale + offset
    # Scale in decimal, then round once to a float: in binary floating point 214 * 0.1 is
    # 21.400000000000002, while the decimal product is 21.4, which is what the engineer configured.
    exact = Decimal(repr(value)) * Decimal(repr(scale)) + Decimal(repr(offset))
    return float(exact)
