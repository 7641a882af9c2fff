"""Modbus configuration: address notation, datatypes and messages through the real loader."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.config import load_config
from agent.config_errors import ConfigError

HEADER = """
[agent]
site = "plant1"
gateway_id = "gw1"

[central]
url = "http://127.0.0.1:9/ingest"

[[sources]]
type = "modbus"
name = "press"
host = "127.0.0.1"
"""


def load(tmp_path: Path, text: str):
    path = tmp_path / "plantgate.toml"
    path.write_text(HEADER + text)
    return load_config(path)


def problems(tmp_path: Path, text: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, text)
    return caught.value.problems


def test_config_reports_datatype_typo(tmp_path: Path) -> None:
    found = problems(tmp_path, '[[sources.points]]\nname = "t"\naddress = 0\ndatatype = "flaot32"\n')
    assert len(found) == 1
    assert found[0].startswith(
        "sources[0].points[0].datatype: 'flaot32' is not one of int16, uint16, int32, uint32, float32"
    )


def test_config_keeps_original_key_names(tmp_path: Path) -> None:
    settings = load(
        tmp_path,
        "port = 1502\nunit_id = 3\npoll_interval_ms = 250\n"
        '[[sources.points]]\nname = "t"\ntable = "input"\naddress = 7\ndatatype = "int16"\n'
        'scale = 0.1\noffset = -5\nunit = "C"\n',
    )
    source = settings.sources[0]
    point = source.points[0]
    assert (source.port, source.unit_id, source.poll_interval_ms) == (1502, 3, 250)
    assert (point.table, point.address, point.datatype, point.scale, point.offset, point.unit) == (
        "input",
        7,
        "int16",
        0.1,
        -5,
        "C",
    )


@pytest.mark.parametrize(
    ("reference", "table", "address"),
    [
        ("40001", "holding", 0),
        ("40010", "holding", 9),
        ("30001", "input", 0),
        ("10005", "discrete", 4),
        ("00001", "coil", 0),
        ("465536", "holding", 65535),
        ("300100", "input", 99),
    ],
)
def test_config_accepts_reference_notation(tmp_path: Path, reference: str, table: str, address: int) -> None:
    datatype = "bool" if table in ("coil", "discrete") else "uint16"
    settings = load(tmp_path, f'[[sources.points]]\nname = "p"\naddress = "{reference}"\ndatatype = "{datatype}"\n')
    point = settings.sources[0].points[0]
    assert (point.table, point.address) == (table, address)


def test_config_bare_integer_is_zero_based(tmp_path: Path) -> None:
    # 40001 unquoted is register 40001 of the holding table, not the first register.
    settings = load(tmp_path, '[[sources.points]]\nname = "p"\naddress = 40001\n')
    point = settings.sources[0].points[0]
    assert (point.table, point.address) == ("holding", 40001)


@pytest.mark.parametrize(
    ("address", "table", "fragment"),
    [
        ('"40000"', None, "references start at 1"),
        ('"20001"', None, "is not a reference of the form"),
        ('"4001"', None, "is not a reference of the form"),
        ('"40001"', "input", "is in the holding table but table is 'input'"),
    ],
)
def test_config_rejects_bad_reference(tmp_path: Path, address: str, table: str | None, fragment: str) -> None:
    table_line = f'table = "{table}"\n' if table else ""
    found = problems(tmp_path, f'[[sources.points]]\nname = "p"\naddress = {address}\n{table_line}')
    assert len(found) == 1
    assert found[0].startswith("sources[0].points[0]")
    assert fragment in found[0]


@pytest.mark.parametrize(
    ("lines", "fragment"),
    [
        ('table = "coil"\ndatatype = "uint16"', "datatype must be 'bool'"),
        ('datatype = "string"', "needs length"),
        ('datatype = "uint16"\nbit = 3', "bit is only for datatype 'bool'"),
        ("heartbeat_s = 10", "heartbeat_s needs a deadband"),
        ('address = 65535\ndatatype = "uint32"', "runs past 65535"),
    ],
)
def test_config_rejects_inconsistent_point(tmp_path: Path, lines: str, fragment: str) -> None:
    text = f'[[sources.points]]\nname = "p"\n{lines}\n'
    if "address" not in lines:
        text += "address = 0\n"
    found = problems(tmp_path, text)
    assert any(fragment in problem for problem in found), found


def test_config_rtu_needs_serial_port(tmp_path: Path) -> None:
    found = problems(tmp_path, 'transport = "rtu"\n[[sources.points]]\nname = "p"\naddress = 0\n')
    assert any("needs a [serial] table" in problem for problem in found), found


def test_config_rejects_duplicate_point_name(tmp_path: Path) -> None:
    found = problems(
        tmp_path, '[[sources.points]]\nname = "p"\naddress = 0\n[[sources.points]]\nname = "p"\naddress = 1\n'
    )
    assert any("'p' is used twice" in problem for problem in found), found
