"""Turn pydantic validation errors into lines an engineer can act on.

Each line names the dotted key path, the bad value and what is allowed, for example
`sources[1].points[3].datatype: 'flaot32' is not one of int16, uint16, int32, uint32, float32`.
"""

from __future__ import annotations

import difflib
import re
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError


class ConfigError(Exception):
    """The configuration is invalid. `problems` contains one message per problem."""

    def __init__(self, path: Path | str, problems: list[str]) -> None:
        self.path = Path(path)
        self.problems = problems
        super().__init__(f"{self.path}: " + "; ".join(problems))

    def report(self) -> str:
        count = len(self.problems)
        header = f"{self.path}: {count} problem{'s' if count != 1 else ''}"
        return "\n".join([header, *(f"  {problem}" for problem in self.problems)])


def _model_classes(annotation: Any) -> list[type[BaseModel]]:
    """Return the model classes an annotation can contain, looking through lists, unions and Annotated."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    found: list[type[BaseModel]] = []
    for argument in typing.get_args(annotation):
        found.extend(_model_classes(argument))
    return found


def _tag_of(model: type[BaseModel]) -> str | None:
    field = model.model_fields.get("type")
    if field is None:
        return None
    arguments = typing.get_args(field.annotation)
    return str(arguments[0]) if len(arguments) == 1 else None


def _walk(root: type[BaseModel], loc: tuple[Any, ...]) -> tuple[list[str], type[BaseModel] | None]:
    """Follow an error location through the models.

    Returns the readable path parts (with union tags removed) and the model the location ends
    in, or None when it cannot be followed.
    """
    parts: list[str] = []
    models: list[type[BaseModel]] = [root]
    for element in loc:
        if isinstance(element, int):
            parts.append(f"[{element}]")
            continue
        tagged = [model for model in models if _tag_of(model) == element]
        if len(models) > 1 and tagged:
            # pydantic puts the tag of a discriminated union into the location; it is not a key.
            models = tagged
            continue
        parts.append(f".{element}" if parts else str(element))
        field = next((m.model_fields[element] for m in models if element in m.model_fields), None)
        models = _model_classes(field.annotation) if field is not None else []
    return parts, models[0] if len(models) == 1 else None


def _describe(error: Any, parent: type[BaseModel] | None, key: str) -> str:
    kind = error["type"]
    value = error.get("input")
    context = error.get("ctx") or {}

    if kind == "extra_forbidden":
        allowed = sorted(parent.model_fields) if parent else []
        close = difflib.get_close_matches(key, allowed, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        listing = f" (allowed: {', '.join(allowed)})" if allowed and not close else ""
        return f"unknown key{hint}{listing}"
    if kind == "missing":
        field = parent.model_fields.get(key) if parent else None
        if field is not None and _model_classes(field.annotation):
            return f"required section [{key}] is missing"
        return "required key is missing"
    if kind == "url_parsing":
        return f"{value!r} is not a valid URL; write it in full, such as 'https://host:port/path'"
    if kind in ("literal_error", "enum"):
        expected = str(context.get("expected", "")).replace("'", "").replace(" or ", ", ")
        return f"{value!r} is not one of {expected}"
    if kind == "union_tag_invalid":
        expected = str(context.get("expected_tags", "")).replace("'", "")
        return f"type {context.get('tag')!r} is not one of {expected}"
    if kind == "union_tag_not_found":
        return "missing key 'type' that names the source kind (opcua, modbus, ...)"
    if kind == "value_error":
        return str(error["msg"]).removeprefix("Value error, ")
    if kind == "string_pattern_mismatch":
        return f"{value!r} may contain only letters, digits, '_', '.' and '-', starting with a letter or digit"
    message = str(error["msg"])
    if isinstance(value, dict | list):
        return message
    if message[:2].istitle():
        message = message[:1].lower() + message[1:]
    return f"{value!r}: {message}"


# A model validator that checks several items puts the invalid key at the start of its message
# ("sources[1].name: ..."). Such a message is reported at that key.
_KEYED_MESSAGE = re.compile(r"^([A-Za-z_][\w.\[\]]*): (.*)$", re.DOTALL)


def format_validation_error(
    error: ValidationError, root: type[BaseModel], environ: Mapping[str, str] | None = None, prefix: str = ""
) -> list[str]:
    """One line per problem: `dotted.path[index].key: what is wrong with which value`.

    With `environ` and the settings' `prefix`, a problem whose value came from an environment
    variable names that variable, so the reader does not search the file for it.
    """
    lines: list[str] = []
    for item in error.errors(include_url=False):
        loc = tuple(item["loc"])
        parts, _ = _walk(root, loc)
        _, parent = _walk(root, loc[:-1]) if loc else ([], root)
        key = str(loc[-1]) if loc else ""
        path = "".join(parts) or "(top level)"
        message = _describe(item, parent, key)
        keyed = _KEYED_MESSAGE.match(message)
        if keyed and path == "(top level)":
            path, message = keyed.groups()
        variable = _environment_variable(loc, environ, prefix)
        if variable:
            message += f" (from environment variable {variable})"
        lines.append(f"{path}: {message}")
    return lines


def _environment_variable(loc: tuple[Any, ...], environ: Mapping[str, str] | None, prefix: str) -> str | None:
    if not environ or not loc or not all(isinstance(part, str) for part in loc):
        return None
    name = (prefix + "__".join(str(part) for part in loc)).upper()
    return next((key for key in environ if key.upper() == name), None)


def check_environment(root: type[BaseModel], environ: Mapping[str, str], prefix: str) -> list[tuple[str, str]]:
    """Problems with `prefix`-ed environment variables that name no setting, as (key path, message).

    pydantic-settings ignores such variables, so a typo in a variable name would otherwise be
    silently ignored, exactly what unknown keys in the file are rejected for.
    """
    problems: list[tuple[str, str]] = []
    for variable in sorted(environ):
        if not variable.upper().startswith(prefix.upper()):
            continue
        parts = variable[len(prefix) :].lower().split("__")
        model: type[BaseModel] | None = root
        for depth, part in enumerate(parts):
            if model is None:
                break
            fields = model.model_fields
            if part not in fields:
                close = difflib.get_close_matches(part, list(fields), n=1)
                hint = f"; did you mean {close[0]!r}?" if close else f" (allowed: {', '.join(fields)})"
                where = ".".join(parts[:depth]) or "top level"
                problems.append(
                    (
                        ".".join(parts[: depth + 1]),
                        f"environment variable {variable}: {part!r} is not a key of {where}{hint}",
                    )
                )
                break
            annotation = fields[part].annotation
            if typing.get_origin(annotation) is list and _model_classes(annotation):
                problems.append(
                    (
                        ".".join(parts[: depth + 1]),
                        f"environment variable {variable}: {part} is a list of tables; set it in the file, "
                        f"since environment variables can only override single keys",
                    )
                )
                break
            classes = _model_classes(annotation)
            model = classes[0] if len(classes) == 1 else None
    return problems
