"""Plivo webhook signatures (V3 and V2), checked in constant time.

The base strings follow the Plivo SDK (`plivo.utils.validate_v3_signature` and
`plivo.utils.validate_signature`); the SDK's helpers compare with `in` / `==`, so they are
reimplemented here with `hmac.compare_digest`.

V3 (`X-Plivo-Signature-V3`, `X-Plivo-Signature-V3-Nonce`), for a POST:
    base = scheme://host/path + "?" + sorted query ("k=v&k=v") + ("." if query and body)
           + sorted body params concatenated ("kvkv"; a repeated key's values sorted)
    signature = base64(HMAC-SHA256(auth_token, base + "." + nonce))
The header may carry several signatures separated by commas; one match is enough.

V2 (`X-Plivo-Signature-V2`, `X-Plivo-Signature-V2-Nonce`):
    signature = base64(HMAC-SHA256(auth_token, scheme://host/path + nonce))
V2 does not cover the body; the webhook app binds each nonce to the first request it was seen
with, so a captured V2 signature cannot carry another body.

A request carrying both (Plivo sends both) is accepted only when BOTH verify, and both nonces are
spent (`request_signatures` returns both): otherwise the V2 pair of a genuine V3+V2 request could
be replayed alone with any body, since only the V3 nonce would have been recorded.
`DUNNING_PLIVO_SIGNATURES=v3` refuses requests that carry V2 alone.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from urllib.parse import parse_qs, urlsplit, urlunsplit

V3_HEADER = "X-Plivo-Signature-V3"
V3_NONCE_HEADER = "X-Plivo-Signature-V3-Nonce"
V2_HEADER = "X-Plivo-Signature-V2"
V2_NONCE_HEADER = "X-Plivo-Signature-V2-Nonce"

MAX_NONCE_LENGTH = 128
MAX_SIGNATURE_HEADER_LENGTH = 2048

Params = Mapping[str, str | Sequence[str]]


def _b64_hmac(auth_token: str, message: str) -> str:
    digest = hmac.new(auth_token.encode("utf-8"), message.encode("utf-8"), hashlib.sha256)
    return base64.b64encode(digest.digest()).decode("ascii")


def _base_url(url: str) -> str:
    """scheme://netloc/path, without query and fragment."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))


def _values(value: str | Sequence[str]) -> list[str]:
    return [value] if isinstance(value, str) else list(value)


def v3_base_string(method: str, url: str, params: Params | None = None) -> str:
    """The string Plivo signs for V3, before `.nonce` is appended."""
    params = params or {}
    query = parse_qs(urlsplit(url).query, keep_blank_values=True)
    if method.upper() == "GET":
        # As the SDK: body params and query merged, the query winning on a shared key.
        merged = {key: _values(value) for key, value in params.items()}
        merged.update(query)
        query, params = merged, {}
    query_string = "&".join(
        "&".join(f"{key}={val}" for val in sorted(query[key])) for key in sorted(query)
    )
    base = _base_url(url)
    if query_string or params:
        base += "?" + query_string
    if query_string and params:
        base += "."
    body = "".join(
        "".join(f"{key}{val}" for val in sorted(_values(params[key]))) for key in sorted(params)
    )
    return base + body


def v3_signature(auth_token: str, method: str, url: str, nonce: str,
                 params: Params | None = None) -> str:
    return _b64_hmac(auth_token, f"{v3_base_string(method, url, params)}.{nonce}")


def v2_signature(auth_token: str, url: str, nonce: str) -> str:
    return _b64_hmac(auth_token, _base_url(url) + nonce)


def _matches_any(expected: str, header: str) -> bool:
    found = False
    for candidate in header.split(","):
        # No early exit: every candidate is compared.
        if hmac.compare_digest(expected.encode(), candidate.strip().encode()):
            found = True
    return found


def verify_v3(auth_token: str, method: str, url: str, nonce: str, header: str,
              params: Params | None = None) -> bool:
    if not auth_token or not nonce or not header:
        return False
    return _matches_any(v3_signature(auth_token, method, url, nonce, params), header)


