"""The agent's configuration: one TOML file, with environment overrides under `PLANTGATE_`.

The file is validated once, at start. Every problem is reported with its dotted key path and
the bad value (see `agent.config_errors`); `plantgate run` and `plantgate check-config` share
this loader, so they reject the same files with the same messages.

Environment variables override the file: `PLANTGATE_CENTRAL__URL` sets `central.url`, with
`__` between nested keys.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import ByteSize, Field, HttpUrl, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from agent.config_errors import ConfigError, check_environment, format_validation_error
from drivers.config_base import ConfigPath, StrictModel, config_dir
from drivers.mes.config import MesSourceConfig
from drivers.modbus.config import ModbusSourceConfig
from drivers.opcua.config import OpcUaSourceConfig

DEFAULT_CONFIG_PATH = Path("/etc/plantgate/plantgate.toml")
ENV_PREFIX = "PLANTGATE_"

SourceConfig = Annotated[OpcUaSourceConfig | ModbusSourceConfig | MesSourceConfig, Field(discriminator="type")]


class AgentSection(StrictModel):
    site: str = Field(min_length=1, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    gateway_id: str = Field(min_length=1, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


class OutboxSection(StrictModel):
    path: ConfigPath = Path("/var/lib/plantgate/outbox.sqlite")
    max_bytes: ByteSize = Field(default=ByteSize(1024**3), gt=0, description="e.g. 1073741824 or '1GiB'")
    telemetry_share: float = Field(default=0.8, gt=0, le=1)
    delivered_retention_days: float = Field(default=7.0, ge=0)


class CentralSection(StrictModel):
    url: HttpUrl
    timeout_s: float = Field(default=30.0, gt=0)
    batch_max_records: int = Field(default=500, ge=1, le=100_000)
    batch_max_bytes: ByteSize = Field(default=ByteSize(1024**2), gt=0)
    gzip: bool = False
    token_file: ConfigPath | None = None
    verify_tls: bool = True
    ca_file: ConfigPath | None = None
    client_cert_file: ConfigPath | None = None
    client_key_file: ConfigPath | None = None
    already_delivered_statuses: list[Annotated[int, Field(ge=200, le=599)]] = [409]
    retry_initial_s: float = Field(default=1.0, gt=0)
    retry_max_s: float = Field(default=300.0, gt=0)
    idle_poll_s: float = Field(default=1.0, gt=0)

    @model_validator(mode="after")
    def _client_cert_pair(self) -> CentralSection:
        if (self.client_cert_file is None) != (self.client_key_file is None):
            raise ValueError("client_cert_file and client_key_file must be set together for mutual TLS")
        return self


class HealthSection(StrictModel):
    enabled: bool = True
    listen: str = "127.0.0.1"
    port: int = Field(default=8787, ge=0, le=65535)


class LoggingSection(StrictModel):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    format: Literal["auto", "json", "text"] = "auto"


class UpdateSection(StrictModel):
    """Signed updates (`plantgate update`). Every key is optional, so a file without the section is valid."""

    public_keys: list[str] = Field(default=[], description="base64 Ed25519 public keys that may sign releases")
    install_dir: ConfigPath = Path("/opt/plantgate")
    ready_timeout_s: float = Field(default=90.0, gt=0)
    restart_command: list[str] = Field(default=["systemctl", "restart", "plantgate.service"], min_length=1)
    ready_url: HttpUrl | None = None
    url: HttpUrl | None = None
    rollout_percent: int = Field(default=100, ge=0, le=100)
    keep_versions: int = Field(default=3, ge=2)

    @field_validator("public_keys")
    @classmethod
    def _keys_decode(cls, keys: list[str]) -> list[str]:
        from agent.update.signing import decode_public_key

        for key in keys:
            decode_public_key(key)
        return keys


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
    )

    agent: AgentSection
    outbox: OutboxSection = OutboxSection()
    central: CentralSection
    health: HealthSection = HealthSection()
    logging: LoggingSection = LoggingSection()
    update: UpdateSection = UpdateSection()
    sources: list[SourceConfig] = []

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The TOML file arrives as init arguments; the environment must win over it.
        return (env_settings, init_settings)

    @model_validator(mode="after")
    def _unique_source_names(self) -> Settings:
        seen: set[str] = set()
        for index, source in enumerate(self.sources):
            if source.name in seen:
                raise ValueError(f"sources[{index}].name: {source.name!r} is used twice; names must be unique")
            seen.add(source.name)
        return self


def read_toml(path: Path) -> dict[str, Any]:
    """Read a TOML file. Raises ConfigError naming the file and the position of a syntax error."""
    try:
        with path.open("rb") as file:
            return tomllib.load(file)
    except FileNotFoundError:
        raise ConfigError(path, [f"file not found: {path}; pass the configuration file with --config PATH"]) from None
    except PermissionError:
        raise ConfigError(path, [f"permission denied reading {path}"]) from None
    except IsADirectoryError:
        raise ConfigError(path, [f"{path} is a folder, not a TOML file"]) from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(path, [f"invalid TOML: {error}"]) from error
    except UnicodeDecodeError as error:
        raise ConfigError(path, [f"not UTF-8 text: {error}"]) from error


def load_config(path: Path | str, overrides: dict[str, Any] | None = None) -> Settings:
    """Load and validate the configuration file, applying `PLANTGATE_*` environment overrides.

    `overrides` replaces top-level sections of the file before validation (the demo uses it to
    point the outbox at a scratch folder). Raises ConfigError listing every problem.
    """
    path = Path(path)
    data = read_toml(path)
    if overrides:
        data = {**data, **overrides}

    environment = check_environment(Settings, os.environ, ENV_PREFIX)
    environment_problems = [message for _, message in environment]
    # A variable that names no setting can also make its whole section invalid, so report it once.
    explained = {key for key, _ in environment}
    token = config_dir.set(path.resolve().parent)
    try:
        settings = Settings(**data)
    except ValidationError as error:
        problems = format_validation_error(error, Settings, os.environ, ENV_PREFIX)
        problems = [line for line in problems if line.split(": ", 1)[0] not in explained]
        raise ConfigError(path, environment_problems + problems) from None
    finally:
        config_dir.reset(token)
    if environment_problems:
        raise ConfigError(path, environment_problems)
    return settings
