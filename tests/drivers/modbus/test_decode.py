"""Register decoding: every datatype in every byte and word order, against known wire bytes."""

from __future__ import annotations

import math

import pytest

from drivers.modbus.decode import apply_scale, decode_registers, encode_value, register_count

ORDERS = {
    # name: (byte_order, word_order)
    "ABCD": ("big", "big"),
    "CDAB": ("big", "little"),
    "BADC": ("little", "big"),
    "DCBA": ("little", "little"),
}

# datatype, value, its big-endian bytes (ABCD order)
KNOWN_VALUES = [
    ("int16", -2, bytes.fromhex("fffe")),
    ("int16", 215, bytes.fromhex("00d7")),
    ("uint16", 65535, bytes.fromhex("ffff")),
    ("uint16", 0x1234, bytes.fromhex("1234")),
    ("int32", -123456789, bytes.fromhex("f8a432eb")),
    ("uint32", 0x11223344, bytes.fromhex("11223344")),
    ("uint32", 4294967295, bytes.fromhex("ffffffff")),
    ("float32", 12.5, bytes.fromhex("41480000")),
    ("float32", -0.15625, bytes.fromhex("be200000")),
    ("int64", -2, bytes.fromhex("fffffffffffffffe")),
    ("int64", 0x0102030405060708, bytes.fromhex("0102030405060708")),
    ("uint64", 0x1122334455667788, bytes.fromhex("1122334455667788")),
    ("float64", 1.5, bytes.fromhex("3ff8000000000000")),
    ("float64", -1234.5678, bytes.fromhex("c0934a456d5cfaad")),
]


def wire_registers(big_endian: bytes, byte_order: str, word_order: str) -> list[int]:
    """Registers as a device with the given order holds them, built by hand from the bytes."""
    pairs = [big_endian[index : index + 2] for index in range(0, len(big_endian), 2)]
    if word_order == "little":
        pairs.reverse()
    if byte_order == "little":
        pairs = [pair[::-1] for pair in pairs]
    return [int.from_bytes(pair, "big") for pair in pairs]


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize(("datatype", "value", "big_endian"), KNOWN_VALUES)
def test_decode_every_datatype_in_every_order(order: str, datatype: str, value: float, big_endian: bytes) -> None:
    byte_order, word_order = ORDERS[order]
    registers = wire_registers(big_endian, byte_order, word_order)

    decoded = decode_registers(registers, datatype, byte_order=byte_order, word_order=word_order)

    assert decoded == value
    assert encode_value(value, datatype, byte_order=byte_order, word_order=word_order) == registers


def test_decode_cdab_example_by_hand() -> None:
    # 0x11223344 in CDAB order is the register pair 0x3344, 0x1122.
    assert decode_registers([0x3344, 0x1122], "uint32", word_order="little") == 0x11223344
    # ... and in BADC order 0x2211, 0x4433.
    assert decode_registers([0x2211, 0x4433], "uint32", byte_order="little") == 0x11223344


def test_decode_float32_nan_stays_nan() -> None:
    assert math.isnan(float(decode_registers([0x7FC0, 0x0000], "float32")))


@pytest.mark.parametrize(
    ("register", "bit", "expected"),
    [(0x0001, 0, True), (0x0001, 1, False), (0x8000, 15, True), (0x8000, 14, False), (0x0100, 8, True)],
)
def test_decode_bool_takes_one_bit_of_a_register(register: int, bit: int, expected: bool) -> None:
    assert decode_registers([register], "bool", bit=bit) is expected


@pytest.mark.parametrize(
    ("registers", "byte_order", "expected"),
    [
        ([0x4142, 0x4344], "big", "ABCD"),
        ([0x4241, 0x4443], "little", "ABCD"),
        ([0x4142, 0x4300, 0x0000], "big", "ABC"),
        ([0x4142, 0x0043], "big", "AB"),
    ],
)
def test_decode_string_ends_at_first_nul(registers: list[int], byte_order: str, expected: str) -> None:
    assert decode_registers(registers, "string", byte_order=byte_order) == expected


def test_encode_string_pads_to_length() -> None:
    assert encode_value("AB", "string", length=3) == [0x4142, 0, 0]


def test_decode_rejects_wrong_register_count() -> None:
    with pytest.raises(ValueError, match="float32 needs 2 register"):
        decode_registers([1], "float32")


@pytest.mark.parametrize(
    ("datatype", "length", "expected"),
    [("bool", None, 1), ("int16", None, 1), ("uint32", None, 2), ("float64", None, 4), ("string", 10, 10)],
)
def test_register_count_per_datatype(datatype: str, length: int | None, expected: int) -> None:
    assert register_count(datatype, length) == expected


@pytest.mark.parametrize(
    ("raw", "scale", "offset", "expected"),
    [(215, 0.1, 0.0, 21.5), (100, 1.0, -40.0, 60.0), (7, 1.0, 0.0, 7), (True, 10.0, 1.0, True)],
)
def test_apply_scale_and_offset(raw: int, scale: float, offset: float, expected: float) -> None:
    result = apply_scale(raw, scale, offset)
    assert result == pytest.approx(expected)
    assert type(result) is type(expected)


@pytest.mark.parametrize(
    ("raw", "scale", "offset", "expected"),
    [
        (214, 0.1, 0.0, 21.4),
        (3, 0.1, -0.3, 0.0),
        (2**53, 1.0, 0.5, 9007199254740992.0),
        (123456789012345678, 0.001, 0.0, 123456789012345.678),
    ],
)
def test_scaling_has_no_binary_float_artefacts(raw, scale, offset, expected) -> None:
    assert apply_scale(raw, scale, offset) == expected
