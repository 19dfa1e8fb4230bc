"""The OpenAPI 3.1 document of /api/v1, served at /api/v1/openapi.json.

Written by hand next to the routes (dunning.api.v1); tests check that every route has its
operation and fuzz the server against this document (schemathesis).
"""

from __future__ import annotations

import copy
import functools
from typing import Any

PROBLEM = {"$ref": "#/components/schemas/Problem"}
ID = {"type": "string", "pattern": "^[A-Za-z0-9_.@-]{1,128}$"}
NULL_STR = {"type": ["string", "null"]}
NULL_INT = {"type": ["integer", "null"]}
COUNTRY = {"type": ["string", "null"], "pattern": "^([A-Za-z]{2})?$", "example": "US"}
DURATION = "[0-9]{1,6}[smhd]"


def _opt(schema: dict[str, Any]) -> dict[str, Any]:
    """A field that may be left out or null (null: leave the value as it is)."""
    return {**schema, "type": [schema.get("type", "string"), "null"]}


def _problem(description: str) -> dict[str, Any]:
    return {"description": description,
            "content": {"application/problem+json": {"schema": PROBLEM}}}


def _json(schema: dict[str, Any], description: str = "OK") -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _ref(name: str) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{name}"}


def _errors(*codes: int) -> dict[str, Any]:
    texts = {400: "Malformed request", 401: "No or a wrong API key",
             403: "Not allowed", 404: "No such account or case (another account's too)",
             422: "A bad value; `field` names it; nothing changed",
             502: "Temporal refused the request", 503: "Temporal unreachable; retry"}
    return {str(c): _problem(texts[c]) for c in (401, 404, *codes)}


def _op(op_id: str, summary: str, ok: dict[str, Any], *errors: int,
        body: dict[str, Any] | None = None, ok_code: str = "200",
        extra_ok: dict[str, Any] | None = None, parameters: list[dict[str, Any]] | None = None,
        ) -> dict[str, Any]:
    responses = {ok_code: ok, **_errors(*errors)}
    if extra_ok:
        responses.update(extra_ok)
    operation: dict[str, Any] = {"operationId": op_id, "summary": summary,
                                 "responses": responses}
    if body is not None:
        operation["requestBody"] = body
    if parameters:
        operation["parameters"] = parameters
    return operation


def _json_body(schema: dict[str, Any], required: bool = True) -> dict[str, Any]:
    return {"required": required, "content": {"application/json": {"schema": schema}}}


ACCOUNT_PARAM = {"name": "account_id", "in": "path", "required": True, "schema": ID}
INVOICE_PARAM = {"name": "invoice_id", "in": "path", "required": True, "schema": ID}
CUSTOMER_PARAM = {"name": "customer_id", "in": "path", "required": True, "schema": ID}

