"""Read the content of one dropped file into raw transactions: decoding, JSON, JSON lines, CSV.

Pure functions: the caller reads the bytes and moves the file. Every failure is a BatchInvalid
whose problems name the line, the field and the reason, so the `.error.txt` beside a rejected
file shows the integrator what to fix.
"""

from __future__ import annotations

import codecs
import csv
import fnmatch
import io
import typing
from decimal import Decimal
from pathlib import PurePath

from drivers.mes.config import CsvMapping, MesDropConfig
from drivers.mes.intake import BatchInvalid, Item, Problem, parse_json_document, parse_json_lines
from drivers.mes.transactions import TRANSACTION_TYPES

JSON_SUFFIXES = (".json",)
JSON_LINES_SUFFIXES = (".jsonl", ".ndjson")
CSV_SUFFIXES = (".csv",)
SUPPORTED_SUFFIXES = JSON_SUFFIXES + JSON_LINES_SUFFIXES + CSV_SUFFIXES


def _decimal_fields(model: type) -> frozenset[str]:
    fields = model.model_fields  # type: ignore[attr-defined]
    return frozenset(
        name for name, info in fields.items() if Decimal in (info.annotation, *typing.get_args(info.annotation))
    )


DECIMAL_FIELDS = {name: _decimal_fields(model) for name, model in TRANSACTION_TYPES.items()}


def decode(data: bytes, legacy_encoding: str | None) -> tuple[str, str]:
    """Decode file content and return the text with the name of the encoding used.

    A byte order mark selects UTF-8 or UTF-16. Without one, the content must be UTF-8, unless
    `legacy_encoding` is configured: then content that is not UTF-8 is decoded with it.
    Raises BatchInvalid.
    """
    if data.startswith(codecs.BOM_UTF8):
        return _decode_or_reject(data[len(codecs.BOM_UTF8) :], "utf-8", "UTF-8 (byte order mark)", ""), "utf-8-sig"
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return _decode_or_reject(data, "utf-16", "UTF-16 (byte order mark)", ""), "utf-16"
    if legacy_encoding is None:
        hint = "; if the MES writes a legacy encoding, set drop.legacy_encoding (such as 'cp1252')"
        return _decode_or_reject(data, "utf-8", "UTF-8", hint), "utf-8"

    try:
        return data.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        # Legacy text with any byte over 0x7f is almost never valid UTF-8, so trying UTF-8
        # first separates the two.
        return _decode_or_reject(data, legacy_encoding, f"UTF-8 or {legacy_encoding}", ""), legacy_encoding


def _decode_or_reject(data: bytes, codec: str, label: str, hint: str) -> str:
    try:
        return data.decode(codec)
    except UnicodeDecodeError as error:
        line = data[: error.start].count(b"\n") + 1 if codec != "utf-16" else None
        byte = data[error.start : error.start + 1]
        reason = f"cannot decode as {label}: byte {byte!r} at offset {error.start} ({error.reason}){hint}"
        raise BatchInvalid([Problem(reason, line=line)], syntax=True) from None


def find_csv_mapping(name: str, mappings: typing.Sequence[CsvMapping]) -> CsvMapping | None:
    """Find the first mapping whose pattern matches the file name, ignoring case."""
    lowered = name.lower()
    return next((mapping for mapping in mappings if fnmatch.fnmatchcase(lowered, mapping.pattern.lower())), None)


