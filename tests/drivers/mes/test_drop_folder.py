"""The drop folder: complete files only, one durable append per file, processed/ or error/."""

from __future__ import annotations

import asyncio
import codecs
import json
import os
from datetime import UTC, datetime
from pathlib import Path

import pytest

from drivers.mes.config import MesDropConfig
from drivers.mes.drop_folder import DropFolder, FileOutcome, Seen, is_candidate, observe, unique_target
from outbox.store import Outbox
from tests.drivers.mes.conftest import goods_movement, mes_config, production_confirmation, run_source
from tests.drivers.mes.test_file_formats import GERMAN_CSV


class SteppedClock:
    """Monotonic time moved by the test; wall time is real (only used for timestamps)."""

    def __init__(self) -> None:
        self.now_s = 1000.0

    def monotonic(self) -> float:
        return self.now_s

    def now(self) -> datetime:
        return datetime.now(UTC)

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(0)


# -- pure decisions ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("previous", "listing", "now", "ready"),
    [
        ({}, {"a.json": (10, 1)}, 0.0, []),
        ({"a.json": Seen(10, 1, 0.0)}, {"a.json": (10, 1)}, 1.9, []),
        ({"a.json": Seen(10, 1, 0.0)}, {"a.json": (10, 1)}, 2.0, ["a.json"]),
        ({"a.json": Seen(10, 1, 0.0)}, {"a.json": (20, 1)}, 5.0, []),
        ({"a.json": Seen(10, 1, 0.0)}, {"a.json": (10, 2)}, 5.0, []),
        (
            {"b.json": Seen(1, 5, 0.0), "a.json": Seen(1, 9, 0.0)},
            {"a.json": (1, 9), "b.json": (1, 5)},
            3.0,
            ["b.json", "a.json"],
        ),
    ],
)
def test_observe_reports_files_still_for_settle_time(
    previous: dict[str, Seen], listing: dict[str, tuple[int, int]], now: float, ready: list[str]
) -> None:
    current, found = observe(previous, listing, now, settle_s=2.0)

    assert found == ready
    assert set(current) == set(listing)


def test_observe_forgets_vanished_files() -> None:
    current, _ = observe({"gone.json": Seen(1, 1, 0.0)}, {}, 10.0, settle_s=2.0)

    assert current == {}


def test_observe_with_zero_settle_is_ready_at_once() -> None:
    assert observe({}, {"a.json": (1, 1)}, 0.0, settle_s=0.0)[1] == ["a.json"]


@pytest.mark.parametrize(
    ("name", "candidate"),
    [
        ("gm.csv", True),
        ("gm.csv.tmp", False),
        ("gm.csv.TMP", False),
        ("gm.csv.part", False),
        ("gm.csv~", False),
        (".gm.csv.x7Yq", False),
        ("gm.json", True),
    ],
)
def test_is_candidate_skips_temporary_and_hidden(name: str, candidate: bool) -> None:
    assert is_candidate(name, [".tmp", ".part", "~"]) is candidate


@pytest.mark.parametrize(
    ("taken", "name", "expected"),
    [
        (set(), "a.json", "a.json"),
        ({"a.json"}, "a.json", "a-1.json"),
        ({"a.json", "a-1.json"}, "a.json", "a-2.json"),
        ({"a.json", "a.json.error.txt"}, "a.json", "a-1.json"),
        ({"a.json.error.txt"}, "a.json", "a.json"),
        ({"README"}, "README", "README-1"),
        ({".hidden"}, ".hidden", ".hidden-1"),
    ],
)
def test_unique_target_never_overwrites(taken: set[str], name: str, expected: str) -> None:
    assert unique_target(taken, name) == expected


# -- against a real outbox --------------------------------------------------------------------


@pytest.fixture
async def outbox(tmp_path: Path):
    async with Outbox(tmp_path / "outbox.sqlite") as opened:
        yield opened


def make_drop(tmp_path: Path, outbox: Outbox, clock: SteppedClock, **changes: object) -> DropFolder:
    data: dict[str, object] = {
        "folder": str(tmp_path / "drop"),
        "settle_s": 2.0,
        "legacy_encoding": "cp1252",
        "csv": [
            {
                "pattern": "gm_*.csv",
                "type": "goods_movement",
                "delimiter": ";",
                "decimal_separator": ",",
                "columns": {
                    "Buchung": "transaction_id",
                    "Material": "material",
                    "Charge": "batch",
                    "Menge": "quantity",
                    "Einheit": "unit",
                    "BWA": "movement_type",
                    "Von": "from_location",
                    "Nach": "to_location",
                    "Buchungszeit": "posted_at",
                },
            }
        ],
    }
    data.update(changes)
    return DropFolder(MesDropConfig.model_validate(data), "mes-line1", outbox, clock)