SCHEMAS: dict[str, Any] = {
    "Problem": {
        "type": "object",
        "required": ["type", "title", "status", "detail"],
        "properties": {"type": {"type": "string"}, "title": {"type": "string"},
                       "status": {"type": "integer"}, "detail": {"type": "string"},
                       "field": {"type": "string"}},
    },
    "Step": {
        "type": "object", "required": ["step", "offset", "sms"],
        "properties": {"step": {"type": "integer"}, "offset": {"type": "string"},
                       "email": {"type": "boolean"}, "sms": {"type": "boolean"},
                       "sms_step_switch": {"type": "boolean"}},
    },
    "Account": {
        "type": "object",
        "required": ["account_id", "company_name", "schedule", "steps", "sms_enabled",
                     "credit_balance"],
        "properties": {
            "account_id": {"type": "string"}, "company_name": {"type": "string"},
            "sms_sender": NULL_STR, "email_from": NULL_STR, "contact_email": NULL_STR,
            "support_contact": NULL_STR, "schedule": {"type": "string"},
            "steps": {"type": "array", "items": _ref("Step")},
            "grace": {"type": "string"}, "quiet_hours": {"type": "string"},
            "timezone": {"type": "string"}, "sms_enabled": {"type": "boolean"},
            "credit_balance": {"type": "integer"},
            "auto_refill": {"type": ["object", "null"]},
            "sms_templates": {"type": "object", "additionalProperties": {"type": "string"}},
        },
    },
    "AccountUpdate": {
        "type": "object", "additionalProperties": False,
        "description": "Only the fields given change; null or absent: left as it is.",
        "properties": {
            "company_name": _opt({"minLength": 1, "maxLength": 200}),
            "sms_sender": _opt({"description": "E.164, e.g. +14155550100; empty clears"}),
            "email_from": _opt({"description": "an email address; empty clears"}),
            "contact_email": _opt({"description": "an email address; empty clears"}),
            "schedule": _opt({"pattern": f"^{DURATION}(,{DURATION}){{0,19}}$",
                              "example": "0d,3d,7d,14d"}),
            "grace": _opt({"pattern": f"^{DURATION}$", "example": "7d"}),
            "quiet_hours": _opt({"pattern": "^(off|([01][0-9]|2[0-3]):[0-5][0-9]-"
                                            "([01][0-9]|2[0-3]):[0-5][0-9])$",
                                 "example": "08:00-21:00"}),
            "timezone": _opt({"description": "IANA time zone", "example": "Europe/Paris"}),
            "support_contact": _opt({"maxLength": 200}),
        },
    },
    "SmsSettings": {
        "type": "object",
        "required": ["account_id", "sms_enabled", "steps", "template", "template_source"],
        "properties": {
            "account_id": {"type": "string"}, "sms_enabled": {"type": "boolean"},
            "sms_sender": NULL_STR, "schedule": {"type": "string"},
            "steps": {"type": "array", "items": _ref("Step")},
            "template": {"type": "string"},
            "template_source": {"type": "string", "enum": ["account", "built-in"]},
            "plan_templates": {"type": "object", "additionalProperties": {"type": "string"}},
            "opt_out_line": {"type": "string"}, "credit_balance": {"type": "integer"},
        },
    },
    "SmsSettingsUpdate": {
        "type": "object",
        "properties": {
            "sms_enabled": _opt({"type": "boolean", "description": "SMS as a whole"}),
            "steps": _opt({"type": "object",
                           "description": 'per step (1-based, in schedule order), e.g. '
                                          '{"1": true, "2": false}',
                           "propertyNames": {"pattern": "^[1-9][0-9]?$"},
                           "additionalProperties": {"type": "boolean"}}),
            "template": _opt({"minLength": 1, "pattern": "[{]billing_link[}]",
                              "description": "needs {billing_link}"}),
            "plan": _opt({"maxLength": 100, "description": "the plan the template is for"}),
        },
    },
    "SmsPreviewRequest": {
        "type": "object",
        "properties": {
            "template": _opt({"minLength": 1, "pattern": "[{]billing_link[}]",
                              "description": "an unsaved template; default: the stored one"}),
            "plan": _opt({"maxLength": 100}), "country": COUNTRY,
        },
    },
    "SmsPreview": {
        "type": "object", "required": ["text", "encoding", "segments", "credits"],
        "properties": {
            "text": {"type": "string"},
            "encoding": {"type": "string", "enum": ["GSM-7", "UCS-2"]},
            "segments": {"type": "integer"}, "credits": {"type": "integer"},
            "characters": {"type": "integer"}, "plan": NULL_STR, "country": {"type": "string"},
        },
    },
    "ImportReport": {
        "type": "object",
        "required": ["imported", "updated", "unchanged", "rejected", "errors"],
        "properties": {
            "imported": {"type": "integer"}, "updated": {"type": "integer"},
            "unchanged": {"type": "integer"}, "rejected": {"type": "integer"},
            "errors": {"type": "array", "items": {
                "type": "object", "required": ["line", "customer_id", "phone", "reason"],
                "properties": {"line": {"type": "integer"}, "customer_id": {"type": "string"},
                               "phone": {"type": "string"}, "reason": {"type": "string"}}}},
        },
    },
    "CustomerUpsert": {
        "type": "object",
        "description": "Only the fields given change; null or absent: left as it is.",
        "properties": {"phone": _opt({"minLength": 1, "example": "+14155552671"}),
                       "country": COUNTRY,
                       "email": _opt({"format": "email", "description": "empty: not given"}),
                       "name": _opt({"maxLength": 200}), "plan": _opt({"maxLength": 100})},
    },
    "CustomerOutcome": {
        "type": "object", "required": ["account_id", "customer_id", "outcome"],
        "properties": {"account_id": {"type": "string"}, "customer_id": {"type": "string"},
                       "outcome": {"type": "string",
                                   "enum": ["imported", "updated", "unchanged"]}},
    },
    "Balance": {
        "type": "object", "required": ["account_id", "balance"],
        "properties": {"account_id": {"type": "string"}, "balance": {"type": "integer"},
                       "value": NULL_STR, "paused_cases": {"type": "integer"},
                       "auto_refill": {"type": ["object", "null"]}},
    },
    "TopUpRequest": {
        "type": "object", "required": ["amount"],
        "properties": {"amount": {"type": "integer", "minimum": 1, "maximum": 1_000_000_000}},
    },
    "TopUp": {
        "type": "object", "required": ["account_id", "balance", "duplicate"],
        "properties": {"account_id": {"type": "string"}, "balance": {"type": "integer"},
                       "duplicate": {"type": "boolean",
                                     "description": "a repeated Idempotency-Key: nothing "
                                                    "changed, the first result"},
                       "woken": {"type": "integer"}, "wake_error": {"type": "string"}},
    },
    "CaseStart": {
        "type": "object",
        "required": ["customer_id", "invoice_id", "amount_due", "currency", "billing_link"],
        "properties": {
            "customer_id": ID, "invoice_id": ID,
            "amount_due": {"type": "integer", "minimum": 0, "maximum": 2**63 - 1,
                           "description": "minor units"},
            "currency": {"type": "string", "pattern": "^[A-Za-z]{3}$", "example": "USD"},
            "billing_link": {"type": "string", "format": "uri",
                             "pattern": "^https?://[^\\s]+$"},
            "failed_at": _opt({"format": "date-time"}),
            "customer_email": _opt({"format": "email"}),
            "customer_name": _opt({"maxLength": 200}), "plan": _opt({"maxLength": 100}),
        },
    },
    "CaseStarted": {
        "type": "object", "required": ["workflow_id", "started"],
        "properties": {"workflow_id": {"type": "string"}, "started": {"type": "boolean"},
                       "run_id": NULL_STR},
    },
    "CaseStatus": {
        "type": "object", "required": ["state", "sms_paused", "reminders", "workflow_id"],
        "properties": {
            "state": {"type": "string", "enum": ["active", "recovered", "exhausted",
                                                 "canceled"]},
            "sms_paused": {"type": "boolean"}, "next_reminder_at": NULL_STR,
            "workflow_id": {"type": "string"}, "run_status": NULL_STR,
            "reminders": {"type": "array", "items": {
                "type": "object", "required": ["step", "channel", "status"],
                "properties": {"step": {"type": "integer"}, "channel": {"type": "string"},
                               "status": {"type": "string"}, "reason": NULL_STR}}},
        },
    },
    "Signalled": {
        "type": "object", "required": ["invoice_id", "signal", "ok"],
        "properties": {"invoice_id": {"type": "string"}, "signal": {"type": "string"},
                       "ok": {"type": "boolean"}},
    },
    "Recover": {"type": "object",
                "properties": {"amount": _opt({"type": "integer", "minimum": 0,
                                               "maximum": 2**63 - 1})}},
    "Cancel": {"type": "object",
               "properties": {"reason": _opt({"maxLength": 200})}},
    "Report": {"type": "object",
               "required": ["account_id", "cases", "recovered", "recovery_rate", "sms_spend"],
               "properties": {"account_id": {"type": "string"}, "cases": {"type": "object"},
                              "recovered": {"type": "object"},
                              "recovery_rate": {"type": "object"},
                              "sms_spend": {"type": "object"}}},
}


