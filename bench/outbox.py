"""Benchmark the outbox: durable appends per second against two baselines, and drain speed.

Every figure is measured in the same run as its baseline, on the same disk, and printed as a
ratio, so results from different machines compare by ratio rather than by absolute numbers.

- appends: the same records through `Outbox.append` (one producer, and 8 concurrent producers
  sharing group commits), through plain `sqlite3` `executemany` with one transaction per batch
  on the same schema, WAL and `synchronous = FULL`, and through persist-queue's
  `SQLiteAckQueue` (WAL, `synchronous = FULL` by default, one commit per `put`). persist-queue
  has no batch put, so it is also compared with the outbox taking one record per call.
- drain: a backlog read with `next_batch` and removed with `acknowledge`, as the forwarder does
  but without HTTP, in a child process whose peak resident memory is reported.

Run: `python bench/outbox.py` (add `--help` for sizes). The files go to a temporary folder
under `--dir` (default: the system temporary folder), which should be on the disk the agent would
use, not a tmpfs, where a sync costs nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import resource
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from outbox.records import Lane, Quality, Record, record_id, utc_now
from outbox.rows import INSERT_RECORD, row_for
from outbox.schema import migrate
from outbox.store import Outbox


def make_records(count: int, start: int = 0) -> list[Record]:
    """Telemetry records shaped like an OPC UA data change: about 200 bytes each."""
    now = utc_now()
    return [
        Record(
            id=record_id("bench", number),
            source="press-line-1",
            lane=Lane.TELEMETRY,
            kind="opcua.datachange",
            subject=f"ns=2;s=Line1.Press.Temperature{number % 50}",
            source_time=now,
            captured_at=now,
            quality=Quality.GOOD,
            payload={"value": 20.0 + number % 1000 / 10, "status": 0, "datatype": "Double"},
        )
        for number in range(start, start + count)
    ]


def batches(records: list[Record], size: int) -> list[list[Record]]:
    return [records[start : start + size] for start in range(0, len(records), size)]


# -- appends ---------------------------------------------------------------------------------


async def outbox_appends(path: Path, records: list[Record], batch: int, producers: int) -> float:
    """Records per second through Outbox.append, `producers` tasks each appending batches of `batch`."""
    async with Outbox(path, max_bytes=1 << 40) as outbox:
        chunks = batches(records, batch)

        async def produce(share: list[list[Record]]) -> None:
            for chunk in share:
                await outbox.append(chunk)

        started = time.perf_counter()
        async with asyncio.TaskGroup() as group:
            for index in range(producers):
                group.create_task(produce(chunks[index::producers]))
        elapsed = time.perf_counter() - started
        commits = outbox.commits
    print(f"    ({commits} commits for {len(chunks)} calls)", file=sys.stderr)
    return len(records) / elapsed


def sqlite_appends(path: Path, records: list[Record], batch: int) -> float:
    """Records per second through plain sqlite3 executemany, one transaction per batch, same schema and sync."""
    connection = sqlite3.connect(path, isolation_level=None)
    connection.execute("PRAGMA journal_mode = WAL")
    connection.execute("PRAGMA synchronous = FULL")
    migrate(connection, str(path))
    rows = [row_for(record) for record in records]
    started = time.perf_counter()
    for start in range(0, len(rows), batch):
        connection.execute("BEGIN IMMEDIATE")
        connection.executemany(INSERT_RECORD, rows[start : start + batch])
        connection.execute("COMMIT")
    elapsed = time.perf_counter() - started
    connection.close()
    return len(records) / elapsed


def persist_queue_appends(folder: Path, records: list[Record]) -> float:
    """Records per second through persist-queue's SQLiteAckQueue, one put (and commit) per record."""
    from persistqueue import SQLiteAckQueue

    queue = SQLiteAckQueue(str(folder), multithreading=False)
    synchronous = queue._putter.execute("PRAGMA synchronous").fetchone()[0]
    if synchronous != 2:
        raise SystemExit(f"persist-queue connection has synchronous={synchronous}, not FULL (2); not comparable")
    items = [{"id": record.id, "payload": record.payload_json} for record in records]
    started = time.perf_counter()
    for item in items:
        queue.put(item)
    elapsed = time.perf_counter() - started
    return len(records) / elapsed


