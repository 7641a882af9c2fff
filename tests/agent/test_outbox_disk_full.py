"""The agent as a real process whose outbox is on a small tmpfs that fills up and then gets space back.

The agent must stay up and ready, show the condition in /status and /metrics, shed and count
telemetry while no commit is possible, answer the MES with 503 and Retry-After, and recover
by itself. Needs permission to mount a
tmpfs; skipped otherwise.
"""

from __future__ import annotations

import asyncio
import errno
import json
import os
import signal
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from agent.receiver import Receiver
from drivers.mes.intake import transaction_record_id
from drivers.modbus.simulator import ModbusSimulator
from tests.conftest import REPO_ROOT, free_port, plantgate_command

CONFIG = """
[agent]
site = "plant1"
gateway_id = "gw-full"

[outbox]
path = "{outbox}"

[central]
url = "{central}"
timeout_s = 2
retry_initial_s = 0.2
retry_max_s = 0.5
idle_poll_s = 0.1

[health]
port = 0

[logging]
format = "json"

[[sources]]
type = "modbus"
name = "line1-meter"
host = "127.0.0.1"
port = {modbus}
poll_interval_ms = 50
points = [
    {{ name = "temperature", address = 0, datatype = "int16" }},
    {{ name = "counter", address = 3, datatype = "uint32" }},
]

[[sources]]
type = "mes"
name = "mes-line1"

[sources.http]
port = {mes_port}
token_file = "{mes_token}"
retry_after_s = 5
"""
MES_TOKEN = "disk-full-token"


def goods_movement(transaction_id: str) -> dict:
    return {
        "type": "goods_movement",
        "transaction_id": transaction_id,
        "material": "RM-4711",
        "quantity": "12.500",
        "unit": "KG",
        "movement_type": "261",
        "from_location": "WH01",
        "to_location": "LINE1",
        "posted_at": "2026-03-02T07:15:00+01:00",
    }


@pytest.fixture
def small_filesystem(tmp_path: Path) -> Iterator[Path]:
    mount_point = tmp_path / "small"
    mount_point.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mount_point)], capture_output=True, text=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({mounted.stderr.strip()}); needs root with CAP_SYS_ADMIN")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


def fill_with_ballast(folder: Path) -> Path:
    ballast = folder / "ballast"
    fd = os.open(ballast, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    try:
        for size in (65536, 4096, 1):
            try:
                while True:
                    os.write(fd, b"\0" * size)
            except OSError as error:
                assert error.errno == errno.ENOSPC
    finally:
        os.close(fd)
    return ballast


def health_port(log: Path) -> int | None:
    for line in log.read_text().splitlines():
        if '"health_port"' in line:
            port = json.loads(line).get("health_port")
            if port:
                return int(port)
    return None


async def wait_for(condition, limit_s: float, what: str):  # type: ignore[no-untyped-def]
    async with asyncio.timeout(limit_s):
        while True:
            value = await condition()
            if value:
                return value
            await asyncio.sleep(0.1)
    raise AssertionError(what)


async def test_agent_survives_full_disk_and_recovers(small_filesystem: Path, tmp_path: Path) -> None:
    outbox = small_filesystem / "outbox.sqlite"
    log = tmp_path / "agent.log"
    async with (
        ModbusSimulator(port=0, step_s=0.05) as modbus,
        Receiver(tmp_path / "receiver.sqlite") as receiver,
        aiohttp.ClientSession() as http,
    ):
        config = tmp_path / "plantgate.toml"
        mes_port = free_port()
        (tmp_path / "mes.token").write_text(MES_TOKEN + "\n")
        config.write_text(
            CONFIG.format(
                outbox=outbox,
                central=receiver.url,
                modbus=modbus.port,
                mes_port=mes_port,
                mes_token=tmp_path / "mes.token",
            )
        )
        mes_url = f"http://127.0.0.1:{mes_port}/v1/transactions"
        mes_headers = {"Authorization": f"Bearer {MES_TOKEN}"}

        async def post(transaction_id: str) -> tuple[int, str | None]:
            async with http.post(mes_url, json=goods_movement(transaction_id), headers=mes_headers) as reply:
                await reply.read()
                return reply.status, reply.headers.get("Retry-After")

        agent = subprocess.Popen(
            plantgate_command("run", "--config", str(config)), cwd=REPO_ROOT, stderr=log.open("ab")
        )
        try:

            async def port() -> int | None:
                return health_port(log)

            base = f"http://127.0.0.1:{await wait_for(port, 60, 'agent ready')}"

            async def status() -> dict:
                async with http.get(f"{base}/status") as reply:
                    return await reply.json()

            async def outbox_state(predicate):  # type: ignore[no-untyped-def]
                document = await status()
                return document if predicate(document["outbox"]) else None

            # Keep the records in the outbox, so each commit needs new pages.
            await receiver.go_down()
            await wait_for(lambda: outbox_state(lambda o: o["depth"]["telemetry"] > 20), 30, "capture starts")
            ballast = fill_with_ballast(small_filesystem)

            during = await wait_for(
                lambda: outbox_state(lambda o: o["condition"] == "disk-full" and o["shed_on_storage_error"] > 10),
                60,
                "the outbox reports the full disk and sheds telemetry",
            )
            async with http.get(f"{base}/metrics") as reply:
                metrics = await reply.text()
            async with http.get(f"{base}/readyz") as reply:
                ready_while_full = reply.status
            refused = await post("GM-FULL-1")

            ballast.unlink()
            await receiver.come_up()
            after = await wait_for(
                lambda: outbox_state(lambda o: o["condition"] is None and o["depth"]["telemetry"] == 0),
                60,
                "the outbox commits again and drains",
            )
            accepted = await post("GM-FULL-1")
            await wait_for(
                lambda: outbox_state(lambda o: o["depth"]["transaction"] == 0), 60, "the transaction is forwarded"
            )
            agent.send_signal(signal.SIGTERM)
            exit_code = agent.wait(30)
            events = receiver.events()
        finally:
            if agent.poll() is None:
                agent.kill()

    assert exit_code == 0, log.read_text()[-2000:]
    assert ready_while_full == 200
    transaction_id = transaction_record_id("mes-line1", "GM-FULL-1")
    assert refused == (503, "5")
    assert accepted[0] == 201
    assert transaction_id in {event.id for event in events}
    assert "disk is full" in during["outbox"]["last_error"]
    assert during["outbox"]["shed_by_source"]["line1-meter"] >= during["outbox"]["shed_on_storage_error"]
    assert "plantgate_outbox_error 1.0" in metrics
    assert after["outbox"]["shed_on_storage_error"] >= during["outbox"]["shed_on_storage_error"]
    assert "outbox commit failed (disk-full)" in log.read_text()
    with sqlite3.connect(outbox) as connection:
        assert connection.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
