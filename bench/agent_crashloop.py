"""Crash loop of the whole agent: `plantgate run` with OPC UA, Modbus and MES sources, killed with
SIGKILL at random points, restarted each time, then drained; the receiver is compared with
what the MES got a 2xx for and what the outbox held at every kill.

The OPC UA and Modbus simulators, a simulated MES posting goods movements to the agent's HTTP
API, and the stand-in receiver run in this process, on loopback ports chosen free. The receiver
goes down and comes back at random, so backlogs build up and kills land while capturing, while
forwarding and while retrying. The MES posts one transaction at a time and, like a real MES,
posts it again until it gets an answer. Right after each kill, the ids in the outbox file are
read: those were committed. At the end:

- every transaction the MES got a 2xx for is at the receiver;
- every committed transaction or event is at the receiver;
- every committed telemetry record is at the receiver, except at most as many as the outbox
  counted as shed by its budget;
- the receiver holds each event once; `raw_resends` counts the duplicates it dropped.

Run: `python bench/agent_crashloop.py --kills 200` (`--json` for a machine-readable report).
Exit code 0 when the comparison holds, 1 when it does not.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import random
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent.receiver import Receiver
from drivers.mes.intake import transaction_record_id
from drivers.modbus.simulator import ModbusSimulator
from drivers.opcua.simulator import OpcUaSimulator

REPO_ROOT = Path(__file__).resolve().parent.parent

CONFIG = """
[agent]
site = "plant1"
gateway_id = "gw-crash"

[outbox]
path = "{outbox}"
max_bytes = "{max_bytes}"

[central]
url = "{central}"
timeout_s = 2
batch_max_records = 20
retry_initial_s = 0.1
retry_max_s = 0.3
idle_poll_s = 0.1

[health]
port = 0

[logging]
format = "json"
level = "INFO"

[[sources]]
type = "opcua"
name = "line1-opcua"
endpoint = "{opcua}"
sampling_interval_ms = 50
publishing_interval_ms = 50
nodes = [{{ node_id = "ns=2;s=Line1.Temperature" }}, {{ node_id = "ns=2;s=Line1.Speed" }}]

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
name = "{mes_source}"
reconnect_initial_s = 0.1
reconnect_max_s = 0.5