async def settle_and_scan(drop: DropFolder, clock: SteppedClock) -> list[tuple[str, FileOutcome]]:
    await drop.scan_once()
    clock.now_s += 2.5
    return await drop.scan_once()


def listing(folder: Path) -> list[str]:
    return sorted(path.name for path in folder.iterdir()) if folder.exists() else []


def json_file(*transactions: dict) -> bytes:
    return json.dumps(list(transactions)).encode()


async def test_half_written_file_waits_until_still(tmp_path: Path, outbox: Outbox) -> None:
    clock = SteppedClock()
    drop = make_drop(tmp_path, outbox, clock)
    await drop.prepare()
    path = drop.folder / "batch.jsonl"
    first = json.dumps(goods_movement("GM-1")) + "\n"
    second = json.dumps(goods_movement("GM-2")) + "\n"

    path.write_text(first)
    assert await drop.scan_once() == []
    clock.now_s += 1.5
    with path.open("a") as file:
        file.write(second[:20])
    assert await drop.scan_once() == []
    clock.now_s += 1.5
    assert await drop.scan_once() == []
    with path.open("a") as file:
        file.write(second[20:])
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 1_000_000))
    assert await drop.scan_once() == []
    clock.now_s += 2.5
    outcomes = await drop.scan_once()

    assert outcomes == [("batch.jsonl", FileOutcome.PROCESSED)]
    assert outbox.depth() == 2
    assert listing(drop.folder / "processed") == ["batch.jsonl"]


async def test_temporary_suffix_is_read_only_after_rename(tmp_path: Path, outbox: Outbox) -> None:
    clock = SteppedClock()
    drop = make_drop(tmp_path, outbox, clock)
    await drop.prepare()
    temporary = drop.folder / "batch.json.part"
    temporary.write_bytes(json_file(goods_movement("GM-1")))

    assert await settle_and_scan(drop, clock) == []
    assert outbox.depth() == 0
    temporary.rename(drop.folder / "batch.json")
    assert await settle_and_scan(drop, clock) == [("batch.json", FileOutcome.PROCESSED)]
    assert outbox.depth() == 1


async def test_duplicate_file_is_moved_without_new_records(tmp_path: Path, outbox: Outbox) -> None:
    clock = SteppedClock()
    drop = make_drop(tmp_path, outbox, clock)
    await drop.prepare()
    content = json_file(goods_movement("GM-1"), production_confirmation("PC-1"))

    (drop.folder / "batch.json").write_bytes(content)
    await settle_and_scan(drop, clock)
    (drop.folder / "batch.json").write_bytes(content)
    outcomes = await settle_and_scan(drop, clock)

    assert outcomes == [("batch.json", FileOutcome.PROCESSED)]
    assert outbox.depth() == 2
    assert listing(drop.folder / "processed") == ["batch-1.json", "batch.json"]
    assert drop.counters.transactions_duplicate == 2


async def test_file_left_by_crash_moved_once(tmp_path: Path, outbox: Outbox) -> None:
    clock = SteppedClock()
    drop = make_drop(tmp_path, outbox, clock)
    await drop.prepare()
    path = drop.folder / "batch.json"
    path.write_bytes(json_file(goods_movement("GM-1"), goods_movement("GM-2")))
    # The state a crash between the commit and the move leaves: records stored, file in place.
    stored = await drop.process(path)
    (drop.folder / "processed" / "batch.json").rename(path)

    restarted = make_drop(tmp_path, outbox, clock)
    outcomes = await settle_and_scan(restarted, clock)

    assert stored is FileOutcome.PROCESSED
    assert outcomes == [("batch.json", FileOutcome.PROCESSED)]
    assert outbox.depth() == 2
    assert restarted.counters.transactions_created == 0


async def test_utf8_with_byte_order_mark_is_read(tmp_path: Path, outbox: Outbox) -> None:
    clock = SteppedClock()
    drop = make_drop(tmp_path, outbox, clock)
    await drop.prepare()
    content = json.dumps([goods_movement("GM-BOM", material="Stäbe")], ensure_ascii=False).encode()
    (drop.folder / "bom.json").write_bytes(codecs.BOM_UTF8 + content)

    assert await settle_and_scan(drop, clock) == [("bom.json", FileOutcome.PROCESSED)]
    (stored,) = await outbox.next_batch(10, 1 << 20)
    assert stored.record.payload["material"] == "Stäbe"


