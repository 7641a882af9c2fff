"""The pure decisions of an update: manifest parsing, signatures, version order, rollout."""

from __future__ import annotations

import base64
import json
from collections import Counter
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.update import signing
from agent.update.errors import UpdateRejected
from agent.update.manifest import (
    Manifest,
    VersionDecision,
    check_arch,
    check_outbox_schema,
    decide_version,
    in_rollout,
    parse_manifest,
    parse_version,
    rollout_bucket,
)

GOOD: dict[str, Any] = {
    "format": 1,
    "product": "plantgate",
    "version": "0.2.0",
    "commit": "1a2b3c4d5e6f",
    "arch": "x86_64",
    "file": "plantgate-0.2.0-linux-x86_64",
    "size": 1234,
    "sha256": "ab" * 32,
    "min_outbox_schema": 1,
    "outbox_schema": 2,
    "created": "2026-12-04T20:00:00Z",
}


def manifest_bytes(**changes: Any) -> bytes:
    data = {**GOOD, **changes}
    return json.dumps({k: v for k, v in data.items() if v is not None}).encode()


def test_manifest_parses_good_document() -> None:
    manifest = parse_manifest(manifest_bytes())
    assert manifest.version == "0.2.0"
    assert manifest.size == 1234
    assert manifest.rollout_percent is None


def test_manifest_round_trips_through_to_json() -> None:
    manifest = parse_manifest(manifest_bytes(rollout_percent=25))
    assert parse_manifest(manifest.to_json()) == manifest


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"format": 2}, "format 2 is not supported"),
        ({"product": "other"}, "product 'other'"),
        ({"version": None}, "required field 'version' is missing"),
        ({"version": "2.0"}, "version '2.0' is not of the form"),
        ({"size": "1234"}, "size '1234' must be a int"),
        ({"size": True}, "size True must be a int"),
        ({"size": 0}, "size 0 must be positive"),
        ({"sha256": "xyz"}, "sha256 'xyz' is not 64 hex digits"),
        ({"file": "../plantgate"}, "must be a plain file name"),
        ({"min_outbox_schema": 3}, "outbox schema range 3..2 is empty"),
        ({"rollout_percent": 101}, "rollout_percent 101 is not within 0..100"),
    ],
)
def test_manifest_rejects_bad_field(changes: dict[str, Any], expected: str) -> None:
    with pytest.raises(UpdateRejected, match=expected.replace(".", r"\.").replace("(", r"\(")):
        parse_manifest(manifest_bytes(**changes))


@pytest.mark.parametrize("raw", [b"not json", b"[1, 2]", b"\xff\xfe"])
def test_manifest_rejects_non_object(raw: bytes) -> None:
    with pytest.raises(UpdateRejected, match=r"manifest\.json"):
        parse_manifest(raw)


@pytest.mark.parametrize(
    ("lower", "higher"),
    [
        ("0.1.0", "0.2.0"),
        ("0.9.0", "0.10.0"),
        ("1.2.3", "1.2.4"),
        ("1.0.0a1", "1.0.0b1"),
        ("1.0.0b2", "1.0.0rc1"),
        ("1.0.0rc1", "1.0.0"),
        ("0.9.9", "1.0.0rc1"),
    ],
)
def test_version_order(lower: str, higher: str) -> None:
    assert parse_version(lower) < parse_version(higher)


@pytest.mark.parametrize("text", ["1.0", "v1.0.0", "1.0.0-rc1", "1.0.0.post1", ""])
def test_version_rejects_other_forms(text: str) -> None:
    with pytest.raises(ValueError, match="is not of the form"):
        parse_version(text)


@pytest.mark.parametrize(
    ("current", "offered", "allow", "expected"),
    [
        (None, "0.1.0", False, VersionDecision.UPGRADE),
        ("0.1.0", "0.2.0", False, VersionDecision.UPGRADE),
        ("0.2.0", "0.2.0", False, VersionDecision.SAME),
        ("0.2.0", "0.1.0", True, VersionDecision.DOWNGRADE),
    ],
)
def test_decide_version_table(current: str | None, offered: str, allow: bool, expected: VersionDecision) -> None:
    assert decide_version(current, offered, allow_downgrade=allow) is expected


def test_decide_version_refuses_downgrade() -> None:
    with pytest.raises(UpdateRejected, match=r"older than the installed 0\.2\.0; pass --allow-downgrade"):
        decide_version("0.2.0", "0.1.0", allow_downgrade=False)