def run_appends(folder: Path, count: int, batch: int, single_count: int, rounds: int) -> dict[str, float]:
    """Median records per second of each method over `rounds` rounds.

    Each round runs every method once, on fresh files, so a disk that slows down for a while
    (other work on the machine) weighs on all methods alike rather than on one.
    """
    records = make_records(count)
    single = records[:single_count]
    samples: dict[str, list[float]] = {}

    def sample(name: str, rate: float) -> None:
        samples.setdefault(name, []).append(rate)

    for round_number in range(rounds):
        where = folder / f"round-{round_number}"
        where.mkdir()
        print(f"round {round_number + 1}/{rounds}: {count} records in batches of {batch}", file=sys.stderr)
        sample("outbox_batch", asyncio.run(outbox_appends(where / "a1.sqlite", records, batch, producers=1)))
        sample(
            "outbox_batch_8_producers",
            asyncio.run(outbox_appends(where / "a2.sqlite", records, batch, producers=8)),
        )
        sample("sqlite_batch", sqlite_appends(where / "a3.sqlite", records, batch))

        print(f"round {round_number + 1}/{rounds}: {single_count} records one per call", file=sys.stderr)
        sample("outbox_single", asyncio.run(outbox_appends(where / "a4.sqlite", single, 1, producers=1)))
        sample(
            "outbox_single_8_producers",
            asyncio.run(outbox_appends(where / "a5.sqlite", single, 1, producers=8)),
        )
        sample("sqlite_single", sqlite_appends(where / "a6.sqlite", single, 1))
        sample("persist_queue_single", persist_queue_appends(where / "pq", single))
    return {name: statistics.median(rates) for name, rates in samples.items()}


# -- drain -----------------------------------------------------------------------------------


async def fill(path: Path, count: int) -> None:
    async with Outbox(path, max_bytes=1 << 40) as outbox:
        for start in range(0, count, 5000):
            await outbox.append(make_records(min(5000, count - start), start))


async def drain(path: Path, batch_records: int) -> dict[str, float]:
    """Read and acknowledge the whole backlog as the forwarder does, and time it."""
    async with Outbox(path, max_bytes=1 << 40) as outbox:
        total = outbox.depth()
        started = time.perf_counter()
        drained = 0
        while True:
            batch = await outbox.next_batch(batch_records, 1 << 20)
            if not batch:
                break
            await outbox.acknowledge([stored.seq for stored in batch])
            drained += len(batch)
        elapsed = time.perf_counter() - started
    assert drained == total, (drained, total)
    peak_kib = peak_rss_kib()
    return {"records": drained, "records_per_s": drained / elapsed, "seconds": elapsed, "peak_rss_mib": peak_kib / 1024}


async def drain_http(path: Path, url: str, batch_records: int) -> dict[str, float]:
    """Deliver the whole backlog to the receiver at `url` with the agent's Forwarder, and time it."""
    from agent.config import CentralSection
    from agent.forwarder import Forwarder

    central = CentralSection(url=url, batch_max_records=batch_records, idle_poll_s=0.05)
    async with Outbox(path, max_bytes=1 << 40) as outbox:
        total = outbox.depth()
        forwarder = Forwarder(outbox, central, site="bench", gateway_id="gw-1")
        started = time.perf_counter()
        async with asyncio.TaskGroup() as group:
            task = group.create_task(forwarder.run())
            while outbox.depth() > 0:
                await asyncio.sleep(0.05)
            task.cancel()
        elapsed = time.perf_counter() - started
    return {
        "records": total,
        "records_per_s": total / elapsed,
        "seconds": elapsed,
        "peak_rss_mib": peak_rss_kib() / 1024,
    }


