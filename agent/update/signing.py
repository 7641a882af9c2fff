"""Ed25519 keys and signatures for release manifests (RFC 8032, via `cryptography`).

Public keys are pinned in the configuration as base64 text of the 32 raw key bytes. The
signature file contains the base64 text of the 64-byte signature over the exact bytes of
`manifest.json`. A key id is the first 8 bytes of the key's SHA-256, in hex, for messages.
"""

from __future__ import annotations

import base64
import binascii
import hashlib

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from agent.update.errors import UpdateRejected
from agent.update.manifest import MANIFEST_NAME, SIGNATURE_NAME


def decode_public_key(text: str) -> Ed25519PublicKey:
    """Decode a pinned key. Raises ValueError saying what is wrong with it."""
    try:
        raw = base64.b64decode(text.strip(), validate=True)
    except binascii.Error as error:
        raise ValueError(f"public key {text!r} is not base64 text: {error}") from None
    if len(raw) != 32:
        raise ValueError(f"public key {text!r} decodes to {len(raw)} bytes; an Ed25519 public key has 32")
    return Ed25519PublicKey.from_public_bytes(raw)


def encode_public_key(key: Ed25519PublicKey) -> str:
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.b64encode(raw).decode()


def key_id(key: Ed25519PublicKey) -> str:
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def sign(private_key: Ed25519PrivateKey, manifest_bytes: bytes) -> str:
    """Return the text of `manifest.json.sig` for these manifest bytes."""
    return base64.b64encode(private_key.sign(manifest_bytes)).decode() + "\n"


def verify(manifest_bytes: bytes, signature_text: str | None, pinned: list[str]) -> str:
    """Check the manifest's signature against the pinned keys; return the id of the key that
    signed it. Raises UpdateRejected when no key is pinned, the signature is missing or
    malformed, or no pinned key verifies it."""
    if not pinned:
        raise UpdateRejected(
            "no public keys are pinned in [update] public_keys, so no release can be verified; "
            "add the release signing key (packaging/release.py keygen prints it)"
        )
    if signature_text is None:
        raise UpdateRejected(f"the release has no {SIGNATURE_NAME}: unsigned releases are rejected")
    try:
        signature = base64.b64decode(signature_text.strip(), validate=True)
    except binascii.Error:
        raise UpdateRejected(f"{SIGNATURE_NAME} is not base64 text: the signature file is damaged") from None
    if len(signature) != 64:
        raise UpdateRejected(f"{SIGNATURE_NAME} contains {len(signature)} bytes; an Ed25519 signature has 64")

    keys = [decode_public_key(text) for text in pinned]
    for key in keys:
        try:
            key.verify(signature, manifest_bytes)
        except InvalidSignature:
            continue
        return key_id(key)
    ids = ", ".join(key_id(key) for key in keys)
    raise UpdateRejected(
        f"the signature on {MANIFEST_NAME} does not verify with any pinned public key (pinned: {ids}); "
        "either the release was signed with another key or the manifest was changed after signing. "
        "Install a release signed with a pinned key, or pin its key in [update] public_keys"
    )
