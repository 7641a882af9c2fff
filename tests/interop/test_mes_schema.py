"""The published MES transaction schemas, checked by Ajv (npm `ajv`), a JSON Schema validator
nobody here wrote: it must compile each schema in strict mode and agree with the agent's own
validation on valid and invalid transactions.

Rules between fields (end_time not before start_time, a location, a value or a code) are not
expressed in the schemas, so these cases leave them out.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from drivers.mes.intake import BatchInvalid, Item, validate_item
from drivers.mes.transactions import json_schema
from tests.drivers.mes.conftest import goods_movement, production_confirmation, quality_result

pytestmark = pytest.mark.node

PROJECT = Path(__file__).resolve().parent / "mes-schema"

CASES: dict[str, list[dict[str, Any]]] = {
    "goods_movement": [
        goods_movement(),
        goods_movement(quantity=12.5),
        goods_movement(batch=None, order=None, from_location=None),
        goods_movement(quantity="abc"),
        goods_movement(quantity=-1),
        goods_movement(quantity="1,5"),
        goods_movement(posted_at="2026-03-02T07:15:00"),
        goods_movement(posted_at="2026-03-02"),
        goods_movement(material=4711),
        goods_movement(transaction_id="GM 1"),
        goods_movement(schema_version=2),
        goods_movement(colour="red"),
        {key: value for key, value in goods_movement().items() if key != "unit"},
    ],
    "production_confirmation": [
        production_confirmation(),
        production_confirmation(final=True, scrap_quantity=0),
        production_confirmation(final="maybe"),
        production_confirmation(yield_quantity=None),
        production_confirmation(unit="A-UNIT-NAME-LONGER-THAN-16"),
    ],
    "quality_result": [
        quality_result(),
        quality_result(value=None, unit=None, code="OK"),
        quality_result(value=-0.5),
        quality_result(result="passed"),
        quality_result(measured_at="yesterday"),
        quality_result(type="goods_movement"),
    ],
}


@pytest.fixture(scope="module")
def ajv_project() -> Path:
    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.skip("node and npm are not installed; they run Ajv, the independent JSON Schema validator")
    if not (PROJECT / "node_modules" / "ajv").is_dir():
        subprocess.run(
            ["npm", "ci", "--no-audit", "--no-fund"], cwd=PROJECT, check=True, capture_output=True, timeout=300
        )
    return PROJECT


def validate_with_ajv(project: Path, schema: dict[str, Any], documents: list[dict[str, Any]]) -> list[dict[str, Any]]:
    result = subprocess.run(
        ["node", str(project / "validate.js")],
        input=json.dumps({"schema": schema, "documents": documents}),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return list(json.loads(result.stdout))


def accepted_by_agent(document: dict[str, Any]) -> bool:
    try:
        validate_item(Item(document, index=None))
    except BatchInvalid:
        return False
    return True


@pytest.mark.parametrize("type_name", list(CASES))
def test_ajv_agrees_with_agent_on_transactions(ajv_project: Path, type_name: str) -> None:
    documents = CASES[type_name]

    results = validate_with_ajv(ajv_project, json_schema(type_name), documents)

    assert results[0]["valid"], results[0]["errors"]
    for document, result in zip(documents, results, strict=True):
        assert result["valid"] == accepted_by_agent(document), (document, result["errors"])
