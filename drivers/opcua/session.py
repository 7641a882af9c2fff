"""One OPC UA session to the configured endpoint, as an async context manager.

`OpcUaSession` configures security and identity, connects, and on exit closes the session
(deleting its subscriptions) and the socket, so a reconnect never leaves a session behind on
the server. A server that does not respond to the close in time still drops the session when its
session timeout runs out. asyncua's own reconnect is left off: the source owns the retry loop.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from asyncua import Client, ua

from drivers.base import SourceUnavailable
from drivers.opcua import security
from drivers.opcua.config import OpcUaSourceConfig

log = logging.getLogger(__name__)

# Errors that mean "the server is not reachable or stopped responding": back off and retry.
CONNECTION_ERRORS = (OSError, TimeoutError, asyncio.TimeoutError, ConnectionError, ua.UaError)


def read_password(path: Path) -> str:
    """Read a password file; one trailing newline (as editors write it) is not part of the password."""
    text = path.read_text(encoding="utf-8")
    return text[:-1] if text.endswith("\n") else text


class OpcUaSession:
    """A connected asyncua `Client`, available as `client` inside `async with`.

    `lost` is set when asyncua's connection probe fails (a closed socket, or a server that
    stopped responding to requests). Raises `SourceUnavailable` when the server cannot be
    reached and `security.SecurityRejected` when it cannot be reached securely as configured.
    """

    def __init__(
        self,
        config: OpcUaSourceConfig,
        *,
        probe_interval_s: float,
        session_timeout_s: float,
        state_path: Path | None = None,
    ) -> None:
        self.config = config
        self.state_path = state_path
        self.keep_session = False
        self.probe_interval_s = probe_interval_s
        self.session_timeout_s = session_timeout_s
        self.lost = asyncio.Event()
        self.lost_reason: str | None = None
        self.client: Client | None = None

    async def __aenter__(self) -> OpcUaSession:
        client = Client(self.config.endpoint, timeout=self.config.timeout_s, watchdog_intervall=self.probe_interval_s)
        client.session_timeout = int(self.session_timeout_s * 1000)
        client.name = client.description = "plantgate"
        client.application_uri = self.config.security.application_uri
        client.product_uri = "urn:plantgate"
        client.connection_lost_callback = self._on_lost
        # With a state file, connect() first tries ActivateSession on the session of the
        # previous connection (OPC UA Part 4, ActivateSession), so a lost connection does not leave that
        # session behind on the server. A new session is created only if the server dropped it.
        client.session_state_path = self.state_path
        self._set_identity(client)
        try:
            await self._set_security(client)
            await client.connect(auto_reconnect=False)
        except security.SecurityRejected:
            raise
        except ua.UaStatusCodeError as error:
            if isinstance(error, ua.uaerrors.BadUserAccessDenied | ua.uaerrors.BadIdentityTokenRejected):
                raise security.SecurityRejected(
                    f"{self.config.endpoint} rejected user {self.config.username!r}: {error}; "
                    "check username and password_file"
                ) from error
            raise SourceUnavailable(f"{self.config.endpoint}: {error}") from error
        except CONNECTION_ERRORS as error:
            await _quiet_disconnect(client, self.config.timeout_s)
            raise SourceUnavailable(f"{self.config.endpoint}: {error or type(error).__name__}") from error
        self.client = client
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    @property
    def authentication_token(self) -> str | None:
        if self.client is None:
            return None
        return str(self.client.uaclient.session.authentication_token.to_string())

    async def close(self) -> None:
        """Close the session and socket. Safe to call twice.

        With `keep_session` set (the connection was lost, so CloseSession cannot reach the
        server), the session's state file is kept for the next connect to reactivate it.
        """
        client, self.client = self.client, None
        if client is None:
            return
        kept = None
        if self.keep_session and self.state_path is not None and self.state_path.exists():
            kept = self.state_path.read_bytes()
        await _quiet_disconnect(client, self.config.timeout_s)
        if kept is not None:
            assert self.state_path is not None
            self.state_path.write_bytes(kept)

    def _set_identity(self, client: Client) -> None:
        config = self.config
        if config.username is None:
            return
        client.set_user(config.username)
        if config.password_file is not None:
            try:
                client.set_password(read_password(config.password_file))
            except OSError as error:
                raise security.SecurityRejected(
                    f"cannot read password_file {config.password_file}: {error.strerror}"
                ) from error
        elif config.password is not None:
            client.set_password(config.password.get_secret_value())

    async def _set_security(self, client: Client) -> None:
        settings = self.config.security
        if settings.policy == "None":
            return
        pki = security.PkiPaths(settings.pki_dir)
        security.ensure_application_certificate(pki, settings.application_uri)

        probe = Client(self.config.endpoint, timeout=self.config.timeout_s)
        endpoints = await probe.connect_and_get_server_endpoints()
        endpoint = security.select_endpoint(endpoints, settings.policy, settings.mode, self.config.endpoint)
        server_der = _first_certificate(endpoint.ServerCertificate)
        security.check_server_certificate(
            pki, server_der, self.config.endpoint, trust_all=settings.trust_all_server_certificates
        )
        await client.set_security(
            security.POLICIES[settings.policy],
            certificate=str(pki.certificate),
            private_key=str(pki.private_key),
            server_certificate=server_der,
            mode=security.MODES[settings.mode],
        )

    async def _on_lost(self, error: Exception) -> None:
        self.lost_reason = f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
        self.lost.set()


def _first_certificate(data: bytes) -> bytes:
    """Return the leaf certificate of a DER chain (a server may send its whole chain, leaf first)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    certificate = x509.load_der_x509_certificate(data[: _der_length(data)])
    return certificate.public_bytes(serialization.Encoding.DER)


def _der_length(data: bytes) -> int:
    # A DER SEQUENCE header: 0x30, then a short length or 0x8N followed by N length bytes.
    if len(data) < 2 or data[0] != 0x30:
        return len(data)
    first = data[1]
    if first < 0x80:
        return 2 + first
    count = first & 0x7F
    return 2 + count + int.from_bytes(data[2 : 2 + count], "big")


async def _quiet_disconnect(client: Client, timeout_s: float) -> None:
    # A hung server never responds to CloseSession, so the timeout bounds the wait. The socket
    # is dropped in every case.
    try:
        async with asyncio.timeout(timeout_s):
            await client.disconnect()
    except CONNECTION_ERRORS as error:
        log.debug("closing the session to %s failed: %r", client.server_url.geturl(), error)
    finally:
        client.disconnect_socket()