def peak_rss_kib() -> int:
    """Peak resident memory of this process. VmHWM, not ru_maxrss: Linux carries ru_maxrss over
    from the parent across fork and exec, so a child would report the bench's own peak."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def run_drain(folder: Path, count: int, batch_records: int, http: bool) -> dict[str, float]:
    """Fill a backlog of `count` records, then drain it in a child process, whose peak memory is
    then the drain's alone: to the stand-in receiver over HTTP with `http`, else read and
    acknowledge only."""
    path = folder / f"drain-{count}.sqlite"
    print(f"drain: filling {count} records", file=sys.stderr)
    asyncio.run(fill(path, count))
    if not http:
        return _drain_child(["--drain-worker", str(path), "--drain-batch", str(batch_records)])

    repo = Path(__file__).resolve().parent.parent
    receiver = subprocess.Popen(
        [sys.executable, "-m", "agent", "receiver", "--port", "0", "--db", str(folder / f"central-{count}.sqlite")],
        cwd=repo,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert receiver.stdout is not None
        line = receiver.stdout.readline()
        url = next(word for word in line.split() if word.startswith("http://"))
        print(f"drain: forwarding to {url}", file=sys.stderr)
        result = _drain_child(["--drain-worker", str(path), "--drain-batch", str(batch_records), "--url", url])
        with urllib.request.urlopen(url.rsplit("/v1/", 1)[0] + "/v1/stats", timeout=30) as reply:
            stored = json.load(reply)
        result["receiver_unique_events"] = stored["unique_events"]
        result["receiver_duplicates"] = stored["duplicates"]
    finally:
        receiver.send_signal(signal.SIGTERM)
        receiver.wait(timeout=30)
    return result


def _drain_child(arguments: list[str]) -> dict[str, float]:
    child = subprocess.run([sys.executable, __file__, *arguments], capture_output=True, text=True, check=False)
    if child.returncode != 0:
        raise SystemExit(f"drain worker failed: {child.stderr[-2000:]}")
    return json.loads(child.stdout)


# -- main ------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--records", type=int, default=100_000, help="records for the batched appends (0 skips the appends)"
    )
    parser.add_argument("--batch", type=int, default=100, help="records per append call and per transaction")
    parser.add_argument("--single", type=int, default=2_000, help="records for the one-per-call comparison")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of the append measurements (median)")
    parser.add_argument("--drain", type=int, default=200_000, help="backlog size for the drain (0 to skip)")
    parser.add_argument("--drain-batch", type=int, default=500, help="records per forwarded batch")
    parser.add_argument(
        "--dir", type=Path, default=None, help="folder for the temporary files (default: the system temporary folder)"
    )
    parser.add_argument(
        "--drain-http",
        type=int,
        default=200_000,
        help="backlog size for the drain to the stand-in receiver over HTTP (0 to skip)",
    )
    parser.add_argument("--drain-worker", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.drain_worker:
        if args.url:
            print(json.dumps(asyncio.run(drain_http(args.drain_worker, args.url, args.drain_batch))))
        else:
            print(json.dumps(asyncio.run(drain(args.drain_worker, args.drain_batch))))
        return

    with tempfile.TemporaryDirectory(dir=args.dir, prefix="bench-outbox-") as scratch:
        folder = Path(scratch)
        appends = run_appends(folder, args.records, args.batch, args.single, args.rounds) if args.records else None
        drained = run_drain(folder, args.drain, args.drain_batch, http=False) if args.drain else None
        forwarded = run_drain(folder, args.drain_http, args.drain_batch, http=True) if args.drain_http else None

    print(
        f"machine: {platform.machine()}, {platform.processor() or 'cpu'}, python {platform.python_version()}, "
        f"sqlite {sqlite3.sqlite_version}, folder on {args.dir or tempfile.gettempdir()}"
    )
    if appends:
        print(f"appends, median of {args.rounds} rounds")
        print(f"appends in batches of {args.batch} ({args.records} records), records/s:")
        print(f"  outbox, 1 producer      {appends['outbox_batch']:>10.0f}")
        print(f"  outbox, 8 producers     {appends['outbox_batch_8_producers']:>10.0f}")
        print(f"  sqlite3 executemany     {appends['sqlite_batch']:>10.0f}")
        print(f"  ratio outbox/sqlite3    {appends['outbox_batch'] / appends['sqlite_batch']:>10.2f}")
        print(f"appends one record per call ({args.single} records), records/s:")
        print(f"  outbox, 1 producer      {appends['outbox_single']:>10.0f}")
        print(f"  outbox, 8 producers     {appends['outbox_single_8_producers']:>10.0f}")
        print(f"  sqlite3, 1 per commit   {appends['sqlite_single']:>10.0f}")
        print(f"  persist-queue AckQueue  {appends['persist_queue_single']:>10.0f}")
        print(
            f"  ratio outbox/persist-queue (1 producer)   {appends['outbox_single'] / appends['persist_queue_single']:.2f}"
        )
        print(
            f"  ratio outbox/persist-queue (8 producers)  "
            f"{appends['outbox_single_8_producers'] / appends['persist_queue_single']:.2f}"
        )
    if forwarded:
        print(
            f"drain of {forwarded['records']:.0f} records to the stand-in receiver over HTTP, batches of "
            f"{args.drain_batch}: {forwarded['records_per_s']:.0f} records/s, "
            f"peak RSS of the outbox + forwarder process {forwarded['peak_rss_mib']:.0f} MiB; "
            f"receiver holds {forwarded['receiver_unique_events']} unique events"
        )
    if drained:
        print(
            f"drain of {drained['records']:.0f} records in batches of {args.drain_batch} (no HTTP): "
            f"{drained['records_per_s']:.0f} records/s, peak RSS {drained['peak_rss_mib']:.0f} MiB"
        )


if __name__ == "__main__":
    main()
