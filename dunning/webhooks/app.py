"""The webhook HTTP app: Plivo inbound messages and delivery reports, Stripe billing events, a
health check.

Every Plivo endpoint checks, in this order, before anything is interpreted or stored:
1. a signature header pair is present and well-formed (else 403, body unread);
2. the body is at most 64 KiB (else 413) and is a UTF-8 form post (else 415/400);
3. the signature (V3 over URL + query + body params, or V2 over URL + nonce) computed with
   PLIVO_AUTH_TOKEN over DUNNING_PUBLIC_URL + path matches (else 403);
4. every nonce it carries (V3 and V2 when both are present; both must verify) was not seen
   before with a different request (else 403).
Only then are the fields validated (400 when malformed) and the message processed.

The Stripe endpoint (`/webhooks/stripe/{account_id}`, one per account, signed with the account's
own endpoint secret) checks, in this order:
1. a `Stripe-Signature` header with `t=` and `v1=` is present (else 403, body unread);
2. the body is at most 1 MiB (else 413);
3. the signature verifies with the account's secret and is at most 5 minutes old (else 403); an
   unknown account, or one without a secret, gets the same 403 (no way to probe account ids);
4. the body is a Stripe event (else 400).
Then `dunning.webhooks.stripe` applies it; 503 (Stripe retries) when Temporal or the database is
unreachable, and the event is not recorded as processed.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from decimal import Decimal, InvalidOperation
from typing import Any
from urllib.parse import parse_qsl

from sqlalchemy import select
from sqlalchemy.exc import DBAPIError, IntegrityError
from starlette.applications import Starlette
from starlette.background import BackgroundTasks
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Route

from dunning.cases.billing import BillingUnavailable, StripeBilling
from dunning.cases.card_update import CardUpdateCharger
from dunning.cases.client import DunningClient
from dunning.customers.consent import normalize_number
from dunning.domain.contract import InputError, check_id
from dunning.messages import links
from dunning.messages.delivery import STATUS_PATH, DeliveryReport, process_delivery_report
from dunning.messages.inbound import InboundMessage, InboundOutcome, process_inbound
from dunning.messages.inbox import remember_nonce, request_fingerprint
from dunning.messages.links import LinkSigner
from dunning.messages.replies import DurableReplies, InlineReplies, ReplyStarter
from dunning.platform.db import Database
from dunning.platform.db.models import Account
from dunning.platform.providers.sms import SmsProvider
from dunning.platform.secret_box import (
    SecretBox,
    SecretUnreadable,
    secret_box_for,
    stripe_context,
)
from dunning.platform.settings import Settings
from dunning.webhooks.signatures import SignatureHeaders, request_signatures, verify_all
from dunning.webhooks.stripe import (
    SIGNATURE_HEADER,
    EventError,
    LazyTemporal,
    StripeEvents,
    TemporalSource,
    TemporalUnavailable,
    parse_event,
    signature_header_ok,
    verify_signature,
)

log = logging.getLogger("dunning.webhooks")

INBOUND_PATH = "/webhooks/plivo/inbound"
STRIPE_PATH = "/webhooks/stripe/{account_id}"
HEALTH_PATH = "/healthz"
SHORT_LINK_PATH = "/l/{token}"
MAX_BODY_BYTES = 64 * 1024
MAX_STRIPE_BODY_BYTES = 1024 * 1024
MAX_FIELDS = 200
FORM_TYPE = "application/x-www-form-urlencoded"
EMPTY_PLIVO_XML = '<?xml version="1.0" encoding="utf-8"?><Response></Response>'

_NUMBER_RE = re.compile(r"^\+?\d{1,20}$")
_UUID_RE = re.compile(r"^[A-Za-z0-9\-_.:]{1,64}$")
_STATUS_RE = re.compile(r"^[a-z_]{1,16}$")
_CODE_RE = re.compile(r"^[A-Za-z0-9_\-]{1,16}$")
_MAX_INT = 2**31 - 1


class LogRateLimit:
    """At most `per_minute` log lines a minute (a token bucket); `allow()` also says how many
    were suppressed since the last line that was logged."""

    def __init__(self, per_minute: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.capacity = float(max(1, per_minute))
        self.rate = self.capacity / 60.0
        self.tokens = self.capacity
        self.clock = clock
        self.updated = clock()
        self.suppressed = 0
        self._lock = threading.Lock()

    def allow(self) -> tuple[bool, int]:
        with self._lock:
            now = self.clock()
            self.tokens = min(self.capacity, self.tokens + (now - self.updated) * self.rate)
            self.updated = now
            if self.tokens >= 1:
                self.tokens -= 1
                suppressed, self.suppressed = self.suppressed, 0
                return True, suppressed
            self.suppressed += 1
            return False, 0


class WebhookError(Exception):
    """A request refused with an HTTP status and a short reason (no traceback)."""

    def __init__(self, status: int, reason: str, *, detail: str = "") -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.detail = detail  # for the (rate-limited) log line only, never the response


def _error(status: int, reason: str) -> JSONResponse:
    return JSONResponse({"error": reason}, status_code=status)


async def _read_body(request: Request, limit: int = MAX_BODY_BYTES) -> bytes:
    length = request.headers.get("content-length")
    if length is not None:
        if not length.strip().isdigit():
            raise WebhookError(400, "bad Content-Length")
        if int(length) > limit:
            raise WebhookError(413, f"body larger than {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise WebhookError(413, f"body larger than {limit} bytes")
            chunks.append(chunk)
    except ClientDisconnect:
        raise WebhookError(400, "client disconnected") from None
    return b"".join(chunks)


def _parse_form(request: Request, body: bytes) -> list[tuple[str, str]]:
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media_type != FORM_TYPE:
        raise WebhookError(415, f"expected {FORM_TYPE}")
    try:
        text = body.decode("utf-8")
        return parse_qsl(text, keep_blank_values=True, strict_parsing=True,
                         max_num_fields=MAX_FIELDS)
    except (UnicodeDecodeError, ValueError):
        raise WebhookError(400, "malformed form body") from None


def _param_map(params: Sequence[tuple[str, str]]) -> dict[str, str | list[str]]:
    grouped: dict[str, list[str]] = {}
    for key, value in params:
        grouped.setdefault(key, []).append(value)
    return {k: v[0] if len(v) == 1 else v for k, v in grouped.items()}


class _Form:
    """Single-valued access to the form fields, with 400 for anything malformed."""

    def __init__(self, params: Sequence[tuple[str, str]]) -> None:
        self._map = _param_map(params)

    def get(self, name: str) -> str | None:
        value = self._map.get(name)
        if isinstance(value, list):
            raise WebhookError(400, f"{name} given more than once")
        return value

    def required(self, name: str) -> str:
        value = (self.get(name) or "").strip()
        if not value:
            raise WebhookError(400, f"{name} is required")
        return value

    def uuid(self, name: str, required: bool = True) -> str | None:
        value = self.required(name) if required else (self.get(name) or "").strip() or None
        if value is not None and not _UUID_RE.match(value):
            raise WebhookError(400, f"{name} is malformed")
        return value

    def number(self, name: str) -> str | None:
        """E.164, or None for a well-formed number that is not one (a short code)."""
        raw = self.required(name)
        if not _NUMBER_RE.match(raw):
            raise WebhookError(400, f"{name} is not a phone number")
        return normalize_number(raw)


def _int_or_none(raw: str | None, name: str, minimum: int = 0) -> int | None:
    if raw is None or not raw.strip():
        return None
    text = raw.strip()
    if not text.isdigit() or not (minimum <= int(text) <= _MAX_INT):
        raise WebhookError(400, f"{name} must be a whole number")
    return int(text)


def _amount_or_none(raw: str | None) -> Decimal | None:
    if raw is None or not raw.strip():
        return None
    try:
        value = Decimal(raw.strip())
    except InvalidOperation:
        raise WebhookError(400, "TotalAmount must be a number") from None
    if not value.is_finite() or value < 0:
        raise WebhookError(400, "TotalAmount must be a number")
    return value


class WebhookApp:
    """The handlers, bound to settings, a database, who sends the compliance replies and the
    Temporal client used for billing events."""

    def __init__(
        self, settings: Settings, db: Database, replies: ReplyStarter, temporal: LazyTemporal,
        secret_box: SecretBox | None = None,
        links: LinkSigner | None = None,
    ) -> None:
        self.settings = settings
        self.secret_box = secret_box or secret_box_for(settings)
        self.refusal_log = LogRateLimit(per_minute=settings.http_refusal_logs_per_minute)
        self.links = links
        self.db = db
        self.replies = replies
        self.temporal = temporal
        self.stripe_events = StripeEvents(db, temporal, charger=CardUpdateCharger(
            db, StripeBilling(settings.stripe_api_key.get_secret_value(), settings.stripe_api_url)))
        self.public_url = settings.public_url.rstrip("/")
        self.auth_token = settings.plivo_auth_token.get_secret_value()
        self.plivo_schemes = tuple(settings.plivo_signatures.split(","))

    # --- signature and body ---------------------------------------------------------------

    async def _signed_form(
        self, request: Request, path: str
    ) -> tuple[list[SignatureHeaders], str, list[tuple[str, str]]]:
        sigs = request_signatures(request.headers, self.plivo_schemes)
        if sigs is None:
            raise WebhookError(403, "missing or malformed Plivo signature")
        body = await _read_body(request)
        params = _parse_form(request, body)
        query = request.url.query
        url = self.public_url + path + (f"?{query}" if query else "")
        # With both V3 and V2 present, both must verify (no downgrade to the body-less V2).
        if not verify_all(self.auth_token, request.method, url, sigs, _param_map(params)):
            raise WebhookError(403, "invalid Plivo signature")
        return sigs, url, params

    def _in_transaction(self, sigs: list[SignatureHeaders], url: str,
                        params: list[tuple[str, str]], work: Any) -> Any:
        """Run `work(session)` after binding every nonce the request carries (V3 and V2), in
        one transaction (retried on races)."""
        fingerprint = request_fingerprint(url, params)
        for attempt in range(3):
            try:
                with self.db.session() as s:
                    for sig in sigs:
                        if not remember_nonce(s, sig.scheme, sig.nonce, fingerprint):
                            raise WebhookError(
                                403, "signature nonce already used for another request"
                            )
                    return work(s)
            except IntegrityError:
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    # --- endpoints -----------------------------------------------------------------------

    async def inbound(self, request: Request) -> Response:
        try:
            sigs, url, params = await self._signed_form(request, INBOUND_PATH)
            form = _Form(params)
            from_number, to_number = form.number("From"), form.number("To")
            msg_uuid = form.uuid("MessageUUID") or ""
            if from_number is None or to_number is None:
                # A short code or the like: no account sends from it, no customer has it.
                log.info("inbound sms %s from or to a non-E.164 number: ignored", msg_uuid)
                return Response(EMPTY_PLIVO_XML, media_type="application/xml")
            msg = InboundMessage(
                from_number=from_number,
                to_number=to_number,
                text=form.get("Text") or "",
                message_uuid=msg_uuid,
                intent=(form.get("MessageIntent") or "").strip() or None,
            )
            outcome: InboundOutcome = await run_in_threadpool(
                self._in_transaction, sigs, url, params, lambda s: process_inbound(s, msg)
            )
        except WebhookError as exc:
            return self._refused(request, exc)
        except DBAPIError as exc:
            return self._db_down(exc)
        # Replies are handed to durable work (a workflow per inbound message) before Plivo
        # gets its answer; when that cannot be arranged now Plivo retries the delivery, and the
        # repeat (a duplicate by MessageUUID) starts the replies still pending.
        ids = outcome.reply_ids()
        if ids:
            try:
                await self.replies.start(msg.message_uuid, ids)
            except Exception as exc:
                log.error("inbound %s: replies %s not started, Plivo will retry: %s",
                          msg.message_uuid, ids, str(exc).splitlines()[0][:200] if str(exc)
                          else type(exc).__name__)
                return _error(503, "replies not started, retry later")
        return Response(EMPTY_PLIVO_XML, media_type="application/xml")

    async def status(self, request: Request) -> Response:
        try:
            sigs, url, params = await self._signed_form(request, STATUS_PATH)
            form = _Form(params)
            refs = request.query_params.getlist("ref")
            if len(refs) > 1:
                raise WebhookError(400, "ref given more than once")
            status = form.required("Status").lower()
            if not _STATUS_RE.match(status):
                raise WebhookError(400, "Status is malformed")
            code = (form.get("ErrorCode") or "").strip()
            if code and not _CODE_RE.match(code):
                raise WebhookError(400, "ErrorCode is malformed")
            report = DeliveryReport(
                message_uuid=form.uuid("MessageUUID") or "",
                status=status,
                error_code=code if code.strip("0") else None,
                sequence=_int_or_none(form.get("Sequence"), "Sequence"),
                total_amount=_amount_or_none(form.get("TotalAmount")),
                to_number=normalize_number(form.get("To")),
                parent_uuid=form.uuid("ParentMessageUUID", required=False),
                ref=_int_or_none(refs[0] if refs else None, "ref", minimum=1),
            )
            refunded: list[str] = []
            await run_in_threadpool(
                self._in_transaction, sigs, url, params,
                lambda s: process_delivery_report(s, report, refunded.append),
            )
        except WebhookError as exc:
            return self._refused(request, exc)
        except DBAPIError as exc:
            return self._db_down(exc)
        after = BackgroundTasks()
        for account_id in refunded:  # credits came back: serve the account's paused cases
            after.add_task(self._wake_after_refund, account_id)
        return JSONResponse({"status": "ok"}, background=after)

    async def _wake_after_refund(self, account_id: str) -> None:
        """Best effort: a case this misses re-checks by itself."""
        try:
            client = await self.temporal.get()
            await client.wake_paused(account_id)
        except Exception as exc:
            log.warning("after a refund, could not wake paused cases of %s now (%s); they "
                        "resume at their next re-check", account_id, exc)

    async def stripe(self, request: Request) -> Response:
        account_id = request.path_params["account_id"]
        try:
            header = request.headers.get(SIGNATURE_HEADER)
            if not signature_header_ok(header):
                raise WebhookError(403, "missing or malformed Stripe signature")
            body = await _read_body(request, MAX_STRIPE_BODY_BYTES)
            secret = await run_in_threadpool(self._stripe_secret, account_id)
            if not verify_signature(body, header, secret):
                if secret is None:
                    raise WebhookError(403, "invalid Stripe signature", detail=(
                        f"no account {account_id[:128]!r}, or no signing secret set "
                        "(dunning stripe set-secret)"))
                raise WebhookError(403, "invalid Stripe signature")
            try:
                event = parse_event(body)
            except EventError as exc:
                raise WebhookError(400, str(exc)) from None
            result = await self.stripe_events.handle(account_id, event)
        except WebhookError as exc:
            return self._refused(request, exc)
        except TemporalUnavailable as exc:
            log.error("stripe event for %s not processed, Stripe will retry: %s",
                      account_id[:128], exc)
            return _error(503, "workflow service unavailable, retry later")
        except BillingUnavailable as exc:
            log.error("stripe event for %s not processed, Stripe will retry: %s",
                      account_id[:128], exc)
            return _error(503, "billing service unavailable, retry later")
        except DBAPIError as exc:
            return self._db_down(exc)
        return JSONResponse(result)

    def _stripe_secret(self, account_id: str) -> str | None:
        """The account's signing secret; None for an unknown account or one without."""
        try:
            check_id("account_id", account_id)
        except InputError:
            return None
        with self.db.session() as s:
            stored = s.scalar(select(Account.stripe_webhook_secret)
                              .where(Account.id == account_id))
        try:  # encrypted at rest (dunning.platform.secret_box)
            return self.secret_box.open(stored, context=stripe_context(account_id))
        except SecretUnreadable as exc:
            log.error("stripe event for %r refused: %s", account_id[:128], exc)
            return None

    async def short_link(self, request: Request) -> Response:
        """`GET /l/<token>`: a tracked billing link. The token's signature is checked before
        the database is read; a good one records the click and redirects (303)."""
        token = str(request.path_params.get("token", ""))
        if self.links is None or not self.links.is_valid(token):
            return PlainTextResponse("link not found", status_code=404)

        def click() -> str | None:
            assert self.links is not None
            with self.db.session() as s:
                target = links.follow(s, self.links, token)
                return target.target if target is not None else None

        try:
            target = await run_in_threadpool(click)
        except DBAPIError as exc:
            return self._db_down(exc)
        if target is None:
            return PlainTextResponse("link not found", status_code=404)
        return RedirectResponse(target, status_code=303,
                                headers={"Cache-Control": "no-store", "Referrer-Policy":
                                         "no-referrer"})

    async def healthz(self, request: Request) -> Response:
        if await run_in_threadpool(self.db.ping):
            return JSONResponse({"status": "ok", "database": "ok"})
        return JSONResponse({"status": "error", "database": "unreachable"}, status_code=503)

    # --- helpers ----------------------------------------------------------------------------

    def _refused(self, request: Request, exc: WebhookError) -> Response:
        # Rate-limited: a flood of forged or malformed requests must not flood the logs.
        allowed, suppressed = self.refusal_log.allow()
        if allowed:
            log.warning("%s %s refused (%s): %s%s%s", request.method, request.url.path[:200],
                        exc.status, exc.reason, f": {exc.detail}" if exc.detail else "",
                        f" ({suppressed} more refusals not logged)" if suppressed else "")
        return _error(exc.status, exc.reason)

    def _db_down(self, exc: DBAPIError) -> Response:
        log.error("database error: %s", str(exc.orig or exc).splitlines()[0][:200])
        return _error(503, "database unavailable")

