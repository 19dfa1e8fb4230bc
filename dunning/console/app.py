"""The console's web app: sign-in, the setup-flow pages, and the HTTP API mounted at /api/v1.

Every page checks, in this order, before it reads anything of an account:
1. a signed session cookie naming a live session (else: GET -> the sign-in page, POST -> 403);
2. the account in the URL is the user's own (else 404, exactly as for an account that does not
   exist, so ids cannot be probed);
3. on POST: the session's CSRF token in the form (`csrf_token`) or the `X-CSRF-Token` header
   (else 403, nothing changed);
4. on a change: the user's role may change things (viewers: 403).
"""

from __future__ import annotations

import asyncio
import hmac
import secrets
from collections import OrderedDict
from collections.abc import Awaitable, Callable, MutableMapping
from datetime import date, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

from markupsafe import Markup
from sqlalchemy.orm import Session
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData, UploadFile
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import (
    HTMLResponse,
    PlainTextResponse,
    RedirectResponse,
    Response,
    StreamingResponse,
)
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates
from starlette.types import ASGIApp, Receive, Scope, Send

from dunning.accounts import messaging, pricing
from dunning.accounts.accounts import get_account
from dunning.cases import report as reports
from dunning.cases import report_html
from dunning.cases.client import CaseNotFound, DunningClient
from dunning.console import access, audit
from dunning.console import operations as ops
from dunning.console.access import Identity
from dunning.customers.importer import CsvFileError, ImportReport
from dunning.domain.contract import InputError, parse_schedule, workflow_id_for
from dunning.domain.templates import format_amount
from dunning.platform.db import Database
from dunning.platform.settings import Settings
from dunning.webhooks.stripe import LazyTemporal, TemporalSource, TemporalUnavailable

HERE = Path(__file__).resolve().parent
COOKIE = "dunning_session"
LOGIN_CSRF_COOKIE = "dunning_login_csrf"
MAX_UPLOAD_BYTES = 512 * 1024 * 1024
MAX_LOGIN_BYTES = 8 * 1024
SHOWN_REJECTED = 1000
KEPT_IMPORTS = 32
TEMPORAL_TIMEOUT = 10.0

Handler = Callable[[Request, Identity, FormData | None], Awaitable[Response]]


class SecurityHeaders:
    """Headers every answer carries: no framing, no sniffing, scripts only from here."""

    CSP = ("default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
           "img-src 'self' data:; object-src 'none'; base-uri 'none'; form-action 'self'; "
           "frame-ancestors 'none'")

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: MutableMapping[str, Any]) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                names = {k.lower() for k, _ in headers}
                for key, value in (
                    (b"x-frame-options", b"DENY"),
                    (b"x-content-type-options", b"nosniff"),
                    (b"referrer-policy", b"same-origin"),
                    (b"content-security-policy", self.CSP.encode()),
                ):
                    if key not in names:
                        headers.append((key, value))
                if scope["path"].startswith(("/accounts", "/login")):
                    headers.append((b"cache-control", b"no-store"))
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, send_with_headers)


def _money(amount: int, currency: str) -> str:
    return format_amount(amount, currency)


def _when(moment: datetime | date | str | None) -> str:
    if moment is None:
        return ""
    if isinstance(moment, str):
        return moment.replace("T", " ")[:19]
    if isinstance(moment, datetime):
        return moment.strftime("%Y-%m-%d %H:%M:%S")
    return moment.isoformat()


