"""Security policies and modes, certificate trust and rejection, against a real asyncua server."""

from __future__ import annotations

from pathlib import Path

import pytest
from asyncua import Server, ua
from cryptography import x509

from drivers.base import SourceState
from drivers.opcua.security import (
    PkiPaths,
    SecurityRejected,
    check_server_certificate,
    ensure_application_certificate,
    select_endpoint,
    thumbprint,
    trust_certificate,
)
from drivers.opcua.simulator import OpcUaSimulator
from drivers.opcua.source import OpcUaSource
from outbox.records import Quality
from tests.drivers.opcua.conftest import running, source_config, stored_records, wait_for

SERVER_URI = "urn:plantgate:test-server"
ALL_SECURE = [
    ua.SecurityPolicyType.Basic256Sha256_Sign,
    ua.SecurityPolicyType.Basic256Sha256_SignAndEncrypt,
    ua.SecurityPolicyType.Aes128Sha256RsaOaep_Sign,
    ua.SecurityPolicyType.Aes128Sha256RsaOaep_SignAndEncrypt,
    ua.SecurityPolicyType.Aes256Sha256RsaPss_Sign,
    ua.SecurityPolicyType.Aes256Sha256RsaPss_SignAndEncrypt,
]


def server_pki(folder: Path) -> PkiPaths:
    pki = PkiPaths(folder)
    ensure_application_certificate(pki, SERVER_URI, hostname="127.0.0.1")
    return pki


def secured(pki: PkiPaths, policies=tuple(ALL_SECURE)):
    async def configure(server: Server) -> None:
        await server.set_application_uri(SERVER_URI)
        server.set_security_policy(list(policies))
        await server.load_certificate(str(pki.certificate))
        await server.load_private_key(str(pki.private_key))

    return configure


def secure_config(endpoint: str, agent_pki: Path, policy: str, mode: str, **overrides):
    security = {"policy": policy, "mode": mode, "pki_dir": str(agent_pki)}
    return source_config(endpoint, security=security, **overrides)


@pytest.fixture(scope="module")
def server_certificates(tmp_path_factory) -> PkiPaths:
    return server_pki(tmp_path_factory.mktemp("server-pki"))


async def test_each_policy_and_mode_reads_values(server_certificates, tmp_path):
    agent = PkiPaths(tmp_path / "pki")
    trust_certificate(agent, server_certificates.certificate)
    results = {}
    async with OpcUaSimulator(update_interval_s=0, configure=secured(server_certificates)) as server:
        for policy in ("Basic256Sha256", "Aes128_Sha256_RsaOaep", "Aes256_Sha256_RsaPss"):
            for mode in ("Sign", "SignAndEncrypt"):
                source = OpcUaSource(secure_config(server.endpoint, agent.root, policy, mode))
                records = await source.sample()
                results[f"{policy}/{mode}"] = [record.quality for record in records]

    assert len(results) == 6
    for pair, qualities in results.items():
        assert qualities == [Quality.GOOD] * 4, pair


async def test_unknown_server_certificate_rejected_and_kept(server_certificates, tmp_path):
    agent = PkiPaths(tmp_path / "pki")
    async with OpcUaSimulator(update_interval_s=0, configure=secured(server_certificates)) as server:
        source = OpcUaSource(secure_config(server.endpoint, agent.root, "Basic256Sha256", "SignAndEncrypt"))
        with pytest.raises(SecurityRejected) as caught:
            await source.sample()

    expected = agent.rejected / f"{thumbprint(server_certificates.certificate.read_bytes())}.der"
    assert expected.read_bytes() == server_certificates.certificate.read_bytes()
    message = str(caught.value)
    assert "is not trusted" in message
    assert f"plantgate opcua trust {expected}" in message
    assert agent.certificate.exists()


async def test_trust_all_accepts_unknown_certificate(server_certificates, tmp_path):
    agent = tmp_path / "pki"
    async with OpcUaSimulator(update_interval_s=0, configure=secured(server_certificates)) as server:
        config = source_config(
            server.endpoint,
            security={
                "policy": "Basic256Sha256",
                "mode": "Sign",
                "pki_dir": str(agent),
                "trust_all_server_certificates": True,
            },
        )
        records = await OpcUaSource(config).sample()

    assert len(records) == 4


async def test_missing_policy_is_refused_not_downgraded(server_certificates, tmp_path):
    agent = PkiPaths(tmp_path / "pki")
    trust_certificate(agent, server_certificates.certificate)
    only_sign = secured(server_certificates, [ua.SecurityPolicyType.Basic256Sha256_Sign])
    async with OpcUaSimulator(update_interval_s=0, configure=only_sign) as server:
        source = OpcUaSource(secure_config(server.endpoint, agent.root, "Aes256_Sha256_RsaPss", "SignAndEncrypt"))
        with pytest.raises(SecurityRejected) as caught:
            await source.sample()

    assert "offers no endpoint with security policy Aes256_Sha256_RsaPss and mode SignAndEncrypt" in str(caught.value)
    assert "Basic256Sha256/Sign" in str(caught.value)