def create_app(
    settings: Settings,
    db: Database,
    sms_provider: SmsProvider | None = None,
    temporal: TemporalSource | None = None,
    *,
    replies: ReplyStarter | None = None,
) -> Starlette:
    """The webhook app.

    `temporal` (a `starter.DunningClient`, or an async factory of one) starts and signals cases
    for billing events and starts the compliance reply workflows; by default a client for
    DUNNING_TEMPORAL_ADDRESS is connected on first use, so the server starts (and serves Plivo
    webhooks) while Temporal is still down.

    `replies` sends the HELP answers and STOP confirmations: by default durably, one workflow
    per inbound message (dunning.messages.replies.DurableReplies), sent by the worker. Given an
    `sms_provider` instead, they are sent in this process before the answer (InlineReplies:
    tests and embedding; not durable).
    """
    if temporal is None:
        temporal = _temporal_factory(settings, db)
    lazy = LazyTemporal(temporal)
    if replies is None:
        replies = (InlineReplies(db, sms_provider, settings.public_url)
                   if sms_provider is not None else DurableReplies(lazy))
    if not settings.plivo_auth_token.get_secret_value():
        log.warning("PLIVO_AUTH_TOKEN is not set: Plivo webhooks will refuse every request")
    handlers = WebhookApp(settings, db, replies, lazy, secret_box_for(settings),
                          links=links.signer_for(settings))
    app = Starlette(
        routes=[
            Route(INBOUND_PATH, handlers.inbound, methods=["POST"]),
            Route(STATUS_PATH, handlers.status, methods=["POST"]),
            Route(STRIPE_PATH, handlers.stripe, methods=["POST"]),
            Route(HEALTH_PATH, handlers.healthz, methods=["GET"]),
            Route(SHORT_LINK_PATH, handlers.short_link, methods=["GET"]),
        ]
    )
    app.state.webhooks = handlers
    return app


def _temporal_factory(settings: Settings, db: Database) -> Callable[[], Awaitable[DunningClient]]:
    async def connect() -> DunningClient:
        return await DunningClient.connect(settings, db)

    return connect


__all__ = [
    "HEALTH_PATH",
    "INBOUND_PATH",
    "MAX_BODY_BYTES",
    "MAX_STRIPE_BODY_BYTES",
    "STATUS_PATH",
    "STRIPE_PATH",
    "create_app",
]
