"""The outbox when the gateway clock jumps, and records captured before the clock was set."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from pathlib import Path

from outbox.clock import SystemClock
from outbox.records import Lane
from outbox.store import Outbox
from tests.outbox.conftest import make_record


class JumpingClock(SystemClock):
    """The real clock, except that wall time is moved by `offset`, as `date -s` would."""

    def __init__(self) -> None:
        self.offset = timedelta()

    def now(self) -> datetime:
        return super().now() + self.offset


async def test_clock_jumps_keep_captured_times_and_order(outbox_path: Path) -> None:
    clock = JumpingClock()
    captured = []
    async with Outbox(outbox_path, clock=clock) as outbox:
        for number, jump_hours in enumerate([0, -5, +9, -30, 0]):
            clock.offset += timedelta(hours=jump_hours)
            record = make_record(number=number, captured_at=clock.now())
            captured.append(record.captured_at)
            await outbox.append([record])
        batch = await outbox.next_batch(10, 10**9)

    assert [stored.record.captured_at for stored in batch] == captured
    assert [stored.record.subject for stored in batch] == [f"item-{number}" for number in range(5)]


async def test_clock_jump_forward_does_not_prune_delivered_ids(outbox_path: Path) -> None:
    # Pruning of delivered ids is paced by monotonic time, so a wall clock that jumps past the
    # retention period does not make a re-captured transaction look new.
    clock = JumpingClock()
    record = make_record(number=1, lane=Lane.TRANSACTION)
    async with Outbox(outbox_path, clock=clock, delivered_retention=timedelta(days=7)) as outbox:
        await outbox.append([record])
        await outbox.acknowledge([stored.seq for stored in await outbox.next_batch(10, 10**9)])

        clock.offset = timedelta(days=30)
        flags = await outbox.append([record, make_record(number=2, lane=Lane.TRANSACTION)])

        assert flags == [False, True]
        assert await outbox.lookup(record.id) == "forwarded"


async def test_record_from_unset_clock_is_flagged_and_counted(outbox: Outbox, caplog: logging.LogRecordHandler) -> None:
    unset = make_record(number=1, captured_at=datetime(1970, 1, 1, 0, 4, tzinfo=UTC))
    also_unset = make_record(number=2, captured_at=datetime(1970, 1, 1, 0, 5, tzinfo=UTC))
    normal = make_record(number=3)

    with caplog.at_level(logging.WARNING, logger="outbox"):
        await outbox.append([unset, also_unset, normal])
    batch = await outbox.next_batch(10, 10**9)
    stats = await outbox.stats()

    assert [stored.record.captured_before_clock_set for stored in batch] == [True, True, False]
    assert batch[0].record.captured_at == datetime(1970, 1, 1, 0, 4, tzinfo=UTC)
    assert stats.clock_unset_records == 2
    warnings = [entry for entry in caplog.records if "before the gateway clock was set" in entry.getMessage()]
    assert len(warnings) == 1
    assert "press-1" in warnings[0].getMessage()


def test_clock_set_boundary() -> None:
    assert make_record(captured_at=datetime(2019, 12, 31, 23, 59, 59, tzinfo=UTC)).captured_before_clock_set
    assert not make_record(captured_at=datetime(2020, 1, 1, tzinfo=UTC)).captured_before_clock_set
    assert make_record(captured_at=datetime(1970, 1, 1)).captured_before_clock_set
