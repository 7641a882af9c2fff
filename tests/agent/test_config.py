"""Configuration files: every problem named with its key path and value, through the real CLI."""

from __future__ import annotations

import subprocess
import textwrap
from pathlib import Path

import pytest

from agent.config import load_config
from agent.config_errors import ConfigError
from tests.conftest import REPO_ROOT, plantgate_command

VALID = """
[agent]
site = "plant1"
gateway_id = "gw-01"

[central]
url = "http://127.0.0.1:9/v1/events"

[[sources]]
type = "opcua"
name = "press"
endpoint = "opc.tcp://127.0.0.1:4840"
nodes = [{ node_id = "ns=2;i=2" }]

[[sources]]
type = "modbus"
name = "meter"
host = "127.0.0.1"
points = [
    { name = "a", address = 0, datatype = "int16" },
    { name = "b", address = 1, datatype = "int16" },
    { name = "c", address = 2, datatype = "int16" },
    { name = "d", address = 3, datatype = "float32" },
]
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "plantgate.toml"
    path.write_text(textwrap.dedent(text))
    return path


def problems_of(path: Path) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    return caught.value.problems


def test_check_config_names_path_and_bad_datatype(tmp_path: Path) -> None:
    path = write(tmp_path, VALID.replace('datatype = "float32"', 'datatype = "flaot32"'))

    result = subprocess.run(
        plantgate_command("check-config", str(path)), cwd=REPO_ROOT, capture_output=True, text=True, timeout=60
    )

    assert result.returncode == 2
    assert "sources[1].points[3].datatype: 'flaot32' is not one of int16, uint16" in result.stderr


def test_check_config_valid_file_prints_summary(tmp_path: Path) -> None:
    path = write(tmp_path, VALID)

    result = subprocess.run(
        plantgate_command("check-config", str(path)), cwd=REPO_ROOT, capture_output=True, text=True, timeout=60
    )

    assert result.returncode == 0, result.stderr
    assert "press: opcua" in result.stdout
    assert "meter: modbus" in result.stdout


def test_run_refuses_invalid_file_with_same_message(tmp_path: Path) -> None:
    path = write(tmp_path, VALID.replace('datatype = "float32"', 'datatype = "flaot32"'))

    result = subprocess.run(
        plantgate_command("run", "--config", str(path)), cwd=REPO_ROOT, capture_output=True, text=True, timeout=60
    )

    assert result.returncode == 2
    assert "sources[1].points[3].datatype: 'flaot32' is not one of int16, uint16" in result.stderr


def test_unknown_key_is_an_error_with_suggestion(tmp_path: Path) -> None:
    path = write(tmp_path, VALID.replace('site = "plant1"', 'site = "plant1"\nsiet = "x"'))

    assert problems_of(path) == ["agent.siet: unknown key; did you mean 'site'?"]


def test_unknown_key_in_source_point_is_an_error(tmp_path: Path) -> None:
    path = write(tmp_path, VALID.replace('{ name = "a", address = 0,', '{ name = "a", adress = 0, address = 0,'))

    assert problems_of(path) == ["sources[1].points[0].adress: unknown key; did you mean 'address'?"]


def test_every_problem_is_listed(tmp_path: Path) -> None:
    text = VALID.replace('datatype = "float32"', 'datatype = "flaot32"').replace(
        'endpoint = "opc.tcp://127.0.0.1:4840"', 'endpoint = "http://127.0.0.1:4840"'
    )
    text = text.replace('url = "http://127.0.0.1:9/v1/events"', 'url = "not a url"')

    problems = problems_of(write(tmp_path, text))

    assert len(problems) == 3
    assert any(p.startswith("central.url: 'not a url'") for p in problems)
    assert "sources[0].endpoint: 'http://127.0.0.1:4840' must start with 'opc.tcp://'" in problems


def test_unknown_source_type_names_allowed_types(tmp_path: Path) -> None:
    path = write(tmp_path, VALID.replace('type = "opcua"', 'type = "opcuaa"'))

    (problem,) = problems_of(path)

    assert problem.startswith("sources[0]: type 'opcuaa' is not one of opcua, modbus")


def test_missing_required_section_is_named(tmp_path: Path) -> None:
    path = write(tmp_path, VALID.replace('[central]\nurl = "http://127.0.0.1:9/v1/events"\n', ""))

    assert problems_of(path) == ["central: required section [central] is missing"]


def test_duplicate_source_names_are_rejected(tmp_path: Path) -> None:
    path = write(tmp_path, VALID.replace('name = "meter"', 'name = "press"'))

    (problem,) = problems_of(path)

    assert problem == "sources[1].name: 'press' is used twice; names must be unique"


def test_invalid_toml_names_line(tmp_path: Path) -> None:
    path = write(tmp_path, VALID.replace('site = "plant1"', "site = plant1"))

    (problem,) = problems_of(path)

    assert problem.startswith("invalid TOML:")
    assert "line 3" in problem


def test_missing_file_says_so(tmp_path: Path) -> None:
    (problem,) = problems_of(tmp_path / "absent.toml")

    assert problem.startswith("file not found:")


def test_environment_overrides_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PLANTGATE_CENTRAL__URL", "http://127.0.0.1:8/other")
    monkeypatch.setenv("PLANTGATE_OUTBOX__MAX_BYTES", "2MiB")

    settings = load_config(write(tmp_path, VALID))

    assert str(settings.central.url) == "http://127.0.0.1:8/other"
    assert int(settings.outbox.max_bytes) == 2 * 1024 * 1024


def test_relative_outbox_path_is_taken_from_config_folder(tmp_path: Path) -> None:
    settings = load_config(write(tmp_path, VALID + '\n[outbox]\npath = "data/outbox.sqlite"\n'))

    assert settings.outbox.path == tmp_path / "data" / "outbox.sqlite"


@pytest.mark.parametrize("name", ["plantgate.example.toml", "demo.toml"])
def test_shipped_configs_are_valid(name: str) -> None:
    load_config(REPO_ROOT / "config" / name)


def test_url_without_scheme_says_how_to_write_it(tmp_path: Path) -> None:
    path = write(tmp_path, VALID.replace('url = "http://127.0.0.1:9/v1/events"', 'url = "erp.example.com/v1"'))

    (problem,) = problems_of(path)

    assert (
        problem
        == "central.url: 'erp.example.com/v1' is not a valid URL; write it in full, such as 'https://host:port/path'"
    )


def test_environment_typo_is_an_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PLANTGATE_CENTRL__URL", "http://127.0.0.1:8/other")

    (problem,) = problems_of(write(tmp_path, VALID))

    assert (
        problem
        == "environment variable PLANTGATE_CENTRL__URL: 'centrl' is not a key of top level; did you mean 'central'?"
    )


def test_environment_value_error_names_variable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PLANTGATE_CENTRAL__TIMEOUT_S", "abc")

    (problem,) = problems_of(write(tmp_path, VALID))

    assert problem.startswith("central.timeout_s: 'abc'")
    assert problem.endswith("(from environment variable PLANTGATE_CENTRAL__TIMEOUT_S)")


def test_environment_cannot_set_source_list_items(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PLANTGATE_SOURCES__0__PORT", "1")

    (problem,) = problems_of(write(tmp_path, VALID))

    assert problem.startswith("environment variable PLANTGATE_SOURCES__0__PORT: sources is a list of tables")


def test_check_config_warns_about_missing_files(tmp_path: Path) -> None:
    text = VALID.replace(
        'url = "http://127.0.0.1:9/v1/events"', 'url = "http://127.0.0.1:9/v1/events"\ntoken_file = "absent.token"'
    )
    path = write(tmp_path, text)

    result = subprocess.run(
        plantgate_command("check-config", "--config", str(path)),
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert result.returncode == 0, result.stderr
    assert f"warning: central.token_file: {tmp_path / 'absent.token'} does not exist" in result.stdout


def test_environment_nested_typo_is_reported_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PLANTGATE_CENTRAL__URLL", "http://127.0.0.1:8/other")

    problems = problems_of(write(tmp_path, VALID))

    assert problems == [
        "environment variable PLANTGATE_CENTRAL__URLL: 'urll' is not a key of central; did you mean 'url'?"
    ]
