"""A loopback identity provider: RSA signing keys, a JWKS endpoint over HTTP and access tokens
signed with them, like the ones the Temporal UI forwards to the codec server."""

from __future__ import annotations

import json
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm


class SigningKey:
    def __init__(self, kid: str | None = None) -> None:
        self.kid = kid or f"kid-{uuid.uuid4().hex[:8]}"
        self.private = rsa.generate_private_key(public_exponent=65537, key_size=2048)

    def jwk(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(RSAAlgorithm.to_jwk(self.private.public_key()))
        data.update(kid=self.kid, use="sig", alg="RS256")
        return data


class FakeIdentityProvider:
    """Serves `GET /jwks` (its public keys) on 127.0.0.1 and mints tokens."""

    def __init__(self, issuer: str = "https://idp.test/", audience: str = "temporal-ui") -> None:
        self.issuer = issuer
        self.audience = audience
        self.key = SigningKey()
        self.jwks_fetches = 0
        self.down = False  # answer 503, as an identity provider in trouble
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                return

            def do_GET(self) -> None:
                if self.path != "/jwks":
                    self.send_error(404)
                    return
                fake.jwks_fetches += 1
                if fake.down:
                    self.send_error(503)
                    return
                body = json.dumps({"keys": [fake.key.jwk()]}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def jwks_url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/jwks"

    def start(self) -> FakeIdentityProvider:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def token(
        self, *, sub: str = "user-1", key: SigningKey | None = None, expires_in: float = 300,
        **claims: Any,
    ) -> str:
        """An access token; `key` signs with another key (same kid unless it has its own)."""
        now = int(time.time())
        body: dict[str, Any] = {
            "iss": self.issuer, "aud": self.audience, "sub": sub, "iat": now,
            "exp": now + int(expires_in),
        }
        body.update(claims)
        body = {k: v for k, v in body.items() if v is not None}
        signer = key or self.key
        return jwt.encode(body, signer.private, algorithm="RS256",
                          headers={"kid": signer.kid})