def parse_csv(text: str, mapping: CsvMapping) -> list[Item]:
    """Parse CSV with a header row into raw transactions of the mapping's type.

    Headers are renamed by `mapping.columns`; empty cells are left out, so optional fields
    may stay blank; decimal fields use the mapping's decimal separator. Raises BatchInvalid
    with every problem found.
    """
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=mapping.delimiter, strict=True)
    try:
        header = next(reader, None)
    except csv.Error as error:
        raise BatchInvalid([Problem(f"invalid CSV header: {error}", line=reader.line_num)], syntax=True) from None
    if header is None or not any(cell.strip() for cell in header):
        raise BatchInvalid(
            [Problem("empty file: a header row and at least one data row are required", line=1)], syntax=True
        )

    fields, problems = _map_header(header, mapping)
    if problems:
        raise BatchInvalid(problems, syntax=True)

    decimal_fields = DECIMAL_FIELDS[mapping.type]
    items: list[Item] = []
    problems = []
    previous_end = reader.line_num
    while True:
        try:
            row = next(reader, None)
        except csv.Error as error:
            problems.append(Problem(f"invalid CSV: {error}", line=previous_end + 1))
            break
        if row is None:
            break
        line, previous_end = previous_end + 1, reader.line_num
        if not any(cell.strip() for cell in row):
            continue
        if len(row) != len(fields):
            problems.append(
                Problem(
                    f"row has {len(row)} cells but the header has {len(fields)} (delimiter {mapping.delimiter!r})",
                    line=line,
                )
            )
            continue
        value: dict[str, object] = {"type": mapping.type}
        for field_name, cell in zip(fields, row, strict=True):
            cell = cell.strip()
            if not cell:
                continue
            if field_name in decimal_fields:
                converted = _convert_decimal(cell, mapping.decimal_separator)
                if converted is None:
                    problems.append(
                        Problem(
                            f"{cell!r} contains '.', but drop.csv decimal_separator is ','; "
                            "write decimals without thousands separators, such as 1234,5",
                            field=field_name,
                            line=line,
                        )
                    )
                    continue
                cell = converted
            value[field_name] = cell
        items.append(Item(value, index=None, line=line))

    if problems:
        raise BatchInvalid(problems)
    if not items:
        raise BatchInvalid([Problem("no data rows after the header", line=previous_end)], syntax=True)
    return items


def _map_header(header: list[str], mapping: CsvMapping) -> tuple[list[str], list[Problem]]:
    known = set(TRANSACTION_TYPES[mapping.type].model_fields) - {"type"}
    fields: list[str] = []
    problems: list[Problem] = []
    for position, raw in enumerate(header, start=1):
        cell = raw.strip()
        field_name = mapping.columns.get(cell, cell)
        if field_name not in known:
            problems.append(
                Problem(
                    f"column {position} {cell!r} is not a field of {mapping.type}; rename it or map it in "
                    f"drop.csv columns (fields: {', '.join(sorted(known))})",
                    line=1,
                )
            )
        elif field_name in fields:
            problems.append(Problem(f"column {position} {cell!r} maps to {field_name!r} a second time", line=1))
        fields.append(field_name)
    return fields, problems


def _convert_decimal(cell: str, separator: str) -> str | None:
    """Return the cell with '.' as decimal point, or None if it is ambiguous."""
    if separator == ".":
        return cell
    if "." in cell:
        return None
    return cell.replace(",", ".")


def parse_file(name: str, data: bytes, config: MesDropConfig) -> list[Item]:
    """Decode and parse one file by its suffix. Raises BatchInvalid."""
    suffix = PurePath(name).suffix.lower()
    if suffix not in SUPPORTED_SUFFIXES:
        raise BatchInvalid(
            [Problem(f"unsupported file type {suffix or '(no suffix)'!r}; use {', '.join(SUPPORTED_SUFFIXES)}")],
            syntax=True,
        )
    mapping = None
    if suffix in CSV_SUFFIXES:
        mapping = find_csv_mapping(name, config.csv)
        if mapping is None:
            patterns = ", ".join(repr(m.pattern) for m in config.csv) or "none configured"
            raise BatchInvalid(
                [Problem(f"no drop.csv mapping matches {name!r} (patterns: {patterns}); add one with its type")],
                syntax=True,
            )

    text, _ = decode(data, config.legacy_encoding)
    if mapping is not None:
        return parse_csv(text, mapping)
    if suffix in JSON_LINES_SUFFIXES:
        return parse_json_lines(text)
    return parse_json_document(text)
