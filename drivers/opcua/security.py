"""Application instance certificate, server certificate trust, and secure endpoint selection.

The PKI folder has the usual layout: `own/` (the agent's certificate and key), `trusted/`
(server certificates the operator accepted) and `rejected/` (unknown server certificates,
copied there so an operator can review them and move them to `trusted/`). A server
certificate is checked on every connect, so a server that renews its certificate is refused
until the new one is trusted, without restarting the agent.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import os
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from asyncua import ua
from asyncua.crypto import security_policies
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

log = logging.getLogger(__name__)

POLICIES: dict[str, type[security_policies.SecurityPolicy]] = {
    "Basic256Sha256": security_policies.SecurityPolicyBasic256Sha256,
    "Aes128_Sha256_RsaOaep": security_policies.SecurityPolicyAes128Sha256RsaOaep,
    "Aes256_Sha256_RsaPss": security_policies.SecurityPolicyAes256Sha256RsaPss,
}
MODES = {"Sign": ua.MessageSecurityMode.Sign, "SignAndEncrypt": ua.MessageSecurityMode.SignAndEncrypt}
CERTIFICATE_DAYS = 5 * 365


class SecurityRejected(Exception):
    """The connection cannot be made securely as configured; an operator must act."""


@dataclass(frozen=True)
class PkiPaths:
    root: Path

    @property
    def certificate(self) -> Path:
        return self.root / "own" / "certs" / "plantgate.der"

    @property
    def private_key(self) -> Path:
        return self.root / "own" / "private" / "plantgate.pem"

    @property
    def trusted(self) -> Path:
        return self.root / "trusted" / "certs"

    @property
    def rejected(self) -> Path:
        return self.root / "rejected" / "certs"


def thumbprint(der: bytes) -> str:
    """SHA-1 thumbprint in hex, the form OPC UA tools show."""
    return hashlib.sha1(der, usedforsecurity=False).hexdigest()


def ensure_application_certificate(pki: PkiPaths, application_uri: str, *, hostname: str | None = None) -> None:
    """Create the PKI folders and, if missing, a self-signed application instance certificate.

    The certificate carries the application URI in subjectAltName (OPC UA Part 6, 6.2.2), which
    must match the ApplicationUri the client sends. The key file is created readable by the
    owner only.
    """
    for folder in (pki.certificate.parent, pki.private_key.parent, pki.trusted, pki.rejected):
        folder.mkdir(parents=True, exist_ok=True)
    if pki.certificate.exists() and pki.private_key.exists():
        return

    hostname = hostname or socket.gethostname()
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, "plantgate"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "plantgate"),
        ]
    )
    now = dt.datetime.now(dt.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=CERTIFICATE_DAYS))
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(application_uri), x509.DNSName(hostname)]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=True,
                key_encipherment=True,
                data_encipherment=True,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.SERVER_AUTH]),
            critical=False,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_bytes = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    descriptor = os.open(pki.private_key, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "wb") as key_file:
        key_file.write(key_bytes)
    pki.certificate.write_bytes(certificate.public_bytes(serialization.Encoding.DER))
    log.info("created application instance certificate %s for %s", pki.certificate, application_uri)


def trusted_thumbprints(pki: PkiPaths) -> set[str]:
    """Thumbprints of the DER or PEM certificates in `trusted/`."""
    prints: set[str] = set()
    if not pki.trusted.is_dir():
        return prints
    for path in pki.trusted.iterdir():
        if not path.is_file():
            continue
        data = path.read_bytes()
        try:
            if data.lstrip().startswith(b"-----BEGIN"):
                data = x509.load_pem_x509_certificate(data).public_bytes(serialization.Encoding.DER)
            prints.add(thumbprint(data))
        except ValueError:
            log.warning("ignored %s in the trusted folder: not a certificate", path)
    return prints


def check_server_certificate(pki: PkiPaths, der: bytes, endpoint: str, *, trust_all: bool) -> None:
    """Accept the server certificate if it is in `trusted/`; otherwise copy it to `rejected/`
    and raise `SecurityRejected` saying how to trust it."""
    print_hex = thumbprint(der)
    if trust_all or print_hex in trusted_thumbprints(pki):
        return
    pki.rejected.mkdir(parents=True, exist_ok=True)
    rejected = pki.rejected / f"{print_hex}.der"
    rejected.write_bytes(der)
    subject = x509.load_der_x509_certificate(der).subject.rfc4514_string()
    raise SecurityRejected(
        f"server certificate of {endpoint} is not trusted (subject {subject!r}, thumbprint {print_hex}); "
        f"it was copied to {rejected}: check it, then run 'plantgate opcua trust {rejected}' "
        f"or move it to {pki.trusted}/"
    )


def select_endpoint(
    endpoints: Sequence[ua.EndpointDescription], policy: str, mode: str, endpoint_url: str
) -> ua.EndpointDescription:
    """Return the server endpoint offering exactly the configured policy and mode.

    Never falls back to another policy or mode: if the server does not offer the pair, the
    error lists what it does offer so the configuration can be corrected.
    """
    policy_uri = POLICIES[policy].URI
    for endpoint in endpoints:
        if endpoint.SecurityPolicyUri == policy_uri and endpoint.SecurityMode == MODES[mode]:
            return endpoint
    offered = sorted({f"{item.SecurityPolicyUri.rsplit('#', 1)[-1]}/{item.SecurityMode.name}" for item in endpoints})
    raise SecurityRejected(
        f"{endpoint_url} offers no endpoint with security policy {policy} and mode {mode}; "
        f"it offers {', '.join(offered)}: change security.policy and security.mode to one of these"
    )


def trust_certificate(pki: PkiPaths, certificate: Path) -> Path:
    """Copy a certificate (DER or PEM) into `trusted/` as DER; remove it from `rejected/` if there."""
    data = certificate.read_bytes()
    if data.lstrip().startswith(b"-----BEGIN"):
        data = x509.load_pem_x509_certificate(data).public_bytes(serialization.Encoding.DER)
    else:
        x509.load_der_x509_certificate(data)
    pki.trusted.mkdir(parents=True, exist_ok=True)
    target = pki.trusted / f"{thumbprint(data)}.der"
    target.write_bytes(data)
    rejected = pki.rejected / f"{thumbprint(data)}.der"
    if rejected.exists():
        rejected.unlink()
    return target
