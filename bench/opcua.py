"""Benchmark the OPC UA source: CPU per 1,000 value changes against a bare asyncua client.

An asyncua server in its own process contains `--items` Double variables and changes every one of
them once per second. Two clients, each in its own process, subscribe to all of them for
`--seconds`, one after the other, `--rounds` times:

- baseline: a bare asyncua client (iterator mode) that takes each notification and discards it;
- agent: `OpcUaSource` storing every change as a record in a real `Outbox` (SQLite, WAL,
  synchronous=FULL) in a temporary folder.

Each client reports its process CPU time (user + system) and the value changes it received; the
result is CPU seconds per 1,000 changes for each, and their ratio. The subscription set-up
(browse, create monitored items) is excluded: the clock starts once the first changes arrive.

Run: `python bench/opcua.py` (add `--help` for sizes).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from asyncua import Client, Server, ua

NAMESPACE = "urn:plantgate:bench"


def cpu_seconds() -> float:
    """CPU time of this process, user and system, in seconds."""
    return time.process_time()


# -- server ----------------------------------------------------------------------------------


async def serve(port: int, items: int) -> None:
    server = Server()
    await server.init()
    server.set_endpoint(f"opc.tcp://127.0.0.1:{port}")
    index = await server.register_namespace(NAMESPACE)
    folder = await server.nodes.objects.add_folder(ua.NodeId("Bench", index), "Bench")
    node_ids = []
    for number in range(items):
        node = await folder.add_variable(ua.NodeId(f"Bench.V{number}", index), f"V{number}", 0.0)
        node_ids.append(node.nodeid)
    await server.start()
    print(f"READY {server.bserver.port}", flush=True)

    tick = 0
    while True:
        started = time.monotonic()
        tick += 1
        now = datetime.now(UTC)
        for number, node_id in enumerate(node_ids):
            value = ua.DataValue(ua.Variant(float(tick * 1000 + number), ua.VariantType.Double))
            value.SourceTimestamp = value.ServerTimestamp = now
            await server.write_attribute_value(node_id, value)
        await asyncio.sleep(max(0.0, 1.0 - (time.monotonic() - started)))


# -- clients ---------------------------------------------------------------------------------


def node_ids(items: int) -> list[str]:
    return [f"nsu={NAMESPACE};s=Bench.V{number}" for number in range(items)]


async def bare_client(endpoint: str, items: int, seconds: float) -> dict[str, float]:
    client = Client(endpoint, timeout=30)
    await client.connect()
    try:
        index = await client.get_namespace_index(NAMESPACE)
        nodes = [client.get_node(ua.NodeId(f"Bench.V{number}", index)) for number in range(items)]
        subscription = await client.create_subscription(1000, None, queue_maxsize=100_000)
        for start in range(0, items, 1000):
            await subscription.subscribe_data_change(nodes[start : start + 1000], sampling_interval=1000)
        await subscription.next_event()  # the first change: set-up is over
        changes = 0
        cpu_start, deadline = cpu_seconds(), time.monotonic() + seconds
        while time.monotonic() < deadline:
            event = await subscription.next_event(timeout=deadline - time.monotonic())
            if event is not None:
                changes += 1
        cpu = cpu_seconds() - cpu_start
    finally:
        await client.disconnect()
    return {"changes": changes, "cpu_s": cpu}


async def agent_client(endpoint: str, items: int, seconds: float, folder: Path) -> dict[str, float]:
    from drivers.opcua.config import OpcUaSourceConfig
    from drivers.opcua.source import OpcUaSource
    from outbox.store import Outbox

    config = OpcUaSourceConfig.model_validate(
        {
            "type": "opcua",
            "name": "bench",
            "endpoint": endpoint,
            "timeout_s": 30,
            "sampling_interval_ms": 1000,
            "publishing_interval_ms": 1000,
            "nodes": [{"node_id": node_id} for node_id in node_ids(items)],
        }
    )
    source = OpcUaSource(config)
    async with Outbox(folder / "outbox.sqlite", max_bytes=8 * 1024**3) as outbox:
        task = asyncio.create_task(source.run(outbox))
        while source.status.records_captured == 0:
            await asyncio.sleep(0.05)
        changes_start = source.status.records_captured
        cpu_start = cpu_seconds()
        await asyncio.sleep(seconds)
        changes = source.status.records_captured - changes_start
        cpu = cpu_seconds() - cpu_start
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            pass
    return {"changes": changes, "cpu_s": cpu}


def run_child(kind: str, endpoint: str, items: int, seconds: float, folder: Path) -> dict[str, float]:
    command = [sys.executable, __file__, "--child", kind, "--endpoint", endpoint]
    command += ["--items", str(items), "--seconds", str(seconds), "--dir", str(folder)]
    result = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


# -- main ------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=5000, help="monitored items, each changing once per second")
    parser.add_argument("--seconds", type=float, default=20.0, help="measured seconds per client and round")
    parser.add_argument("--rounds", type=int, default=3, help="rounds, alternating the clients (median)")
    parser.add_argument("--dir", type=Path, default=Path.cwd(), help="folder for the temporary outbox")
    parser.add_argument("--child", choices=["bare", "agent"], help=argparse.SUPPRESS)
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--endpoint", help=argparse.SUPPRESS)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("asyncua").setLevel(logging.ERROR)

    if args.serve is not None:
        asyncio.run(serve(args.serve, args.items))
        return
    if args.child == "bare":
        print(json.dumps(asyncio.run(bare_client(args.endpoint, args.items, args.seconds))))
        return
    if args.child == "agent":
        with tempfile.TemporaryDirectory(dir=args.dir, prefix="bench-opcua-") as scratch:
            print(json.dumps(asyncio.run(agent_client(args.endpoint, args.items, args.seconds, Path(scratch)))))
        return

    server = subprocess.Popen(
        [sys.executable, __file__, "--serve", "0", "--items", str(args.items)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert server.stdout is not None
        line = server.stdout.readline()
        if not line.startswith("READY"):
            raise SystemExit(f"benchmark server did not start: {line!r}")
        endpoint = f"opc.tcp://127.0.0.1:{line.split()[1]}"
        results: dict[str, list[dict[str, Any]]] = {"bare": [], "agent": []}
        for round_number in range(args.rounds):
            for kind in ("bare", "agent"):
                print(f"round {round_number + 1}: {kind} client, {args.seconds:g} s", file=sys.stderr)
                results[kind].append(run_child(kind, endpoint, args.items, args.seconds, args.dir))
    finally:
        server.terminate()
        server.wait()

    per_thousand = {
        kind: statistics.median(1000 * run["cpu_s"] / max(run["changes"], 1) for run in runs)
        for kind, runs in results.items()
    }
    print(f"machine: {platform.machine()}, python {platform.python_version()}, items {args.items}")
    for kind, runs in results.items():
        detail = ", ".join(f"{run['changes']} changes / {run['cpu_s']:.2f} s CPU" for run in runs)
        print(f"  {kind:<6} {per_thousand[kind] * 1000:8.1f} ms CPU per 1,000 changes  ({detail})")
    print(f"  ratio agent / bare client: {per_thousand['agent'] / per_thousand['bare']:.2f}")


if __name__ == "__main__":
    main()
