"""Building blocks shared by every configuration model: strict models and config-relative paths."""

from __future__ import annotations

import contextvars
import os
from pathlib import Path
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

# The folder of the configuration file being loaded; relative paths in it are resolved against
# this folder, so a configuration means the same thing whatever the working directory.
config_dir: contextvars.ContextVar[Path | None] = contextvars.ContextVar("config_dir", default=None)


def _resolve(path: Path) -> Path:
    base = config_dir.get()
    path = path.expanduser()
    if base is not None and not path.is_absolute():
        return Path(os.path.normpath(base / path))
    return path


ConfigPath = Annotated[Path, AfterValidator(_resolve)]
"""A path in the configuration; relative paths are taken from the configuration file's folder."""

SourceName = Annotated[
    str,
    Field(
        min_length=1,
        max_length=64,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$",
        description="letters, digits, '_', '.', '-'",
    ),
]


class StrictModel(BaseModel):
    """Frozen, and unknown keys are errors, so a typo in the file is never silently ignored."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class SourceConfigBase(StrictModel):
    name: SourceName
    enabled: bool = True
    reconnect_initial_s: float = Field(default=1.0, gt=0)
    reconnect_max_s: float = Field(default=60.0, gt=0)
