"""Plivo signatures: our implementation against an independent one and against the SDK."""

from __future__ import annotations

import base64
import hashlib
import hmac
from urllib.parse import parse_qsl, urlsplit

import pytest
from plivo.utils import validate_signature, validate_v3_signature

from dunning.webhooks import signatures
from dunning.webhooks.signatures import (
    signature_headers,
    v2_signature,
    v3_base_string,
    v3_signature,
    verify_request,
    verify_v2,
    verify_v3,
)

TOKEN = "MjQ1ZmE3ZTYtdGVzdC10b2tlbg"
URL = "https://hooks.example.test/dunning/webhooks/plivo/status?ref=42"


def _hmac_b64(token: str, message: str) -> str:
    return base64.b64encode(
        hmac.new(token.encode(), message.encode(), hashlib.sha256).digest()
    ).decode()


def independent_v3(token: str, url: str, nonce: str, params: list[tuple[str, str]]) -> str:
    """Plivo's documented V3 algorithm for a POST, written out on its own."""
    parts = urlsplit(url)
    base = f"{parts.scheme}://{parts.netloc}{parts.path}"
    query = "&".join(f"{k}={v}" for k, v in sorted(parse_qsl(parts.query, True)))
    body = "".join(f"{k}{v}" for k, v in sorted(params))
    if query or params:
        base += "?" + query
    if query and params:
        base += "."
    return _hmac_b64(token, f"{base}{body}.{nonce}")


def independent_v2(token: str, url: str, nonce: str) -> str:
    parts = urlsplit(url)
    return _hmac_b64(token, f"{parts.scheme}://{parts.netloc}{parts.path}{nonce}")


PARAM_SETS: list[list[tuple[str, str]]] = [
    [],
    [("From", "14155550123"), ("To", "14155550100"), ("Text", "STOP"), ("Type", "sms")],
    [("Text", "héllo wörld & more = 100%"), ("MessageUUID", "3d5f-11")],
    [("B", "2"), ("A", "x"), ("A", "a"), ("Empty", "")],
]
URLS = [
    URL,
    "https://hooks.example.test/webhooks/plivo/inbound",
    "http://127.0.0.1:8000/webhooks/plivo/status?ref=7&b=2&a=1",
]


def _as_map(params: list[tuple[str, str]]) -> dict[str, str | list[str]]:
    grouped: dict[str, list[str]] = {}
    for k, v in params:
        grouped.setdefault(k, []).append(v)
    return {k: v[0] if len(v) == 1 else v for k, v in grouped.items()}


@pytest.mark.parametrize("url", URLS)
@pytest.mark.parametrize("params", PARAM_SETS)
def test_v3_matches_independent_and_sdk(url: str, params: list[tuple[str, str]]) -> None:
    nonce = "05429567804466091622"
    ours = v3_signature(TOKEN, "POST", url, nonce, _as_map(params))
    assert ours == independent_v3(TOKEN, url, nonce, params)
    assert validate_v3_signature("POST", url, nonce, TOKEN, ours, _as_map(params)) is True
    assert verify_v3(TOKEN, "POST", url, nonce, ours, _as_map(params))


def test_v3_base_string_shape() -> None:
    base = v3_base_string("POST", URL, {"Text": "STOP", "From": "1415"})
    assert base == "https://hooks.example.test/dunning/webhooks/plivo/status?ref=42.From1415TextSTOP"
    assert v3_base_string("POST", URL.split("?")[0], {"A": "1"}) == (
        "https://hooks.example.test/dunning/webhooks/plivo/status?A1"
    )
    assert v3_base_string("POST", URL, {}) == (
        "https://hooks.example.test/dunning/webhooks/plivo/status?ref=42"
    )


@pytest.mark.parametrize("url", URLS)
def test_v2_matches_independent_and_sdk(url: str) -> None:
    ours = v2_signature(TOKEN, url, "1234567890")
    assert ours == independent_v2(TOKEN, url, "1234567890")
    assert validate_signature(url, "1234567890", ours, TOKEN) is True
    assert verify_v2(TOKEN, url, "1234567890", ours)


def test_v2_ignores_query_and_body() -> None:
    a = v2_signature(TOKEN, "https://h.test/p?ref=1", "n")
    assert a == v2_signature(TOKEN, "https://h.test/p", "n")
    assert a != v2_signature(TOKEN, "https://h.test/q", "n")


def test_v3_rejects_tampering() -> None:
    params = {"From": "14155550123", "Text": "HELP"}
    good = independent_v3(TOKEN, URL, "n1", sorted(params.items()))
    assert verify_v3(TOKEN, "POST", URL, "n1", good, params)
    assert not verify_v3(TOKEN, "POST", URL, "n1", good, {**params, "Text": "STOP"})
    assert not verify_v3(TOKEN, "POST", URL, "n2", good, params)  # other nonce
    assert not verify_v3(TOKEN, "POST", URL.replace("42", "43"), "n1", good, params)
    assert not verify_v3(TOKEN, "POST", URL.replace("https", "http"), "n1", good, params)
    assert not verify_v3("other-token", "POST", URL, "n1", good, params)
    assert not verify_v3("", "POST", URL, "n1", good, params)
    assert not verify_v3(TOKEN, "POST", URL, "", good, params)
    assert not verify_v3(TOKEN, "POST", URL, "n1", "", params)
    assert not verify_v3(TOKEN, "POST", URL, "n1", good[:-2] + "AA", params)


