"""The HTTP edge of the forwarder: one aiohttp session that POSTs encoded batches to `central.url`.

Library failures are translated here, and only here, into `DeliveryFailed` with a `Cause`
and a message that names the fix. A complete response of any status is returned as
`CentralResponse`; what it means is decided by `outbox.delivery.classify_status`.
"""

from __future__ import annotations

import gzip
import logging
import os
import ssl
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from agent import __version__
from agent.config import CentralSection
from outbox.delivery import CONTENT_TYPE, Cause

log = logging.getLogger(__name__)

# Bytes of a response body read at most. Enough for any error message worth keeping with a
# dead letter, and a misconfigured URL that returns a large page cannot fill memory.
MAX_RESPONSE_BYTES = 1024**2
GZIP_LEVEL = 6


class DeliveryFailed(Exception):
    """No complete response: the records stay in the outbox and the attempt is retried."""

    def __init__(self, cause: Cause, message: str) -> None:
        super().__init__(message)
        self.cause = cause


@dataclass(frozen=True, slots=True)
class CentralResponse:
    status: int
    retry_after: str | None
    body: str


class TokenFile:
    """The bearer token, read from `central.token_file` and read again when the file changes.

    The token is never logged and never part of an error message.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._seen: tuple[int, int, int] | None = None
        self._token = ""

    def read(self) -> str:
        """Return the current token. Raises DeliveryFailed if the file is missing, unreadable or empty."""
        try:
            info = os.stat(self.path)
            signature = (info.st_ino, info.st_mtime_ns, info.st_size)
            if signature != self._seen:
                token = self.path.read_text(encoding="utf-8").strip()
                self._token, self._seen = token, signature
        except (OSError, UnicodeDecodeError) as error:
            self._seen = None
            raise DeliveryFailed(
                Cause.CREDENTIALS,
                f"cannot read central.token_file {self.path}: {error}; the file must contain the bearer token",
            ) from error

        if not self._token:
            raise DeliveryFailed(
                Cause.CREDENTIALS, f"central.token_file {self.path} is empty; write the bearer token into it"
            )
        return self._token


def build_ssl_context(central: CentralSection) -> ssl.SSLContext:
    """Build the TLS context: verified against the system CAs, or only `ca_file` if set, plus the
    client certificate for mutual TLS. Raises DeliveryFailed naming the file that cannot be loaded."""
    setting = "central.ca_file"
    try:
        if central.verify_tls:
            context = ssl.create_default_context(cafile=str(central.ca_file) if central.ca_file else None)
        else:
            context = ssl.create_default_context()
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        if central.client_cert_file is not None:
            setting = "central.client_cert_file / central.client_key_file"
            context.load_cert_chain(central.client_cert_file, central.client_key_file)
    except (OSError, ssl.SSLError) as error:
        raise DeliveryFailed(Cause.LOCAL, f"cannot load {setting}: {error}; point it at a readable PEM file") from error
    return context


class CentralClient:
    """POSTs batches to the central endpoint. Use as `async with CentralClient(central) as client:`."""

    def __init__(self, central: CentralSection) -> None:
        self.central = central
        self.url = str(central.url)
        self._token = TokenFile(central.token_file) if central.token_file else None
        self._ssl: ssl.SSLContext | None = None
        self._session: aiohttp.ClientSession | None = None
        if not central.verify_tls:
            log.warning("TLS certificate verification is off (central.verify_tls = false)")

    async def __aenter__(self) -> CentralClient:
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=self.central.timeout_s),
            headers={"User-Agent": f"plantgate/{__version__}"},
        )
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the session and its connections. Safe to call twice."""
        if self._session is not None:
            session, self._session = self._session, None
            await session.close()

    async def post(self, body: bytes, batch_key: str) -> CentralResponse:
        """Send one encoded batch and return the complete response, whatever its status.

        Raises DeliveryFailed when no complete response arrived: refused, reset, timed out,
        TLS failure, or a local problem with the token or certificate files.
        """
        session = self._session
        if session is None:
            raise RuntimeError("CentralClient is not open; use it as `async with CentralClient(...)`")

        headers = {"Content-Type": CONTENT_TYPE, "Idempotency-Key": batch_key}
        if self._token is not None:
            headers["Authorization"] = f"Bearer {self._token.read()}"
        if self.central.gzip:
            body = gzip.compress(body, compresslevel=GZIP_LEVEL)
            headers["Content-Encoding"] = "gzip"
        ssl_context = self._ssl_context() if self.url.startswith("https:") else None

        try:
            async with session.post(
                self.url, data=body, headers=headers, ssl=ssl_context or True, allow_redirects=False
            ) as response:
                raw = await _read_bounded(response)
                return CentralResponse(
                    status=response.status,
                    retry_after=response.headers.get("Retry-After"),
                    body=raw.decode("utf-8", errors="replace"),
                )
        except aiohttp.ClientSSLError as error:
            raise DeliveryFailed(
                Cause.TLS,
                f"TLS with {self.url} failed: {error};"
                " if the endpoint uses a private CA, set central.ca_file;"
                " if it requires a client certificate, check central.client_cert_file",
            ) from error
        except TimeoutError as error:
            raise DeliveryFailed(
                Cause.TIMEOUT,
                f"no complete response from {self.url} within {self.central.timeout_s:g} s (central.timeout_s)",
            ) from error
        except aiohttp.ClientConnectorError as error:
            raise DeliveryFailed(Cause.UNREACHABLE, f"cannot connect to {self.url}: {error.os_error}") from error
        except aiohttp.ClientError as error:
            message = f"connection to {self.url} failed before the response was complete: {error!r}"
            if ssl_context is not None:
                # With TLS 1.3 a server that rejects the client certificate does so after the
                # handshake, and the client only sees the connection reset.
                message += (
                    "; if the endpoint requires a client certificate,"
                    " check central.client_cert_file and central.client_key_file"
                )
            raise DeliveryFailed(Cause.UNREACHABLE, message) from error

    def _ssl_context(self) -> ssl.SSLContext:
        # Built on first use, not at start, so a missing CA file is retried like an outage
        # instead of stopping the agent. Once loaded, the context is kept.
        # TODO: a renewed CA or client certificate file takes effect only after a restart.
        if self._ssl is None:
            self._ssl = build_ssl_context(self.central)
        return self._ssl


async def _read_bounded(response: aiohttp.ClientResponse) -> bytes:
    """Read the body to its end, up to MAX_RESPONSE_BYTES. Raises the client's payload error if
    the connection ends early, so a cut-off response never counts as a reply."""
    chunks: list[bytes] = []
    size = 0
    while size < MAX_RESPONSE_BYTES:
        chunk = await response.content.read(MAX_RESPONSE_BYTES - size)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)
