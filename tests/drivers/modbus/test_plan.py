"""Request coalescing: the exact requests for given point maps."""

from __future__ import annotations

import pytest

from drivers.modbus.plan import PointSpan, minimum_requests, plan_requests


def spans(*items: tuple[int, str, int, int]) -> list[PointSpan]:
    return [
        PointSpan(f"p{index}", unit, table, address, count) for index, (unit, table, address, count) in enumerate(items)
    ]


def ranges(requests) -> list[tuple[int, str, int, int]]:
    return [(request.unit, request.table, request.address, request.count) for request in requests]


LIMITS = {"max_registers": 125, "max_bits": 2000}


@pytest.mark.parametrize(
    ("points", "max_gap", "expected"),
    [
        # Adjacent registers become one request.
        ([(1, "holding", 0, 1), (1, "holding", 1, 2), (1, "holding", 3, 2)], 0, [(1, "holding", 0, 5)]),
        # A gap within max_gap is read across, a larger one splits.
        ([(1, "holding", 0, 1), (1, "holding", 5, 1)], 4, [(1, "holding", 0, 6)]),
        ([(1, "holding", 0, 1), (1, "holding", 6, 1)], 4, [(1, "holding", 0, 1), (1, "holding", 6, 1)]),
        # Tables and units never share a request.
        (
            [(1, "holding", 0, 1), (1, "input", 1, 1), (2, "holding", 1, 1)],
            10,
            [(1, "holding", 0, 1), (1, "input", 1, 1), (2, "holding", 1, 1)],
        ),
        # Overlapping points (a uint32 and its low word) share a request.
        ([(1, "holding", 10, 2), (1, "holding", 11, 1)], 0, [(1, "holding", 10, 2)]),
        # Order in the configuration does not matter.
        ([(1, "input", 9, 1), (1, "input", 0, 1), (1, "input", 4, 1)], 8, [(1, "input", 0, 10)]),
        # 125 registers is the limit: the 126th starts a new request.
        (
            [(1, "holding", address, 1) for address in range(126)],
            0,
            [(1, "holding", 0, 125), (1, "holding", 125, 1)],
        ),
        # A point never straddles two requests.
        (
            [(1, "holding", 0, 124), (1, "holding", 124, 2)],
            0,
            [(1, "holding", 0, 124), (1, "holding", 124, 2)],
        ),
        # Bits: up to 2000 per request.
        (
            [(1, "coil", address, 1) for address in range(0, 2001)],
            0,
            [(1, "coil", 0, 2000), (1, "coil", 2000, 1)],
        ),
    ],
)
def test_plan_requests_for_map(points, max_gap: int, expected) -> None:
    assert ranges(plan_requests(spans(*points), max_gap=max_gap, **LIMITS)) == expected


def test_plan_puts_every_point_in_exactly_one_request() -> None:
    points = spans(
        *[(unit, table, address * 3, 2) for unit in (1, 2) for table in ("holding", "input") for address in range(100)]
    )

    requests = plan_requests(points, max_gap=4, **LIMITS)

    names = [span.name for request in requests for span in request.points]
    assert sorted(names) == sorted(span.name for span in points)
    assert all(request.count <= 125 for request in requests)


def test_plan_for_100_registers_is_one_request() -> None:
    points = spans(*[(1, "holding", address, 1) for address in range(100)])
    assert len(plan_requests(points, max_gap=0, **LIMITS)) == 1


def test_plan_respects_smaller_device_limit() -> None:
    points = spans(*[(1, "holding", address, 1) for address in range(100)])
    assert len(plan_requests(points, max_gap=0, max_registers=30, max_bits=2000)) == 4


def test_plan_does_not_span_a_cut() -> None:
    points = spans((1, "holding", 0, 1), (1, "holding", 1, 1), (1, "holding", 2, 1))

    requests = plan_requests(points, max_gap=0, cuts={(1, "holding", 2)}, **LIMITS)

    assert ranges(requests) == [(1, "holding", 0, 2), (1, "holding", 2, 1)]


def test_plan_ignores_cut_of_other_unit() -> None:
    points = spans((1, "holding", 0, 1), (1, "holding", 1, 1))
    assert len(plan_requests(points, max_gap=0, cuts={(2, "holding", 1)}, **LIMITS)) == 1


def test_minimum_requests_counts_occupied_addresses() -> None:
    points = spans(*[(1, "holding", address, 1) for address in range(0, 300, 2)], (1, "coil", 0, 1))
    # 150 occupied registers need 2 requests, one coil 1 request.
    assert minimum_requests(points, **LIMITS) == 3
