"""Poll slots without drift and the report-by-exception decision."""

from __future__ import annotations

import math
from datetime import UTC, datetime

import pytest

from drivers.modbus.schedule import Reported, SlotClock, should_store


def test_slots_align_to_interval_in_wall_time() -> None:
    slots = SlotClock.start(1.0, monotonic=100.0, now=datetime(2026, 1, 1, 0, 0, 0, 300000, tzinfo=UTC))

    slot = slots.first_slot()

    assert slots.wall_time(slot) == datetime(2026, 1, 1, 0, 0, 1, tzinfo=UTC)
    assert slots.due(slot) == pytest.approx(100.7)
    assert slots.due(slot + 10) == pytest.approx(110.7)


def test_same_slot_after_restart_has_same_wall_time() -> None:
    first = SlotClock.start(0.5, monotonic=5.0, now=datetime(2026, 1, 1, 0, 0, 0, 100000, tzinfo=UTC))
    second = SlotClock.start(0.5, monotonic=9000.0, now=datetime(2026, 1, 1, 0, 0, 0, 200000, tzinfo=UTC))
    assert first.wall_time(first.first_slot()) == second.wall_time(second.first_slot())


@pytest.mark.parametrize(
    ("finished_after_due", "expected_next", "expected_missed"),
    [
        (0.2, 1, 0),  # finished well within the interval
        (1.0, 1, 0),  # finished exactly when the next slot is due
        (1.3, 2, 1),  # overran one slot: skip it
        (3.5, 4, 3),  # overran three slots: skip all, no pile-up
    ],
)
def test_next_slot_skips_overrun_slots(finished_after_due: float, expected_next: int, expected_missed: int) -> None:
    slots = SlotClock(interval_s=1.0, anchor_monotonic=0.0, anchor_wall_s=0.0)
    assert slots.next_slot(0, slots.due(0) + finished_after_due) == (expected_next, expected_missed)


def reported(value: object, quality: str = "good", at: float = 0.0) -> Reported:
    return Reported(value, quality, at)


@pytest.mark.parametrize(
    ("last", "value", "quality", "now", "deadband", "heartbeat", "expected"),
    [
        (None, 1.0, "good", 0.0, 0.5, None, True),  # first value
        (reported(1.0), 9.0, "good", 1.0, None, None, True),  # no deadband: every poll
        (reported(1.0), 1.0, "good", 1.0, None, None, True),
        (reported(1.0), 1.4, "good", 1.0, 0.5, None, False),  # within deadband
        (reported(1.0), 1.6, "good", 1.0, 0.5, None, True),  # beyond deadband
        (reported(1.0), 0.4, "good", 1.0, 0.5, None, True),
        (reported(1.0), 1.0, "bad", 1.0, 0.5, None, True),  # quality changed
        (reported(1.0, at=0.0), 1.0, "good", 59.0, 0.5, 60.0, False),  # heartbeat not yet due
        (reported(1.0, at=0.0), 1.0, "good", 60.0, 0.5, 60.0, True),  # heartbeat due
        (reported(True), True, "good", 1.0, 0.0, None, False),  # booleans: any change
        (reported(True), False, "good", 1.0, 0.0, None, True),
        (reported("ab"), "ab", "good", 1.0, 0.0, None, False),
        (reported(math.nan), math.nan, "good", 1.0, 0.5, None, False),
        (reported(1.0), math.nan, "good", 1.0, 0.5, None, True),
    ],
)
def test_should_store(last, value, quality, now, deadband, heartbeat, expected) -> None:
    assert should_store(last, value, quality, now, deadband=deadband, heartbeat_s=heartbeat) is expected
