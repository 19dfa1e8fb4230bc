"""The HTTP API, `/api/v1`: accounts and SMS settings, phone import and customer upsert, credits
(top-ups honour `Idempotency-Key`), cases (start, status, recover, cancel) and the report.

Every operation but the OpenAPI document authenticates first (`Authorization: Bearer <key>`,
401 otherwise), then answers 404 for any account but the key's own (exactly as for an account
that does not exist). Errors are `application/problem+json` (RFC 9457); a bad value is a 422
naming the field (`field`) and changes nothing.
"""

from __future__ import annotations

import asyncio
import json
import tempfile
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route
from temporalio.service import RPCError

from dunning.accounts import messaging
from dunning.accounts.accounts import account_json, get_account
from dunning.api.keys import identity_for_key
from dunning.api.openapi import openapi_document
from dunning.api.problems import problem
from dunning.cases import report as reports
from dunning.cases.client import CaseNotFound, CaseRequest
from dunning.console import audit
from dunning.console import operations as ops
from dunning.console.access import Identity
from dunning.customers.importer import CsvFileError
from dunning.domain.contract import InputError, check_id, parse_rfc3339
from dunning.platform.db import Database
from dunning.platform.settings import Settings
from dunning.webhooks.stripe import LazyTemporal, TemporalUnavailable

ALL_METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE"]
MAX_JSON_BYTES = 64 * 1024
MAX_CSV_BYTES = 512 * 1024 * 1024
TEMPORAL_TIMEOUT = 10.0

Operation = Callable[[Request, Identity, dict[str, Any]], Awaitable[Response]]


class BadRequest(Exception):
    pass


def _field(body: dict[str, Any], name: str, kind: type | tuple[type, ...],
           required: bool = False) -> Any:
    value = body.get(name)
    if value is None:
        if required:
            raise InputError(name, "is required")
        return None
    if isinstance(value, bool) and kind is not bool and bool not in (
            kind if isinstance(kind, tuple) else (kind,)):
        raise InputError(name, f"must be {_kind_name(kind)}")
    if not isinstance(value, kind):
        raise InputError(name, f"must be {_kind_name(kind)}")
    return value


