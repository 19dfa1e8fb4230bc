"""Pure parts of the console and API: redirects after sign-in, the OpenAPI document's shape."""

from __future__ import annotations

import json

import pytest

from dunning.api.openapi import openapi_document
from dunning.console.app import _safe_next


@pytest.mark.parametrize(("value", "expected"), [
    ("/accounts/acme/sms", "/accounts/acme/sms"),
    ("//evil.example/accounts/", ""),
    ("https://evil.example/accounts/acme", ""),
    ("/accounts//evil.example", ""),
    ("/accounts/acme\\..\\x", ""),
    ("/logout", ""),
    (None, ""),
])
def test_sign_in_only_redirects_within_the_console(value, expected):
    assert _safe_next(value) == expected


def test_openapi_operations_are_unique_and_refs_resolve():
    doc = openapi_document()
    ids = [op["operationId"] for item in doc["paths"].values()
           for method, op in item.items() if method != "parameters"]
    assert len(ids) == len(set(ids)) >= 13
    text = json.dumps(doc)
    for ref in {part.split('"')[0] for part in text.split('"$ref": "')[1:]}:
        name = ref.rsplit("/", 1)[1]
        assert name in doc["components"]["schemas"], ref
    for item in doc["paths"].values():
        for method, op in item.items():
            if method == "parameters":
                continue
            assert "401" in op["responses"] and "404" in op["responses"]
            problems = [r for code, r in op["responses"].items() if code[0] in "45"]
            assert all("application/problem+json" in r["content"] for r in problems)


def test_the_document_is_a_copy():
    doc = openapi_document()
    doc["paths"].clear()
    assert openapi_document()["paths"]
