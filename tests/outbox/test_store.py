"""The outbox as producers and the forwarder use it: group commit, duplicates, order, budget, reopen."""

from __future__ import annotations

import asyncio
import hashlib
import sqlite3
from pathlib import Path

import pytest

from outbox.errors import OutboxFull, OutboxUnavailable, SchemaTooNew
from outbox.records import Lane
from outbox.schema import SCHEMA_VERSION
from outbox.store import Outbox
from tests.outbox.conftest import make_record, make_records


def file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def table_count(path: Path, table: str) -> int:
    with sqlite3.connect(path) as connection:
        return int(connection.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0])


async def test_concurrent_appends_share_commits(outbox: Outbox) -> None:
    calls = [outbox.append([make_record(number=index)]) for index in range(50)]

    results = await asyncio.gather(*calls)

    assert results == [[True]] * 50
    assert outbox.depth() == 50
    assert outbox.commits < 50


async def test_duplicate_id_in_one_call_is_stored_once(outbox: Outbox, outbox_path: Path) -> None:
    record = make_record(number=1)

    assert await outbox.append([record, record]) == [True, False]
    assert outbox.depth() == 1
    assert table_count(outbox_path, "records") == 1


async def test_duplicate_id_across_calls_is_stored_once(outbox: Outbox) -> None:
    record = make_record(number=1, lane=Lane.TRANSACTION)

    assert await outbox.append([record]) == [True]
    assert await outbox.append([record, make_record(number=2, lane=Lane.TRANSACTION)]) == [False, True]
    assert outbox.depth() == 2


async def test_duplicate_ids_in_one_group_commit(outbox: Outbox) -> None:
    record = make_record(number=7)

    results = await asyncio.gather(*(outbox.append([record]) for _ in range(5)))

    assert sorted(flag for (flag,) in results) == [False, False, False, False, True]
    assert outbox.depth() == 1


async def test_transaction_id_is_recognised_after_delivery(outbox: Outbox) -> None:
    record = make_record(number=3, lane=Lane.TRANSACTION)
    await outbox.append([record])
    batch = await outbox.next_batch(10, 1_000_000)

    await outbox.acknowledge([stored.seq for stored in batch])

    assert await outbox.lookup(record.id) == "forwarded"
    assert await outbox.append([record]) == [False]
    assert outbox.depth() == 0


async def test_telemetry_id_is_not_remembered_after_delivery(outbox: Outbox) -> None:
    # Telemetry ids are not kept after delivery, to keep the file small; a re-read value is sent
    # again and the receiver drops it by id.
    record = make_record(number=3)
    await outbox.append([record])
    await outbox.acknowledge([stored.seq for stored in await outbox.next_batch(10, 1_000_000)])

    assert await outbox.lookup(record.id) is None
    assert await outbox.append([record]) == [True]


async def test_id_is_recognised_after_dead_letter(outbox: Outbox, outbox_path: Path) -> None:
    record = make_record(number=4, lane=Lane.EVENT)
    await outbox.append([record])
    (stored,) = await outbox.next_batch(10, 1_000_000)

    await outbox.dead_letter([stored.seq], 422, "field 'qty' is not a number")

    assert await outbox.lookup(record.id) == "dead-lettered"
    assert await outbox.append([record]) == [False]
    assert outbox.depth() == 0
    assert (await outbox.stats()).dead_letters == 1
    with sqlite3.connect(outbox_path) as connection:
        row = connection.execute("SELECT status, reason, attempts FROM dead_letters").fetchone()
    assert row == (422, "field 'qty' is not a number", 0)


async def test_unknown_id_lookup_returns_none(outbox: Outbox) -> None:
    assert await outbox.lookup("no-such-id") is None


async def test_batch_is_in_lane_then_capture_order(outbox: Outbox) -> None:
    appended = [
        make_record(number=1, lane=Lane.TELEMETRY),
        make_record(number=2, lane=Lane.EVENT),
        make_record(number=3, lane=Lane.TRANSACTION),
        make_record(number=4, lane=Lane.TELEMETRY),
        make_record(number=5, lane=Lane.TRANSACTION),
        make_record(number=6, lane=Lane.EVENT),
    ]
    for record in appended:
        await outbox.append([record])

    batch = await outbox.next_batch(100, 1_000_000)

    assert [(stored.record.lane, stored.record.subject) for stored in batch] == [
        (Lane.TRANSACTION, "item-3"),
        (Lane.TRANSACTION, "item-5"),
        (Lane.EVENT, "item-2"),
        (Lane.EVENT, "item-6"),
        (Lane.TELEMETRY, "item-1"),
        (Lane.TELEMETRY, "item-4"),
    ]


