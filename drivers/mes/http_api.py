"""The local HTTP API through which the MES posts transactions and looks up their state.

`POST /v1/transactions` takes one transaction object or an array of them, all or nothing:
- 201 when at least one transaction was stored now, 200 when every one was already held
  (a resend); the body lists each transaction as "created" or "duplicate". Either answer is
  sent only after the outbox commit holding them is synced.
- 400 for a body that is not one JSON document, 422 for invalid transactions, both as
  problem+json (RFC 9457) naming each invalid field and why.
- 401 without the right bearer token, 413 past `max_body_bytes`, 415 for a content type
  other than application/json.
- 503 with Retry-After when the outbox is full or cannot commit: the MES keeps the
  transactions and retries.

`GET /v1/transactions/{transaction_id}` returns whether the transaction is stored, forwarded
or dead-lettered, or 404 if this source holds no transaction with that id.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from drivers.base import RecordSink
from drivers.mes.intake import (
    BatchInvalid,
    Problem,
    parse_json_document,
    to_record,
    transaction_record_id,
    validate_batch,
)
from outbox.clock import Clock
from outbox.errors import OutboxFull, OutboxUnavailable

log = logging.getLogger(__name__)

PROBLEM_CONTENT_TYPE = "application/problem+json"
PROBLEM_TYPE_BASE = "urn:plantgate:problem:"
# A commit that failed is usually retried soon; a full outbox needs the WAN back first.
UNAVAILABLE_RETRY_AFTER_S = 5


@dataclass
class ApiCounters:
    requests: int = 0
    transactions_created: int = 0
    transactions_duplicate: int = 0
    rejected: int = 0
    unavailable: int = 0


def problem_response(
    status: int,
    kind: str,
    title: str,
    detail: str,
    *,
    errors: Sequence[Problem] = (),
    headers: dict[str, str] | None = None,
) -> web.Response:
    """Build a problem+json response (RFC 9457) with one `errors` member per problem."""
    body: dict[str, Any] = {
        "type": PROBLEM_TYPE_BASE + kind,
        "title": title,
        "status": status,
        "detail": detail,
    }
    if errors:
        body["errors"] = [_error_member(problem) for problem in errors]
    return web.json_response(body, status=status, content_type=PROBLEM_CONTENT_TYPE, headers=headers)


def _error_member(problem: Problem) -> dict[str, Any]:
    member: dict[str, Any] = {"detail": problem.reason}
    segments = [] if problem.index is None else [str(problem.index)]
    if problem.field:
        member["field"] = problem.field
        segments.extend(problem.field.split("."))
    # RFC 6901 JSON Pointer into the request body.
    member["pointer"] = "".join("/" + segment.replace("~", "~0").replace("/", "~1") for segment in segments)
    if problem.index is not None:
        member["index"] = problem.index
    if problem.line is not None:
        member["line"] = problem.line
    return member


def is_json_content_type(request: web.Request) -> bool:
    if request.content_type != "application/json":
        return False
    charset = request.charset
    return charset is None or charset.lower() in ("utf-8", "utf8")


class TransactionApi:
    """The request handlers of one MES source. `token` is compared in constant time and never logged."""

    def __init__(
        self,
        source_name: str,
        sink: RecordSink,
        token: str,
        *,
        max_body_bytes: int,
        retry_after_s: int,
        clock: Clock,
    ) -> None:
        self.source_name = source_name
        self.sink = sink
        self._token = token.encode()
        self.max_body_bytes = max_body_bytes
        self.retry_after_s = retry_after_s
        self.clock = clock
        self.counters = ApiCounters()
        self.last_error: str | None = None
        # Called after every request, so the source's status shows the counters at once.
        self.on_request: Callable[[], None] | None = None

    def build_app(self) -> web.Application:
        # aiohttp's own limit backs up the Content-Length check for chunked bodies.
        app = web.Application(client_max_size=self.max_body_bytes, middlewares=[self._problem_middleware])
        app.router.add_post("/v1/transactions", self.post_transactions)
        # ".+" lets ids that contain "/" be looked up too (sent percent-encoded as %2F).
        app.router.add_get("/v1/transactions/{transaction_id:.+}", self.get_transaction)
        return app

    @web.middleware
    async def _problem_middleware(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        try:
            return await handler(request)
        except web.HTTPRequestEntityTooLarge:
            return self._too_large()
        except web.HTTPException as error:
            if error.status < 400:
                raise
            # aiohttp raises its own 404 and 405; send them as problem+json like every other error.
            return problem_response(
                error.status,
                "http",
                error.reason,
                f"{request.method} {request.path}: {error.reason}; the API has POST /v1/transactions "
                "and GET /v1/transactions/{transaction_id}",
                headers={key: value for key, value in error.headers.items() if key == "Allow"},
            )
        finally:
            if self.on_request is not None:
                self.on_request()

    def _authorized(self, request: web.Request) -> web.Response | None:
        """Return a 401 response unless the request carries the bearer token."""
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), self._token):
            return None
        self.counters.rejected += 1
        error = ', error="invalid_token"' if given else ""
        return problem_response(
            401,
            "unauthorized",
            "Unauthorized",
            "send the header 'Authorization: Bearer <token>' with the token in the source's http.token_file",
            headers={"WWW-Authenticate": f'Bearer realm="plantgate"{error}'},
        )

    def _too_large(self) -> web.Response:
        self.counters.rejected += 1
        return problem_response(
            413,
            "too-large",
            "Payload Too Large",
            f"the body is larger than {self.max_body_bytes} bytes (http.max_body_bytes); "
            "send the transactions in smaller arrays",
        )

    async def post_transactions(self, request: web.Request) -> web.Response:
        self.counters.requests += 1
        unauthorized = self._authorized(request)
        if unauthorized is not None:
            return unauthorized
        if not is_json_content_type(request):
            self.counters.rejected += 1
            return problem_response(
                415,
                "unsupported-media-type",
                "Unsupported Media Type",
                f"content type {request.headers.get('Content-Type', '(none)')!r} is not supported; "
                "send 'Content-Type: application/json' with a UTF-8 body",
            )
        if request.content_length is not None and request.content_length > self.max_body_bytes:
            return self._too_large()

        body = await request.read()
        try:
            text = body.decode("utf-8").removeprefix("\ufeff")
        except UnicodeDecodeError as error:
            self.counters.rejected += 1
            problem = Problem(f"the body is not UTF-8: invalid byte at offset {error.start}")
            return _invalid_response(BatchInvalid([problem], syntax=True))

        try:
            items = parse_json_document(text)
            transactions = validate_batch(items)
        except BatchInvalid as invalid:
            self.counters.rejected += 1
            return _invalid_response(invalid)

        captured_at = self.clock.now()
        records = [to_record(self.source_name, transaction, captured_at) for transaction in transactions]
        try:
            stored_now = await self.sink.append(records)
        except OutboxFull as error:
            return self._unavailable(error, self.retry_after_s)
        except OutboxUnavailable as error:
            return self._unavailable(error, UNAVAILABLE_RETRY_AFTER_S)

        # NOTE: ids forwarded longer ago than outbox.delivered_retention_days are forgotten, so
        # such a resend counts as created and is forwarded again under the same record id.
        created = sum(stored_now)
        self.counters.transactions_created += created
        self.counters.transactions_duplicate += len(stored_now) - created
        self.last_error = None
        listing = [
            {
                "transaction_id": transaction.transaction_id,
                "record_id": record.id,
                "status": "created" if is_new else "duplicate",
            }
            for transaction, record, is_new in zip(transactions, records, stored_now, strict=True)
        ]
        status = 201 if created else 200
        return web.json_response(
            {"status": "created" if created else "duplicate", "transactions": listing}, status=status
        )

    def _unavailable(self, error: Exception, retry_after_s: int) -> web.Response:
        self.counters.unavailable += 1
        self.last_error = str(error)
        return problem_response(
            503,
            "outbox-unavailable",
            "Service Unavailable",
            f"{error}. Nothing of this request was stored; keep the transactions and retry after {retry_after_s} s.",
            headers={"Retry-After": str(retry_after_s)},
        )

    async def get_transaction(self, request: web.Request) -> web.Response:
        unauthorized = self._authorized(request)
        if unauthorized is not None:
            return unauthorized
        transaction_id = request.match_info["transaction_id"]
        record_id = transaction_record_id(self.source_name, transaction_id)
        try:
            state = await self.sink.lookup(record_id)
        except OutboxUnavailable as error:
            return self._unavailable(error, UNAVAILABLE_RETRY_AFTER_S)
        if state is None:
            return problem_response(
                404,
                "not-found",
                "Not Found",
                f"no transaction {transaction_id!r} is held by source {self.source_name!r}: it was never "
                "accepted, or it was forwarded longer ago than outbox.delivered_retention_days",
            )
        return web.json_response({"transaction_id": transaction_id, "record_id": record_id, "state": state})


def _invalid_response(invalid: BatchInvalid) -> web.Response:
    count = len(invalid.problems)
    if invalid.syntax:
        return problem_response(
            400, "invalid-json", "Bad Request", invalid.problems[0].describe(), errors=invalid.problems
        )
    return problem_response(
        422,
        "invalid-transaction",
        "Unprocessable Content",
        f"{count} problem{'s' if count != 1 else ''} found; nothing of this request was stored. "
        + "; ".join(problem.describe() for problem in invalid.problems[:5]),
        errors=invalid.problems,
    )
