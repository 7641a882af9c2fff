"""Benchmark the agent process: time from start to ready, and its idle memory and CPU.

Starts, in this process and on loopback ports chosen free, the OPC UA and Modbus simulators and
the stand-in receiver, then runs `plantgate run` as a child with config/demo.toml (ports and
outbox path replaced). It reports:

- time from starting the child to the first 200 from `/readyz`;
- after a warm-up, the child's resident memory (VmRSS, and VmHWM, its peak) and its CPU use over
  `--duration` seconds, with the demo's sources polling and the forwarder delivering;
- with `--backlog N`, the time to ready with N records already in the outbox, which includes
  the start-up `PRAGMA quick_check` of the file.

Run: `python bench/footprint.py` (`--help` for options).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent.receiver import Receiver
from drivers.modbus.simulator import ModbusSimulator
from drivers.opcua.simulator import OpcUaSimulator

REPO_ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def demo_config(
    folder: Path, opcua_port: int, modbus_port: int, receiver_url: str, health_port: int, max_bytes: str | None
) -> Path:
    """config/demo.toml with this run's ports, an outbox in `folder` and, if given, its budget."""
    text = (REPO_ROOT / "config" / "demo.toml").read_text()
    replacements = {
        "http://127.0.0.1:18081/v1/events": receiver_url,
        "opc.tcp://127.0.0.1:48401": f"opc.tcp://127.0.0.1:{opcua_port}",
        "port = 15021": f"port = {modbus_port}",
        "port = 18787": f"port = {health_port}",
        '"../demo-data/outbox.sqlite"': f'"{folder / "outbox.sqlite"}"',
    }
    if max_bytes is not None:
        # The demo's 64 MiB budget would shed most of a large backlog at the first append.
        replacements['max_bytes = "64MiB"'] = f'max_bytes = "{max_bytes}"'
    for old, new in replacements.items():
        if old not in text:
            raise SystemExit(f"config/demo.toml no longer contains {old!r}; update bench/footprint.py")
        text = text.replace(old, new)
    path = folder / "plantgate.toml"
    path.write_text(text)
    return path


async def prefill(path: Path, count: int) -> None:
    from datetime import UTC, datetime

    from outbox.records import Lane, Quality, Record, record_id
    from outbox.store import Outbox

    now = datetime.now(UTC)
    async with Outbox(path, max_bytes=1 << 40) as outbox:
        for start in range(0, count, 5000):
            await outbox.append(
                [
                    Record(
                        id=record_id("backlog", number),
                        source="backlog",
                        lane=Lane.TELEMETRY,
                        kind="opcua.datachange",
                        subject=f"ns=2;s=Backlog{number % 50}",
                        source_time=now,
                        captured_at=now,
                        quality=Quality.GOOD,
                        payload={"value": number / 10, "status": 0, "datatype": "Double"},
                    )
                    for number in range(start, min(start + 5000, count))
                ]
            )


def proc_status(pid: int) -> dict[str, int]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            fields[name] = int(value.split()[0])
    return fields


def cpu_seconds(pid: int) -> float:
    # Fields 14 and 15 of /proc/PID/stat: user and system time in clock ticks (proc(5)).
    parts = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(parts[11]) + int(parts[12])) / os.sysconf("SC_CLK_TCK")


async def wait_ready(url: str, process: subprocess.Popen[bytes], timeout_s: float) -> float:
    started = time.perf_counter()
    async with aiohttp.ClientSession() as session:
        while time.perf_counter() - started < timeout_s:
            if process.poll() is not None:
                raise SystemExit(f"plantgate run exited with {process.returncode} before it was ready")
            try:
                async with session.get(url, timeout=aiohttp.ClientTimeout(total=1)) as reply:
                    if reply.status == 200:
                        return time.perf_counter()
            except (aiohttp.ClientError, TimeoutError):
                pass
            await asyncio.sleep(0.01)
    raise SystemExit(f"plantgate run was not ready within {timeout_s} s")