[sources.http]
port = {mes_port}
token_file = "{mes_token}"
"""
MES_SOURCE = "mes-line1"
MES_TOKEN = "crash-loop-token"


def goods_movement(transaction_id: str) -> dict[str, Any]:
    return {
        "type": "goods_movement",
        "transaction_id": transaction_id,
        "material": "RM-4711",
        "batch": "B2026-0117",
        "quantity": "12.500",
        "unit": "KG",
        "movement_type": "261",
        "from_location": "WH01",
        "to_location": "LINE1",
        "posted_at": "2026-03-02T07:15:00+01:00",
    }


async def post_transactions(url: str, accepted: set[str], stop: asyncio.Event) -> None:
    """Post one transaction at a time until stopped, each again until it gets a 2xx (a 4xx is a bug)."""
    headers = {"Authorization": f"Bearer {MES_TOKEN}"}
    number = 0
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
        while not stop.is_set():
            transaction_id = f"GM-{number}"
            try:
                async with session.post(url, json=goods_movement(transaction_id), headers=headers) as reply:
                    status = reply.status
                    await reply.read()
            except (aiohttp.ClientError, TimeoutError):
                await asyncio.sleep(0.05)
                continue
            if 200 <= status < 300:
                accepted.add(transaction_id)
                number += 1
            elif 400 <= status < 500:
                raise RuntimeError(f"the agent rejected {transaction_id} with {status}")
            await asyncio.sleep(0.02)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def outbox_rows(path: Path) -> dict[str, int]:
    """Id -> lane of every record in the outbox file (none if the file is not there yet)."""
    if not path.exists():
        return {}
    connection = sqlite3.connect(path)
    try:
        return dict(connection.execute("SELECT id, lane FROM records").fetchall())
    except sqlite3.OperationalError:
        return {}
    finally:
        connection.close()


def shed_count(path: Path) -> int:
    connection = sqlite3.connect(path)
    try:
        row = connection.execute("SELECT value FROM counters WHERE name = 'shed_records'").fetchone()
        return int(row[0]) if row else 0
    finally:
        connection.close()


def _count_ready(log: Path) -> int:
    return log.read_text().count('"plantgate ready"') if log.exists() else 0


async def _wait_for_file(path: Path, limit_s: float) -> None:
    async with asyncio.timeout(limit_s):
        while not await asyncio.to_thread(path.exists):
            await asyncio.sleep(0.05)


def start_agent(config: Path, log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "agent", "run", "--config", str(config)], cwd=REPO_ROOT, stderr=log.open("ab")
    )


async def run(
    folder: Path, kills: int, seed: int, max_run_s: float, max_bytes: str, drain_limit_s: float = 300
) -> dict[str, Any]:
    chooser = random.Random(seed)
    outbox = folder / "outbox.sqlite"
    log = folder / "agent.log"
    committed: dict[str, int] = {}
    async with (
        OpcUaSimulator(port=0, update_interval_s=0.05) as opcua,
        ModbusSimulator(port=0, step_s=0.05) as modbus,
        Receiver(folder / "receiver.sqlite") as receiver,
    ):
        config = folder / "plantgate.toml"
        mes_port = free_port()
        mes_token = folder / "mes.token"
        mes_token.write_text(MES_TOKEN + "\n")
        config.write_text(
            CONFIG.format(
                outbox=outbox,
                max_bytes=max_bytes,
                central=receiver.url,
                opcua=opcua.endpoint,
                modbus=modbus.port,
                mes_source=MES_SOURCE,
                mes_port=mes_port,
                mes_token=mes_token,
            )
        )
        accepted: set[str] = set()
        stop_mes = asyncio.Event()
        mes = asyncio.create_task(post_transactions(f"http://127.0.0.1:{mes_port}/v1/transactions", accepted, stop_mes))
        # Start with the receiver down, so the first kill already finds a backlog.
        await receiver.go_down()
        receiver_up = False
        for _ in range(kills):
            if chooser.random() < 0.3:
                if receiver_up:
                    await receiver.go_down()
                else:
                    await receiver.come_up()
                receiver_up = not receiver_up
            agent = start_agent(config, log)
            if chooser.random() < 0.2:
                # Some kills land while the agent starts: opening the outbox, connecting sources.
                await asyncio.sleep(chooser.uniform(0.0, 1.0))
            else:
                await _wait_for_file(outbox, 60)
                await asyncio.sleep(chooser.uniform(0.2, max_run_s))
            agent.send_signal(signal.SIGKILL)
            agent.wait(30)
            committed.update(outbox_rows(outbox))

        if not receiver_up:
            await receiver.come_up()
        readies = _count_ready(log)
        agent = start_agent(config, log)
        try:
            # SIGTERM stops the agent cleanly only once it is ready (its handlers are installed).
            async with asyncio.timeout(120):
                while _count_ready(log) == readies:
                    await asyncio.sleep(0.1)
            stop_mes.set()
            await mes
            wanted = set(committed) | {transaction_record_id(MES_SOURCE, tid) for tid in accepted}
            # The sources keep capturing; wait until everything committed or accepted has arrived.
            async with asyncio.timeout(drain_limit_s):
                while not wanted <= {event.id for event in receiver.events()}:
                    await asyncio.sleep(0.2)
        except TimeoutError:
            pass
        finally:
            agent.send_signal(signal.SIGTERM)
            exit_code = agent.wait(60)
        stats = receiver.stats()
        received = {event.id for event in receiver.events()}

    shed = shed_count(outbox)
    missing_accepted = [tid for tid in accepted if transaction_record_id(MES_SOURCE, tid) not in received]
    missing_priority = [
        identifier for identifier, lane in committed.items() if lane != 2 and identifier not in received
    ]
    missing_telemetry = [
        identifier for identifier, lane in committed.items() if lane == 2 and identifier not in received
    ]
    return {
        "kills": kills,
        "mes_transactions_accepted": len(accepted),
        "missing_accepted_transactions": len(missing_accepted),
        "committed_at_kills": len(committed),
        "received_unique": stats.unique_events,
        "raw_resends": stats.duplicates,
        "missing_transactions_and_events": len(missing_priority),
        "missing_telemetry": len(missing_telemetry),
        "shed_records": shed,
        "last_exit_code": exit_code,
        "ok": not missing_accepted and not missing_priority and len(missing_telemetry) <= shed and exit_code == 0,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kills", type=int, default=200, help="how many times to SIGKILL the agent")
    parser.add_argument("--seed", type=int, default=1, help="seed for kill times and receiver outages")
    parser.add_argument("--max-run-s", type=float, default=3.0, help="maximum seconds the agent runs before its kill")
    parser.add_argument("--max-bytes", default="64MiB", help="outbox.max_bytes (small values make it shed)")
    parser.add_argument("--dir", type=Path, help="keep the files in this folder (default: a temporary one)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args()
    # The simulators' servers log every expired subscription of a killed agent.
    logging.basicConfig(level=logging.ERROR)

    with tempfile.TemporaryDirectory(prefix="agent-crashloop-") as scratch:
        folder = args.dir or Path(scratch)
        folder.mkdir(parents=True, exist_ok=True)
        report = asyncio.run(run(folder, args.kills, args.seed, args.max_run_s, args.max_bytes))
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        for key, value in report.items():
            print(f"{key}: {value}")
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
