"""The release manifest and the pure decisions made on it: version order, install or not,
outbox compatibility and rollout membership.

`manifest.json` is a JSON object:

    {"format": 1, "product": "plantgate", "version": "0.2.0", "commit": "1a2b3c4d5e6f",
     "arch": "x86_64", "file": "plantgate-0.2.0-linux-x86_64", "size": 41234567,
     "sha256": "<64 hex digits>", "min_outbox_schema": 1, "outbox_schema": 1,
     "created": "2026-12-04T20:00:00Z", "rollout_percent": 100}

`outbox_schema` is the schema version the binary writes; `min_outbox_schema` is the oldest
schema it can migrate forward. `rollout_percent` is optional.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from enum import Enum
from typing import Any

from agent.update.errors import UpdateRejected

MANIFEST_FORMAT = 1
PRODUCT = "plantgate"
MANIFEST_NAME = "manifest.json"
SIGNATURE_NAME = "manifest.json.sig"

# PEP 440 subset used by plantgate releases: 1.2.3, optionally followed by a1, b2 or rc3.
_VERSION = re.compile(r"^(\d+)\.(\d+)\.(\d+)(?:(a|b|rc)(\d+))?$")
_PRE_ORDER = {"a": 0, "b": 1, "rc": 2}
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_FILE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")


def parse_version(text: str) -> tuple[int, ...]:
    """Return a sort key for a release version; a pre-release sorts before its final release.

    Raises ValueError for anything but `N.N.N` with an optional `aN`, `bN` or `rcN` suffix.
    """
    match = _VERSION.match(text)
    if match is None:
        raise ValueError(f"version {text!r} is not of the form 1.2.3 or 1.2.3rc1")
    major, minor, patch, pre, pre_number = match.groups()
    # A final release sorts after every pre-release of the same number: (3, 0) > (2, n).
    pre_key = (_PRE_ORDER[pre], int(pre_number)) if pre else (3, 0)
    return (int(major), int(minor), int(patch), *pre_key)


@dataclass(frozen=True)
class Manifest:
    version: str
    commit: str
    arch: str
    file: str
    size: int
    sha256: str
    min_outbox_schema: int
    outbox_schema: int
    created: str
    rollout_percent: int | None = None

    def to_json(self) -> bytes:
        """Serialise for signing: keys sorted, so the same manifest always gives the same bytes."""
        data: dict[str, Any] = {"format": MANIFEST_FORMAT, "product": PRODUCT, **self.__dict__}
        if self.rollout_percent is None:
            del data["rollout_percent"]
        return (json.dumps(data, indent=2, sort_keys=True) + "\n").encode()


def parse_manifest(raw: bytes) -> Manifest:
    """Parse and check manifest bytes (already signature-checked). Raises UpdateRejected naming
    the field and the value at fault."""
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise UpdateRejected(f"{MANIFEST_NAME} is not valid JSON: {error}") from error
    if not isinstance(data, dict):
        raise UpdateRejected(f"{MANIFEST_NAME} must be a JSON object, not {type(data).__name__}")

    if data.get("format") != MANIFEST_FORMAT:
        raise UpdateRejected(
            f"{MANIFEST_NAME}: format {data.get('format')!r} is not supported (expected {MANIFEST_FORMAT}); "
            "install a release made for this plantgate version, or update in steps"
        )
    if data.get("product") != PRODUCT:
        raise UpdateRejected(f"{MANIFEST_NAME}: product {data.get('product')!r} is not {PRODUCT!r}")

    def field(name: str, kind: type, default: Any = ...) -> Any:
        if name not in data:
            if default is not ...:
                return default
            raise UpdateRejected(f"{MANIFEST_NAME}: required field {name!r} is missing")
        value = data[name]
        if (kind is int and isinstance(value, bool)) or not isinstance(value, kind):
            raise UpdateRejected(f"{MANIFEST_NAME}: {name} {value!r} must be a {kind.__name__}")
        return value

    manifest = Manifest(
        version=field("version", str),
        commit=field("commit", str),
        arch=field("arch", str),
        file=field("file", str),
        size=field("size", int),
        sha256=field("sha256", str).lower(),
        min_outbox_schema=field("min_outbox_schema", int),
        outbox_schema=field("outbox_schema", int),
        created=field("created", str),
        rollout_percent=field("rollout_percent", int, None),
    )

    try:
        parse_version(manifest.version)
    except ValueError as error:
        raise UpdateRejected(f"{MANIFEST_NAME}: {error}") from None
    if not _SHA256.match(manifest.sha256):
        raise UpdateRejected(f"{MANIFEST_NAME}: sha256 {manifest.sha256!r} is not 64 hex digits")
    if not _FILE_NAME.match(manifest.file):
        raise UpdateRejected(f"{MANIFEST_NAME}: file {manifest.file!r} must be a plain file name, not a path")
    if manifest.size <= 0:
        raise UpdateRejected(f"{MANIFEST_NAME}: size {manifest.size} must be positive")
    if not 1 <= manifest.min_outbox_schema <= manifest.outbox_schema:
        raise UpdateRejected(
            f"{MANIFEST_NAME}: outbox schema range {manifest.min_outbox_schema}..{manifest.outbox_schema} is empty"
        )
    if manifest.rollout_percent is not None and not 0 <= manifest.rollout_percent <= 100:
        raise UpdateRejected(f"{MANIFEST_NAME}: rollout_percent {manifest.rollout_percent} is not within 0..100")
    return manifest


class VersionDecision(Enum):
    UPGRADE = "upgrade"
    SAME = "same"
    DOWNGRADE = "downgrade"


def decide_version(current: str | None, offered: str, *, allow_downgrade: bool) -> VersionDecision:
    """Compare the offered release with the installed one. Raises UpdateRejected for a lower
    version unless `allow_downgrade`. With nothing installed, every version is an upgrade."""
    if current is None:
        return VersionDecision.UPGRADE
    order = (parse_version(offered) > parse_version(current)) - (parse_version(offered) < parse_version(current))
    if order > 0:
        return VersionDecision.UPGRADE
    if order == 0:
        return VersionDecision.SAME
    if not allow_downgrade:
        raise UpdateRejected(
            f"release {offered} is older than the installed {current}; pass --allow-downgrade to install it anyway"
        )
    return VersionDecision.DOWNGRADE


def check_outbox_schema(manifest: Manifest, outbox_schema: int | None) -> None:
    """Raise UpdateRejected if the release cannot open the outbox as it is on disk now.

    `outbox_schema` is the file's `user_version`, or None when no outbox exists yet.
    """
    if outbox_schema is None or outbox_schema == 0:
        return
    if outbox_schema > manifest.outbox_schema:
        raise UpdateRejected(
            f"the outbox has schema version {outbox_schema}, but release {manifest.version} supports up to "
            f"version {manifest.outbox_schema} and would refuse to start; install a release whose manifest "
            f"has outbox_schema >= {outbox_schema}"
        )
    if outbox_schema < manifest.min_outbox_schema:
        raise UpdateRejected(
            f"the outbox has schema version {outbox_schema}, but release {manifest.version} migrates only "
            f"from version {manifest.min_outbox_schema}; install an intermediate release first"
        )


def check_arch(manifest: Manifest, machine: str) -> None:
    if manifest.arch != machine:
        raise UpdateRejected(
            f"release {manifest.version} is built for {manifest.arch}, but this gateway is {machine}; "
            f"install the {machine} build"
        )


def rollout_bucket(gateway_id: str) -> int:
    """Return the gateway's place 0..99 in every rollout, from a hash of its id.

    The bucket does not change between releases, so the same gateways always go first: a
    release at 10 % reaches buckets 0..9, and raising the percentage only adds gateways.
    """
    digest = hashlib.sha256(gateway_id.encode()).digest()
    return int.from_bytes(digest[:8], "big") % 100


def in_rollout(gateway_id: str, percent: int) -> bool:
    return rollout_bucket(gateway_id) < percent
