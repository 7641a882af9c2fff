"""The budget decision as a table: what is shed and when transactions and events are refused."""

from __future__ import annotations

import pytest

from outbox.budget import Budget, plan_append
from outbox.records import Lane
from tests.outbox.conftest import make_record

# Every record in this table has the same size, so the cases read in units of one record.
UNIT = make_record(number=10, payload_bytes=100).size


def records(lane: Lane, count: int, start: int = 10) -> list:
    return [make_record(number=start + index, lane=lane, payload_bytes=100) for index in range(count)]


CASES = [
    # name, budget (units), telemetry cap (units), used telemetry, used priority,
    # incoming telemetry, incoming priority, expected error, shed stored (units), shed incoming
    ("empty store, fits", 10, 8, 0, 0, 3, 1, False, 0, 0),
    ("telemetry at its cap sheds stored first", 10, 4, 4, 0, 2, 0, False, 2, 0),
    ("telemetry beyond cap with no stored telemetry sheds incoming", 10, 2, 0, 0, 4, 0, False, 0, 2),
    ("stored and incoming both shed", 10, 3, 2, 0, 4, 0, False, 2, 1),
    ("transactions take room from telemetry", 4, 4, 4, 0, 0, 2, False, 2, 0),
    ("transactions exactly fill the budget", 4, 4, 0, 2, 0, 2, False, 0, 0),
    ("transactions over budget are refused", 4, 4, 0, 3, 0, 2, True, 0, 0),
    ("refusal sheds nothing even with telemetry stored", 4, 4, 2, 3, 0, 2, True, 0, 0),
    ("telemetry alone never refused", 1, 1, 1, 1, 5, 0, False, 1, 5),
]


@pytest.mark.parametrize(
    (
        "budget_units",
        "cap_units",
        "used_telemetry",
        "used_priority",
        "new_telemetry",
        "new_priority",
        "refused",
        "shed_stored_units",
        "shed_incoming",
    ),
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
def test_plan_append(
    budget_units: int,
    cap_units: int,
    used_telemetry: int,
    used_priority: int,
    new_telemetry: int,
    new_priority: int,
    refused: bool,
    shed_stored_units: int,
    shed_incoming: int,
) -> None:
    budget = Budget(max_bytes=budget_units * UNIT, telemetry_max_bytes=cap_units * UNIT)
    used = {Lane.TELEMETRY: used_telemetry * UNIT, Lane.TRANSACTION: used_priority * UNIT, Lane.EVENT: 0}
    fresh = records(Lane.TELEMETRY, new_telemetry) + records(Lane.TRANSACTION, new_priority, start=50)

    plan = plan_append(budget, used, fresh)

    assert (plan.error is not None) == refused
    assert plan.shed_stored_bytes == shed_stored_units * UNIT
    assert len(plan.shed_incoming) == shed_incoming


def test_shed_incoming_are_the_oldest() -> None:
    budget = Budget(max_bytes=10 * UNIT, telemetry_max_bytes=2 * UNIT)
    fresh = records(Lane.TELEMETRY, 5)

    plan = plan_append(budget, {}, fresh)

    assert [record.subject for record in plan.shed_incoming] == ["item-10", "item-11", "item-12"]
    assert plan.shed_incoming_ids == {record.id for record in fresh[:3]}


def test_refusal_message_names_setting_and_sizes() -> None:
    budget = Budget(max_bytes=2 * UNIT, telemetry_max_bytes=2 * UNIT)

    plan = plan_append(budget, {Lane.EVENT: 2 * UNIT}, records(Lane.TRANSACTION, 1))

    assert plan.error is not None
    assert "outbox.max_bytes" in plan.error
    assert f"{2 * UNIT}-byte budget" in plan.error