@pytest.mark.parametrize(
    ("on_disk", "expected"),
    [
        (None, None),
        (0, None),
        (1, None),
        (2, None),
        (3, "supports up to version 2 and would refuse to start"),
    ],
)
def test_outbox_schema_compatibility(on_disk: int | None, expected: str | None) -> None:
    manifest = parse_manifest(manifest_bytes())
    if expected is None:
        check_outbox_schema(manifest, on_disk)
    else:
        with pytest.raises(UpdateRejected, match=expected):
            check_outbox_schema(manifest, on_disk)


def test_outbox_schema_below_migration_range_refused() -> None:
    manifest = parse_manifest(manifest_bytes(min_outbox_schema=2))
    with pytest.raises(UpdateRejected, match="migrates only from version 2"):
        check_outbox_schema(manifest, 1)


def test_arch_mismatch_refused() -> None:
    with pytest.raises(UpdateRejected, match="built for x86_64, but this gateway is aarch64"):
        check_arch(parse_manifest(manifest_bytes()), "aarch64")


def test_rollout_bucket_stable_and_spread() -> None:
    assert rollout_bucket("gw-press-01") == rollout_bucket("gw-press-01")
    buckets = Counter(rollout_bucket(f"gw-{n}") for n in range(10_000))
    assert set(buckets) == set(range(100))
    assert max(buckets.values()) < 2 * min(buckets.values())


@pytest.mark.parametrize("percent", [0, 1, 10, 50, 99, 100])
def test_rollout_percent_selects_share(percent: int) -> None:
    chosen = sum(in_rollout(f"gw-{n}", percent) for n in range(10_000))
    assert abs(chosen - percent * 100) <= 300
    if percent == 0:
        assert chosen == 0
    if percent == 100:
        assert chosen == 10_000


def test_rollout_raising_percent_only_adds_gateways() -> None:
    gateways = [f"gw-{n}" for n in range(1000)]
    at_10 = {g for g in gateways if in_rollout(g, 10)}
    at_50 = {g for g in gateways if in_rollout(g, 50)}
    assert at_10 <= at_50


@pytest.fixture
def key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def test_signature_verifies_with_pinned_key(key: Ed25519PrivateKey) -> None:
    raw = manifest_bytes()
    pinned = [
        signing.encode_public_key(Ed25519PrivateKey.generate().public_key()),
        signing.encode_public_key(key.public_key()),
    ]
    assert signing.verify(raw, signing.sign(key, raw), pinned) == signing.key_id(key.public_key())


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("wrong key", "does not verify with any pinned public key"),
        ("changed byte", "does not verify with any pinned public key"),
        ("unsigned", "unsigned releases are rejected"),
        ("no pinned keys", "no public keys are pinned"),
        ("not base64", "not base64 text"),
        ("short signature", "an Ed25519 signature has 64"),
    ],
)
def test_signature_refusals(key: Ed25519PrivateKey, case: str, expected: str) -> None:
    raw = manifest_bytes()
    signature: str | None = signing.sign(key, raw)
    pinned = [signing.encode_public_key(key.public_key())]
    if case == "wrong key":
        signature = signing.sign(Ed25519PrivateKey.generate(), raw)
    elif case == "changed byte":
        raw = raw.replace(b"0.2.0", b"0.2.1", 1)
    elif case == "unsigned":
        signature = None
    elif case == "no pinned keys":
        pinned = []
    elif case == "not base64":
        signature = "!!!"
    elif case == "short signature":
        signature = base64.b64encode(b"x" * 10).decode()

    with pytest.raises(UpdateRejected, match=expected):
        signing.verify(raw, signature, pinned)


@pytest.mark.parametrize(
    ("text", "expected"),
    [("abc", "not base64 text"), (base64.b64encode(b"x" * 31).decode(), "decodes to 31 bytes")],
)
def test_public_key_decode_errors(text: str, expected: str) -> None:
    with pytest.raises(ValueError, match=expected):
        signing.decode_public_key(text)


def test_manifest_dataclass_is_frozen() -> None:
    manifest = parse_manifest(manifest_bytes())
    assert isinstance(manifest, Manifest)
    with pytest.raises(AttributeError):
        manifest.version = "9.9.9"  # type: ignore[misc]