async def test_windows_1252_csv_with_umlauts_and_decimal_commas(tmp_path: Path, outbox: Outbox) -> None:
    clock = SteppedClock()
    drop = make_drop(tmp_path, outbox, clock)
    await drop.prepare()
    (drop.folder / "gm_0302.csv").write_bytes(GERMAN_CSV.encode("cp1252"))

    assert await settle_and_scan(drop, clock) == [("gm_0302.csv", FileOutcome.PROCESSED)]
    payloads = [stored.record.payload for stored in await outbox.next_batch(10, 1 << 20)]
    assert [(p["material"], p["quantity"]) for p in payloads] == [
        ("Schraube Ø5 Größe M", "1.5"),
        ("Mutter", "1234.125"),
    ]


async def test_bad_middle_line_rejects_file(tmp_path: Path, outbox: Outbox) -> None:
    clock = SteppedClock()
    drop = make_drop(tmp_path, outbox, clock)
    await drop.prepare()
    lines = [json.dumps(goods_movement(f"GM-{n}")) for n in range(5)]
    lines[2] = json.dumps(goods_movement("GM-2", posted_at="2026-03-02 07:15"))
    bad = drop.folder / "a_bad.jsonl"
    bad.write_text("\n".join(lines) + "\n")
    good = drop.folder / "b_good.json"
    good.write_bytes(json_file(goods_movement("GM-9")))
    os.utime(good, ns=(bad.stat().st_mtime_ns + 1, bad.stat().st_mtime_ns + 1))

    outcomes = await settle_and_scan(drop, clock)

    assert outcomes == [("a_bad.jsonl", FileOutcome.REJECTED), ("b_good.json", FileOutcome.PROCESSED)]
    assert outbox.depth() == 1
    assert listing(drop.folder / "error") == ["a_bad.jsonl", "a_bad.jsonl.error.txt"]
    report = (drop.folder / "error" / "a_bad.jsonl.error.txt").read_text()
    assert "line 3, item 2, field posted_at:" in report
    assert "nothing of this file was stored" in report


async def test_undecodable_file_goes_to_error_with_reason(tmp_path: Path, outbox: Outbox) -> None:
    clock = SteppedClock()
    drop = make_drop(tmp_path, outbox, clock, legacy_encoding=None)
    await drop.prepare()
    (drop.folder / "gm_x.csv").write_bytes(GERMAN_CSV.encode("cp1252"))

    assert await settle_and_scan(drop, clock) == [("gm_x.csv", FileOutcome.REJECTED)]
    report = (drop.folder / "error" / "gm_x.csv.error.txt").read_text()
    assert "cannot decode as UTF-8" in report
    assert "legacy_encoding" in report


async def test_file_too_large_goes_to_error(tmp_path: Path, outbox: Outbox) -> None:
    clock = SteppedClock()
    drop = make_drop(tmp_path, outbox, clock, max_file_bytes=100)
    await drop.prepare()
    (drop.folder / "big.json").write_bytes(json_file(goods_movement("GM-1"), goods_movement("GM-2")))

    assert await settle_and_scan(drop, clock) == [("big.json", FileOutcome.REJECTED)]
    assert "max_file_bytes" in (drop.folder / "error" / "big.json.error.txt").read_text()


async def test_full_outbox_leaves_the_file_for_later(tmp_path: Path) -> None:
    clock = SteppedClock()
    async with Outbox(tmp_path / "outbox.sqlite", max_bytes=300) as full:
        drop = make_drop(tmp_path, full, clock)
        await drop.prepare()
        (drop.folder / "batch.json").write_bytes(json_file(goods_movement("GM-1")))

        first = await settle_and_scan(drop, clock)
        again = await drop.scan_once()

    assert first == [("batch.json", FileOutcome.RETRY)]
    assert again == [("batch.json", FileOutcome.RETRY)]
    assert listing(drop.folder) == ["batch.json", "error", "processed"]
    assert "outbox full" in (drop.last_error or "")


async def test_source_watches_folder_and_reports_counts(tmp_path: Path) -> None:
    config = mes_config(tmp_path, http=False, drop={})
    async with run_source(config, tmp_path / "outbox.sqlite") as running:
        folder = tmp_path / "drop"
        for _ in range(100):
            if (folder / "processed").exists():
                break
            await asyncio.sleep(0.05)
        (folder / "batch.json").write_bytes(json_file(goods_movement("GM-1")))
        for _ in range(200):
            if listing(folder / "processed"):
                break
            await asyncio.sleep(0.05)
        snapshot = running.source.status.snapshot()
        depth = running.outbox.depth()

    assert listing(folder / "processed") == ["batch.json"]
    assert depth == 1
    assert snapshot["state"] == "connected"
    assert snapshot["drop_files_processed"] == 1
