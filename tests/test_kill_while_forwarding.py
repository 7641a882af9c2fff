"""The agent as a real process, killed with SIGKILL while it drains a backlog, then started again.

Whatever the outbox held at the moment of the kill must reach the receiver after the restart:
nothing that was stored is lost, and the receiver has no gap.
"""

from __future__ import annotations

import asyncio
import signal
import sqlite3
import subprocess
from pathlib import Path

from agent.receiver import Receiver
from drivers.modbus.simulator import ModbusSimulator
from drivers.opcua.simulator import OpcUaSimulator
from tests.conftest import REPO_ROOT, plantgate_command

CONFIG = """
[agent]
site = "plant1"
gateway_id = "gw-kill"

[outbox]
path = "{outbox}"

[central]
url = "{central}"
timeout_s = 2
batch_max_records = 10
retry_initial_s = 0.2
retry_max_s = 0.5
idle_poll_s = 0.1

[health]
port = 0

[logging]
format = "json"

[[sources]]
type = "opcua"
name = "line1-opcua"
endpoint = "{opcua}"
sampling_interval_ms = 100
publishing_interval_ms = 100
nodes = [{{ node_id = "ns=2;s=Line1.Temperature" }}, {{ node_id = "ns=2;s=Line1.Speed" }}]

[[sources]]
type = "modbus"
name = "line1-meter"
host = "127.0.0.1"
port = {modbus}
poll_interval_ms = 100
points = [
    {{ name = "temperature", address = 0, datatype = "int16" }},
    {{ name = "counter", address = 3, datatype = "uint32" }},
]
"""


def outbox_ids(path: Path) -> set[str]:
    """Ids in the outbox file; empty while the agent has not created its tables yet."""
    connection = sqlite3.connect(path)
    try:
        return {row[0] for row in connection.execute("SELECT id FROM records")}
    except sqlite3.OperationalError as error:
        if "no such table" in str(error):
            return set()
        raise
    finally:
        connection.close()


async def start_agent(config: Path, log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(plantgate_command("run", "--config", str(config)), cwd=REPO_ROOT, stderr=log.open("ab"))


async def wait_until(condition, limit_s: float, what: str) -> None:  # type: ignore[no-untyped-def]
    async with asyncio.timeout(limit_s):
        while not condition():
            await asyncio.sleep(0.05)
    assert condition(), what


async def test_sigkill_while_forwarding_loses_nothing(tmp_path: Path) -> None:
    outbox = tmp_path / "outbox.sqlite"
    log = tmp_path / "agent.log"
    async with (
        OpcUaSimulator(port=0, update_interval_s=0.1) as opcua,
        ModbusSimulator(port=0, step_s=0.1) as modbus,
        Receiver(tmp_path / "receiver.sqlite") as receiver,
    ):
        config = tmp_path / "plantgate.toml"
        config.write_text(CONFIG.format(outbox=outbox, central=receiver.url, opcua=opcua.endpoint, modbus=modbus.port))

        # Build a backlog while the receiver is down, then kill the agent while it drains it.
        await receiver.go_down()
        agent = await start_agent(config, log)
        try:
            await wait_until(lambda: outbox.exists() and len(outbox_ids(outbox)) >= 150, 60, "a backlog builds up")
            # Each reply comes 0.1 s late, so draining 150 records in batches of 10 takes seconds
            # and the kill lands while batches are in flight.
            receiver.stall(0.1)
            await receiver.come_up()
            await wait_until(lambda: receiver.stats().unique_events >= 30, 30, "forwarding has started")
            agent.send_signal(signal.SIGKILL)
            assert agent.wait(10) == -signal.SIGKILL
            receiver.clear_faults()
        finally:
            if agent.poll() is None:
                agent.kill()

        held_at_kill = outbox_ids(outbox)
        received_at_kill = {event.id for event in receiver.events()}
        assert held_at_kill, "the kill came after the backlog had drained; nothing left to prove"

        agent = await start_agent(config, log)
        try:
            await wait_until(
                lambda: held_at_kill <= {event.id for event in receiver.events()}, 60, "the backlog arrives"
            )
            agent.send_signal(signal.SIGTERM)
            exit_code = agent.wait(30)
        finally:
            if agent.poll() is None:
                agent.kill()
        events = receiver.events()
        stats = receiver.stats()

    received = [event.id for event in events]
    assert exit_code == 0, log.read_text()[-2000:]
    assert held_at_kill <= set(received)
    assert received_at_kill <= set(received)
    assert len(received) == len(set(received)) == stats.unique_events
    # Only the batch in flight at the kill may have reached the receiver before its acknowledgement
    # was committed. It is sent again after the restart, and the receiver drops it as duplicates.
    in_flight = held_at_kill & received_at_kill
    assert len(in_flight) <= 10
    assert stats.duplicates >= len(in_flight)
