"""Transaction models, records and the published schemas."""

from __future__ import annotations

import json
import re
import subprocess
from datetime import UTC, datetime
from decimal import Decimal

import pytest

from drivers.mes.intake import BatchInvalid, Item, to_record, transaction_record_id, validate_batch, validate_item
from drivers.mes.transactions import TRANSACTION_TYPES, json_schema
from outbox.records import Lane, record_id
from tests.conftest import REPO_ROOT, plantgate_command
from tests.drivers.mes.conftest import goods_movement, production_confirmation, quality_result

CAPTURED_AT = datetime(2026, 3, 2, 8, 0, tzinfo=UTC)


def reasons(value: dict) -> dict[str, str]:
    with pytest.raises(BatchInvalid) as caught:
        validate_item(Item(value, index=None))
    return {problem.field: problem.reason for problem in caught.value.problems}


@pytest.mark.parametrize("example", [goods_movement(), production_confirmation(), quality_result()])
def test_examples_validate(example: dict) -> None:
    transaction = validate_item(Item(example, index=None))

    assert transaction.type == example["type"]
    assert transaction.schema_version == 1


@pytest.mark.parametrize(
    ("value", "field", "expected"),
    [
        (goods_movement(quantity="0"), "quantity", "greater than 0"),
        (goods_movement(quantity="1,5"), "quantity", "not a decimal number"),
        (goods_movement(quantity="NaN"), "quantity", "finite"),
        (goods_movement(posted_at="2026-03-02T07:15:00"), "posted_at", "no UTC offset"),
        (goods_movement(posted_at="yesterday"), "posted_at", "not an RFC 3339 time"),
        (goods_movement(from_location=None, to_location=None), "to_location", "from_location, to_location"),
        (goods_movement(material=4711), "material", "not a string"),
        (goods_movement(transaction_id="GM 1"), "transaction_id", "printable ASCII"),
        (goods_movement(transaction_id=""), "transaction_id", "at least 1"),
        (goods_movement(schema_version=2), "schema_version", "not one of 1"),
        (goods_movement(type="goods_movment"), "type", "not one of production_confirmation"),
        (production_confirmation(final="maybe"), "final", "boolean"),
        (production_confirmation(end_time="2026-03-02T05:59:00+01:00"), "end_time", "before start_time"),
        (quality_result(code="OK"), "value", "either value"),
        (quality_result(unit=None), "unit", "needs its unit"),
        (quality_result(inspection_lot=None), "inspection_lot", "inspection_lot, batch"),
        (quality_result(result="passed"), "result", "not one of accepted, rejected"),
        (quality_result(value="1.0000000000000001"), "value", "decimal places"),
    ],
)
def test_invalid_field_is_named_with_reason(value: dict, field: str, expected: str) -> None:
    found = reasons(value)

    assert field in found
    assert expected in found[field]


def test_missing_type_names_the_types() -> None:
    value = goods_movement()
    del value["type"]

    assert "goods_movement" in reasons(value)["type"]


def test_quality_result_with_code_needs_no_unit() -> None:
    transaction = validate_item(Item(quality_result(value=None, unit=None, code="OK"), index=None))

    assert transaction.model_dump(mode="json")["code"] == "OK"


def test_record_carries_exact_decimals_and_utc_times() -> None:
    transaction = validate_item(Item(goods_movement(quantity=Decimal("12.500")), index=None))

    record = to_record("mes-line1", transaction, CAPTURED_AT)

    assert record.id == record_id("mes-line1", "GM-1")
    assert record.lane == Lane.TRANSACTION
    assert record.kind == "mes.goods_movement"
    assert record.subject == "goods_movement"
    assert record.payload["quantity"] == "12.500"
    assert record.payload["posted_at"] == "2026-03-02T06:15:00.000000Z"
    assert record.payload["schema_version"] == 1
    assert record.source_time == datetime(2026, 3, 2, 6, 15, tzinfo=UTC)


def test_record_id_is_the_same_for_a_resend() -> None:
    assert transaction_record_id("mes-line1", "GM-1") == transaction_record_id("mes-line1", "GM-1")
    assert transaction_record_id("mes-line1", "GM-1") != transaction_record_id("mes-line2", "GM-1")


def test_batch_accepts_identical_resend_of_an_id() -> None:
    transactions = validate_batch([Item(goods_movement(), index=0), Item(goods_movement(), index=1)])

    assert len(transactions) == 2


def test_batch_rejects_one_id_with_two_contents() -> None:
    with pytest.raises(BatchInvalid) as caught:
        validate_batch([Item(goods_movement(), index=0), Item(goods_movement(quantity="3"), index=1)])

    (problem,) = caught.value.problems
    assert problem.index == 1
    assert problem.field == "transaction_id"


@pytest.mark.parametrize("type_name", list(TRANSACTION_TYPES))
def test_schema_lists_every_field_and_forbids_others(type_name: str) -> None:
    schema = json_schema(type_name)

    assert schema["additionalProperties"] is False
    assert set(schema["properties"]) == set(TRANSACTION_TYPES[type_name].model_fields)
    assert "transaction_id" in schema["required"]


def test_schema_command_prints_the_schema() -> None:
    result = subprocess.run(
        plantgate_command("schema", "production_confirmation"),
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == json_schema("production_confirmation")


def test_schema_command_rejects_unknown_type() -> None:
    result = subprocess.run(
        plantgate_command("schema", "goods_receipt"),
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert result.returncode == 2
    assert "goods_movement" in result.stderr


@pytest.mark.parametrize("type_name", list(TRANSACTION_TYPES))
def test_docs_list_every_field_with_an_example(type_name: str) -> None:
    docs = (REPO_ROOT / "docs" / "mes.md").read_text(encoding="utf-8")
    section = docs.split(f"### `{type_name}`", 1)[1].split("\n### ", 1)[0]
    rows = {match.group(1): match.group(2) for match in re.finditer(r"^\| `(\w+)` \|(.*)$", section, re.MULTILINE)}

    assert set(rows) == set(TRANSACTION_TYPES[type_name].model_fields)
    for field_name, row in rows.items():
        example = row.rstrip(" |").rsplit("|", 1)[-1].strip()
        assert example, f"{type_name}.{field_name} has no example in docs/mes.md"
