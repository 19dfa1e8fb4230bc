"""A TLS-terminating loopback proxy for Temporal's gRPC frontend, and the certificates for it.

`make_pki(dir)` writes a test CA, a server certificate for 127.0.0.1/localhost, a client
certificate signed by that CA and an unrelated CA (for "wrong CA" cases). `TlsProxy` accepts TLS
on 127.0.0.1 (optionally requiring a client certificate signed by the CA), and forwards the
decrypted bytes to the plain-text dev server. It reads the HTTP/2 request headers on the way
(HPACK), so a test can see what a client sent, e.g. `authorization: Bearer <api key>`.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import ipaddress
import logging
import ssl
import threading
from dataclasses import dataclass
from pathlib import Path

import hpack
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
# hpack logs every decoded header at DEBUG, secrets included: this proxy is the test's eyes, not
# part of the engine, so keep its decoder quiet.
logging.getLogger("hpack").setLevel(logging.WARNING)


@dataclass(frozen=True)
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca: Path


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    path.chmod(0o600)


def _ca(cn: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = _key()
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(_name(cn)).issuer_name(_name(cn))
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(
            digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
            key_encipherment=False, data_encipherment=False, key_agreement=False,
            encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                       critical=False)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def _leaf(
    cn: str, ca_key: ec.EllipticCurvePrivateKey, ca_cert: x509.Certificate, *, server: bool
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = _key()
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder().subject_name(_name(cn)).issuer_name(ca_cert.subject)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage(
            [ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH]),
            critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
            ca_key.public_key()), critical=False)
    )
    if server:
        builder = builder.add_extension(x509.SubjectAlternativeName([
            x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        ]), critical=False)
    return key, builder.sign(ca_key, hashes.SHA256())


def make_pki(directory: Path) -> Pki:
    directory.mkdir(parents=True, exist_ok=True)
    ca_key, ca_cert = _ca("dunning test CA")
    server_key, server_cert = _leaf("localhost", ca_key, ca_cert, server=True)
    client_key, client_cert = _leaf("dunning-worker", ca_key, ca_cert, server=False)
    _, other_cert = _ca("some other CA")
    pem = serialization.Encoding.PEM
    pki = Pki(ca=directory / "ca.pem", server_cert=directory / "server.pem",
              server_key=directory / "server.key", client_cert=directory / "client.pem",
              client_key=directory / "client.key", other_ca=directory / "other-ca.pem")
    pki.ca.write_bytes(ca_cert.public_bytes(pem))
    pki.server_cert.write_bytes(server_cert.public_bytes(pem))
    _write_key(pki.server_key, server_key)
    pki.client_cert.write_bytes(client_cert.public_bytes(pem))
    _write_key(pki.client_key, client_key)
    pki.other_ca.write_bytes(other_cert.public_bytes(pem))
    return pki


class _HeaderReader:
    """Follows the client's side of one HTTP/2 connection and decodes its request headers."""

    def __init__(self, sink: list[tuple[str, str]]) -> None:
        self.buffer = bytearray()
        self.preface_seen = False
        self.decoder = hpack.Decoder()
        self.block = bytearray()
        self.sink = sink
        self.broken = False

    def feed(self, data: bytes) -> None:
        if self.broken:
            return
        self.buffer += data
        try:
            self._parse()
        except Exception:  # a test helper: stop reading, keep forwarding
            self.broken = True

    def _parse(self) -> None:
        if not self.preface_seen:
            if len(self.buffer) < len(PREFACE):
                return
            del self.buffer[:len(PREFACE)]
            self.preface_seen = True
        while len(self.buffer) >= 9:
            length = int.from_bytes(self.buffer[:3], "big")
            if len(self.buffer) < 9 + length:
                return
            kind, flags = self.buffer[3], self.buffer[4]
            payload = bytes(self.buffer[9:9 + length])
            del self.buffer[:9 + length]
            if kind == 0x1:  # HEADERS
                start, end = 0, len(payload)
                if flags & 0x8:  # PADDED
                    start, end = 1, len(payload) - payload[0]
                if flags & 0x20:  # PRIORITY
                    start += 5
                self.block = bytearray(payload[start:end])
            elif kind == 0x9:  # CONTINUATION
                self.block += payload
            else:
                continue
            if flags & 0x4:  # END_HEADERS
                for name, value in self.decoder.decode(bytes(self.block)):
                    self.sink.append((str(name), str(value)))
                self.block = bytearray()


class TlsProxy:
    """TLS on 127.0.0.1:<port> -> plain TCP to `upstream`; `require_client_cert` for mTLS."""

    def __init__(self, upstream: str, pki: Pki, *, require_client_cert: bool = False) -> None:
        host, _, port = upstream.rpartition(":")
        self.upstream = (host or "127.0.0.1", int(port))
        self.context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.context.load_cert_chain(pki.server_cert, pki.server_key)
        self.context.set_alpn_protocols(["h2"])
        if require_client_cert:
            self.context.verify_mode = ssl.CERT_REQUIRED
            self.context.load_verify_locations(pki.ca)
        self.headers: list[tuple[str, str]] = []
        self.handshake_failures = 0
        self.accepted = 0  # connections that completed the TLS handshake
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.base_events.Server | None = None
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> TlsProxy:
        self._thread.start()
        self._server = asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def _start(self) -> asyncio.base_events.Server:
        self._loop.set_exception_handler(self._on_loop_error)
        return await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=self.context,
                                          ssl_handshake_timeout=10)

    def _on_loop_error(self, loop: asyncio.AbstractEventLoop, context: dict[str, object]) -> None:
        if isinstance(context.get("exception"), ssl.SSLError | ConnectionError | OSError):
            self.handshake_failures += 1
            return
        loop.default_exception_handler(context)

    def stop(self) -> None:
        async def close() -> None:
            if self._server is not None:
                self._server.close()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(close(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def header_values(self, name: str) -> list[str]:
        return [value for key, value in list(self.headers) if key == name]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            writer.close()
            return
        headers = _HeaderReader(self.headers)

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter,
                       watch: _HeaderReader | None) -> None:
            try:
                while data := await src.read(65536):
                    if watch is not None:
                        watch.feed(data)
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, OSError, ssl.SSLError):
                pass
            finally:
                with contextlib.suppress(Exception):
                    dst.close()

        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(pump(reader, up_writer, headers),
                                 pump(up_reader, writer, None))
