"""The operations the outbox's writer task carries out, each with the future its caller awaits."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from outbox.records import Record


@dataclass
class _Op:
    future: asyncio.Future[Any]


@dataclass
class _Append(_Op):
    records: Sequence[Record]
    # Set by the writer thread: the records this op inserted, once its transaction ran.
    inserted: list[Record] = field(default_factory=list)


@dataclass
class _Acknowledge(_Op):
    seqs: list[int]


@dataclass
class _DeadLetter(_Op):
    seqs: list[int]
    status: int | None
    reason: str


@dataclass
class _CountAttempt(_Op):
    seqs: list[int]


@dataclass
class _Housekeep(_Op):
    pass


def settle(op: _Op, result: Any) -> None:
    if op.future.done():
        return
    if isinstance(result, BaseException):
        op.future.set_exception(result)
    else:
        op.future.set_result(result)
