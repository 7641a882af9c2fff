"""MES source configuration: loaded from TOML, every problem named by its key."""

from __future__ import annotations

import subprocess
import textwrap
from pathlib import Path

import pytest

from agent.config import load_config
from agent.config_errors import ConfigError
from drivers.mes.config import MesSourceConfig
from drivers.registry import build_source
from tests.conftest import REPO_ROOT, plantgate_command

HEAD = """
[agent]
site = "plant1"
gateway_id = "gw-01"

[central]
url = "http://127.0.0.1:9/v1/events"
"""

VALID = """
[[sources]]
type = "mes"
name = "mes-line1"

[sources.http]
port = 0
token_file = "mes.token"

[sources.drop]
folder = "spool/mes"
legacy_encoding = "cp1252"

[[sources.drop.csv]]
pattern = "gm_*.csv"
type = "goods_movement"
delimiter = ";"
decimal_separator = ","
columns = { Menge = "quantity" }
"""


def write(tmp_path: Path, sources: str) -> Path:
    path = tmp_path / "plantgate.toml"
    path.write_text(textwrap.dedent(HEAD) + textwrap.dedent(sources))
    return path


def problems(tmp_path: Path, sources: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, sources))
    return caught.value.problems


def test_mes_source_paths_relative_to_file(tmp_path: Path) -> None:
    settings = load_config(write(tmp_path, VALID))

    (source,) = settings.sources
    assert isinstance(source, MesSourceConfig)
    assert source.http is not None and source.http.token_file == tmp_path / "mes.token"
    assert source.drop is not None and source.drop.folder == tmp_path / "spool" / "mes"
    assert source.drop.csv[0].columns == {"Menge": "quantity"}


def test_registry_builds_the_mes_source(tmp_path: Path) -> None:
    settings = load_config(write(tmp_path, VALID))

    source = build_source(settings.sources[0])

    assert source.type == "mes"
    assert source.name == "mes-line1"


@pytest.mark.parametrize(
    ("sources", "expected"),
    [
        ('[[sources]]\ntype = "mes"\nname = "m"\n', "configure [http], [drop] or both"),
        (
            '[[sources]]\ntype = "mes"\nname = "m"\n[sources.http]\nport = 0\n',
            "sources[0].http.token_file: required key is missing",
        ),
        (
            '[[sources]]\ntype = "mes"\nname = "m"\n[sources.drop]\nfolder = "x"\nlegacy_encoding = "win-1252"\n',
            "sources[0].drop.legacy_encoding: unknown encoding 'win-1252'",
        ),
        (
            '[[sources]]\ntype = "mes"\nname = "m"\n[sources.drop]\nfolder = "x"\n'
            '[[sources.drop.csv]]\ntype = "goods_movement"\ncolumns = { Menge = "menge" }\n',
            "'menge', which is not a field of goods_movement",
        ),
        (
            '[[sources]]\ntype = "mes"\nname = "m"\n[sources.drop]\nfolder = "x"\n'
            '[[sources.drop.csv]]\ntype = "goods_movement"\ndelimiter = ","\ndecimal_separator = ","\n',
            "must differ",
        ),
        (
            '[[sources]]\ntype = "mes"\nname = "m"\n[sources.drop]\nfolder = "x"\n'
            '[[sources.drop.csv]]\ntype = "goods_receipt"\n',
            "sources[0].drop.csv[0].type: 'goods_receipt' is not one of",
        ),
        (
            '[[sources]]\ntype = "mes"\nname = "m"\n[sources.http]\nlisten = "eth0"\ntoken_file = "t"\n',
            "sources[0].http.listen: 'eth0' is not an IP address",
        ),
        (
            '[[sources]]\ntype = "mes"\nname = "m"\n[sources.drop]\nfolder = "x"\nsettle = 3\n',
            "sources[0].drop.settle: unknown key; did you mean 'settle_s'?",
        ),
    ],
)
def test_invalid_mes_config_names_the_key(tmp_path: Path, sources: str, expected: str) -> None:
    found = problems(tmp_path, sources)

    assert any(expected in problem for problem in found), found


def test_check_config_summarises_mes_inputs(tmp_path: Path) -> None:
    path = write(tmp_path, VALID)

    result = subprocess.run(
        plantgate_command("check-config", str(path)),
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert result.returncode == 0, result.stderr
    assert f"mes-line1: mes, HTTP on 127.0.0.1:0, drop folder {tmp_path / 'spool' / 'mes'}" in result.stdout
