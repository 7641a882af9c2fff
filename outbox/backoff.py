"""Capped exponential backoff with jitter, shared by the forwarder and the source reconnects."""

from __future__ import annotations

import random
from dataclasses import dataclass, field


def backoff_delay(attempt: int, initial: float, maximum: float, rng: random.Random | None = None) -> float:
    """Return the delay in seconds before retry number `attempt` (0 for the first retry).

    The ceiling doubles with each attempt from `initial` up to `maximum`; the delay is drawn
    between half the ceiling and the ceiling ("equal jitter"), so gateways that lost the WAN
    together do not retry in lockstep, yet no retry comes sooner than half the ceiling.
    """
    uniform = rng.uniform if rng is not None else random.uniform
    ceiling = min(maximum, initial * (2 ** min(attempt, 62)))
    return ceiling / 2 + uniform(0, ceiling / 2)


@dataclass
class Backoff:
    """Retry state for one connection or delivery loop."""

    initial: float = 1.0
    maximum: float = 60.0
    rng: random.Random = field(default_factory=random.Random)
    attempt: int = 0

    def next_delay(self) -> float:
        delay = backoff_delay(self.attempt, self.initial, self.maximum, self.rng)
        self.attempt += 1
        return delay

    def reset(self) -> None:
        self.attempt = 0
