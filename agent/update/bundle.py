"""Read a release from a bundle file, a folder or a URL, and verify it before anything changes.

A bundle is an uncompressed tar (the binary is already compressed) holding `manifest.json`,
`manifest.json.sig` and the binary named by the manifest's `file`. A folder with the same
three files works the same way. A URL names either a bundle or a `manifest.json`, in which
case the signature is fetched from the same URL plus `.sig` and the binary from the
manifest's `file` next to it.

Every byte is checked before it is used: the signature over the manifest first, then the
binary's size and SHA-256 against the signed manifest.
"""

from __future__ import annotations

import hashlib
import shutil
import tarfile
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from agent.update import signing
from agent.update.errors import UpdateRejected
from agent.update.manifest import MANIFEST_NAME, SIGNATURE_NAME, Manifest, parse_manifest

MAX_MANIFEST_BYTES = 64 * 1024
CHUNK = 1024 * 1024
DOWNLOAD_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class SignedManifest:
    manifest: Manifest
    raw: bytes
    signature: str
    key_id: str


@dataclass(frozen=True)
class VerifiedRelease:
    signed: SignedManifest
    binary: Path

    @property
    def manifest(self) -> Manifest:
        return self.signed.manifest


def is_url(source: str) -> bool:
    return urllib.parse.urlsplit(source).scheme in ("http", "https")


def check_manifest(raw: bytes, signature: str | None, pinned: list[str]) -> SignedManifest:
    """Verify the signature, then parse. The order matters: unsigned bytes are never parsed."""
    signer = signing.verify(raw, signature, pinned)
    return SignedManifest(parse_manifest(raw), raw, signature or "", signer)


def check_binary(path: Path, manifest: Manifest) -> None:
    """Raise UpdateRejected unless the file has exactly the signed size and SHA-256."""
    size = path.stat().st_size
    if size != manifest.size:
        raise UpdateRejected(
            f"binary {manifest.file} is {size} bytes, but the signed manifest states {manifest.size}; "
            "the file is truncated or was replaced. Download the release again"
        )
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while chunk := file.read(CHUNK):
            digest.update(chunk)
    if digest.hexdigest() != manifest.sha256:
        raise UpdateRejected(
            f"binary {manifest.file} has sha256 {digest.hexdigest()}, but the signed manifest states "
            f"{manifest.sha256}; the file was changed after signing or damaged in transit. "
            "Download the release again"
        )


def load_release(source: str, staging: Path, pinned: list[str]) -> VerifiedRelease:
    """Fetch the release into `staging` (an empty folder) and verify it. Raises UpdateRejected."""
    if is_url(source):
        if urllib.parse.urlsplit(source).path.endswith(".json"):
            signed = fetch_signed_manifest(source, pinned)
            return VerifiedRelease(signed, fetch_binary(source, signed.manifest, staging))
        bundle = staging / "bundle.tar"
        _download(source, bundle, limit=None)
        return _from_bundle(bundle, staging, pinned)

    path = Path(source)
    if path.is_dir():
        return _from_folder(path, pinned)
    if path.is_file():
        return _from_bundle(path, staging, pinned)
    raise UpdateRejected(f"release {source} not found: pass a bundle file, a release folder or an http(s) URL")


def fetch_signed_manifest(url: str, pinned: list[str]) -> SignedManifest:
    raw = _read_url(url, MAX_MANIFEST_BYTES)
    try:
        signature: str | None = _read_url(url + ".sig", 1024).decode("ascii", "replace")
    except UpdateRejected:
        signature = None
    return check_manifest(raw, signature, pinned)


def fetch_binary(manifest_url: str, manifest: Manifest, staging: Path) -> Path:
    target = staging / manifest.file
    _download(urllib.parse.urljoin(manifest_url, manifest.file), target, limit=manifest.size)
    check_binary(target, manifest)
    return target


