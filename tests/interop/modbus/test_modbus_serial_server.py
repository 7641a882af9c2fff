"""The Modbus source against a Modbus TCP server nobody here wrote: modbus-serial from npm."""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from drivers.base import SourceState
from drivers.modbus.config import ModbusSourceConfig
from drivers.modbus.source import ModbusSource
from outbox.records import Quality, Record
from outbox.store import Outbox
from tests.drivers.modbus.servers import wait_until
from tests.drivers.modbus.test_source import running

pytestmark = pytest.mark.node

PROJECT = Path(__file__).parent

POINTS = [
    {"name": "int16", "address": 0, "datatype": "int16"},
    {"name": "float32_abcd", "address": "40002", "datatype": "float32"},
    {"name": "uint32_cdab", "address": 3, "datatype": "uint32", "word_order": "little"},
    {"name": "float64", "address": 5, "datatype": "float64", "scale": 2.0},
    {"name": "label", "address": 10, "datatype": "string", "length": 3},
    {"name": "input", "table": "input", "address": 0, "scale": 0.5, "unit": "bar"},
    {"name": "coil3", "address": "00004", "datatype": "bool"},
    {"name": "discrete5", "table": "discrete", "address": 5, "datatype": "bool"},
    {"name": "beyond_map", "address": 100},
]

EXPECTED = {
    "int16": -123,
    "float32_abcd": 12.5,
    "uint32_cdab": 0x11223344,
    "float64": -2469.1356,
    "label": "PG-01",
    "input": 21.0,
    "coil3": True,
    "discrete5": True,
}


def ensure_installed() -> None:
    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.skip("node and npm are needed to run the modbus-serial server")
    if not (PROJECT / "node_modules" / "modbus-serial").is_dir():
        subprocess.run(
            ["npm", "ci", "--no-audit", "--no-fund", "--ignore-scripts"],
            cwd=PROJECT,
            check=True,
            capture_output=True,
            timeout=300,
        )


@contextlib.asynccontextmanager
async def node_server(port: int = 0) -> AsyncIterator[int]:
    """Run server.js until the block ends, then kill it with SIGKILL; yield its port."""
    process = await asyncio.create_subprocess_exec(
        "node", str(PROJECT / "server.js"), str(port), cwd=PROJECT, stdout=asyncio.subprocess.PIPE
    )
    try:
        assert process.stdout is not None
        line = await asyncio.wait_for(process.stdout.readline(), 30)
        assert line, "the modbus-serial server exited before it listened"
        yield int(json.loads(line)["port"])
    finally:
        if process.returncode is None:
            process.kill()
        await process.wait()


def make_config(port: int) -> ModbusSourceConfig:
    return ModbusSourceConfig.model_validate(
        {
            "type": "modbus",
            "name": "node",
            "host": "127.0.0.1",
            "port": port,
            "poll_interval_ms": 200,
            "timeout_s": 1.0,
            "reconnect_initial_s": 0.1,
            "reconnect_max_s": 0.5,
            "points": POINTS,
        }
    )


@pytest.fixture(scope="module")
def npm_project() -> Path:
    ensure_installed()
    return PROJECT


async def test_sample_decodes_modbus_serial_map(npm_project: Path) -> None:
    async with node_server() as port:
        records = {record.subject: record for record in await ModbusSource(make_config(port)).sample()}

    for name, expected in EXPECTED.items():
        assert records[name].quality == Quality.GOOD, records[name].payload
        assert records[name].payload["value"] == pytest.approx(expected), name
    assert records["input"].payload["unit"] == "bar"
    assert records["beyond_map"].quality == Quality.BAD
    assert records["beyond_map"].payload["exception_code"] == 2


async def test_source_resumes_after_server_killed(npm_project: Path, tmp_path: Path) -> None:
    async with Outbox(tmp_path / "outbox.sqlite") as outbox, contextlib.AsyncExitStack() as first_server:
        port = await first_server.enter_async_context(node_server())
        source = ModbusSource(make_config(port))
        async with running(source, outbox):
            await wait_until(lambda: source.status.records_captured >= 3 * len(EXPECTED), 15, "3 polls")

            await first_server.aclose()  # SIGKILL
            await wait_until(lambda: source.status.state == SourceState.DISCONNECTED, 15, "disconnect")
            captured = source.status.records_captured

            async with node_server(port):
                await wait_until(lambda: source.status.state == SourceState.CONNECTED, 15, "reconnect")
                await wait_until(
                    lambda: source.status.records_captured >= captured + 2 * len(EXPECTED), 15, "2 more polls"
                )

        records = [stored.record for stored in await outbox.next_batch(100_000, 1 << 30)]

    by_subject: dict[str, list[Record]] = {}
    for record in records:
        by_subject.setdefault(record.subject, []).append(record)
    for name, expected in EXPECTED.items():
        assert by_subject[name], name
        for record in by_subject[name]:
            assert record.quality == Quality.GOOD
            assert record.payload["value"] == pytest.approx(expected), name
    # The illegal address is reported once, not every poll and not again after the reconnect.
    assert len(by_subject["beyond_map"]) == 1
    assert source.status.connects == 2