async def test_batch_respects_limits_but_returns_one_oversized(outbox: Outbox) -> None:
    await outbox.append(make_records(10, payload_bytes=1000))

    assert len(await outbox.next_batch(3, 1_000_000)) == 3
    assert len(await outbox.next_batch(100, 10)) == 1
    assert len(await outbox.next_batch(100, 2500)) == 2


async def test_stored_record_reads_back_unchanged(outbox: Outbox) -> None:
    record = make_record(number=9, lane=Lane.EVENT, payload_bytes=5)
    await outbox.append([record])

    (stored,) = await outbox.next_batch(10, 1_000_000)

    assert stored.record == record
    assert stored.record.payload_json == record.payload_json
    assert stored.size == record.size
    assert stored.attempts == 0


async def test_count_attempt_is_stored(outbox: Outbox) -> None:
    await outbox.append([make_record(number=1)])
    (stored,) = await outbox.next_batch(10, 1_000_000)

    await outbox.count_attempt([stored.seq])
    await outbox.count_attempt([stored.seq])

    assert (await outbox.next_batch(10, 1_000_000))[0].attempts == 2


async def test_budget_sheds_oldest_telemetry_counted_per_source(outbox_path: Path) -> None:
    one = make_record(payload_bytes=900).size
    async with Outbox(outbox_path, max_bytes=10 * one, telemetry_share=0.5) as outbox:
        await outbox.append(make_records(4, source="press-1", payload_bytes=900))
        await outbox.append(make_records(4, source="press-2", payload_bytes=900))

        stats = await outbox.stats()
        kept = [stored.record.source for stored in await outbox.next_batch(100, 10**9)]

    assert stats.shed_records == 3
    assert stats.shed_by_source == {"press-1": 3}
    assert stats.shed_bytes == 3 * one
    assert stats.depth["telemetry"] == 5
    assert kept == ["press-1"] + ["press-2"] * 4
    assert table_count(outbox_path, "records") == 5


async def test_budget_sheds_incoming_telemetry_beyond_share(outbox_path: Path) -> None:
    one = make_record(payload_bytes=900).size
    async with Outbox(outbox_path, max_bytes=10 * one, telemetry_share=0.3) as outbox:
        flags = await outbox.append(make_records(5, source="press-1", payload_bytes=900))
        stats = await outbox.stats()
        kept = [stored.record.subject for stored in await outbox.next_batch(100, 10**9)]

    # Shed incoming records still count as handled: they are counted, not stored.
    assert flags == [True] * 5
    assert stats.shed_by_source == {"press-1": 2}
    assert kept == ["item-2", "item-3", "item-4"]


async def test_transactions_take_room_from_telemetry(outbox_path: Path) -> None:
    one = make_record(payload_bytes=900).size
    async with Outbox(outbox_path, max_bytes=4 * one, telemetry_share=1.0) as outbox:
        await outbox.append(make_records(4, payload_bytes=900))
        await outbox.append(make_records(2, lane=Lane.TRANSACTION, payload_bytes=900))
        stats = await outbox.stats()

    assert stats.depth == {"transaction": 2, "event": 0, "telemetry": 2}
    assert stats.shed_records == 2


async def test_transactions_over_budget_raise_full_and_store_nothing(outbox_path: Path) -> None:
    one = make_record(lane=Lane.TRANSACTION, payload_bytes=900).size
    async with Outbox(outbox_path, max_bytes=3 * one) as outbox:
        await outbox.append(make_records(2, lane=Lane.TRANSACTION, payload_bytes=900))

        with pytest.raises(OutboxFull, match=r"outbox\.max_bytes"):
            await outbox.append(make_records(2, start=10, lane=Lane.TRANSACTION, payload_bytes=900))

        assert outbox.depth() == 2
        assert await outbox.lookup(make_record(number=10, lane=Lane.TRANSACTION).id) is None
    assert table_count(outbox_path, "records") == 2


async def test_full_append_does_not_hide_same_id_in_group(outbox_path: Path) -> None:
    # Two calls in one group commit: the first is refused as too large, the second carries one of
    # its records alone and fits. The refused call must not make that record look already held.
    one = make_record(lane=Lane.TRANSACTION, payload_bytes=900).size
    async with Outbox(outbox_path, max_bytes=2 * one) as outbox:
        too_big = make_records(3, lane=Lane.TRANSACTION, payload_bytes=900)
        first, second = await asyncio.gather(
            outbox.append(too_big), outbox.append([too_big[0]]), return_exceptions=True
        )

        assert isinstance(first, OutboxFull)
        assert second == [True]
        assert outbox.depth() == 1