def _from_folder(folder: Path, pinned: list[str]) -> VerifiedRelease:
    manifest_path = folder / MANIFEST_NAME
    if not manifest_path.is_file():
        raise UpdateRejected(f"release folder {folder} has no {MANIFEST_NAME}")
    signature_path = folder / SIGNATURE_NAME
    signature = signature_path.read_text("ascii", "replace") if signature_path.is_file() else None
    signed = check_manifest(manifest_path.read_bytes()[: MAX_MANIFEST_BYTES + 1], signature, pinned)
    binary = folder / signed.manifest.file
    if not binary.is_file():
        raise UpdateRejected(f"release folder {folder} has no binary {signed.manifest.file}")
    check_binary(binary, signed.manifest)
    return VerifiedRelease(signed, binary)


def _from_bundle(bundle: Path, staging: Path, pinned: list[str]) -> VerifiedRelease:
    try:
        with tarfile.open(bundle, "r:*") as archive:
            raw = _member_bytes(archive, MANIFEST_NAME, MAX_MANIFEST_BYTES)
            if raw is None:
                raise UpdateRejected(f"bundle {bundle} has no {MANIFEST_NAME}; is it a plantgate release?")
            signature_bytes = _member_bytes(archive, SIGNATURE_NAME, 1024)
            signature = None if signature_bytes is None else signature_bytes.decode("ascii", "replace")
            signed = check_manifest(raw, signature, pinned)

            # Only the member the signed manifest names is extracted, by name and as a plain
            # file, so a crafted bundle cannot write outside the staging folder.
            member = _regular_member(archive, signed.manifest.file)
            if member is None:
                raise UpdateRejected(f"bundle {bundle} has no binary {signed.manifest.file}")
            source = archive.extractfile(member)
            assert source is not None  # a regular file always has data
            target = staging / signed.manifest.file
            with source, target.open("wb") as out:
                shutil.copyfileobj(source, out, CHUNK)
    except tarfile.TarError as error:
        raise UpdateRejected(f"bundle {bundle} is not a readable tar file: {error}") from error
    check_binary(target, signed.manifest)
    return VerifiedRelease(signed, target)


def _regular_member(archive: tarfile.TarFile, name: str) -> tarfile.TarInfo | None:
    try:
        member = archive.getmember(name)
    except KeyError:
        return None
    return member if member.isfile() else None


def _member_bytes(archive: tarfile.TarFile, name: str, limit: int) -> bytes | None:
    member = _regular_member(archive, name)
    if member is None:
        return None
    if member.size > limit:
        raise UpdateRejected(f"{name} in the bundle is {member.size} bytes, more than the {limit} allowed")
    data = archive.extractfile(member)
    assert data is not None
    with data:
        return data.read()


def _read_url(url: str, limit: int) -> bytes:
    try:
        with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response:
            data: bytes = response.read(limit + 1)
    except urllib.error.HTTPError as error:
        raise UpdateRejected(f"GET {url} failed: HTTP {error.code} {error.reason}") from error
    except (urllib.error.URLError, OSError) as error:
        raise UpdateRejected(f"GET {url} failed: {error}; check [update] url and the WAN") from error
    if len(data) > limit:
        raise UpdateRejected(f"GET {url} returned more than {limit} bytes; expected a plantgate {MANIFEST_NAME}")
    return data


def _download(url: str, target: Path, limit: int | None) -> None:
    written = 0
    try:
        with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response, target.open("wb") as out:
            while chunk := response.read(CHUNK):
                written += len(chunk)
                if limit is not None and written > limit:
                    raise UpdateRejected(f"GET {url} returned more than the {limit} bytes the manifest names")
                out.write(chunk)
    except urllib.error.HTTPError as error:
        raise UpdateRejected(f"GET {url} failed: HTTP {error.code} {error.reason}") from error
    except (urllib.error.URLError, OSError) as error:
        raise UpdateRejected(f"GET {url} failed: {error}; check the URL and the WAN") from error
