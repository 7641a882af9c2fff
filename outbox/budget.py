"""The size budget: which telemetry to shed, and when to refuse transactions, as a pure decision.

Transactions and events are never shed. They may use the whole budget, taking room from
telemetry if needed; when they do not fit even with all telemetry shed, the append fails and
the producer keeps them. Telemetry may use at most its share of the budget; past it, the
oldest telemetry is shed, stored records first and then the oldest of the incoming ones.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from outbox.records import Lane, Record


@dataclass(frozen=True)
class Budget:
    max_bytes: int
    telemetry_max_bytes: int


@dataclass
class AppendPlan:
    error: str | None = None
    shed_stored_bytes: int = 0
    shed_incoming: list[Record] = field(default_factory=list)

    @property
    def shed_incoming_ids(self) -> set[str]:
        return {record.id for record in self.shed_incoming}


def plan_append(budget: Budget, used: Mapping[Lane, int], fresh: Sequence[Record]) -> AppendPlan:
    """Decide how to fit `fresh` records given the bytes already `used` per lane."""
    priority_new = sum(record.size for record in fresh if record.lane != Lane.TELEMETRY)
    telemetry_new = [record for record in fresh if record.lane == Lane.TELEMETRY]
    telemetry_used = used.get(Lane.TELEMETRY, 0)
    priority_used = sum(size for lane, size in used.items() if lane != Lane.TELEMETRY)

    if priority_new and priority_used + priority_new > budget.max_bytes:
        return AppendPlan(
            error=(
                f"outbox full: {priority_new} bytes of transactions/events do not fit, because "
                f"{priority_used} of the {budget.max_bytes}-byte budget (outbox.max_bytes) already "
                f"hold undelivered transactions and events. Keep them and retry once the backlog "
                f"drains, or raise outbox.max_bytes."
            )
        )

    telemetry_cap = min(budget.telemetry_max_bytes, budget.max_bytes - priority_used - priority_new)
    excess = telemetry_used + sum(record.size for record in telemetry_new) - telemetry_cap
    if excess <= 0:
        return AppendPlan()

    plan = AppendPlan(shed_stored_bytes=min(excess, telemetry_used))
    remaining = excess - plan.shed_stored_bytes
    for record in telemetry_new:
        if remaining <= 0:
            break
        plan.shed_incoming.append(record)
        remaining -= record.size
    return plan
