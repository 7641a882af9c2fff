"""The canonical MES transactions: one pydantic model per type, each a published JSON Schema.

Every transaction names its `type`, its `schema_version` and the MES `transaction_id`. The
record id is derived from the source name and that id, so a transaction sent twice is one record.

Quantities and measured values are decimals, kept exact: they are accepted as JSON numbers
(parsed as decimals, never as binary floats) or as strings, and are stored and forwarded as
strings in plain notation, such as "12.500". Times must carry a UTC offset and are stored in
UTC, as RFC 3339 with microseconds.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    PlainSerializer,
    StringConstraints,
    TypeAdapter,
    WithJsonSchema,
    model_validator,
)

from outbox.records import format_time

SCHEMA_VERSION = 1
MAX_DECIMAL_PLACES = 15


def _plain_decimal(value: Decimal) -> str:
    # Plain notation keeps the digits the MES sent: Decimal("1.50") stays "1.50" and 1E+3 becomes "1000".
    return format(value, "f")


def _drop_excess_zeros(value: Decimal) -> Decimal:
    # `decimal_places` compares the value, so 0E-1000000 passes it; without this its plain
    # form would be a million zeros long.
    exponent = value.as_tuple().exponent
    if isinstance(exponent, int) and exponent < -MAX_DECIMAL_PLACES:
        return value.normalize()
    return value


def _decimal_schema(minimum: int | None, example: str, *, exclusive: bool = False) -> WithJsonSchema:
    number: dict[str, Any] = {"type": "number"}
    sign = "-?"
    if minimum is not None:
        number["exclusiveMinimum" if exclusive else "minimum"] = minimum
        sign = ""
    text = {"type": "string", "pattern": rf"^\s*{sign}[0-9]+(\.[0-9]+)?([eE][+-]?[0-9]+)?\s*$"}
    # NOTE: the string form's pattern cannot express "greater than 0", so the agent alone rejects "0".
    return WithJsonSchema(
        {
            "anyOf": [number, text],
            "description": "decimal number, as a JSON number or a string"
            + (f", greater than {minimum}" if exclusive else ""),
            "examples": [example],
        }
    )


Quantity = Annotated[
    Decimal,
    Field(ge=0, max_digits=28, decimal_places=MAX_DECIMAL_PLACES, allow_inf_nan=False, examples=["12.5"]),
    AfterValidator(_drop_excess_zeros),
    PlainSerializer(_plain_decimal, return_type=str),
    _decimal_schema(0, "12.5"),
]
PositiveQuantity = Annotated[
    Decimal,
    Field(gt=0, max_digits=28, decimal_places=MAX_DECIMAL_PLACES, allow_inf_nan=False, examples=["12.5"]),
    AfterValidator(_drop_excess_zeros),
    PlainSerializer(_plain_decimal, return_type=str),
    _decimal_schema(0, "12.5", exclusive=True),
]
SignedDecimal = Annotated[
    Decimal,
    Field(max_digits=28, decimal_places=MAX_DECIMAL_PLACES, allow_inf_nan=False, examples=["-0.02"]),
    AfterValidator(_drop_excess_zeros),
    PlainSerializer(_plain_decimal, return_type=str),
    _decimal_schema(None, "-0.02"),
]
Time = Annotated[
    AwareDatetime,
    PlainSerializer(format_time, return_type=str),
    Field(examples=["2026-03-02T06:15:00+01:00"]),
]
Identifier = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=64)]
Unit = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=16)]
TransactionId = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=128, pattern=r"^[\x21-\x7e]+$"),
    Field(description="the MES transaction id: 1-128 printable ASCII characters without spaces"),
]


class TransactionBase(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    schema_version: Literal[1] = Field(default=1, description="version of this schema")
    transaction_id: TransactionId

    @property
    def event_time(self) -> datetime:
        """The time the transaction happened, used as the record's source time."""
        raise NotImplementedError


