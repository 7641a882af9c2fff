"""`plantgate opcua browse`, `plantgate opcua trust` and `plantgate sample`, run as subprocesses."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

from drivers.opcua.security import PkiPaths, ensure_application_certificate, thumbprint
from drivers.opcua.simulator import OpcUaSimulator
from tests.conftest import REPO_ROOT


async def plantgate(*args: str) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "agent",
        *args,
        cwd=REPO_ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return process.returncode, stdout.decode(), stderr.decode()


def write_config(path: Path, endpoint: str, extra: str = "") -> Path:
    path.write_text(
        f"""
[agent]
site = "plant1"
gateway_id = "gw1"

[outbox]
path = "outbox.sqlite"

[central]
url = "http://127.0.0.1:9/ingest"

[[sources]]
type = "opcua"
name = "line1"
endpoint = "{endpoint}"
timeout_s = 5
nodes = [
    {{ node_id = "nsu=urn:plantgate:demo;s=Line1.Speed", name = "speed" }},
    {{ browse_path = "Line1/Running", namespace = "urn:plantgate:demo", name = "running" }},
    {{ node_id = "ns=2;s=Line1.Missing", name = "missing" }},
]
{extra}
"""
    )
    return path


async def test_browse_lists_nodes_with_uri_ids():
    async with OpcUaSimulator(update_interval_s=0) as server:
        code, out, err = await plantgate("opcua", "browse", server.endpoint, "--depth", "2")

    assert code == 0, err
    lines = out.splitlines()
    line = next(line for line in lines if "Line1.Temperature" in line)
    assert "2:Temperature" in line
    assert "Double" in line
    assert "nsu=urn:plantgate:demo;s=Line1.Temperature" in line
    assert "= 21.5" in line
    assert not any("ServerStatus" in line for line in lines)


async def test_browse_toml_output_is_a_nodes_list():
    async with OpcUaSimulator(update_interval_s=0) as server:
        code, out, _ = await plantgate(
            "opcua", "browse", server.endpoint, "--node", "nsu=urn:plantgate:demo;s=Line1", "--toml"
        )

    assert code == 0
    assert '    { node_id = "nsu=urn:plantgate:demo;s=Line1.Speed", name = "Speed" },  # Int32' in out.splitlines()


async def test_browse_unreachable_endpoint_fails_clearly(tmp_path):
    from tests.conftest import free_port

    code, _, err = await plantgate("opcua", "browse", f"opc.tcp://127.0.0.1:{free_port()}", "--timeout", "2")

    assert code == 1
    assert "plantgate opcua browse: opc.tcp://127.0.0.1:" in err


async def test_trust_moves_rejected_certificate(tmp_path):
    pki = PkiPaths(tmp_path / "pki")
    server = PkiPaths(tmp_path / "server")
    ensure_application_certificate(server, "urn:test:server")
    pki.rejected.mkdir(parents=True)
    rejected = pki.rejected / f"{thumbprint(server.certificate.read_bytes())}.der"
    rejected.write_bytes(server.certificate.read_bytes())

    code, out, err = await plantgate("opcua", "trust", str(rejected), "--pki-dir", str(pki.root))

    assert code == 0, err
    assert (pki.trusted / rejected.name).read_bytes() == server.certificate.read_bytes()
    assert not rejected.exists()
    assert "trusted:" in out


async def test_trust_rejects_a_non_certificate(tmp_path):
    junk = tmp_path / "junk.der"
    junk.write_bytes(b"not a certificate")

    code, _, err = await plantgate("opcua", "trust", str(junk), "--pki-dir", str(tmp_path / "pki"))

    assert code == 1
    assert "is not a certificate" in err


async def test_sample_prints_records_and_stores_nothing(tmp_path):
    async with OpcUaSimulator(update_interval_s=0) as server:
        config = write_config(tmp_path / "plantgate.toml", server.endpoint)
        code, out, err = await plantgate("sample", "--config", str(config), "--json")

    assert code == 0, err
    records = [json.loads(line) for line in out.splitlines()]
    by_subject = {record["subject"]: record for record in records}
    assert by_subject["speed"]["payload"]["value"] == 1200
    assert by_subject["running"]["payload"]["value"] is True
    assert by_subject["speed"]["lane"] == "telemetry"
    assert by_subject["missing"]["quality"] == "bad"
    assert by_subject["missing"]["payload"]["status"] == "BadNodeIdUnknown"
    assert not (tmp_path / "outbox.sqlite").exists()


async def test_sample_reads_opcua_and_modbus_alike(tmp_path):
    from drivers.modbus.simulator import ModbusSimulator

    async with OpcUaSimulator(update_interval_s=0) as server, ModbusSimulator() as meter:
        modbus = f"""
[[sources]]
type = "modbus"
name = "meter"
host = "127.0.0.1"
port = {meter.port}
unit_id = 1
points = [{{ name = "status", table = "input", address = 0, datatype = "uint16" }}]
"""
        config = write_config(tmp_path / "plantgate.toml", server.endpoint, modbus)
        code, out, err = await plantgate("sample", "--config", str(config))

    assert code == 0, err
    assert "line1 (opcua): 3 record(s)" in out
    assert "meter (modbus): 1 record(s)" in out


async def test_sample_reports_unreachable_source(tmp_path):
    from tests.conftest import free_port

    config = write_config(tmp_path / "plantgate.toml", f"opc.tcp://127.0.0.1:{free_port()}")

    code, _, err = await plantgate("sample", "--config", str(config))

    assert code == 1
    assert "line1: failed:" in err