def test_v3_accepts_one_of_several_signatures() -> None:
    params = {"Text": "STOP"}
    good = independent_v3(TOKEN, URL, "n", sorted(params.items()))
    other = independent_v3("rotated-old-token", URL, "n", sorted(params.items()))
    assert verify_v3(TOKEN, "POST", URL, "n", f"{other},{good}", params)
    assert verify_v3(TOKEN, "POST", URL, "n", f"{good}, {other}", params)
    assert not verify_v3(TOKEN, "POST", URL, "n", f"{other},{other}", params)
    # A signature that merely contains the right one is not accepted.
    assert not verify_v3(TOKEN, "POST", URL, "n", f"x{good}", params)


def test_v2_rejects_wrong_token_and_nonce() -> None:
    good = independent_v2(TOKEN, URL, "nonce-1")
    assert not verify_v2("wrong", URL, "nonce-1", good)
    assert not verify_v2(TOKEN, URL, "nonce-2", good)
    assert not verify_v2(TOKEN, "https://evil.test/dunning/webhooks/plivo/status", "nonce-1", good)


def test_comparison_is_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(signatures.hmac, "compare_digest", spy)
    good = independent_v3(TOKEN, URL, "n", [])
    assert verify_v3(TOKEN, "POST", URL, "n", f"bad,{good}", {})
    assert len(calls) == 2  # every candidate compared, through compare_digest
    calls.clear()
    assert verify_v2(TOKEN, URL, "n", independent_v2(TOKEN, URL, "n"))
    assert len(calls) == 1


def test_signature_headers_choice() -> None:
    both = {
        "x-plivo-signature-v3": "s3", "X-Plivo-Signature-V3-Nonce": "n3",
        "X-Plivo-Signature-V2": "s2", "X-Plivo-Signature-V2-Nonce": "n2",
    }
    got = signature_headers(both)
    assert got is not None and (got.scheme, got.signature, got.nonce) == ("v3", "s3", "n3")
    v2 = signature_headers({"X-Plivo-Signature-V2": "s2", "X-Plivo-Signature-V2-Nonce": "n2"})
    assert v2 is not None and v2.scheme == "v2"
    assert signature_headers({}) is None
    assert signature_headers({"X-Plivo-Signature-V3": "s3"}) is None  # no nonce
    blank_nonce = {"X-Plivo-Signature-V3": "s3", "X-Plivo-Signature-V3-Nonce": " "}
    assert signature_headers(blank_nonce) is None
    assert signature_headers(
        {"X-Plivo-Signature-V3": "s3", "X-Plivo-Signature-V3-Nonce": "n" * 129}
    ) is None
    # A V3 header without its nonce does not fall back to V2.
    assert signature_headers(
        {"X-Plivo-Signature-V3": "s3", "X-Plivo-Signature-V2": "s2",
         "X-Plivo-Signature-V2-Nonce": "n2"}
    ) is None


def test_verify_request_uses_the_scheme() -> None:
    params = {"Text": "STOP"}
    v3 = signature_headers({
        "X-Plivo-Signature-V3": independent_v3(TOKEN, URL, "n", [("Text", "STOP")]),
        "X-Plivo-Signature-V3-Nonce": "n",
    })
    v2 = signature_headers({
        "X-Plivo-Signature-V2": independent_v2(TOKEN, URL, "n"),
        "X-Plivo-Signature-V2-Nonce": "n",
    })
    assert v3 is not None and v2 is not None
    assert verify_request(TOKEN, "POST", URL, v3, params)
    assert not verify_request(TOKEN, "POST", URL, v3, {"Text": "START"})
    assert verify_request(TOKEN, "POST", URL, v2, params)


def test_request_signatures_returns_both_and_honours_the_accepted_schemes() -> None:
    from dunning.webhooks.signatures import request_signatures, verify_all

    both = {
        "X-Plivo-Signature-V3": independent_v3(TOKEN, URL, "n3", [("Text", "STOP")]),
        "X-Plivo-Signature-V3-Nonce": "n3",
        "X-Plivo-Signature-V2": independent_v2(TOKEN, URL, "n2"),
        "X-Plivo-Signature-V2-Nonce": "n2",
    }
    sigs = request_signatures(both)
    assert sigs is not None and [(s.scheme, s.nonce) for s in sigs] == [("v3", "n3"), ("v2", "n2")]
    assert verify_all(TOKEN, "POST", URL, sigs, {"Text": "STOP"})
    # V3 covers the body: with another body the pair fails although V2 alone would pass.
    assert not verify_all(TOKEN, "POST", URL, sigs, {"Text": "START"})
    bad_v2 = {**both, "X-Plivo-Signature-V2": independent_v2("other", URL, "n2")}
    bad = request_signatures(bad_v2)
    assert bad is not None and not verify_all(TOKEN, "POST", URL, bad, {"Text": "STOP"})
    v2_only = {k: v for k, v in both.items() if "V3" not in k}
    assert request_signatures(v2_only, accepted=("v3",)) is None
    assert request_signatures(v2_only) is not None
    assert request_signatures(both, accepted=("v3",)) is not None
    assert verify_all(TOKEN, "POST", URL, [], {}) is False