class ProductionConfirmation(TransactionBase):
    """Yield and scrap confirmed for one operation of a production order."""

    type: Literal["production_confirmation"]
    order: Identifier = Field(description="production order number", examples=["1000123"])
    operation: Identifier = Field(description="operation (routing step) number", examples=["0010"])
    work_center: Identifier = Field(examples=["PRESS-04"])
    yield_quantity: Quantity = Field(description="good quantity produced")
    scrap_quantity: Quantity = Field(default=Decimal(0), description="scrapped quantity")
    unit: Unit = Field(description="unit of both quantities", examples=["PC"])
    start_time: Time
    end_time: Time
    final: bool = Field(description="true if this confirmation completes the operation")

    # Model validators prefix their message with the field to blame, so errors name a field.
    @model_validator(mode="after")
    def _end_after_start(self) -> ProductionConfirmation:
        if self.end_time < self.start_time:
            raise ValueError(
                f"end_time: {self.end_time.isoformat()} is before start_time {self.start_time.isoformat()}"
            )
        return self

    @property
    def event_time(self) -> datetime:
        return self.end_time


class GoodsMovement(TransactionBase):
    """A quantity of material moved, issued or received between storage locations."""

    type: Literal["goods_movement"]
    material: Identifier = Field(description="material number", examples=["RM-4711"])
    batch: Identifier | None = Field(default=None, description="batch or lot number", examples=["B2026-0117"])
    quantity: PositiveQuantity
    unit: Unit = Field(examples=["KG"])
    movement_type: Identifier = Field(description="movement type code, such as 261 (goods issue to order)")
    from_location: Identifier | None = Field(default=None, description="storage location the goods leave")
    to_location: Identifier | None = Field(default=None, description="storage location the goods enter")
    posted_at: Time = Field(description="posting time")
    order: Identifier | None = Field(default=None, description="reference production order")

    @model_validator(mode="after")
    def _some_location(self) -> GoodsMovement:
        if self.from_location is None and self.to_location is None:
            raise ValueError("to_location: set from_location, to_location or both")
        return self

    @property
    def event_time(self) -> datetime:
        return self.posted_at


class QualityResult(TransactionBase):
    """One inspected characteristic: a measured value with its unit, or a code."""

    type: Literal["quality_result"]
    inspection_lot: Identifier | None = Field(default=None, examples=["890000001234"])
    batch: Identifier | None = Field(default=None, description="batch or lot number")
    characteristic: Identifier = Field(examples=["DIAMETER"])
    value: SignedDecimal | None = Field(default=None, description="measured value; needs unit")
    unit: Unit | None = Field(default=None, examples=["MM"])
    code: Identifier | None = Field(default=None, description="result code, instead of a value", examples=["OK"])
    result: Literal["accepted", "rejected"]
    measured_at: Time

    @model_validator(mode="after")
    def _value_or_code(self) -> QualityResult:
        if self.inspection_lot is None and self.batch is None:
            raise ValueError("inspection_lot: set inspection_lot, batch or both")
        if (self.value is None) == (self.code is None):
            raise ValueError("value: set either value (with unit) or code, not both and not neither")
        if self.value is not None and self.unit is None:
            raise ValueError("unit: a value needs its unit")
        return self

    @property
    def event_time(self) -> datetime:
        return self.measured_at


Transaction = ProductionConfirmation | GoodsMovement | QualityResult

TRANSACTION_TYPES: dict[str, type[TransactionBase]] = {
    "production_confirmation": ProductionConfirmation,
    "goods_movement": GoodsMovement,
    "quality_result": QualityResult,
}

TRANSACTION_ADAPTER: TypeAdapter[Transaction] = TypeAdapter(Annotated[Transaction, Field(discriminator="type")])


def json_schema(type_name: str) -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of one transaction type, as the MES should send it.

    Raises KeyError for an unknown type.
    """
    model = TRANSACTION_TYPES[type_name]
    schema = model.model_json_schema(mode="validation")
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": f"urn:plantgate:mes:{type_name}:v{SCHEMA_VERSION}",
        **schema,
    }
