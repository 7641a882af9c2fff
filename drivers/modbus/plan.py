"""Request coalescing: which read requests fetch a set of points.

Points of the same unit and table are read together when the request stays within the
protocol's size limit and the unused addresses between two points are at most `max_gap`.
Reading a few unused addresses costs two bytes each, while every extra request costs a full
round trip, so a small gap is cheaper to read across than to split at.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from drivers.modbus.decode import BIT_TABLES

# Function codes of the read requests (Modbus Application Protocol 1.1b3, 6.1 to 6.4).
FUNCTION_CODES = {"coil": 1, "discrete": 2, "holding": 3, "input": 4}


@dataclass(frozen=True, slots=True)
class PointSpan:
    """Position of one point: `count` registers (or bits) from `address`."""

    name: str
    unit: int
    table: str
    address: int
    count: int

    @property
    def end(self) -> int:
        return self.address + self.count


@dataclass(frozen=True, slots=True)
class ReadRequest:
    """One read request and the points its reply holds."""

    unit: int
    table: str
    address: int
    count: int
    points: tuple[PointSpan, ...]

    @property
    def function_code(self) -> int:
        return FUNCTION_CODES[self.table]

    def describe(self) -> str:
        return f"unit {self.unit} {self.table} {self.address}..{self.address + self.count - 1}"


Cut = tuple[int, str, int]
"""(unit, table, address): no request may read both `address - 1` and `address`."""


def plan_requests(
    spans: Iterable[PointSpan],
    *,
    max_registers: int,
    max_bits: int,
    max_gap: int,
    cuts: Iterable[Cut] = (),
) -> list[ReadRequest]:
    """Group points into as few read requests as the limits and the cuts allow.

    Requests come out ordered by unit, table and address. Every point is in exactly one
    request. A point larger than the limit gets a request of its own (configuration
    validation keeps this from happening). Cuts mark places a request must not span, such
    as both sides of an address the device rejected.
    """
    cut_set = set(cuts)
    ordered = sorted(spans, key=lambda span: (span.unit, span.table, span.address, span.count, span.name))
    requests: list[ReadRequest] = []
    group: list[PointSpan] = []
    start = end = 0

    for span in ordered:
        limit = max_bits if span.table in BIT_TABLES else max_registers
        if group:
            same_block = span.unit == group[0].unit and span.table == group[0].table
            gap = span.address - end
            new_end = max(end, span.end)
            fits = same_block and gap <= max_gap and new_end - start <= limit
            if fits and not _crosses_cut(cut_set, span.unit, span.table, start, new_end):
                group.append(span)
                end = new_end
                continue
            requests.append(_request(group, start, end))
        group = [span]
        start, end = span.address, span.end

    if group:
        requests.append(_request(group, start, end))
    return requests


def _crosses_cut(cuts: set[Cut], unit: int, table: str, start: int, end: int) -> bool:
    return any(
        cut_unit == unit and cut_table == table and start < address < end for cut_unit, cut_table, address in cuts
    )


def _request(group: list[PointSpan], start: int, end: int) -> ReadRequest:
    first = group[0]
    return ReadRequest(unit=first.unit, table=first.table, address=start, count=end - start, points=tuple(group))


def minimum_requests(spans: Iterable[PointSpan], *, max_registers: int, max_bits: int) -> int:
    """Lower bound on requests for these points: each unit and table needs at least
    ceil(addresses to read / limit) requests, counting only the addresses that points occupy."""
    covered: dict[tuple[int, str], set[int]] = {}
    for span in spans:
        covered.setdefault((span.unit, span.table), set()).update(range(span.address, span.end))
    total = 0
    for (_, table), addresses in covered.items():
        limit = max_bits if table in BIT_TABLES else max_registers
        total += -(-len(addresses) // limit)
    return total
