"""Logging setup, in one place: text on a terminal, JSON lines otherwise (the journal, files).

Modules log with `logging.getLogger(__name__)` and put context (source, device, batch) in
`extra={...}`; both formats print those fields.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any

# Attributes every LogRecord has; anything else on a record came from `extra=`.
_STANDARD_ATTRIBUTES = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}


def _context(record: logging.LogRecord) -> dict[str, Any]:
    return {key: value for key, value in vars(record).items() if key not in _STANDARD_ATTRIBUTES}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            **_context(record),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s", "%H:%M:%S")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        context = _context(record)
        if context:
            text += " " + " ".join(f"{key}={value}" for key, value in context.items())
        return text


def setup_logging(level: str = "INFO", format: str = "auto", stream: Any = None) -> None:
    """Install the one handler of the process. `format` is 'auto', 'json' or 'text'."""
    stream = stream or sys.stderr
    if format == "auto":
        format = "text" if stream.isatty() else "json"
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter() if format == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # Library chatter (per-request and keepalive lines) stays out of INFO. asyncua logs a WARNING
    # for every step of a lost connection; the OPC UA source logs the state change once instead.
    for noisy, library_level in (
        ("asyncua", logging.ERROR),
        ("pymodbus", logging.WARNING),
        ("aiohttp.access", logging.WARNING),
    ):
        logging.getLogger(noisy).setLevel(max(library_level, root.level))
