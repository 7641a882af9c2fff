"""Turn raw MES input into validated transactions and records, all or nothing.

Both inputs (the HTTP API and the drop folder) use this module. JSON text becomes a list of
`Item`s, and each item is validated against the transaction models. A batch with any problem
is rejected whole, with one `Problem` per invalid field. Nothing here does I/O.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from pydantic import ValidationError

from drivers.mes.transactions import TRANSACTION_ADAPTER, TRANSACTION_TYPES, Transaction
from outbox.records import Lane, Quality, Record, record_id

JSON_WHITESPACE = " \t\n\r"
# Reasons quote at most this many characters of a bad value.
VALUE_PREVIEW_CHARS = 60


@dataclass(frozen=True)
class Problem:
    """One reason a batch was rejected.

    `index` is the position in the batch, None for a single document or the whole input.
    `line` is the line in the file or body when known. `field` is the dotted field name, or ""
    when the problem is not about one field.
    """

    reason: str
    field: str = ""
    index: int | None = None
    line: int | None = None

    def describe(self) -> str:
        where = []
        if self.line is not None:
            where.append(f"line {self.line}")
        if self.index is not None:
            where.append(f"item {self.index}")
        if self.field:
            where.append(f"field {self.field}")
        prefix = ", ".join(where)
        return f"{prefix}: {self.reason}" if prefix else self.reason


class BatchInvalid(Exception):
    """The input is rejected whole. `syntax` is True when it could not be parsed at all."""

    def __init__(self, problems: Sequence[Problem], *, syntax: bool = False) -> None:
        self.problems = list(problems)
        self.syntax = syntax
        super().__init__("; ".join(problem.describe() for problem in self.problems))


@dataclass(frozen=True)
class Item:
    """One raw transaction and where it came from."""

    value: Any
    index: int | None
    line: int | None = None


# -- JSON -----------------------------------------------------------------------------------


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number; send quantities as decimal numbers")


_DECODER = json.JSONDecoder(parse_float=Decimal, parse_constant=_reject_constant)


def _line_of(text: str, position: int) -> int:
    return text.count("\n", 0, position) + 1


def _skip_whitespace(text: str, position: int) -> int:
    while position < len(text) and text[position] in JSON_WHITESPACE:
        position += 1
    return position


def _decode_value(text: str, position: int) -> tuple[Any, int]:
    try:
        return _DECODER.raw_decode(text, position)
    except json.JSONDecodeError as error:
        problem = Problem(f"invalid JSON at column {error.colno}: {error.msg}", line=error.lineno)
    except RecursionError:
        problem = Problem("invalid JSON: nested too deeply", line=_line_of(text, position))
    except ValueError as error:
        # Integers longer than Python's digit limit and NaN/Infinity land here.
        problem = Problem(f"invalid JSON: {error}", line=_line_of(text, position))
    raise BatchInvalid([problem], syntax=True)


def _syntax_error(text: str, position: int, expected: str) -> BatchInvalid:
    line = _line_of(text, position)
    column = position - (text.rfind("\n", 0, position) + 1) + 1
    found = repr(text[position]) if position < len(text) else "the end of the input"
    return BatchInvalid(
        [Problem(f"invalid JSON at column {column}: expected {expected}, found {found}", line=line)],
        syntax=True,
    )


def parse_json_document(text: str) -> list[Item]:
    """Parse one JSON document: a transaction object, or an array of them.

    Numbers become Decimal, so quantities stay exact. Each item carries the line it starts
    on. Raises BatchInvalid (syntax=True) for anything that is not one JSON document.
    """
    position = _skip_whitespace(text, 0)
    if position == len(text):
        raise BatchInvalid([Problem("empty input: send one transaction object or an array of them")], syntax=True)

    if text[position] != "[":
        value, end = _decode_value(text, position)
        items = [Item(value, index=None, line=_line_of(text, position))]
    else:
        items = []
        position = _skip_whitespace(text, position + 1)
        if position < len(text) and text[position] == "]":
            end = position + 1
        else:
            while True:
                value, end = _decode_value(text, position)
                items.append(Item(value, index=len(items), line=_line_of(text, position)))
                end = _skip_whitespace(text, end)
                if end < len(text) and text[end] == "]":
                    end += 1
                    break
                if end >= len(text) or text[end] != ",":
                    raise _syntax_error(text, end, "',' or ']'")
                position = _skip_whitespace(text, end + 1)

    end = _skip_whitespace(text, end)
    if end != len(text):
        raise _syntax_error(text, end, "the end of the document")
    if not items:
        raise BatchInvalid([Problem("empty array: send at least one transaction")], syntax=True)
    return items


def parse_json_lines(text: str) -> list[Item]:
    """Parse JSON lines: one transaction object per line; blank lines are skipped."""
    items: list[Item] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        start = _skip_whitespace(line, 0)
        try:
            value, end = _decode_value(line, start)
        except BatchInvalid as invalid:
            # The decoder counts lines within this one line; report the line of the file.
            problems = [dataclasses.replace(problem, line=number) for problem in invalid.problems]
            raise BatchInvalid(problems, syntax=True) from None
        if _skip_whitespace(line, end) != len(line):
            raise BatchInvalid(
                [
                    Problem(
                        "invalid JSON: one transaction per line expected, found more text after it",
                        line=number,
                    )
                ],
                syntax=True,
            )
        items.append(Item(value, index=len(items), line=number))
    if not items:
        raise BatchInvalid([Problem("empty file: no transactions found")], syntax=True)
    return items


# -- validation -----------------------------------------------------------------------------


def _preview(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= VALUE_PREVIEW_CHARS else text[: VALUE_PREVIEW_CHARS - 3] + "..."


def _field_path(loc: Sequence[Any]) -> list[str]:
    parts = [str(part) for part in loc]
    # The discriminated union puts the type tag first in the location; it is not a field.
    if parts and parts[0] in TRANSACTION_TYPES:
        parts = parts[1:]
    return parts


def _reason(error: Any, field_name: str, type_name: str | None) -> tuple[str, str]:
    """Return the (field, reason) of one pydantic error, in words the MES integrator can act on."""
    kind = error["type"]
    value = error.get("input")
    context = error.get("ctx") or {}
    message = str(error["msg"])

    if kind == "value_error":
        text = message.removeprefix("Value error, ")
        blamed, separator, rest = text.partition(": ")
        if separator and type_name is not None and blamed in TRANSACTION_TYPES[type_name].model_fields:
            return blamed, rest
        return field_name, text
    if kind == "missing":
        return field_name, "required field is missing"
    if kind == "extra_forbidden":
        known = sorted(TRANSACTION_TYPES[type_name].model_fields) if type_name else []
        close = difflib.get_close_matches(field_name, known, n=1)
        if close:
            return field_name, f"unknown field {field_name!r}; did you mean {close[0]!r}?"
        return field_name, f"unknown field {field_name!r}; `plantgate schema {type_name}` lists the fields"
    if kind == "union_tag_not_found":
        return (
            "type",
            f"required field is missing; it names the transaction type: {', '.join(TRANSACTION_TYPES)}",
        )
    if kind == "union_tag_invalid":
        return "type", f"{_preview(context.get('tag'))} is not one of {', '.join(TRANSACTION_TYPES)}"
    if kind == "literal_error":
        expected = str(context.get("expected", "")).replace("'", "").replace(" or ", ", ")
        return field_name, f"{_preview(value)} is not one of {expected}"
    if kind == "model_attributes_type" or kind == "model_type":
        return field_name, f"expected a JSON object with the transaction's fields, got {_preview(value)}"
    if kind == "timezone_aware":
        return field_name, f"{_preview(value)} has no UTC offset; add one, such as 'Z' or '+01:00'"
    if kind.startswith("datetime"):
        return field_name, f"{_preview(value)} is not an RFC 3339 time, such as '2026-03-02T06:15:00+01:00'"
    if kind in ("decimal_parsing", "decimal_type"):
        return field_name, f'{_preview(value)} is not a decimal number, such as 12.5 or "12.5"'
    if kind == "string_type":
        return (
            field_name,
            f'{_preview(value)} is not a string; send identifiers as JSON strings, such as "0010"',
        )
    if kind == "string_pattern_mismatch" and field_name == "transaction_id":
        return field_name, f"{_preview(value)} must be printable ASCII without spaces"
    return field_name, f"{_preview(value)}: {message[:1].lower()}{message[1:]}"


def validate_item(item: Item) -> Transaction:
    """Validate one raw transaction. Raises BatchInvalid naming each invalid field."""
    try:
        return TRANSACTION_ADAPTER.validate_python(item.value)
    except ValidationError as error:
        raise BatchInvalid(_problems(error, item)) from None
    except RecursionError:
        raise BatchInvalid([Problem("nested too deeply", index=item.index, line=item.line)]) from None


def _problems(error: ValidationError, item: Item) -> list[Problem]:
    type_name = item.value.get("type") if isinstance(item.value, dict) else None
    # The tag may be any JSON value, lists included, so test its type before the lookup.
    if not isinstance(type_name, str) or type_name not in TRANSACTION_TYPES:
        type_name = None
    problems = []
    for detail in error.errors(include_url=False):
        field_name = ".".join(_field_path(detail["loc"]))
        field_name, reason = _reason(detail, field_name, type_name)
        problems.append(Problem(reason, field=field_name, index=item.index, line=item.line))
    return problems


def validate_batch(items: Sequence[Item]) -> list[Transaction]:
    """Validate every item; raises BatchInvalid with the problems of all invalid items.

    The same transaction id twice in one batch is accepted only if both carry the same
    content, as a resend does. Different content under one id is a problem, because one id
    can name only one transaction.
    """
    problems: list[Problem] = []
    transactions: list[Transaction] = []
    first_by_id: dict[str, Transaction] = {}
    for item in items:
        try:
            transaction = validate_item(item)
        except BatchInvalid as invalid:
            problems.extend(invalid.problems)
            continue
        earlier = first_by_id.setdefault(transaction.transaction_id, transaction)
        if earlier is not transaction and earlier != transaction:
            problems.append(
                Problem(
                    f"{transaction.transaction_id!r} is used by an earlier item with different content; "
                    "each transaction needs its own id",
                    field="transaction_id",
                    index=item.index,
                    line=item.line,
                )
            )
        transactions.append(transaction)
    if problems:
        raise BatchInvalid(problems)
    return transactions


# -- records --------------------------------------------------------------------------------


def transaction_record_id(source: str, transaction_id: str) -> str:
    """Derive the record id of an MES transaction from the source and the MES id only, so a
    transaction sent again, by either input, is the same record."""
    return record_id(source, transaction_id.strip())


def to_record(source: str, transaction: Transaction, captured_at: datetime) -> Record:
    return Record(
        id=transaction_record_id(source, transaction.transaction_id),
        source=source,
        lane=Lane.TRANSACTION,
        kind=f"mes.{transaction.type}",
        subject=transaction.type,
        source_time=transaction.event_time,
        captured_at=captured_at,
        quality=Quality.GOOD,
        payload=transaction.model_dump(mode="json"),
    )