def verify_v2(auth_token: str, url: str, nonce: str, header: str) -> bool:
    if not auth_token or not nonce or not header:
        return False
    return _matches_any(v2_signature(auth_token, url, nonce), header)


@dataclass(frozen=True)
class SignatureHeaders:
    scheme: str  # "v3" | "v2"
    signature: str
    nonce: str


def signature_headers(headers: Mapping[str, str]) -> SignatureHeaders | None:
    """The signature to check: V3 when its header is present, else V2; None when unusable.

    A request carrying a V3 header is judged by V3 alone (V2 does not cover the body, so it is
    no fallback for a V3 signature that fails).
    """
    lowered = {k.lower(): v for k, v in headers.items()}
    for scheme, sig_name, nonce_name in (
        ("v3", V3_HEADER, V3_NONCE_HEADER),
        ("v2", V2_HEADER, V2_NONCE_HEADER),
    ):
        signature = lowered.get(sig_name.lower())
        if signature is None:
            continue
        nonce = lowered.get(nonce_name.lower(), "").strip()
        signature = signature.strip()
        if (
            not signature
            or not nonce
            or len(nonce) > MAX_NONCE_LENGTH
            or len(signature) > MAX_SIGNATURE_HEADER_LENGTH
            or not nonce.isprintable()
        ):
            return None
        return SignatureHeaders(scheme, signature, nonce)
    return None


def _one_signature(
    lowered: Mapping[str, str], scheme: str, sig_name: str, nonce_name: str
) -> SignatureHeaders | bool | None:
    """The scheme's headers: SignatureHeaders, False when absent, None when malformed."""
    signature = lowered.get(sig_name.lower())
    if signature is None:
        return False
    nonce = lowered.get(nonce_name.lower(), "").strip()
    signature = signature.strip()
    if (
        not signature
        or not nonce
        or len(nonce) > MAX_NONCE_LENGTH
        or len(signature) > MAX_SIGNATURE_HEADER_LENGTH
        or not nonce.isprintable()
    ):
        return None
    return SignatureHeaders(scheme, signature, nonce)


def request_signatures(
    headers: Mapping[str, str], accepted: Collection[str] = ("v2", "v3")
) -> list[SignatureHeaders] | None:
    """Every signature the request carries (V3 first), each of which must verify; None when a
    present one is malformed, when there is none, or when V2 comes alone and `accepted` lacks
    "v2" (`DUNNING_PLIVO_SIGNATURES=v3`)."""
    lowered = {k.lower(): v for k, v in headers.items()}
    found: list[SignatureHeaders] = []
    for scheme, sig_name, nonce_name in (
        ("v3", V3_HEADER, V3_NONCE_HEADER),
        ("v2", V2_HEADER, V2_NONCE_HEADER),
    ):
        one = _one_signature(lowered, scheme, sig_name, nonce_name)
        if one is None:
            return None
        if isinstance(one, SignatureHeaders):
            found.append(one)
    if not found or not any(sig.scheme in accepted for sig in found):
        return None
    return found


def verify_all(auth_token: str, method: str, url: str, sigs: Sequence[SignatureHeaders],
               params: Params) -> bool:
    """True when every signature in `sigs` verifies (each one is checked)."""
    results = [verify_request(auth_token, method, url, sig, params) for sig in sigs]
    return bool(results) and all(results)


def verify_request(auth_token: str, method: str, url: str, sig: SignatureHeaders,
                   params: Params) -> bool:
    """Check `sig` for a request to `url` (public URL + path + ?query) with body `params`."""
    if sig.scheme == "v3":
        return verify_v3(auth_token, method, url, sig.nonce, sig.signature, params)
    return verify_v2(auth_token, url, sig.nonce, sig.signature)


__all__ = [
    "V2_HEADER",
    "V2_NONCE_HEADER",
    "V3_HEADER",
    "V3_NONCE_HEADER",
    "SignatureHeaders",
    "request_signatures",
    "signature_headers",
    "v2_signature",
    "v3_base_string",
    "v3_signature",
    "verify_all",
    "verify_request",
    "verify_v2",
    "verify_v3",
]