async def measure(
    folder: Path, backlog: int, warmup_s: float, duration_s: float, drain: bool = False
) -> dict[str, float]:
    async with (
        OpcUaSimulator(port=0) as opcua,
        ModbusSimulator(port=0) as modbus,
        Receiver(folder / "central.sqlite", host="127.0.0.1", port=0) as receiver,
    ):
        health_port = free_port()
        config = demo_config(folder, opcua.port, modbus.port, receiver.url, health_port, "16GiB" if backlog else None)
        if backlog:
            await prefill(folder / "outbox.sqlite", backlog)

        started = time.perf_counter()
        process = subprocess.Popen(
            [sys.executable, "-m", "agent", "run", "--config", str(config)],
            cwd=REPO_ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            ready = await wait_ready(f"http://127.0.0.1:{health_port}/readyz", process, 300)
            result = {"ready_s": ready - started}
            if drain:
                # The demo's sources keep capturing meanwhile, so wait for the backlog's own ids.
                drain_started = time.perf_counter()
                while receiver.stats().unique_events < backlog:
                    await asyncio.sleep(0.5)
                result["drain_records_per_s"] = backlog / (time.perf_counter() - drain_started)
                result["drain_peak_rss_mib"] = proc_status(process.pid)["VmHWM"] / 1024
            if duration_s:
                await asyncio.sleep(warmup_s)
                cpu_before = cpu_seconds(process.pid)
                await asyncio.sleep(duration_s)
                cpu_after = cpu_seconds(process.pid)
                memory = proc_status(process.pid)
                result["cpu_percent"] = 100 * (cpu_after - cpu_before) / duration_s
                result["rss_mib"] = memory["VmRSS"] / 1024
                result["peak_rss_mib"] = memory["VmHWM"] / 1024
        finally:
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=60)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--warmup", type=float, default=10.0, help="seconds after ready before measuring")
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of CPU measurement")
    parser.add_argument("--backlog", type=int, default=1_000_000, help="records for the time to ready with a backlog")
    parser.add_argument(
        "--drain", type=int, default=0, help="also time the agent draining a backlog of this many records"
    )
    parser.add_argument("--runs", type=int, default=3, help="starts for the time to ready (median)")
    parser.add_argument(
        "--dir", type=Path, default=None, help="folder for the temporary files (default: the system temporary folder)"
    )
    args = parser.parse_args()

    idle: dict[str, float] = {}
    ready_empty: list[float] = []
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="bench-footprint-") as scratch:
        for run in range(args.runs):
            folder = Path(scratch) / f"run-{run}"
            folder.mkdir()
            duration = args.duration if run == 0 else 0.0
            result = asyncio.run(measure(folder, 0, args.warmup, duration))
            ready_empty.append(result["ready_s"])
            if run == 0:
                idle = result
        ready_backlog = None
        if args.backlog:
            folder = Path(scratch) / "backlog"
            folder.mkdir()
            ready_backlog = asyncio.run(measure(folder, args.backlog, 0, 0))["ready_s"]
        drained = None
        if args.drain:
            folder = Path(scratch) / "drain"
            folder.mkdir()
            drained = asyncio.run(measure(folder, args.drain, 0, 0, drain=True))

    ready_empty.sort()
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, python {platform.python_version()}")
    print(
        f"time from start to ready (/readyz 200), empty outbox: median {ready_empty[len(ready_empty) // 2]:.2f} s "
        f"of {args.runs} starts"
    )
    if ready_backlog is not None:
        print(f"time from start to ready with {args.backlog} records in the outbox: {ready_backlog:.2f} s")
    if "cpu_percent" in idle:
        print(
            f"demo configuration, after {args.warmup:.0f} s warm-up, over {args.duration:.0f} s: "
            f"CPU {idle['cpu_percent']:.1f} % of one core, RSS {idle['rss_mib']:.0f} MiB "
            f"(peak {idle['peak_rss_mib']:.0f} MiB)"
        )

    if drained is not None:
        print(
            f"plantgate run draining {args.drain} records to the stand-in receiver (demo sources running): "
            f"{drained['drain_records_per_s']:.0f} records/s, peak RSS {drained['drain_peak_rss_mib']:.0f} MiB"
        )


if __name__ == "__main__":
    main()
