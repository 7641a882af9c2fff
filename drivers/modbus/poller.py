"""One poll of a set of points: plan the requests, send them, and turn replies into records.

Fault handling, per request:

- An exception response (Modbus Application Protocol 1.1b3, section 7) makes a bad-quality
  record for each point the request covered, carrying the exception code. It never becomes
  a value.
- Codes 1 to 3 (illegal function, address, value) on a request that covers several points
  are narrowed: the request is split in two halves, each read again in the same poll, until
  the point that causes them is alone. The split is remembered as a cut, so later polls
  do not send the failing request again. A single point that still gets codes 1 to 3 is
  reported once (one bad record and one warning naming it), then left out of polls and
  retried every `illegal_address_retry_s`.
- No response from a unit makes bad-quality records for the request's points, and the rest
  of that unit's requests in the same poll are skipped, so one dead unit on a shared line
  costs one timeout per poll, not one per request.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

from drivers.modbus.config import ModbusPoint, ModbusSourceConfig
from drivers.modbus.connection import ModbusConnection, ReadOutcome, exception_name
from drivers.modbus.decode import apply_scale, decode_registers
from drivers.modbus.plan import Cut, PointSpan, ReadRequest, plan_requests
from outbox.records import Lane, Quality, Record, format_time, json_safe, record_id

log = logging.getLogger(__name__)

RECORD_KIND = "modbus.poll"
# Exception codes that mean "this request can never succeed as sent" rather than a
# transient device state: illegal function, illegal data address, illegal data value.
PERMANENT_EXCEPTION_CODES = frozenset({1, 2, 3})


@dataclass
class PollCounters:
    requests: int = 0
    exception_responses: int = 0
    no_responses: int = 0
    last_fault: str | None = None


@dataclass
class _PollRun:
    """One poll in progress."""

    slot: str
    now: datetime
    monotonic: float
    silent_units: set[int] = field(default_factory=set)
    replies: int = 0


@dataclass
class PollState:
    """Cuts and points left out for illegal addresses, learned across polls."""

    cuts: set[Cut] = field(default_factory=set)
    # point name -> monotonic time of the next retry
    illegal: dict[str, float] = field(default_factory=dict)


class Poller:
    def __init__(self, config: ModbusSourceConfig, state: PollState, counters: PollCounters) -> None:
        self.config = config
        self.state = state
        self.counters = counters
        self.points = {point.name: point for point in config.points}
        # Plans by (point names, cuts). Only cuts and illegal points change the key, and each
        # point adds at most one of each, so the cache stays small.
        self._plans: dict[tuple[tuple[str, ...], frozenset[Cut]], list[ReadRequest]] = {}

    def span_of(self, point: ModbusPoint) -> PointSpan:
        return PointSpan(point.name, self.config.unit_of(point), point.table, point.address, point.count)

    def plan(self, points: Sequence[ModbusPoint]) -> list[ReadRequest]:
        """Plan the requests for `points`, reusing the last plan while the points and cuts are unchanged."""
        key = (tuple(point.name for point in points), frozenset(self.state.cuts))
        cached = self._plans.get(key)
        if cached is None:
            cached = self._plans[key] = self._plan(points)
        return cached

    def _plan(self, points: Sequence[ModbusPoint]) -> list[ReadRequest]:
        return plan_requests(
            [self.span_of(point) for point in points],
            max_registers=self.config.max_registers_per_request,
            max_bits=self.config.max_bits_per_request,
            max_gap=self.config.max_gap,
            cuts=self.state.cuts,
        )

    async def poll(
        self,
        connection: ModbusConnection,
        points: Sequence[ModbusPoint],
        scheduled: datetime,
        now: datetime,
        monotonic: float,
    ) -> tuple[list[Record], int]:
        """Read `points` once. Return one record per point read (good or bad) and the number
        of replies received, exception responses included.

        Points left out for an illegal address are skipped until their retry is due.
        Raises `SourceUnavailable` if the connection is lost.
        """
        due = [point for point in points if self.state.illegal.get(point.name, 0.0) <= monotonic]
        run = _PollRun(format_time(scheduled), now, monotonic)
        records: list[Record] = []

        for request in self.plan(due):
            if request.unit in run.silent_units:
                outcome = ReadOutcome(error=f"skipped: unit {request.unit} did not respond earlier in this poll")
                records += self._records(request, outcome, run)
                continue
            records += await self._read_narrowing(connection, request, run)
        return records, run.replies

    async def _read_narrowing(self, connection: ModbusConnection, request: ReadRequest, run: _PollRun) -> list[Record]:
        self.counters.requests += 1
        outcome = await connection.read(request)
        if outcome.error is None:
            run.replies += 1

        if outcome.exception_code is not None:
            code = outcome.exception_code
            self.counters.exception_responses += 1
            self.counters.last_fault = f"{request.describe()}: Modbus exception {code} ({exception_name(code)})"
        elif outcome.error is not None:
            self.counters.last_fault = f"{request.describe()}: {outcome.error}"
            if outcome.error.startswith("no response"):
                self.counters.no_responses += 1
                run.silent_units.add(request.unit)

        permanent = outcome.exception_code in PERMANENT_EXCEPTION_CODES
        if permanent and len(request.points) > 1:
            first_half, second_half = _split(request)
            self.state.cuts.add((request.unit, request.table, second_half.address))
            records = await self._read_narrowing(connection, first_half, run)
            records += await self._read_narrowing(connection, second_half, run)
            return records

        if permanent:
            return self._mark_illegal(request, outcome, run)

        for span in request.points:
            if self.state.illegal.pop(span.name, None) is not None:
                log.info("point %r of source %r is readable again", span.name, self.config.name)
        return self._records(request, outcome, run)

    def _mark_illegal(self, request: ReadRequest, outcome: ReadOutcome, run: _PollRun) -> list[Record]:
        span = request.points[0]
        first_report = span.name not in self.state.illegal
        self.state.illegal[span.name] = run.monotonic + self.config.illegal_address_retry_s
        if not first_report:
            return []
        code = outcome.exception_code or 0
        log.warning(
            "point %r of source %r (%s) is rejected by the device with Modbus exception %d (%s); "
            "check its table, address and unit_id. It is left out of polls and retried every %g s",
            span.name,
            self.config.name,
            request.describe(),
            code,
            exception_name(code),
            self.config.illegal_address_retry_s,
        )
        return self._records(request, outcome, run)

    def _records(self, request: ReadRequest, outcome: ReadOutcome, run: _PollRun) -> list[Record]:
        return [self._record(request, span, outcome, run.slot, run.now) for span in request.points]

    def _record(self, request: ReadRequest, span: PointSpan, outcome: ReadOutcome, slot: str, now: datetime) -> Record:
        point = self.points[span.name]
        payload: dict[str, object] = {
            "value": None,
            "unit": point.unit,
            "table": point.table,
            "address": point.address,
            "unit_id": span.unit,
            "datatype": point.datatype,
        }
        quality = Quality.BAD

        if outcome.values is not None:
            start = span.address - request.address
            raw = list(outcome.values[start : start + span.count])
            payload["raw"] = [int(item) for item in raw]
            try:
                value = self._decode(point, raw)
            except (ValueError, OverflowError) as error:
                payload["error"] = f"cannot decode {raw} as {point.datatype}: {error}"
            else:
                payload["value"] = json_safe(value)
                quality = Quality.GOOD
        elif outcome.exception_code is not None:
            payload["exception_code"] = outcome.exception_code
            payload["error"] = f"Modbus exception {outcome.exception_code} ({exception_name(outcome.exception_code)})"
        else:
            payload["error"] = outcome.error

        return Record(
            id=record_id(self.config.name, point.name, slot),
            source=self.config.name,
            lane=Lane.TELEMETRY,
            kind=RECORD_KIND,
            subject=point.name,
            source_time=now,
            captured_at=now,
            quality=quality,
            payload=payload,
        )

    @staticmethod
    def _decode(point: ModbusPoint, raw: list[int]) -> int | float | bool | str:
        if point.table in ("coil", "discrete"):
            return bool(raw[0])
        value = decode_registers(
            raw, point.datatype, byte_order=point.byte_order, word_order=point.word_order, bit=point.bit
        )
        return apply_scale(value, point.scale, point.offset)


def _split(request: ReadRequest) -> tuple[ReadRequest, ReadRequest]:
    """Split a request's points into two halves by address, each with its own range."""
    middle = len(request.points) // 2
    halves = request.points[:middle], request.points[middle:]
    return _covering(request, halves[0]), _covering(request, halves[1])


def _covering(request: ReadRequest, points: tuple[PointSpan, ...]) -> ReadRequest:
    start = min(span.address for span in points)
    end = max(span.end for span in points)
    return ReadRequest(request.unit, request.table, start, end - start, points)