def _paths() -> dict[str, Any]:
    acct = "/accounts/{account_id}"
    case = acct + "/cases/{invoice_id}"
    idem = {"name": "Idempotency-Key", "in": "header", "required": False,
            "schema": {"type": "string", "minLength": 1, "maxLength": 200},
            "description": "A repeat with the same key changes nothing and answers the first "
                           "result with duplicate: true."}
    return {
        acct: {"parameters": [ACCOUNT_PARAM],
               "get": _op("getAccount", "The account and its settings",
                          _json(_ref("Account"))),
               "patch": _op("updateAccount", "Change the account's settings (company name, "
                            "sender, schedule, grace, quiet hours ...)", _json(_ref("Account")),
                            400, 403, 422,
                            body=_json_body(_ref("AccountUpdate"), required=False))},
        f"{acct}/sms-settings": {
            "parameters": [ACCOUNT_PARAM],
            "get": _op("getSmsSettings", "SMS switches per step and templates",
                       _json(_ref("SmsSettings"))),
            "patch": _op("updateSmsSettings", "Switch SMS and steps, set the template",
                         _json(_ref("SmsSettings")), 400, 403, 422,
                         body=_json_body(_ref("SmsSettingsUpdate"), required=False)),
        },
        f"{acct}/sms-settings/preview": {
            "parameters": [ACCOUNT_PARAM],
            "post": _op("previewSms", "The SMS exactly as sent to a sample customer, with "
                        "encoding, segments and credits", _json(_ref("SmsPreview")), 400, 422,
                        body=_json_body(_ref("SmsPreviewRequest"), required=False)),
        },
        f"{acct}/phone-imports": {
            "parameters": [ACCOUNT_PARAM],
            "post": _op("importPhones", "Import customers' phone numbers from CSV (the CLI's "
                        "validation)", _json(_ref("ImportReport")), 400, 403, 422,
                        body={"required": True, "content": {"text/csv": {
                            "schema": {"type": "string"}}}},
                        parameters=[{"name": "default_region", "in": "query",
                                     "required": False, "schema": {"type": "string"}}]),
        },
        acct + "/customers/{customer_id}": {
            "parameters": [ACCOUNT_PARAM, CUSTOMER_PARAM],
            "put": _op("upsertCustomer", "Create or update one customer",
                       _json(_ref("CustomerOutcome")), 400, 403, 422,
                       body=_json_body(_ref("CustomerUpsert"), required=False)),
        },
        f"{acct}/credits": {
            "parameters": [ACCOUNT_PARAM],
            "get": _op("getBalance", "Credit balance", _json(_ref("Balance"))),
        },
        f"{acct}/credits/top-ups": {
            "parameters": [ACCOUNT_PARAM],
            "post": _op("topUp", "Add credits; paused cases resume (Idempotency-Key honoured)",
                        _json(_ref("TopUp")), 400, 403, 422,
                        body=_json_body(_ref("TopUpRequest")), parameters=[idem]),
        },
        f"{acct}/cases": {
            "parameters": [ACCOUNT_PARAM],
            "post": _op("startCase", "Start the case of a failed invoice (once per invoice)",
                        _json(_ref("CaseStarted"), "Started"), 400, 403, 422, 502, 503,
                        body=_json_body(_ref("CaseStart")), ok_code="201",
                        extra_ok={"200": _json(_ref("CaseStarted"),
                                               "A case for this invoice exists already")}),
        },
        case: {
            "parameters": [ACCOUNT_PARAM, INVOICE_PARAM],
            "get": _op("getCase", "A case's state and reminders", _json(_ref("CaseStatus")),
                       422, 502, 503),
        },
        f"{case}/recover": {
            "parameters": [ACCOUNT_PARAM, INVOICE_PARAM],
            "post": _op("recoverCase", "The payment was recovered: the case stops",
                        _json(_ref("Signalled")), 400, 403, 422, 502, 503,
                        body=_json_body(_ref("Recover"), required=False)),
        },
        f"{case}/cancel": {
            "parameters": [ACCOUNT_PARAM, INVOICE_PARAM],
            "post": _op("cancelCase", "Cancel a case: no further reminders",
                        _json(_ref("Signalled")), 400, 403, 422, 502, 503,
                        body=_json_body(_ref("Cancel"), required=False)),
        },
        f"{acct}/report": {
            "parameters": [ACCOUNT_PARAM],
            "get": _op("getReport", "Recovery figures", _json(_ref("Report")), 422,
                       parameters=[{"name": "since", "in": "query", "required": False,
                                    "schema": {"type": "string", "format": "date"},
                                    "description": "a day (or an RFC 3339 time with offset)"}]),
        },
    }


@functools.cache
def _document() -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {"title": "Dunning engine API", "version": "1.0.0",
                 "description": "Settings, customers, credits, cases and recovery figures of "
                                "one account. Authenticate with `Authorization: Bearer <key>` "
                                "(`dunning api-keys create --account A`). Errors are "
                                "application/problem+json (RFC 9457)."},
        "servers": [{"url": "/api/v1"}],
        "security": [{"apiKey": []}],
        "paths": _paths(),
        "components": {
            "securitySchemes": {"apiKey": {"type": "http", "scheme": "bearer"}},
            "schemas": SCHEMAS,
        },
    }


def openapi_document() -> dict[str, Any]:
    return copy.deepcopy(_document())
