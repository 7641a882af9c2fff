"""Readiness probe used after a restart: the health server's /readyz, and the running version.

`/readyz` answering 200 means the agent opened its outbox, listens and started its sources.
Because the old process may still be answering for a moment, the probe also reads /status
and, when it names a version, requires the expected one.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from agent.update.install import ReadyProbe

PROBE_TIMEOUT_S = 2.0


def http_ready_probe(ready_url: str) -> ReadyProbe:
    """Build a probe for the agent whose /readyz is at `ready_url`; /status is looked up beside it."""
    status_url = urllib.parse.urljoin(ready_url, "status")

    def probe(expected_version: str) -> bool:
        if _get(ready_url) is None:
            return False
        body = _get(status_url)
        if body is None:
            return True
        running = reported_version(body)
        return running is None or running == expected_version

    return probe


def reported_version(body: bytes) -> str | None:
    """The version named in a /status body (`version`, or `agent.version`), or None."""
    try:
        data: Any = json.loads(body)
    except ValueError:
        return None
    if not isinstance(data, dict):
        return None
    version = data.get("version")
    if version is None and isinstance(data.get("agent"), dict):
        version = data["agent"].get("version")
    return str(version) if version is not None else None


def _get(url: str) -> bytes | None:
    try:
        with urllib.request.urlopen(url, timeout=PROBE_TIMEOUT_S) as response:
            return bytes(response.read(1024 * 1024)) if response.status == 200 else None
    except (urllib.error.URLError, OSError, ValueError):
        return None