async def test_renewed_server_certificate_needs_trust_again(tmp_path, outbox):
    agent = PkiPaths(tmp_path / "agent-pki")
    old = server_pki(tmp_path / "old")
    trust_certificate(agent, old.certificate)
    first = OpcUaSimulator(update_interval_s=0.2, configure=secured(old))
    await first.start()
    port = first.port
    source = OpcUaSource(secure_config(first.endpoint, agent.root, "Basic256Sha256", "SignAndEncrypt"))
    async with running(source, outbox):
        await wait_for(lambda: stored_records(outbox))
        await first.stop()

        renewed = server_pki(tmp_path / "renewed")
        async with OpcUaSimulator(port, update_interval_s=0.2, configure=secured(renewed)):
            await wait_for(lambda: list(agent.rejected.glob("*.der")))
            await wait_for(lambda: "not trusted" in (source.status.last_error or ""))
            assert source.status.state == SourceState.DISCONNECTED
            count = len(await stored_records(outbox))

            trust_certificate(agent, renewed.certificate)
            await wait_for(lambda: source.status.state == SourceState.CONNECTED)
            await wait_for(lambda: _more_than(outbox, count))

    assert list(agent.rejected.glob("*.der")) == []


async def _more_than(outbox, count):
    return len(await stored_records(outbox)) > count


async def test_username_and_password_from_file(tmp_path):
    users = {"operator": "s3cret pass"}

    class Users:
        def get_user(self, iserver, username=None, password=None, certificate=None):
            from asyncua.crypto.permission_rules import User, UserRole

            if username is None:
                return None
            if users.get(username) == password:
                return User(role=UserRole.User)
            return None

    async def with_users(server: Server) -> None:
        server.iserver.user_manager = Users()

    password_file = tmp_path / "password"
    password_file.write_text("s3cret pass\n")
    async with OpcUaSimulator(update_interval_s=0, configure=with_users) as server:
        good = source_config(server.endpoint, username="operator", password_file=str(password_file))
        records = await OpcUaSource(good).sample()
        password_file.write_text("wrong\n")
        with pytest.raises(SecurityRejected, match="rejected user 'operator'"):
            await OpcUaSource(good).sample()

    assert len(records) == 4


def test_application_certificate_carries_uri(tmp_path):
    pki = PkiPaths(tmp_path / "pki")

    ensure_application_certificate(pki, "urn:plantgate:gw-7", hostname="gw-7")

    certificate = x509.load_der_x509_certificate(pki.certificate.read_bytes())
    names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.UniformResourceIdentifier) == ["urn:plantgate:gw-7"]
    assert names.get_values_for_type(x509.DNSName) == ["gw-7"]
    assert pki.private_key.stat().st_mode & 0o077 == 0
    assert pki.trusted.is_dir()
    assert pki.rejected.is_dir()


def test_application_certificate_kept_on_second_start(tmp_path):
    pki = PkiPaths(tmp_path / "pki")
    ensure_application_certificate(pki, "urn:plantgate:gw-7")
    first = pki.certificate.read_bytes()

    ensure_application_certificate(pki, "urn:plantgate:gw-7")

    assert pki.certificate.read_bytes() == first


def test_check_server_certificate_accepts_trusted(tmp_path, server_certificates):
    pki = PkiPaths(tmp_path / "pki")
    trusted = trust_certificate(pki, server_certificates.certificate)

    check_server_certificate(pki, server_certificates.certificate.read_bytes(), "opc.tcp://x", trust_all=False)

    assert trusted.parent == pki.trusted


def test_select_endpoint_exact_pair_only():
    def endpoint(policy, mode):
        item = ua.EndpointDescription()
        item.SecurityPolicyUri = f"http://opcfoundation.org/UA/SecurityPolicy#{policy}"
        item.SecurityMode = mode
        return item

    offered = [endpoint("None", ua.MessageSecurityMode.None_), endpoint("Basic256Sha256", ua.MessageSecurityMode.Sign)]

    assert select_endpoint(offered, "Basic256Sha256", "Sign", "opc.tcp://x") is offered[1]
    with pytest.raises(SecurityRejected, match="it offers Basic256Sha256/Sign, None/None_"):
        select_endpoint(offered, "Basic256Sha256", "SignAndEncrypt", "opc.tcp://x")


def test_policy_and_mode_must_fit():
    with pytest.raises(ValueError, match="do not fit"):
        source_config("opc.tcp://127.0.0.1:4840", security={"policy": "Basic256Sha256", "mode": "None"})
