"""Make a release signing key pair, and sign a built binary into a release bundle.

    python packaging/release.py keygen --out release-key.pem
    python packaging/release.py sign dist/plantgate-0.2.0-linux-x86_64 --key release-key.pem

`keygen` writes the Ed25519 private key (PEM, mode 0600) and prints the public key to pin in
`[update] public_keys`. `sign` writes, next to the binary, a folder
`<binary>.release/` with the binary, `manifest.json` and `manifest.json.sig`, and the same
three files as one tar, `<binary>.bundle.tar`, for `plantgate update apply`.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import os
import platform
import shutil
import subprocess
import sys
import tarfile
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from cryptography.hazmat.primitives import serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey  # noqa: E402

from agent import __version__  # noqa: E402
from agent.update import signing  # noqa: E402
from agent.update.manifest import MANIFEST_NAME, SIGNATURE_NAME, Manifest, parse_version  # noqa: E402
from outbox.schema import SCHEMA_VERSION  # noqa: E402


def generate_key(out: Path) -> str:
    """Write a new private key to `out` (refusing to overwrite) and return the public key text."""
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as file:
        file.write(pem)
    return signing.encode_public_key(key.public_key())


def load_private_key(path: Path) -> Ed25519PrivateKey:
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise SystemExit(f"{path} contains a {type(key).__name__}, not an Ed25519 private key")
    return key


def build_manifest(
    binary: Path,
    version: str,
    commit: str,
    arch: str,
    *,
    min_outbox_schema: int = 1,
    outbox_schema: int = SCHEMA_VERSION,
    rollout_percent: int | None = None,
) -> Manifest:
    parse_version(version)
    digest = hashlib.sha256()
    with binary.open("rb") as file:
        while chunk := file.read(1024 * 1024):
            digest.update(chunk)
    return Manifest(
        version=version,
        commit=commit,
        arch=arch,
        file=binary.name,
        size=binary.stat().st_size,
        sha256=digest.hexdigest(),
        min_outbox_schema=min_outbox_schema,
        outbox_schema=outbox_schema,
        created=datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
        rollout_percent=rollout_percent,
    )


def write_release(binary: Path, manifest: Manifest, key: Ed25519PrivateKey, folder: Path) -> Path:
    """Write the release folder and its bundle tar; return the bundle's path."""
    raw = manifest.to_json()
    signature = signing.sign(key, raw)

    folder.mkdir(parents=True, exist_ok=True)
    if (folder / manifest.file).resolve() != binary.resolve():
        shutil.copyfile(binary, folder / manifest.file)
    (folder / MANIFEST_NAME).write_bytes(raw)
    (folder / SIGNATURE_NAME).write_text(signature)

    bundle = folder.parent / f"{manifest.file}.bundle.tar"
    with tarfile.open(bundle, "w") as archive:
        for name, data in ((MANIFEST_NAME, raw), (SIGNATURE_NAME, signature.encode())):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            archive.addfile(info, io.BytesIO(data))
        archive.add(binary, arcname=manifest.file, recursive=False)
    return bundle


def git_commit() -> str:
    result = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short=12", "HEAD"],
        capture_output=True,
        text=True,
        check=False,
    )
    return result.stdout.strip() or "unknown"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="release.py", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)

    keygen = commands.add_parser("keygen", help="write a new Ed25519 private key and print its public key")
    keygen.add_argument("--out", type=Path, required=True, help="private key file to create (PEM, mode 0600)")

    sign = commands.add_parser("sign", help="sign a built binary into a release folder and bundle")
    sign.add_argument("binary", type=Path)
    sign.add_argument("--key", type=Path, required=True, help="private key file from keygen")
    sign.add_argument("--version", default=__version__, help=f"release version (default {__version__})")
    sign.add_argument("--commit", default=None, help="build commit (default: git HEAD)")
    sign.add_argument("--arch", default=platform.machine(), help="CPU architecture (default: this machine's)")
    sign.add_argument("--min-outbox-schema", type=int, default=1, help="oldest outbox schema it migrates")
    sign.add_argument("--outbox-schema", type=int, default=SCHEMA_VERSION, help="outbox schema it writes")
    sign.add_argument("--rollout-percent", type=int, default=None, help="share of gateways for update check")
    args = parser.parse_args(argv)

    if args.command == "keygen":
        try:
            public = generate_key(args.out)
        except FileExistsError:
            print(f"{args.out} exists; refusing to overwrite a signing key", file=sys.stderr)
            return 1
        print(f"private key written to {args.out} (keep it offline)")
        print("pin this public key in [update] public_keys:")
        print(public)
        return 0

    manifest = build_manifest(
        args.binary,
        args.version,
        args.commit or git_commit(),
        args.arch,
        min_outbox_schema=args.min_outbox_schema,
        outbox_schema=args.outbox_schema,
        rollout_percent=args.rollout_percent,
    )
    folder = args.binary.parent / f"{args.binary.name}.release"
    bundle = write_release(args.binary, manifest, load_private_key(args.key), folder)
    print(f"signed {manifest.file} {manifest.version} (sha256 {manifest.sha256})")
    print(f"release folder {folder}")
    print(f"bundle {bundle}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