async def test_reopen_keeps_depth_and_counters(outbox_path: Path) -> None:
    one = make_record(payload_bytes=900).size
    async with Outbox(outbox_path, max_bytes=4 * one, telemetry_share=0.5) as outbox:
        await outbox.append(make_records(4, payload_bytes=900))
        await outbox.append([make_record(number=100, lane=Lane.EVENT)])
        (event,) = [stored for stored in await outbox.next_batch(10, 10**9) if stored.record.lane == Lane.EVENT]
        await outbox.dead_letter([event.seq], 400, "rejected")
        before = (await outbox.stats()).as_dict()

    async with Outbox(outbox_path, max_bytes=4 * one, telemetry_share=0.5) as outbox:
        after = (await outbox.stats()).as_dict()

    for key in (
        "depth",
        "bytes_by_lane",
        "bytes_used",
        "dead_letters",
        "shed_records",
        "shed_bytes",
        "shed_by_source",
    ):
        assert after[key] == before[key], key
    assert after["shed_records"] == 2
    assert after["dead_letters"] == 1


async def test_counters_match_the_file(outbox: Outbox, outbox_path: Path) -> None:
    await outbox.append(make_records(20, payload_bytes=50))
    await outbox.append(make_records(5, lane=Lane.TRANSACTION))
    batch = await outbox.next_batch(7, 10**9)
    await outbox.acknowledge([stored.seq for stored in batch])

    stats = await outbox.stats()

    with sqlite3.connect(outbox_path) as connection:
        by_lane = dict(connection.execute("SELECT lane, SUM(size) FROM records GROUP BY lane").fetchall())
    assert stats.bytes_by_lane == {"transaction": 0, "event": 0, "telemetry": by_lane[int(Lane.TELEMETRY)]}
    assert stats.depth["telemetry"] == 18
    assert table_count(outbox_path, "delivered") == 5


async def test_new_file_has_current_schema_version(outbox: Outbox, outbox_path: Path) -> None:
    with sqlite3.connect(outbox_path) as connection:
        assert connection.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


async def test_newer_schema_is_refused_and_file_left_unchanged(outbox_path: Path) -> None:
    async with Outbox(outbox_path) as outbox:
        await outbox.append([make_record()])
    with sqlite3.connect(outbox_path) as connection:
        connection.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    digest = file_digest(outbox_path)

    with pytest.raises(SchemaTooNew, match=f"schema version {SCHEMA_VERSION + 1}"):
        async with Outbox(outbox_path):
            pass

    assert file_digest(outbox_path) == digest
    assert not list(outbox_path.parent.glob("*.corrupt-*"))


async def test_close_twice_then_append_raises_unavailable(outbox_path: Path) -> None:
    outbox = Outbox(outbox_path)
    await outbox.__aenter__()
    await outbox.append([make_record()])

    await outbox.close()
    await outbox.close()

    with pytest.raises(OutboxUnavailable, match="closed"):
        await outbox.append([make_record(number=2)])


async def test_empty_append_returns_empty(outbox: Outbox) -> None:
    assert await outbox.append([]) == []
    assert outbox.commits == 0


async def test_budget_does_not_shed_records_being_forwarded(outbox_path: Path) -> None:
    one = make_record(payload_bytes=900).size
    async with Outbox(outbox_path, max_bytes=4 * one, telemetry_share=1.0) as outbox:
        await outbox.append(make_records(4, payload_bytes=900))
        in_flight = await outbox.next_batch(2, 10**9)

        await outbox.append(make_records(3, start=10, payload_bytes=900))
        stats = await outbox.stats()
        kept = [stored.record.subject for stored in await outbox.next_batch(100, 10**9)]
        await outbox.acknowledge([stored.seq for stored in in_flight])

    assert [stored.record.subject for stored in in_flight] == ["item-0", "item-1"]
    assert kept == ["item-0", "item-1", "item-10", "item-11", "item-12"]
    assert stats.shed_records == 2
    assert stats.depth["telemetry"] == 5


async def test_acknowledged_after_shed_is_not_counted_as_shed(outbox_path: Path) -> None:
    one = make_record(payload_bytes=900).size
    async with Outbox(outbox_path, max_bytes=4 * one, telemetry_share=1.0) as outbox:
        await outbox.append(make_records(4, payload_bytes=900))
        in_flight = await outbox.next_batch(2, 10**9)
        # The writer may run its shedding before next_batch records the batch as in flight (the
        # reader's snapshot predates the commit); forgetting the batch reproduces that order.
        remembered = outbox._in_flight
        outbox._in_flight = {}
        await outbox.append(make_records(2, start=4, payload_bytes=900))
        shed_before_ack = (await outbox.stats()).shed_by_source
        outbox._in_flight = remembered

        await outbox.acknowledge([stored.seq for stored in in_flight])
        stats = await outbox.stats()

    assert shed_before_ack == {"press-1": 2}
    assert stats.shed_by_source == {"press-1": 0}
    assert stats.shed_records == 0
    assert stats.shed_bytes == 0
    assert stats.depth["telemetry"] == 4
