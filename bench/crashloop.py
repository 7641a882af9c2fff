"""Crash loop: kill a process that writes and forwards through the outbox with SIGKILL, many times.

A worker process runs three producers shaped like the agent's sources (OPC UA and Modbus
telemetry in batches, MES transactions one at a time) and a forwarder, all on one outbox. Each
producer writes a line to `ledger.txt` after `append` returned: those records were accepted. The
forwarder writes each batch's ids to `receiver.txt` before it acknowledges them, as an HTTP
receiver would store a batch before its 2xx reply. A kill between the two makes the next worker
send the batch again, as after a real crash.

After a restart a producer continues after its last accepted number and first re-sends the
record it had in hand (an MES client retries a transaction it got no reply for), so the outbox
sees records it may already hold.

The harness kills the worker at random points `--kills` times, restarts it each time, then lets
a last worker drain the outbox and compares the files:

- every accepted transaction is at the receiver (exactly once after de-duplication by id);
- every accepted telemetry record is at the receiver, except at most as many per source as the
  outbox counted as shed by its budget;
- how many raw re-sends the receiver saw.

Run: `python bench/crashloop.py --kills 200` (prints a report; `--json` for a machine-readable one).
Exit code 0 when the comparison holds, 1 when it does not.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from outbox.records import Lane, Quality, Record, record_id
from outbox.store import Outbox

# (source, lane, records per append); the kind of load the agent's sources produce.
SOURCES = [("opcua-press", Lane.TELEMETRY, 10), ("modbus-pump", Lane.TELEMETRY, 4), ("mes", Lane.TRANSACTION, 1)]
BUDGET_BYTES = 200_000
FORWARD_BATCH = 20
READY_LINE = "worker ready"


def make_record(source: str, lane: Lane, number: int) -> Record:
    return Record(
        id=record_id(source, number),
        source=source,
        lane=lane,
        kind="crashloop.sample",
        subject=f"{source}/{number}",
        source_time=None,
        captured_at=datetime.now(UTC),
        quality=Quality.GOOD,
        payload={"n": number, "pad": "x" * 120},
    )


# -- the worker ------------------------------------------------------------------------------


def last_accepted(ledger: Path) -> dict[str, int]:
    """The highest accepted number per source, from the ledger lines `source number id`."""
    highest: dict[str, int] = {}
    if ledger.exists():
        for line in ledger.read_text().splitlines():
            parts = line.split()
            if len(parts) == 3:
                highest[parts[0]] = max(highest.get(parts[0], -1), int(parts[1]))
    return highest


async def worker(folder: Path, drain_only: bool) -> dict[str, Any]:
    ledger_fd = os.open(folder / "ledger.txt", os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    receiver_fd = os.open(folder / "receiver.txt", os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    start_after = last_accepted(folder / "ledger.txt")
    producing = asyncio.Event()
    if not drain_only:
        producing.set()

    async with Outbox(folder / "outbox.sqlite", max_bytes=BUDGET_BYTES, telemetry_share=0.7) as outbox:

        async def produce(source: str, lane: Lane, per_append: int) -> None:
            number = start_after.get(source, -1) + 1
            while True:
                records = [make_record(source, lane, number + offset) for offset in range(per_append)]
                await outbox.append(records)
                lines = "".join(f"{source} {number + offset} {record.id}\n" for offset, record in enumerate(records))
                os.write(ledger_fd, lines.encode())
                number += per_append
                await asyncio.sleep(0.002)

        async def forward() -> None:
            while True:
                batch = await outbox.next_batch(FORWARD_BATCH, 1 << 20)
                if not batch:
                    if not producing.is_set():
                        return
                    await asyncio.sleep(0.01)
                    continue
                os.write(receiver_fd, "".join(f"{stored.record.id}\n" for stored in batch).encode())
                await outbox.acknowledge([stored.seq for stored in batch])
                # Slower than the producers, so a backlog builds and the budget sheds telemetry.
                await asyncio.sleep(0.01)

        print(READY_LINE, flush=True)
        async with asyncio.TaskGroup() as group:
            forwarder = group.create_task(forward())
            if not drain_only:
                for source, lane, per_append in SOURCES:
                    group.create_task(produce(source, lane, per_append))
            else:
                await forwarder
        stats = await outbox.stats()
    return {"shed_by_source": stats.shed_by_source, "depth": stats.depth}


# -- the harness -----------------------------------------------------------------------------


def start_worker(folder: Path, drain_only: bool = False) -> subprocess.Popen[str]:
    command = [sys.executable, __file__, "--worker", str(folder)]
    if drain_only:
        command.append("--drain-only")
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert process.stdout is not None
    line = process.stdout.readline().strip()
    if line != READY_LINE:
        process.kill()
        raise RuntimeError(f"worker did not start: {line!r} {process.stderr.read() if process.stderr else ''}")
    return process


def run(folder: Path, kills: int, seed: int, max_run_s: float) -> dict[str, Any]:
    chooser = random.Random(seed)
    for _ in range(kills):
        process = start_worker(folder)
        time.sleep(chooser.uniform(0.02, max_run_s))
        process.send_signal(signal.SIGKILL)
        process.wait()

    final = start_worker(folder, drain_only=True)
    output, errors = final.communicate(timeout=600)
    if final.returncode != 0:
        raise RuntimeError(f"drain worker failed ({final.returncode}): {errors}")
    outbox_state = json.loads(output.strip().splitlines()[-1])
    return compare(folder, outbox_state, kills)


def compare(folder: Path, outbox_state: dict[str, Any], kills: int) -> dict[str, Any]:
    accepted: dict[str, tuple[str, Lane]] = {}
    lanes = {source: lane for source, lane, _ in SOURCES}
    for line in (folder / "ledger.txt").read_text().splitlines():
        source, _, identifier = line.split()
        accepted[identifier] = (source, lanes[source])
    raw = (folder / "receiver.txt").read_text().split()
    received = set(raw)

    missing = Counter(source for identifier, (source, _) in accepted.items() if identifier not in received)
    missing_transactions = sum(
        1 for identifier, (_, lane) in accepted.items() if lane == Lane.TRANSACTION and identifier not in received
    )
    shed = outbox_state["shed_by_source"]
    unexplained = {
        source: count - shed.get(source, 0)
        for source, count in missing.items()
        if lanes[source] == Lane.TELEMETRY and count > shed.get(source, 0)
    }
    accepted_by_source = Counter(source for source, _ in accepted.values())
    return {
        "kills": kills,
        "accepted_by_source": dict(accepted_by_source),
        "received_unique": len(received),
        "received_raw": len(raw),
        "raw_resends": len(raw) - len(received),
        "missing_transactions": missing_transactions,
        "missing_telemetry_by_source": {
            source: count for source, count in missing.items() if lanes[source] == Lane.TELEMETRY
        },
        "shed_by_source": shed,
        "unexplained_telemetry_gaps": unexplained,
        "left_in_outbox": sum(outbox_state["depth"].values()),
        "ok": missing_transactions == 0 and not unexplained and sum(outbox_state["depth"].values()) == 0,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kills", type=int, default=200, help="how many times to SIGKILL the worker")
    parser.add_argument("--seed", type=int, default=1, help="seed for the kill times")
    parser.add_argument("--max-run-s", type=float, default=0.6, help="maximum seconds a worker runs before its kill")
    parser.add_argument("--dir", type=Path, help="keep the files in this folder (default: a temporary one)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--drain-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker:
        print(json.dumps(asyncio.run(worker(args.worker, args.drain_only))), flush=True)
        return 0

    with tempfile.TemporaryDirectory(prefix="crashloop-") as scratch:
        folder = args.dir or Path(scratch)
        folder.mkdir(parents=True, exist_ok=True)
        report = run(folder, args.kills, args.seed, args.max_run_s)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        for key, value in report.items():
            print(f"{key}: {value}")
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
