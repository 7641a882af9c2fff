"""Decoding and parsing dropped files: encodings, JSON, JSON lines and CSV."""

from __future__ import annotations

import codecs
import json

import pytest

from drivers.mes.config import MesDropConfig
from drivers.mes.file_formats import decode, find_csv_mapping, parse_file
from drivers.mes.intake import BatchInvalid, validate_batch
from tests.drivers.mes.conftest import goods_movement

GERMAN_CSV = (
    "Buchung;Material;Charge;Menge;Einheit;BWA;Von;Nach;Buchungszeit\n"
    "GM-1;Schraube Ø5 Größe M;B1;1,5;KG;261;WH01;LINE1;2026-03-02T07:15:00+01:00\n"
    "GM-2;Mutter;B2;1234,125;ST;261;WH01;LINE1;2026-03-02T07:16:00+01:00\n"
)


def drop_config(**changes: object) -> MesDropConfig:
    data: dict[str, object] = {
        "folder": "/unused",
        "legacy_encoding": "cp1252",
        "csv": [
            {
                "pattern": "gm_*.csv",
                "type": "goods_movement",
                "delimiter": ";",
                "decimal_separator": ",",
                "columns": {
                    "Buchung": "transaction_id",
                    "Material": "material",
                    "Charge": "batch",
                    "Menge": "quantity",
                    "Einheit": "unit",
                    "BWA": "movement_type",
                    "Von": "from_location",
                    "Nach": "to_location",
                    "Buchungszeit": "posted_at",
                },
            },
            {"pattern": "*.csv", "type": "quality_result"},
        ],
    }
    data.update(changes)
    return MesDropConfig.model_validate(data)


@pytest.mark.parametrize(
    ("data", "encoding"),
    [
        ("Größe".encode(), "utf-8"),
        (codecs.BOM_UTF8 + "Größe".encode(), "utf-8-sig"),
        ("Größe".encode("utf-16"), "utf-16"),
        (codecs.BOM_UTF16_BE + "Größe".encode("utf-16-be"), "utf-16"),
        ("Größe".encode("cp1252"), "cp1252"),
    ],
)
def test_decode_by_byte_order_mark_then_utf8_then_legacy(data: bytes, encoding: str) -> None:
    assert decode(data, "cp1252") == ("Größe", encoding)


def test_decode_without_legacy_encoding_rejects_with_hint() -> None:
    with pytest.raises(BatchInvalid) as caught:
        decode("a\nGröße".encode("cp1252"), None)

    (problem,) = caught.value.problems
    assert problem.line == 2
    assert "legacy_encoding" in problem.reason


def test_decode_rejects_byte_undefined_in_legacy_encoding() -> None:
    with pytest.raises(BatchInvalid) as caught:
        decode(b"ok\x81", "cp1252")

    assert "cp1252" in caught.value.problems[0].reason


def test_csv_with_semicolons_and_decimal_commas_in_cp1252() -> None:
    items = parse_file("gm_0301.csv", GERMAN_CSV.encode("cp1252"), drop_config())
    transactions = validate_batch(items)

    assert [item.line for item in items] == [2, 3]
    assert transactions[0].model_dump(mode="json")["material"] == "Schraube Ø5 Größe M"
    assert [t.model_dump(mode="json")["quantity"] for t in transactions] == ["1.5", "1234.125"]


def test_csv_with_byte_order_mark_reads_first_header() -> None:
    items = parse_file("gm_bom.csv", codecs.BOM_UTF8 + GERMAN_CSV.encode(), drop_config())

    assert items[0].value["transaction_id"] == "GM-1"


def test_csv_point_in_decimal_comma_file_is_rejected_with_line() -> None:
    text = GERMAN_CSV + "GM-3;Mutter;B3;1.500;ST;261;WH01;LINE1;2026-03-02T07:17:00+01:00\n"

    with pytest.raises(BatchInvalid) as caught:
        parse_file("gm_x.csv", text.encode(), drop_config())

    (problem,) = caught.value.problems
    assert (problem.line, problem.field) == (4, "quantity")
    assert "decimal_separator" in problem.reason


def test_csv_bad_line_in_the_middle_names_line_and_field() -> None:
    lines = GERMAN_CSV.splitlines()
    text = "\n".join([lines[0], lines[1], lines[1].replace("GM-1", "GM-9").replace("1,5", "viel"), lines[2]])

    with pytest.raises(BatchInvalid) as caught:
        validate_batch(parse_file("gm_x.csv", text.encode(), drop_config()))

    (problem,) = caught.value.problems
    assert (problem.line, problem.field) == (3, "quantity")


def test_csv_row_with_wrong_cell_count_names_line() -> None:
    with pytest.raises(BatchInvalid) as caught:
        parse_file("gm_x.csv", (GERMAN_CSV + "GM-4;Mutter\n").encode(), drop_config())

    assert caught.value.problems[0].line == 4
    assert "2 cells" in caught.value.problems[0].reason


def test_csv_unknown_header_lists_fields() -> None:
    with pytest.raises(BatchInvalid) as caught:
        parse_file("q.csv", b"transaction_id,charakteristik\nQ1,x\n", drop_config())

    assert "'charakteristik' is not a field of quality_result" in caught.value.problems[0].reason


def test_csv_empty_cells_leave_optional_fields_out() -> None:
    text = (
        "transaction_id,inspection_lot,batch,characteristic,value,unit,code,result,measured_at\n"
        "Q1,,B1,SURFACE,,,OK,accepted,2026-03-02T07:20:00Z\n"
    )

    (transaction,) = validate_batch(parse_file("q.csv", text.encode(), drop_config()))

    assert transaction.model_dump(mode="json")["inspection_lot"] is None


def test_csv_mapping_first_match_wins_ignoring_case() -> None:
    mappings = drop_config().csv

    assert find_csv_mapping("GM_1.CSV", mappings) is mappings[0]
    assert find_csv_mapping("other.csv", mappings) is mappings[1]
    assert find_csv_mapping("other.txt", mappings) is None


def test_json_array_items_carry_their_lines() -> None:
    text = "[\n" + ",\n".join(json.dumps(goods_movement(f"GM-{n}")) for n in range(3)) + "\n]"

    items = parse_file("batch.json", text.encode(), drop_config())

    assert [item.line for item in items] == [2, 3, 4]
    assert [item.index for item in items] == [0, 1, 2]


def test_json_lines_skip_blank_lines() -> None:
    text = json.dumps(goods_movement("GM-1")) + "\n\n" + json.dumps(goods_movement("GM-2")) + "\n"

    items = parse_file("batch.JSONL", text.encode("utf-16"), drop_config())

    assert [item.line for item in items] == [1, 3]


def test_json_lines_bad_line_is_named() -> None:
    text = json.dumps(goods_movement("GM-1")) + "\n{oops\n"

    with pytest.raises(BatchInvalid) as caught:
        parse_file("batch.ndjson", text.encode(), drop_config())

    assert caught.value.problems[0].line == 2


@pytest.mark.parametrize(
    ("name", "expected"),
    [("order.xml", "unsupported file type '.xml'"), ("README", "(no suffix)"), ("x.csv", "")],
)
def test_unsupported_or_unmapped_file_is_rejected(name: str, expected: str) -> None:
    config = drop_config(csv=[{"pattern": "gm_*.csv", "type": "goods_movement"}])

    with pytest.raises(BatchInvalid) as caught:
        parse_file(name, b"{}", config)

    assert expected in caught.value.problems[0].reason
