"""Poll scheduling without drift, and the decision to store a value (report by exception).

Poll slots are aligned to multiples of the interval in wall time (slot k is due at
k * interval since the Unix epoch), so a restarted agent polls on the same slots and a value
read twice for one slot gets the same record id. The wait until a slot uses the monotonic
clock, measured from one anchor, so errors do not add up from poll to poll.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class SlotClock:
    """Maps poll slots to monotonic deadlines and wall times for one poll group."""

    interval_s: float
    anchor_monotonic: float
    anchor_wall_s: float  # seconds since the epoch at `anchor_monotonic`

    @classmethod
    def start(cls, interval_s: float, monotonic: float, now: datetime) -> SlotClock:
        return cls(interval_s, monotonic, (now - EPOCH).total_seconds())

    def first_slot(self) -> int:
        """Return the first slot due at or after the anchor."""
        return math.ceil(self.anchor_wall_s / self.interval_s)

    def due(self, slot: int) -> float:
        """Monotonic time at which `slot` is due."""
        return self.anchor_monotonic + slot * self.interval_s - self.anchor_wall_s

    def wall_time(self, slot: int) -> datetime:
        """Return the scheduled wall time of `slot`, which names the poll in record ids."""
        return EPOCH + timedelta(microseconds=round(slot * self.interval_s * 1_000_000))

    def next_slot(self, slot: int, monotonic: float) -> tuple[int, int]:
        """Return the slot to poll after `slot`, given the time the poll of `slot` finished,
        and the number of slots skipped because that poll overran them.

        An overrunning poll never queues the polls it missed: the next poll is the first slot
        that is not yet due, so polls cannot pile up.
        """
        following = slot + 1
        if monotonic <= self.due(following):
            return following, 0
        first_future = math.floor((monotonic - self.anchor_monotonic + self.anchor_wall_s) / self.interval_s) + 1
        return first_future, first_future - following


@dataclass(frozen=True, slots=True)
class Reported:
    """The last value stored for a point and when (monotonic seconds)."""

    value: object
    quality: str
    at: float


def should_store(
    last: Reported | None,
    value: object,
    quality: str,
    now: float,
    *,
    deadband: float | None,
    heartbeat_s: float | None,
) -> bool:
    """Decide whether a polled value becomes a record.

    Without a deadband every poll is stored. With one, a value is stored when it is the
    first, when its quality changed, when it moved by more than `deadband` from the last
    stored value (any change for booleans and strings), or when `heartbeat_s` passed since
    the last stored record, so a silent point still shows that the device replies.
    """
    if deadband is None or last is None or quality != last.quality:
        return True
    if heartbeat_s is not None and now - last.at >= heartbeat_s:
        return True
    if isinstance(value, bool | str) or isinstance(last.value, bool | str):
        return value != last.value
    if isinstance(value, int | float) and isinstance(last.value, int | float):
        if math.isnan(value) or math.isnan(last.value):
            return math.isnan(value) != math.isnan(last.value)
        return abs(value - last.value) > deadband
    return value != last.value
