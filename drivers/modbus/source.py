"""The Modbus source: keeps one connection open, polls each poll group on its own schedule,
and stores every polled point as a telemetry record.

A lost or refused connection is retried with capped, jittered backoff; the state change is
logged once and shown in `status`. Device faults (exception responses, silent units) become
bad-quality records and never end the source. See `drivers.modbus.poller` for the rules.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from drivers.base import RecordSink, Source, SourceState, SourceUnavailable
from drivers.modbus.config import ModbusPoint, ModbusSourceConfig
from drivers.modbus.connection import ModbusConnection
from drivers.modbus.poller import PollCounters, Poller, PollState
from drivers.modbus.schedule import Reported, SlotClock, should_store
from outbox.backoff import Backoff
from outbox.clock import SYSTEM_CLOCK, Clock
from outbox.errors import OutboxError
from outbox.records import Record

log = logging.getLogger(__name__)

SILENT_POLLS_BEFORE_RECONNECT = 3


class ModbusSource(Source):
    type = "modbus"

    def __init__(self, config: ModbusSourceConfig, clock: Clock = SYSTEM_CLOCK) -> None:
        super().__init__(config.name)
        self.config = config
        self.clock = clock
        self.counters = PollCounters()
        self.poll_state = PollState()
        self.poller = Poller(config, self.poll_state, self.counters)
        self.groups = group_by_interval(config)
        self._reported: dict[str, Reported] = {}
        self._overruns = 0
        self._skipped_polls = 0
        self._polls = 0
        self._records_not_stored = 0
        self._store_failing = False
        self._silent_polls = 0
        self._update_details()

    async def run(self, sink: RecordSink) -> None:
        backoff = Backoff(self.config.reconnect_initial_s, self.config.reconnect_max_s)
        try:
            while True:
                try:
                    async with ModbusConnection(self.config) as connection:
                        self.status.connects += 1
                        self._set_state(SourceState.CONNECTED, None, f"connected to {connection.describe()}")
                        backoff.reset()
                        await self._poll_groups(connection, sink)
                except* SourceUnavailable as group:
                    error = str(group.exceptions[0])
                    self._set_state(SourceState.DISCONNECTED, error, f"{error}; retrying with backoff")
                except* Exception as group:
                    # A fault in this driver must not end the agent or its other sources:
                    # log it with its traceback, then reconnect as after a lost connection.
                    error = f"internal error: {group.exceptions[0]!r}"
                    log.error("source %r: %s; reconnecting", self.name, error, exc_info=group.exceptions[0])
                    self._set_state(SourceState.DISCONNECTED, error, f"{error}; retrying with backoff")
                await self.clock.sleep(backoff.next_delay())
        finally:
            self.status.state = SourceState.STOPPED
            self.status.state_since = self.clock.now()

    async def sample(self) -> list[Record]:
        """Poll every point once, ignoring deadbands, and return the records without storing them.

        Raises `SourceUnavailable` if the device cannot be reached.
        """
        async with ModbusConnection(self.config) as connection:
            now = self.clock.now()
            records, _ = await self.poller.poll(connection, self.config.points, now, now, self.clock.monotonic())
            return records

    async def _poll_groups(self, connection: ModbusConnection, sink: RecordSink) -> None:
        if len(self.groups) == 1:
            ((interval_ms, points),) = self.groups.items()
            await self._poll_group(connection, sink, interval_ms, points)
            return
        async with asyncio.TaskGroup() as tasks:
            for interval_ms, points in self.groups.items():
                tasks.create_task(self._poll_group(connection, sink, interval_ms, points))

    async def _poll_group(
        self,
        connection: ModbusConnection,
        sink: RecordSink,
        interval_ms: float,
        points: Sequence[ModbusPoint],
    ) -> None:
        slots = SlotClock.start(interval_ms / 1000, self.clock.monotonic(), self.clock.now())
        slot = slots.first_slot()
        while True:
            await self.clock.sleep(slots.due(slot) - self.clock.monotonic())
            now = self.clock.now()
            records, replies = await self.poller.poll(
                connection, points, slots.wall_time(slot), now, self.clock.monotonic()
            )
            self._polls += 1
            await self._store(sink, self._filter(records))
            self._check_connection_alive(connection, replies)

            slot, missed = slots.next_slot(slot, self.clock.monotonic())
            if missed:
                if not self._overruns:
                    log.warning(
                        "source %r: a poll of %d point(s) took longer than its interval of %g ms; "
                        "missed polls are skipped and counted in status (overruns)",
                        self.name,
                        len(points),
                        interval_ms,
                    )
                self._overruns += 1
                self._skipped_polls += missed
            self._update_details()

    def _check_connection_alive(self, connection: ModbusConnection, replies: int) -> None:
        """Raise `SourceUnavailable` after `SILENT_POLLS_BEFORE_RECONNECT` polls in a row
        without any reply, because a connection that carries no replies at all is likely
        half-open (the device restarted without closing it). A reply from any unit, even an
        exception response, resets the count, so one dead unit never forces a reconnect."""
        if replies:
            self._silent_polls = 0
            return
        self._silent_polls += 1
        if self._silent_polls >= SILENT_POLLS_BEFORE_RECONNECT:
            self._silent_polls = 0
            raise SourceUnavailable(
                f"no reply from {connection.describe()} in {SILENT_POLLS_BEFORE_RECONNECT} polls in a row"
            )

    def _filter(self, records: list[Record]) -> list[Record]:
        """Apply each point's deadband and heartbeat (report by exception)."""
        kept = []
        monotonic = self.clock.monotonic()
        for record in records:
            point = self.poller.points[record.subject]
            value = record.payload.get("value")
            last = self._reported.get(record.subject)
            if should_store(
                last, value, record.quality, monotonic, deadband=point.deadband, heartbeat_s=point.heartbeat_s
            ):
                self._reported[record.subject] = Reported(value, record.quality, monotonic)
                kept.append(record)
        return kept

    async def _store(self, sink: RecordSink, records: list[Record]) -> None:
        if not records:
            return
        try:
            stored = await sink.append(records)
        except OutboxError as error:
            # Telemetry that cannot be stored is counted and dropped: holding it would grow
            # memory, and the next poll brings fresh values anyway.
            self._records_not_stored += len(records)
            if not self._store_failing:
                log.warning("source %r: cannot store polled values: %s; counting them as not stored", self.name, error)
            self._store_failing = True
            return
        if self._store_failing:
            log.info("source %r: storing polled values again", self.name)
        self._store_failing = False
        self.status.records_captured += sum(stored)
        self.status.last_value_at = self.clock.now()

    def _set_state(self, state: SourceState, error: str | None, message: str) -> None:
        self.status.last_error = error
        if state == self.status.state:
            return
        self.status.state = state
        self.status.state_since = self.clock.now()
        if state == SourceState.CONNECTED:
            log.info("source %r: %s", self.name, message)
        else:
            log.warning("source %r: %s", self.name, message)

    def _update_details(self) -> None:
        self.status.details = {
            "polls": self._polls,
            "overruns": self._overruns,
            "skipped_polls": self._skipped_polls,
            "requests": self.counters.requests,
            "exception_responses": self.counters.exception_responses,
            "no_responses": self.counters.no_responses,
            "last_fault": self.counters.last_fault,
            "illegal_points": sorted(self.poll_state.illegal),
            "records_not_stored": self._records_not_stored,
        }


def group_by_interval(config: ModbusSourceConfig) -> dict[float, list[ModbusPoint]]:
    """Group the points by poll interval (milliseconds); each group is polled on its own schedule."""
    groups: dict[float, list[ModbusPoint]] = {}
    for point in config.points:
        groups.setdefault(config.interval_of(point), []).append(point)
    return groups