def _whole(value: Any) -> Any:
    """JSON's 4900.0 is the integer 4900 (JSON Schema agrees); other values as they are."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**63:
        return int(value)
    return value


def _kind_name(kind: type | tuple[type, ...]) -> str:
    names = {str: "a string", bool: "true or false", int: "an integer", dict: "an object"}
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join(names.get(k, k.__name__) for k in kinds)


class Api:
    def __init__(self, settings: Settings, db: Database, temporal: LazyTemporal) -> None:
        self.settings = settings
        self.db = db
        self.temporal = temporal

    async def run(self, fn: Callable[[Session], Any]) -> Any:
        def work() -> Any:
            with self.db.session() as s:
                return fn(s)

        return await run_in_threadpool(work)

    def identify(self, request: Request) -> Identity | None:
        header = request.headers.get("authorization") or ""
        scheme, _, key = header.partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            return None
        with self.db.session() as s:
            return identity_for_key(s, key.strip())

    def op(self, fn: Operation, *, json_body: bool = False) -> Callable[[Request],
                                                                          Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            ident = await run_in_threadpool(self.identify, request)
            if ident is None:
                return problem(401, "Unauthorized",
                               "Give a valid API key: `Authorization: Bearer <key>` "
                               "(`dunning api-keys create --account A`).",
                               headers={"www-authenticate": 'Bearer realm="dunning"'})
            if request.path_params.get("account_id") != ident.account_id:
                return problem(404, "Not Found", "There is no such account.")
            try:
                body = await self._json(request) if json_body else {}
                return await fn(request, ident, body)
            except BadRequest as exc:
                return problem(400, "Bad Request", str(exc))
            except InputError as exc:
                return problem(422, "Unprocessable Content", str(exc), field=exc.field)
            except ops.Forbidden as exc:
                return problem(403, "Forbidden", str(exc))
            except CaseNotFound as exc:
                return problem(404, "Not Found", str(exc))
            except (TemporalUnavailable, TimeoutError) as exc:
                why = str(exc) or f"no answer within {TEMPORAL_TIMEOUT:.0f} s"
                return problem(503, "Service Unavailable",
                               f"Temporal could not be reached: {why}",
                               headers={"retry-after": "5"})
            except RPCError as exc:
                return problem(502, "Bad Gateway", f"Temporal refused the request: "
                               f"{exc.message}")
            except ClientDisconnect:
                return problem(400, "Bad Request", "the request body was cut short")

        return endpoint

    async def _json(self, request: Request) -> dict[str, Any]:
        kind = (request.headers.get("content-type") or "").split(";")[0].strip().lower()
        raw = b""
        async for chunk in request.stream():
            raw += chunk
            if len(raw) > MAX_JSON_BYTES:
                raise BadRequest(f"the body is larger than {MAX_JSON_BYTES} bytes")
        if not raw.strip():
            return {}
        if kind.startswith("multipart/") or kind.startswith("text/"):
            raise BadRequest("send the body as application/json")
        try:
            body = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            raise BadRequest("the body is not valid JSON") from None
        if not isinstance(body, dict):
            raise BadRequest("the body must be a JSON object")
        return body

    # --- operations ----------------------------------------------------------------------

    async def get_account(self, request: Request, ident: Identity, body: dict[str, Any]
                          ) -> Response:
        data = await self.run(lambda s: account_json(s, get_account(s, ident.account_id)))
        return JSONResponse(data)

    async def update_account(self, request: Request, ident: Identity, body: dict[str, Any]
                             ) -> Response:
        unknown = sorted(set(body) - set(ops.ACCOUNT_FIELDS))
        if unknown:
            raise InputError(unknown[0], f"is not a setting of an account (one of "
                             f"{', '.join(ops.ACCOUNT_FIELDS)})")
        values = {k: _field(body, k, str) for k in ops.ACCOUNT_FIELDS}
        data = await self.run(lambda s: ops.change_account(s, ident, values))
        return JSONResponse(data)

    async def get_sms_settings(self, request: Request, ident: Identity, body: dict[str, Any]
                               ) -> Response:
        data = await self.run(lambda s: messaging.sms_settings_json(s, ident.account_id))
        return JSONResponse(data)

    async def update_sms_settings(self, request: Request, ident: Identity,
                                  body: dict[str, Any]) -> Response:
        steps_raw = _field(body, "steps", dict)
        steps: dict[int, bool] | None = None
        if steps_raw is not None:
            steps = {}
            for key, value in steps_raw.items():
                if not str(key).isdigit() or not isinstance(value, bool):
                    raise InputError("steps", 'must map step numbers to true or false, e.g. '
                                     '{"1": true, "2": false}')
                steps[int(key)] = value
        changes = ops.SmsChanges(sms_enabled=_field(body, "sms_enabled", bool), steps=steps,
                                 template=_field(body, "template", str),
                                 plan=_field(body, "plan", str))
        data = await self.run(lambda s: ops.update_sms_settings(s, ident, changes))
        return JSONResponse(data)

    async def preview_sms(self, request: Request, ident: Identity, body: dict[str, Any]
                          ) -> Response:
        template = _field(body, "template", str)
        plan = _field(body, "plan", str) or None
        country = _field(body, "country", str)

        def work(s: Session) -> dict[str, Any]:
            if template is None:
                return messaging.preview_sms(s, ident.account_id, plan, country or "US")
            preview = ops.template_preview(s, ident.account_id, template, plan=plan,
                                           country=country)
            if preview["error"]:
                raise InputError(preview["field"] or "template", preview["error"])
            return preview

        data = await self.run(work)
        keep = ("text", "encoding", "segments", "credits", "characters", "plan", "country")
        return JSONResponse({k: data.get(k) for k in keep})

    async def import_phones(self, request: Request, ident: Identity, body: dict[str, Any]
                            ) -> Response:
        region = request.query_params.get("default_region") or None
        with tempfile.SpooledTemporaryFile(max_size=8 * 1024 * 1024) as spool:
            size = 0
            async for chunk in request.stream():
                size += len(chunk)
                if size > MAX_CSV_BYTES:
                    raise BadRequest(f"the file is larger than {MAX_CSV_BYTES} bytes")
                spool.write(chunk)
            spool.seek(0)

            def work(s: Session) -> dict[str, Any]:
                return ops.import_phones(s, ident, spool, name="body", default_region=region,
                                         total_bytes=size).as_json()

            try:
                data = await self.run(work)
            except CsvFileError as exc:
                return problem(422, "Unprocessable Content",
                               f"{exc.message}; nothing was stored", field="body")
        return JSONResponse(data)

    async def upsert_customer(self, request: Request, ident: Identity, body: dict[str, Any]
                              ) -> Response:
        customer = request.path_params["customer_id"]
        # As an empty CSV cell: "" (or null) is "not given" and keeps the stored value.
        fields = {k: _field(body, k, str) or None
                  for k in ("phone", "country", "email", "name", "plan")}
        outcome = await self.run(lambda s: ops.put_customer(s, ident, customer, **fields))
        return JSONResponse({"account_id": ident.account_id, "customer_id": customer,
                             "outcome": outcome})

    async def get_balance(self, request: Request, ident: Identity, body: dict[str, Any]
                          ) -> Response:
        return JSONResponse(await self.run(lambda s: ops.balance_json(s, ident.account_id)))

    async def top_up(self, request: Request, ident: Identity, body: dict[str, Any]
                     ) -> Response:
        amount = _whole(body.get("amount"))
        if amount is None:
            raise InputError("amount", "is required")
        if isinstance(amount, bool) or not isinstance(amount, int):
            raise InputError("amount", "must be a whole number of credits, at least 1")
        key = request.headers.get("idempotency-key")
        done = await run_in_threadpool(ops.top_up, self.db, ident, amount, key)
        data: dict[str, Any] = done.as_json()
        data["woken"] = 0
        if not done.duplicate:
            from dunning.credits.wake import wake_paused

            try:
                client = await self.temporal.get()
                woke = await asyncio.wait_for(wake_paused(client.client, self.db,
                                                          ident.account_id), TEMPORAL_TIMEOUT)
                data["woken"] = woke.woken
            except (TemporalUnavailable, TimeoutError, RuntimeError, RPCError) as exc:
                data["wake_error"] = str(exc).splitlines()[0] if str(exc) else "unavailable"
        return JSONResponse(data)

    async def start_case(self, request: Request, ident: Identity, body: dict[str, Any]
                         ) -> Response:
        amount = _whole(body.get("amount_due"))
        if isinstance(amount, bool) or not isinstance(amount, int) or not 0 <= amount < 2**63:
            raise InputError("amount_due", "must be a whole number of minor units (4900)")
        failed_at_raw = _field(body, "failed_at", str)
        failed_at: datetime | None = (parse_rfc3339("failed_at", failed_at_raw)
                                      if failed_at_raw else None)
        request_ = CaseRequest(
            account_id=ident.account_id,
            customer_id=check_id("customer_id", _field(body, "customer_id", str, True)),
            invoice_id=check_id("invoice_id", _field(body, "invoice_id", str, True)),
            amount_due=amount,
            currency=_field(body, "currency", str, True).upper(),  # `usd` as Stripe sends it
            billing_link=_field(body, "billing_link", str, True),
            failed_at=failed_at,
            customer_email=_field(body, "customer_email", str),
            customer_name=_field(body, "customer_name", str),
            plan=_field(body, "plan", str),
        )
        client = await self.temporal.get()
        result = await asyncio.wait_for(client.start_case(request_), TEMPORAL_TIMEOUT)
        if result.started:
            await self.run(lambda s: audit.record(s, ident.account_id, ident.actor,
                                                  "case.started",
                                                  invoice_id=request_.invoice_id))
        return JSONResponse({"workflow_id": result.workflow_id, "started": result.started,
                             "run_id": result.run_id},
                            status_code=201 if result.started else 200)

    def _invoice(self, request: Request) -> str:
        return check_id("invoice_id", request.path_params["invoice_id"])

    async def get_case(self, request: Request, ident: Identity, body: dict[str, Any]
                       ) -> Response:
        invoice = self._invoice(request)
        client = await self.temporal.get()
        data = await asyncio.wait_for(client.status(ident.account_id, invoice),
                                      TEMPORAL_TIMEOUT)
        return JSONResponse(json.loads(json.dumps(data, default=str)))

    async def recover_case(self, request: Request, ident: Identity, body: dict[str, Any]
                           ) -> Response:
        invoice = self._invoice(request)
        amount = _whole(body.get("amount"))
        if amount is not None and (isinstance(amount, bool) or not isinstance(amount, int)
                                   or not 0 <= amount < 2**63):
            raise InputError("amount", "must be a whole number of minor units")
        client = await self.temporal.get()
        await asyncio.wait_for(client.recover(ident.account_id, invoice, amount),
                               TEMPORAL_TIMEOUT)
        await self.run(lambda s: audit.record(s, ident.account_id, ident.actor,
                                              "case.recover", invoice_id=invoice))
        return JSONResponse({"invoice_id": invoice, "signal": "payment_recovered",
                             "ok": True})

    async def cancel_case(self, request: Request, ident: Identity, body: dict[str, Any]
                          ) -> Response:
        invoice = self._invoice(request)
        reason = _field(body, "reason", str)
        if reason is not None and len(reason) > 200:
            raise InputError("reason", "must be at most 200 characters")
        client = await self.temporal.get()
        await asyncio.wait_for(client.cancel(ident.account_id, invoice, reason),
                               TEMPORAL_TIMEOUT)
        await self.run(lambda s: audit.record(s, ident.account_id, ident.actor,
                                              "case.cancel", invoice_id=invoice))
        return JSONResponse({"invoice_id": invoice, "signal": "cancel", "ok": True})

    async def get_report(self, request: Request, ident: Identity, body: dict[str, Any]
                         ) -> Response:
        since_raw = request.query_params.get("since")
        since = reports.parse_since(since_raw) if since_raw is not None else None
        data = await self.run(lambda s: reports.build_report(s, ident.account_id, since=since))
        return JSONResponse(data)


def api_routes(settings: Settings, db: Database, temporal: LazyTemporal) -> list[BaseRoute]:
    api = Api(settings, db, temporal)
    acct = "/accounts/{account_id}"
    case = acct + "/cases/{invoice_id}"

    async def document(request: Request) -> Response:
        return JSONResponse(openapi_document())

    table: dict[str, dict[str, Any]] = {
        acct: {"GET": api.op(api.get_account),
               "PATCH": api.op(api.update_account, json_body=True)},
        f"{acct}/sms-settings": {"GET": api.op(api.get_sms_settings),
                                 "PATCH": api.op(api.update_sms_settings, json_body=True)},
        f"{acct}/sms-settings/preview": {"POST": api.op(api.preview_sms, json_body=True)},
        f"{acct}/phone-imports": {"POST": api.op(api.import_phones)},
        acct + "/customers/{customer_id}": {
            "PUT": api.op(api.upsert_customer, json_body=True)},
        f"{acct}/credits": {"GET": api.op(api.get_balance)},
        f"{acct}/credits/top-ups": {"POST": api.op(api.top_up, json_body=True)},
        f"{acct}/cases": {"POST": api.op(api.start_case, json_body=True)},
        case: {"GET": api.op(api.get_case)},
        f"{case}/recover": {"POST": api.op(api.recover_case, json_body=True)},
        f"{case}/cancel": {"POST": api.op(api.cancel_case, json_body=True)},
        f"{acct}/report": {"GET": api.op(api.get_report)},
    }
    return [Route("/openapi.json", document, methods=["GET"]),
            *(Route(path, _by_method(methods), methods=ALL_METHODS)
              for path, methods in table.items())]


def _by_method(handlers: dict[str, Callable[[Request], Awaitable[Response]]]
               ) -> Callable[[Request], Awaitable[Response]]:
    """One route per path: the documented methods, and 405 with `Allow` for the rest."""
    allow = ", ".join(handlers)

    async def endpoint(request: Request) -> Response:
        handler = handlers.get(request.method)
        if handler is None:
            return problem(405, "Method Not Allowed", f"This resource takes {allow}.",
                           headers={"allow": allow})
        return await handler(request)

    return endpoint
