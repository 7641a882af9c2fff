"""The OPC UA source against node-opcua, an OPC UA server written outside this project."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import shutil
import signal
import subprocess
import sys
from asyncio.subprocess import Process
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from drivers.base import SourceState
from drivers.opcua.security import PkiPaths
from drivers.opcua.source import OpcUaSource
from outbox.records import Lane, Quality
from outbox.store import Outbox
from tests.conftest import free_port
from tests.drivers.opcua.conftest import running, source_config, stored_records, wait_for

pytestmark = pytest.mark.node

PROJECT = Path(__file__).resolve().parent
NODES = [
    {"node_id": "nsu=urn:plantgate:interop;s=Line2.Temperature", "name": "Line2.Temperature"},
    {"node_id": "nsu=urn:plantgate:interop;s=Line2.Counter", "name": "Line2.Counter"},
    {"browse_path": "Line2/Label", "namespace": "urn:plantgate:interop", "name": "Line2.Label"},
]


@pytest.fixture(scope="module")
def node_project() -> Path:
    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.skip("node and npm are needed to run the node-opcua server; install Node.js 18 or later")
    if not (PROJECT / "node_modules" / "node-opcua").is_dir():
        subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=PROJECT, check=True, timeout=600)
    return PROJECT


@contextlib.asynccontextmanager
async def node_opcua_server(
    project: Path, pki_dir: Path, *, secure: bool, processes: list[Process] | None = None
) -> AsyncIterator[str]:
    """Run the node-opcua server and yield its endpoint; `processes` receives its process."""
    port = free_port()
    arguments = ["node", "server.js", str(port), str(pki_dir)] + (["--secure"] if secure else [])
    process = await asyncio.create_subprocess_exec(
        *arguments, cwd=project, stdout=asyncio.subprocess.PIPE, stderr=sys.stderr
    )
    if processes is not None:
        processes.append(process)
    try:
        assert process.stdout is not None
        async with asyncio.timeout(60):
            while True:
                line = await process.stdout.readline()
                if not line:
                    raise AssertionError(f"node-opcua server exited with {await process.wait()}")
                if line.startswith(b"READY"):
                    break
        yield f"opc.tcp://127.0.0.1:{port}/interop"
    finally:
        if process.returncode is None:
            process.kill()
        await process.wait()


async def test_source_stores_node_opcua_values(node_project, tmp_path):
    async with node_opcua_server(node_project, tmp_path / "server-pki", secure=False) as endpoint:
        source = OpcUaSource(source_config(endpoint, nodes=NODES))
        async with Outbox(tmp_path / "outbox.sqlite") as outbox, running(source, outbox):
            await wait_for(lambda: _counter_changes(outbox, 3), limit_s=30)
            records = await stored_records(outbox)

    subjects = {record.subject for record in records}
    assert subjects == {"Line2.Temperature", "Line2.Counter", "Line2.Label"}
    counter = [record for record in records if record.subject == "Line2.Counter"]
    assert all(record.quality == Quality.GOOD for record in counter)
    assert all(isinstance(record.payload["value"], int) for record in counter)
    label = next(record for record in records if record.subject == "Line2.Label")
    assert label.payload["value"].startswith("batch-")
    assert label.payload["datatype"] == "String"


async def _counter_changes(outbox, count):
    records = await stored_records(outbox)
    return len([r for r in records if r.subject == "Line2.Counter"]) >= count and {r.subject for r in records} >= {
        "Line2.Label",
        "Line2.Temperature",
    }


async def test_secure_session_after_operator_trusts_certificate(node_project, tmp_path):
    pki = PkiPaths(tmp_path / "agent-pki")
    security = {"policy": "Basic256Sha256", "mode": "SignAndEncrypt", "pki_dir": str(pki.root)}
    async with node_opcua_server(node_project, tmp_path / "server-pki", secure=True) as endpoint:
        source = OpcUaSource(source_config(endpoint, nodes=NODES, security=security))
        async with Outbox(tmp_path / "outbox.sqlite") as outbox, running(source, outbox):
            await wait_for(lambda: source.status.state == SourceState.DISCONNECTED, limit_s=30)
            assert "not trusted" in (source.status.last_error or "")
            rejected = await wait_for(lambda: list(pki.rejected.glob("*.der")))
            assert await stored_records(outbox) == []

            pki.trusted.mkdir(parents=True, exist_ok=True)
            rejected[0].rename(pki.trusted / rejected[0].name)
            await wait_for(lambda: _counter_changes(outbox, 2), limit_s=30)

    assert pki.certificate.exists()
    assert source.status.state == SourceState.STOPPED


async def test_percent_deadband_filters_small_changes(node_project, tmp_path):
    level = "nsu=urn:plantgate:interop;s=Line2.Level"
    nodes = [
        {"node_id": level, "name": "every change"},
        # Another form of the same address, so the records get their own ids.
        {"browse_path": "Line2/Level", "namespace": "urn:plantgate:interop", "name": "5 %"},
    ]
    nodes[1].update({"deadband_type": "percent", "deadband_value": 5.0})
    async with node_opcua_server(node_project, tmp_path / "server-pki", secure=False) as endpoint:
        source = OpcUaSource(source_config(endpoint, nodes=nodes))
        async with Outbox(tmp_path / "outbox.sqlite") as outbox, running(source, outbox):
            await wait_for(lambda: _count(outbox, "every change", 25), limit_s=30)
            records = await stored_records(outbox)

    every = [r.payload["value"] for r in records if r.subject == "every change"]
    filtered = [r.payload["value"] for r in records if r.subject == "5 %"]
    assert len(filtered) >= 2
    assert len(filtered) * 5 < len(every)
    # Each reported value differs from the one before by more than 5 % of the 0-100 range.
    steps = [abs(after - before) for before, after in itertools.pairwise(filtered)]
    assert all(step > 5.0 for step in steps), steps


async def _count(outbox, subject, count):
    return len([r for r in await stored_records(outbox) if r.subject == subject]) >= count


async def test_stopped_server_detected_and_session_rebuilt(node_project, tmp_path):
    processes: list[Process] = []
    async with node_opcua_server(node_project, tmp_path / "server-pki", secure=False, processes=processes) as endpoint:
        config = source_config(endpoint, nodes=NODES, keepalive_count=3, missed_keepalives=3, timeout_s=1.0)
        source = OpcUaSource(config)
        async with Outbox(tmp_path / "outbox.sqlite") as outbox, running(source, outbox):
            await wait_for(lambda: _counter_changes(outbox, 2), limit_s=30)
            # SIGSTOP: the kernel keeps the TCP connection open, but the server sends no response.
            processes[0].send_signal(signal.SIGSTOP)
            await wait_for(lambda: source.status.state == SourceState.DISCONNECTED, limit_s=15)
            before = len(await stored_records(outbox))
            processes[0].send_signal(signal.SIGCONT)
            await wait_for(lambda: source.status.state == SourceState.CONNECTED, limit_s=30)
            await wait_for(lambda: _more_than(outbox, before + 2), limit_s=15)

    assert source.status.connects >= 2


async def _more_than(outbox, count):
    return len(await stored_records(outbox)) > count


async def test_node_opcua_events_in_event_lane(node_project, tmp_path):
    events = [{"name": "line2-events", "fields": ["EventId", "Time", "Message", "Severity", "SourceName"]}]
    async with node_opcua_server(node_project, tmp_path / "server-pki", secure=False) as endpoint:
        source = OpcUaSource(source_config(endpoint, nodes=[], events=events))
        async with Outbox(tmp_path / "outbox.sqlite") as outbox, running(source, outbox):
            await wait_for(lambda: _more_than(outbox, 1), limit_s=30)
            records = await stored_records(outbox)

    record = records[0]
    assert record.lane == Lane.EVENT
    assert record.subject == "line2-events"
    assert record.payload["SourceName"] == "Line2"
    assert record.payload["Severity"] == 300
    assert record.payload["Message"]["text"].startswith("batch ")
    assert record.payload["EventId"]
    assert record.source_time is not None
    assert len({record.id for record in records}) == len(records)
