"""Configuration of an MES source: the local HTTP API, the file drop folder, or both."""

from __future__ import annotations

import codecs
import ipaddress
from typing import Literal

from pydantic import ByteSize, Field, field_validator, model_validator

from drivers.config_base import ConfigPath, SourceConfigBase, StrictModel
from drivers.mes.transactions import TRANSACTION_TYPES

TransactionType = Literal["production_confirmation", "goods_movement", "quality_result"]

# Suffixes that file transfer tools give a file while it is still being written.
DEFAULT_TEMPORARY_SUFFIXES = [".tmp", ".temp", ".part", ".partial", ".filepart", ".crdownload", "~"]


class MesHttpConfig(StrictModel):
    listen: str = Field(
        default="127.0.0.1",
        min_length=1,
        description="address to bind: loopback by default, or an address of the plant network interface",
    )
    port: int = Field(default=8788, ge=0, le=65535, description="TCP port; 0 picks a free one")
    token_file: ConfigPath = Field(description="file holding the bearer token the MES sends")
    max_body_bytes: ByteSize = Field(default=ByteSize(1024**2), gt=0, description="larger requests get 413")
    retry_after_s: int = Field(
        default=30, ge=1, le=3600, description="Retry-After seconds sent with 503 when the outbox is full"
    )

    @field_validator("listen")
    @classmethod
    def _ip_address(cls, value: str) -> str:
        try:
            ipaddress.ip_address(value)
        except ValueError:
            raise ValueError(
                f"{value!r} is not an IP address; use 127.0.0.1 or the address of the plant network "
                "interface, such as 192.168.10.5"
            ) from None
        return value

    @property
    def listens_everywhere(self) -> bool:
        return ipaddress.ip_address(self.listen).is_unspecified


class CsvMapping(StrictModel):
    """Mapping of CSV files whose name matches `pattern` to one transaction type."""

    pattern: str = Field(default="*.csv", min_length=1, description="file name glob, such as 'confirm_*.csv'")
    type: TransactionType
    delimiter: Literal[",", ";", "\t", "|"] = ","
    decimal_separator: Literal[".", ","] = "."
    columns: dict[str, str] = Field(
        default_factory=dict,
        description="header -> field name; headers not listed must already be field names",
    )

    @model_validator(mode="after")
    def _known_fields(self) -> CsvMapping:
        model = TRANSACTION_TYPES[self.type]
        allowed = set(model.model_fields) - {"type"}
        for header, field_name in self.columns.items():
            if field_name not in allowed:
                raise ValueError(
                    f"columns: {header!r} maps to {field_name!r}, which is not a field of {self.type} "
                    f"(fields: {', '.join(sorted(allowed))})"
                )
        if self.delimiter == self.decimal_separator:
            raise ValueError(f"delimiter and decimal_separator are both {self.delimiter!r}; they must differ")
        return self


class MesDropConfig(StrictModel):
    folder: ConfigPath = Field(description="watched folder; processed/ and error/ are created inside it")
    settle_s: float = Field(
        default=2.0, ge=0, description="a file is read once its size and mtime held still this long"
    )
    poll_interval_s: float = Field(default=1.0, gt=0)
    temporary_suffixes: list[str] = Field(default_factory=lambda: list(DEFAULT_TEMPORARY_SUFFIXES))
    legacy_encoding: str | None = Field(
        default=None,
        description="encoding of files without byte order mark that are not UTF-8, such as 'cp1252'",
    )
    max_file_bytes: ByteSize = Field(default=ByteSize(64 * 1024**2), gt=0)
    csv: list[CsvMapping] = Field(default_factory=list, description="first matching pattern wins")

    @field_validator("legacy_encoding")
    @classmethod
    def _known_encoding(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            codecs.lookup(value)
        except LookupError:
            raise ValueError(f"unknown encoding {value!r}; use a Python codec name such as 'cp1252'") from None
        return value


class MesSourceConfig(SourceConfigBase):
    type: Literal["mes"]
    http: MesHttpConfig | None = None
    drop: MesDropConfig | None = None

    @model_validator(mode="after")
    def _some_input(self) -> MesSourceConfig:
        if self.http is None and self.drop is None:
            raise ValueError("configure [http], [drop] or both; an MES source without an input receives nothing")
        return self

    def describe(self) -> str:
        parts = []
        if self.http is not None:
            parts.append(f"HTTP on {self.http.listen}:{self.http.port}")
        if self.drop is not None:
            parts.append(f"drop folder {self.drop.folder}")
        return ", ".join(parts)
