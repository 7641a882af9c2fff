"""Signed updates: verify a release, install it beside the running one, switch, and roll back.

A release is the one-file binary plus `manifest.json` (version, size, sha256, outbox schema
range) and `manifest.json.sig`, an Ed25519 signature over the manifest's exact bytes. The
decisions (manifest parsing, signature check, version order, rollout bucket) are pure
functions in `manifest` and `signing`; `install` carries them out on the install folder.
"""