class Console:
    """The collaborators of the pages: database, settings, cookie signer, Temporal."""

    def __init__(self, settings: Settings, db: Database, temporal: LazyTemporal) -> None:
        self.settings = settings
        self.db = db
        self.temporal = temporal
        self.signer = access.CookieSigner(access.console_secret(settings))
        self.templates = Jinja2Templates(directory=str(HERE / "templates"))
        self.templates.env.filters["money"] = _money
        self.templates.env.filters["when"] = _when
        self.templates.env.globals["quote"] = quote
        self.imports: OrderedDict[str, tuple[str, str]] = OrderedDict()

    # --- plumbing --------------------------------------------------------------------------

    def secure_cookies(self, request: Request) -> bool:
        return (request.url.scheme == "https"
                or self.settings.public_url.startswith("https://"))

    async def run(self, fn: Callable[[Session], Any]) -> Any:
        def work() -> Any:
            with self.db.session() as s:
                return fn(s)

        return await run_in_threadpool(work)

    def identity(self, request: Request) -> Identity | None:
        raw = request.cookies.get(COOKIE)
        token = self.signer.unsign(raw) if raw else None
        if token is None:
            return None
        with self.db.session() as s:
            return access.identity_for_session(s, token)

    def render(self, request: Request, name: str, ident: Identity | None,
               http_status: int = 200, **context: Any) -> HTMLResponse:
        context.update(ident=ident, account_id=ident.account_id if ident else None,
                       csrf=ident.csrf_token if ident else "")
        response = self.templates.TemplateResponse(request, name, context,
                                                   status_code=http_status)
        assert isinstance(response, HTMLResponse)
        return response

    def error(self, request: Request, ident: Identity | None, status: int, title: str,
              detail: str) -> HTMLResponse:
        return self.render(request, "error.html", ident, status, title=title, detail=detail)

    def page(self, handler: Handler, *, change: bool = False) -> Callable[[Request],
                                                                            Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            ident = await run_in_threadpool(self.identity, request)
            if ident is None:
                if request.method == "GET":
                    return RedirectResponse(
                        "/login?" + urlencode({"next": request.url.path}), status_code=303)
                return self.error(request, None, 403, "Forbidden", "Sign in first.")
            account = request.path_params.get("account_id")
            if account is not None and account != ident.account_id:
                return self.error(request, ident, 404, "Not found",
                                  "There is no such page.")
            form: FormData | None = None
            if request.method == "POST":
                form = await request.form(max_files=1, max_fields=200)
                sent = form.get("csrf_token") or request.headers.get("x-csrf-token") or ""
                if not isinstance(sent, str) or not hmac.compare_digest(
                        sent.encode(), ident.csrf_token.encode()):
                    await form.close()
                    return self.error(request, ident, 403, "Forbidden",
                                      "The form was missing its security token. Reload the "
                                      "page and try again.")
                if change and not ident.can_change:
                    await form.close()
                    return self.error(request, ident, 403, "Forbidden",
                                      "Your role (viewer) can look but not change anything.")
            try:
                return await handler(request, ident, form)
            except ops.Forbidden as exc:
                return self.error(request, ident, 403, "Forbidden", str(exc))
            finally:
                if form is not None:
                    await form.close()

        return endpoint

    async def client(self) -> DunningClient:
        return await self.temporal.get()

    def temporal_ui_link(self, workflow_id: str) -> str:
        return (f"{self.settings.temporal_ui_url}/namespaces/"
                f"{quote(self.settings.temporal_namespace, safe='')}/workflows/"
                f"{quote(workflow_id, safe='')}")

    # --- sign-in ---------------------------------------------------------------------------

    async def login_form(self, request: Request) -> Response:
        token = secrets.token_urlsafe(24)
        response = self.render(request, "login.html", None, login_csrf=token,
                               next=_safe_next(request.query_params.get("next")), error=None)
        self._login_cookie(request, response, token)
        return response

    def _login_cookie(self, request: Request, response: Response, token: str) -> None:
        response.set_cookie(LOGIN_CSRF_COOKIE, token, httponly=True, samesite="strict",
                            secure=self.secure_cookies(request), path="/login")

    async def login(self, request: Request) -> Response:
        length = request.headers.get("content-length") or ""
        if not length.isdigit() or int(length) > MAX_LOGIN_BYTES:
            return self.error(request, None, 413 if length.isdigit() else 411,
                              "Request refused", "The sign-in form is too large or unsized.")
        form = await request.form(max_files=0, max_fields=10)
        sent = str(form.get("csrf_token") or "")
        cookie = request.cookies.get(LOGIN_CSRF_COOKIE) or ""
        if not sent or not cookie or not hmac.compare_digest(sent.encode(), cookie.encode()):
            return self.error(request, None, 403, "Forbidden",
                              "The form was missing its security token. Reload the page and "
                              "try again.")
        email = str(form.get("email") or "")
        password = str(form.get("password") or "")
        target = _safe_next(str(form.get("next") or ""))

        def attempt(s: Session) -> tuple[str | None, str | None, str | None]:
            outcome = access.authenticate(s, email, password)  # failures commit too
            if outcome.user is None:
                return None, None, outcome.error
            return access.start_session(s, outcome.user), outcome.user.account_id, None

        token, account_id, error = await self.run(attempt)
        response: Response
        if token is None:
            fresh = secrets.token_urlsafe(24)
            response = self.render(request, "login.html", None, 401, login_csrf=fresh,
                                   next=target, error=error, email=email)
            self._login_cookie(request, response, fresh)
            return response
        response = RedirectResponse(target or f"/accounts/{account_id}/import", status_code=303)
        response.set_cookie(COOKIE, self.signer.sign(token), httponly=True, samesite="lax",
                            secure=self.secure_cookies(request), path="/",
                            max_age=int(access.SESSION_TTL.total_seconds()))
        response.delete_cookie(LOGIN_CSRF_COOKIE, path="/login")
        return response

    async def logout(self, request: Request, ident: Identity, form: FormData | None
                     ) -> Response:
        raw = request.cookies.get(COOKIE) or ""
        token = self.signer.unsign(raw)
        if token:
            await self.run(lambda s: access.end_session(s, token))
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(COOKIE, path="/")
        return response

    async def home(self, request: Request, ident: Identity, form: FormData | None) -> Response:
        return RedirectResponse(f"/accounts/{ident.account_id}/import", status_code=303)

    # --- import phone numbers ----------------------------------------------------------------

    async def import_page(self, request: Request, ident: Identity, form: FormData | None
                          ) -> Response:
        report: ImportReport | None = None
        error: str | None = None
        download: str | None = None
        if form is not None:
            upload = form.get("file")
            region = str(form.get("default_region") or "").strip() or None
            if not isinstance(upload, UploadFile) or not upload.filename:
                error = "Choose a CSV file to upload."
            else:
                result = await self._import(ident, upload, region)
                if isinstance(result, str):
                    error = result
                else:
                    report = result
                    if report.errors:
                        download = secrets.token_urlsafe(16)
                        self.imports[download] = (ident.account_id, ops.rejected_csv(report))
                        while len(self.imports) > KEPT_IMPORTS:
                            self.imports.popitem(last=False)
        status = 200 if error is None else 422
        stripe = await self.run(lambda s: ops.stripe_sync_status(
            s, ident.account_id, self.settings.public_url))
        return self.render(request, "import.html", ident, status, report=report, error=error,
                           download=download, shown=SHOWN_REJECTED, stripe=stripe,
                           page_name="import")

    async def _import(self, ident: Identity, upload: UploadFile, region: str | None
                      ) -> ImportReport | str:
        size = upload.size or 0
        if size > MAX_UPLOAD_BYTES:
            return f"The file is larger than {MAX_UPLOAD_BYTES // (1024 * 1024)} MiB."
        name = Path(upload.filename or "upload.csv").name

        def work(s: Session) -> ImportReport:
            upload.file.seek(0)
            return ops.import_phones(s, ident, upload.file, name=name, default_region=region,
                                     total_bytes=size)

        try:
            result: ImportReport = await self.run(work)
            return result
        except CsvFileError as exc:
            return f"{exc.message} Nothing was stored."
        except InputError as exc:
            return str(exc)

    async def rejected_download(self, request: Request, ident: Identity,
                                form: FormData | None) -> Response:
        kept = self.imports.get(request.path_params["token"])
        if kept is None or kept[0] != ident.account_id:
            return self.error(request, ident, 404, "Not found",
                              "That list of rejected rows is no longer kept; import again.")
        return Response(kept[1], media_type="text/csv; charset=utf-8", headers={
            "content-disposition": 'attachment; filename="rejected-rows.csv"'})

    # --- SMS settings --------------------------------------------------------------------------

    async def sms_page(self, request: Request, ident: Identity, form: FormData | None
                       ) -> Response:
        plan = (request.query_params.get("plan") or "").strip() or None
        errors: dict[str, str] = {}
        saved = False
        draft: str | None = None
        if form is not None:
            plan = str(form.get("plan") or "").strip() or None
            draft = str(form.get("template") or "")
            changes = ops.SmsChanges(sms_enabled=form.get("sms_enabled") == "on",
                                     template=draft, plan=plan)

            def count_steps(s: Session) -> int:
                return len(parse_schedule(get_account(s, ident.account_id).schedule))

            steps = await self.run(count_steps)
            changes.steps = {n: form.get(f"step_{n}") == "on" for n in range(1, steps + 1)}
            try:
                await self.run(lambda s: ops.update_sms_settings(s, ident, changes))
                saved = True
                draft = None
            except InputError as exc:
                errors[exc.field] = exc.message

        def load(s: Session) -> dict[str, Any]:
            data = messaging.sms_settings_json(s, ident.account_id)
            template, source = messaging.sms_template_source(s, ident.account_id, plan)
            text = draft if draft is not None else template
            return {"settings": data, "template": text, "source": source,
                    "preview": ops.template_preview(s, ident.account_id, text, plan=plan)}

        data = await self.run(load)
        return self.render(request, "sms.html", ident, 422 if errors else 200, errors=errors,
                           saved=saved, plan=plan or "", variables=ops.template_variables(),
                           page_name="sms", **data)

    async def sms_preview(self, request: Request, ident: Identity, form: FormData | None
                          ) -> Response:
        assert form is not None
        text = str(form.get("template") or "")
        plan = str(form.get("plan") or "").strip() or None
        preview = await self.run(
            lambda s: ops.template_preview(s, ident.account_id, text, plan=plan))
        return self.render(request, "_preview.html", ident, preview=preview)

    async def email_page(self, request: Request, ident: Identity, form: FormData | None
                         ) -> Response:
        params = request.query_params
        step = _int_or(params.get("step"), 1)
        plan = (params.get("plan") or "").strip() or None
        errors: dict[str, str] = {}
        saved = False
        draft: tuple[str, str] | None = None
        if form is not None:
            step = _int_or(str(form.get("step") or ""), 1)
            plan = str(form.get("plan") or "").strip() or None
            subject, body = str(form.get("subject") or ""), str(form.get("body") or "")
            draft = (subject, body)
            try:
                await self.run(lambda s: ops.save_email_template(
                    s, ident, subject, body, step=step, plan=plan))
                saved, draft = True, None
            except InputError as exc:
                errors[exc.field] = exc.message

        def load(s: Session) -> dict[str, Any]:
            account = get_account(s, ident.account_id)
            offsets = parse_schedule(account.schedule)
            chosen = step if 0 <= step <= len(offsets) else 1
            subject, body, source = messaging.email_template_source(
                s, ident.account_id, chosen, plan)
            if draft is not None:
                subject, body = draft
            return {"step": chosen, "steps": list(range(1, len(offsets) + 1)),
                    "subject": subject, "body": body,
                    "source": "built-in" if source is None else
                    f"step {source['step'] or 'every'}, plan {source['plan'] or 'default'}",
                    "preview": ops.email_preview(s, ident.account_id, subject, body, chosen)}

        data = await self.run(load)
        return self.render(request, "email.html", ident, 422 if errors else 200,
                           errors=errors, saved=saved, plan=plan or "",
                           variables=ops.template_variables(), page_name="email", **data)

    async def email_preview(self, request: Request, ident: Identity, form: FormData | None
                            ) -> Response:
        assert form is not None
        step = _int_or(str(form.get("step") or ""), 1)
        subject, body = str(form.get("subject") or ""), str(form.get("body") or "")
        preview = await self.run(
            lambda s: ops.email_preview(s, ident.account_id, subject, body, step))
        return self.render(request, "_email_preview.html", ident, preview=preview)

    # --- credits --------------------------------------------------------------------------------

    async def credits_page(self, request: Request, ident: Identity, form: FormData | None,
                           *, message: str | None = None, errors: dict[str, str] | None = None
                           ) -> Response:
        page = _page_number(request.query_params.get("page"))

        def load(s: Session) -> dict[str, Any]:
            account = get_account(s, ident.account_id)
            rows, total = ops.ledger_page(s, ident.account_id, page)
            return {"balance": ops.balance_json(s, ident.account_id),
                    "rates": pricing.rates_json(s, ident.account_id),
                    "price": pricing.price_json(account),
                    "entries": rows, "total": total}

        data = await self.run(load)
        pages = max(1, -(-data["total"] // ops.PAGE_SIZE))
        return self.render(request, "credits.html", ident, 422 if errors else 200,
                           message=message, errors=errors or {}, page=page, pages=pages,
                           idempotency_key=secrets.token_urlsafe(16), page_name="credits",
                           **data)

    async def top_up(self, request: Request, ident: Identity, form: FormData | None
                     ) -> Response:
        assert form is not None
        key = str(form.get("idempotency_key") or "") or None
        try:
            done = await run_in_threadpool(ops.top_up, self.db, ident, form.get("amount"), key)
        except InputError as exc:
            return await self.credits_page(request, ident, None,
                                           errors={"amount": exc.message})
        if done.duplicate:
            return await self.credits_page(
                request, ident, None,
                message="This top-up was done already; nothing changed.")
        woken = await self._wake(ident.account_id)
        return await self.credits_page(
            request, ident, None,
            message=f"Added {ops.check_amount(form.get('amount')):,} credits (balance "
                    f"{done.balance:,}). {woken}")

    async def _wake(self, account_id: str) -> str:
        from dunning.credits.wake import wake_paused

        try:
            client = await self.client()
            result = await asyncio.wait_for(
                wake_paused(client.client, self.db, account_id), TEMPORAL_TIMEOUT)
        except (TemporalUnavailable, TimeoutError, RuntimeError) as exc:
            return (f"Paused cases resume at their next re-check (Temporal could not be "
                    f"reached: {_short(exc)}).")
        if not result.woken:
            return "No case was waiting for credits."
        return (f"{result.woken} paused case(s) resumed; {result.granted:,} credit(s) set "
                "aside for their messages.")

    async def auto_refill(self, request: Request, ident: Identity, form: FormData | None
                          ) -> Response:
        assert form is not None
        off = form.get("off") == "on"
        try:
            armed = await self.run(lambda s: ops.set_auto_refill(
                s, ident, threshold=form.get("threshold"), amount=form.get("refill_amount"),
                off=off))
        except InputError as exc:
            field = "refill_amount" if exc.field == "amount" else exc.field
            return await self.credits_page(request, ident, None, errors={field: exc.message})
        message = "Auto-refill is off." if off else "Auto-refill saved."
        if armed is not None:  # the balance is below the threshold already: refill now
            from dunning.credits import refill
            from dunning.credits.gateways import Gateways

            outcome = await run_in_threadpool(refill.execute_refill, self.db, armed,
                                              Gateways.from_settings(self.settings),
                                              default_sender=self.settings.email_from)
            if outcome is not None and outcome.status == "succeeded":
                message += f" A refill of {outcome.amount:,} credits went through. "
                message += await self._wake(ident.account_id)
            elif outcome is not None:
                message += f" The refill is {outcome.status}: {outcome.error or ''}".rstrip()
        return await self.credits_page(request, ident, None, message=message.strip())

    async def ledger_csv(self, request: Request, ident: Identity, form: FormData | None
                         ) -> Response:
        def rows() -> Any:
            with self.db.session() as s:
                yield from ops.ledger_csv_rows(s, ident.account_id)

        return StreamingResponse(rows(), media_type="text/csv; charset=utf-8", headers={
            "content-disposition": f'attachment; filename="ledger-{ident.account_id}.csv"'})

    # --- cases ------------------------------------------------------------------------------------

    async def cases_page(self, request: Request, ident: Identity, form: FormData | None
                         ) -> Response:
        params = request.query_params
        paused = params.get("sms_paused") or ""
        query = ops.CaseQuery(state=params.get("state") or None,
                              customer=(params.get("customer") or "").strip() or None,
                              invoice=(params.get("invoice") or "").strip() or None,
                              sms_paused={"yes": True, "no": False}.get(paused),
                              page=_page_number(params.get("page")))
        error = None
        try:
            query.check()
            rows, total = await self.run(lambda s: ops.search_cases(s, ident.account_id, query))
        except InputError as exc:
            rows, total, error = [], 0, exc.message
        pages = max(1, -(-total // ops.PAGE_SIZE))
        keep = {k: v for k, v in params.items() if k != "page" and v}
        return self.render(request, "cases.html", ident, 422 if error else 200, rows=rows,
                           total=total, query=query, paused=paused, error=error,
                           page=query.page, pages=pages, keep=urlencode(keep),
                           states=ops.CASE_STATES, page_name="cases")

    async def case_page(self, request: Request, ident: Identity, form: FormData | None,
                        *, message: str | None = None, error: str | None = None) -> Response:
        invoice = request.path_params["invoice_id"]
        row = await self.run(lambda s: ops.case_row(s, ident.account_id, invoice))
        status: dict[str, Any] | None = None
        problem: str | None = None
        try:
            client = await self.client()
            status = await asyncio.wait_for(client.status(ident.account_id, invoice),
                                            TEMPORAL_TIMEOUT)
            await run_in_threadpool(_add_delivery, self.db, status)
        except CaseNotFound:
            if row is None:
                return self.error(request, ident, 404, "Not found", "There is no such case.")
        except (TemporalUnavailable, TimeoutError) as exc:
            problem = f"Temporal could not be reached: {_short(exc)}"
        except Exception as exc:  # an RPC failure: show what the database knows
            problem = f"Temporal refused the request: {_short(exc)}"
        workflow_id = (status or {}).get("workflow_id") or (
            row.workflow_id if row is not None else workflow_id_for(ident.account_id, invoice))
        return self.render(request, "case.html", ident, 200 if error is None else 422,
                           case=row, status=status, problem=problem, invoice=invoice,
                           workflow_link=self.temporal_ui_link(workflow_id),
                           message=message, error=error, page_name="cases")

    async def case_confirm(self, request: Request, ident: Identity, form: FormData | None
                           ) -> Response:
        action = request.path_params["action"]
        if action not in ("recover", "cancel"):
            return self.error(request, ident, 404, "Not found", "There is no such page.")
        if not ident.can_change:
            return self.error(request, ident, 403, "Forbidden",
                              "Your role (viewer) can look but not change anything.")
        return self.render(request, "confirm.html", ident, action=action,
                           invoice=request.path_params["invoice_id"], page_name="cases")

    async def case_action(self, request: Request, ident: Identity, form: FormData | None
                          ) -> Response:
        assert form is not None
        action = request.path_params["action"]
        invoice = request.path_params["invoice_id"]
        if action not in ("recover", "cancel"):
            return self.error(request, ident, 404, "Not found", "There is no such page.")
        try:
            client = await self.client()
            if action == "recover":
                await asyncio.wait_for(client.recover(ident.account_id, invoice),
                                       TEMPORAL_TIMEOUT)
            else:
                reason = str(form.get("reason") or "")[:200] or "canceled in the console"
                await asyncio.wait_for(client.cancel(ident.account_id, invoice, reason),
                                       TEMPORAL_TIMEOUT)
        except CaseNotFound as exc:
            return await self.case_page(request, ident, None, error=str(exc))
        except (TemporalUnavailable, TimeoutError) as exc:
            return await self.case_page(request, ident, None,
                                        error=f"Temporal could not be reached: {_short(exc)}")
        await self.run(lambda s: audit.record(
            s, ident.account_id, ident.actor, f"case.{action}", invoice_id=invoice))
        done = "marked as recovered" if action == "recover" else "canceled"
        await asyncio.sleep(0.3)  # let the workflow take the signal before we ask it
        return await self.case_page(request, ident, None, message=f"The case was {done}.")

    # --- recovery report ------------------------------------------------------------------------

    async def recovery_page(self, request: Request, ident: Identity, form: FormData | None
                            ) -> Response:
        def load(s: Session) -> tuple[dict[str, Any], list[dict[str, Any]]]:
            return (reports.build_report(s, ident.account_id),
                    ops.recoveries_by_step(s, ident.account_id))

        data, by_step = await self.run(load)
        top = max([row["count"] for row in by_step] + [1])
        return self.render(request, "recovery.html", ident, report=data, by_step=by_step,
                           top=top, charts=_charts(data), page_name="recovery")

    # --- compliance ------------------------------------------------------------------------------

    async def compliance_page(self, request: Request, ident: Identity, form: FormData | None
                              ) -> Response:
        errors: dict[str, str] = {}
        message = None
        if form is not None:
            window = str(form.get("quiet_hours") or "")
            zone = str(form.get("timezone") or "")
            try:
                await self.run(lambda s: ops.set_quiet_hours(s, ident, window, zone))
                message = "Quiet hours saved."
            except InputError as exc:
                errors[exc.field.replace("-", "_")] = exc.message
        page = _page_number(request.query_params.get("page"))

        def load(s: Session) -> dict[str, Any]:
            account = get_account(s, ident.account_id)
            events, total = ops.consent_history(s, ident.account_id, page)
            return {"quiet_hours": account.quiet_hours, "timezone": account.timezone,
                    "events": events, "total": total}

        data = await self.run(load)
        pages = max(1, -(-data["total"] // ops.PAGE_SIZE))
        return self.render(request, "compliance.html", ident, 422 if errors else 200,
                           errors=errors, message=message, page=page, pages=pages,
                           page_name="compliance", **data)

    async def audit_page(self, request: Request, ident: Identity, form: FormData | None
                         ) -> Response:
        entries = await self.run(lambda s: audit.recent(s, ident.account_id, 200))
        return self.render(request, "audit.html", ident, entries=entries, page_name="audit")


def _add_delivery(db: Database, status: dict[str, Any]) -> None:
    from sqlalchemy import select

    from dunning.platform.db.models import Message

    with db.session() as s:
        rows = s.scalars(select(Message).where(Message.workflow_id == status["workflow_id"])
                         .order_by(Message.id)).all()
    latest = {(r.step, r.channel): r for r in rows}
    for reminder in status.get("reminders", []):
        row = latest.get((reminder.get("step"), reminder.get("channel")))
        if row is not None:
            reminder["delivery"] = row.delivery_status or (
                "accepted" if row.status == "sent" else None)


def _charts(data: dict[str, Any]) -> dict[str, Markup]:
    by_state = data["cases"]["by_state"]
    parts = [(s, by_state.get(s, 0)) for s in ("recovered", "exhausted", "canceled", "active")]
    rate = data["recovery_rate"]["of_ended"]
    chan = data["recoveries_by_channel"]
    days = report_html.day_range(data["daily"]["recoveries"], data["daily"]["sms_spend"])
    recovered = {p["date"]: p["count"] for p in data["daily"]["recoveries"]}
    spend = {p["date"]: p["credits"] for p in data["daily"]["sms_spend"]}
    charts = {
        "outcomes": Markup(report_html.donut_svg(parts, reports.percent(rate), "recovered")),
        "channels": Markup(report_html.hbar_svg(
            [(k, chan[k]["count"], reports.amounts_text(chan[k]["amount"], ""))
             for k in reports.CHANNELS])),
    }
    if days:
        charts["over_time"] = Markup(report_html.columns_svg(
            [(d, float(recovered.get(d.isoformat(), 0)),
              f"{d.isoformat()}: {recovered.get(d.isoformat(), 0)} recovered") for d in days],
            report_html.COLORS["recovered"], "Recoveries over time"))
        charts["spend"] = Markup(report_html.columns_svg(
            [(d, float(spend.get(d.isoformat(), 0)),
              f"{d.isoformat()}: {spend.get(d.isoformat(), 0)} credits") for d in days],
            report_html.COLORS["spend"], "SMS spend over time"))
    return charts


def _short(exc: BaseException, limit: int = 160) -> str:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _int_or(value: str | None, default: int) -> int:
    return int(value) if value and value.isdigit() and len(value) < 6 else default


def _page_number(value: str | None) -> int:
    return int(value) if value and value.isdigit() and 0 < int(value) < 1_000_000 else 1


def _safe_next(value: str | None) -> str:
    """Only a path of this site (no scheme, no host, no `//`)."""
    if value and value.startswith("/accounts/") and "//" not in value and "\\" not in value:
        return value
    return ""


def create_app(settings: Settings, db: Database, temporal: TemporalSource | None = None
               ) -> Starlette:
    """The console and the API. Temporal is connected on first use unless given."""
    from dunning.api.v1 import api_routes

    lazy = LazyTemporal(temporal or (lambda: DunningClient.connect(settings, db)))
    c = Console(settings, db, lazy)
    acct = "/accounts/{account_id}"
    routes = [
        Route("/", c.page(c.home)),
        Route("/login", c.login_form, methods=["GET"]),
        Route("/login", c.login, methods=["POST"]),
        Route("/logout", c.page(c.logout), methods=["POST"]),
        Route("/healthz", lambda r: PlainTextResponse("ok")),
        Route(f"{acct}/import", c.page(c.import_page), methods=["GET"]),
        Route(f"{acct}/import", c.page(c.import_page, change=True), methods=["POST"]),
        Route(acct + "/import/{token}/rejected.csv", c.page(c.rejected_download)),
        Route(f"{acct}/sms", c.page(c.sms_page), methods=["GET"]),
        Route(f"{acct}/sms", c.page(c.sms_page, change=True), methods=["POST"]),
        Route(f"{acct}/sms/preview", c.page(c.sms_preview), methods=["POST"]),
        Route(f"{acct}/email", c.page(c.email_page), methods=["GET"]),
        Route(f"{acct}/email", c.page(c.email_page, change=True), methods=["POST"]),
        Route(f"{acct}/email/preview", c.page(c.email_preview), methods=["POST"]),
        Route(f"{acct}/credits", c.page(c.credits_page), methods=["GET"]),
        Route(f"{acct}/credits/top-up", c.page(c.top_up, change=True), methods=["POST"]),
        Route(f"{acct}/credits/auto-refill", c.page(c.auto_refill, change=True),
              methods=["POST"]),
        Route(f"{acct}/credits/ledger.csv", c.page(c.ledger_csv)),
        Route(f"{acct}/cases", c.page(c.cases_page)),
        Route(acct + "/cases/{invoice_id}", c.page(c.case_page)),
        Route(acct + "/cases/{invoice_id}/{action}", c.page(c.case_confirm), methods=["GET"]),
        Route(acct + "/cases/{invoice_id}/{action}", c.page(c.case_action, change=True),
              methods=["POST"]),
        Route(f"{acct}/recovery", c.page(c.recovery_page)),
        Route(f"{acct}/compliance", c.page(c.compliance_page), methods=["GET"]),
        Route(f"{acct}/compliance", c.page(c.compliance_page, change=True), methods=["POST"]),
        Route(f"{acct}/audit", c.page(c.audit_page)),
        Mount("/api/v1", routes=api_routes(settings, db, lazy)),
        Mount("/static", StaticFiles(directory=str(HERE / "static")), name="static"),
    ]

    async def not_found(request: Request, exc: Exception) -> Response:
        if request.url.path.startswith("/api/"):
            from dunning.api.problems import problem

            return problem(404, "Not Found", "There is no such resource.")
        return HTMLResponse("<!doctype html><title>Not found</title><h1>Not found</h1>",
                            status_code=404)

    return Starlette(routes=routes, middleware=[Middleware(SecurityHeaders)],
                     exception_handlers={404: not_found, 405: _method_not_allowed})


async def _method_not_allowed(request: Request, exc: Exception) -> Response:
    headers = dict(getattr(exc, "headers", None) or {})  # Allow: the methods it takes
    if request.url.path.startswith("/api/"):
        from dunning.api.problems import problem

        return problem(405, "Method Not Allowed", "This resource does not take that method.",
                       headers=headers)
    return PlainTextResponse("Method Not Allowed", status_code=405, headers=headers)


__all__ = ["create_app"]
