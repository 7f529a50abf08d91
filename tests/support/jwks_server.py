"""A real HTTPS JWKS server on 127.0.0.1 with its own test CA, and an independent issuer.

Everything here is made with `cryptography` and PyJWT, not with the sidecar's code: the
issuer's keys, its published JWK Set (PyJWT's `to_jwk`) and its tokens (`jwt.encode`).
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import ssl
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

__all__ = ["ExternalIssuer", "JwksServer", "LocalCa"]


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


@dataclass
class LocalCa:
    """A CA certificate (written to `ca_file`) and a server certificate for 127.0.0.1."""

    ca_file: Path
    cert_file: Path
    key_file: Path

    @classmethod
    def create(cls, directory: Path) -> LocalCa:
        now = datetime.datetime.now(datetime.UTC)
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca_cert = (
            x509.CertificateBuilder()
            .subject_name(_name("authsidecar test CA"))
            .issuer_name(_name("authsidecar test CA"))
            .public_key(ca_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(hours=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False
            )
            .sign(ca_key, hashes.SHA256())
        )
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            x509.CertificateBuilder()
            .subject_name(_name("127.0.0.1"))
            .issuer_name(ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(hours=1))
            .add_extension(
                x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                critical=False,
            )
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                critical=False,
            )
            .sign(ca_key, hashes.SHA256())
        )
        ca = cls(directory / "ca.pem", directory / "server.pem", directory / "server.key")
        ca.ca_file.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
        ca.cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        ca.key_file.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        return ca


@dataclass
class ExternalIssuer:
    """A second, independent issuer: ES256 keys by kid, tokens signed by PyJWT."""

    issuer: str = "https://idp.example.test"
    keys: dict[str, ec.EllipticCurvePrivateKey] = field(default_factory=dict)

    def add_key(self, kid: str) -> None:
        self.keys[kid] = ec.generate_private_key(ec.SECP256R1())

    def jwks(self) -> dict[str, Any]:
        published = []
        for kid, key in self.keys.items():
            jwk = jwt.algorithms.ECAlgorithm.to_jwk(key.public_key(), as_dict=True)
            published.append({**jwk, "kid": kid, "alg": "ES256", "use": "sig"})
        return {"keys": published}

    def token(
        self,
        kid: str,
        *,
        audience: str = "api://orders",
        issuer: str | None = None,
        typ: str | None = "at+jwt",
        headers: dict[str, Any] | None = None,
        key: ec.EllipticCurvePrivateKey | None = None,
        **claims: Any,
    ) -> str:
        now = int(time.time())
        payload = {
            "iss": issuer or self.issuer,
            "sub": "user-1",
            "aud": audience,
            "iat": now,
            "exp": now + 600,
            "jti": uuid.uuid4().hex,
            "scope": "orders:read",
            **claims,
        }
        header: dict[str, Any] = {"kid": kid, **(headers or {})}
        if typ is not None:
            header["typ"] = typ
        signer = key if key is not None else self.keys[kid]
        return jwt.encode(payload, signer, algorithm="ES256", headers=header)


class JwksServer:
    """HTTPS on 127.0.0.1: serves `document` at /jwks.json, records every path requested."""

    def __init__(self, ca: LocalCa) -> None:
        self.document: dict[str, Any] = {"keys": []}
        self.requests: list[str] = []
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                with server._lock:
                    server.requests.append(self.path)
                    body = json.dumps(server.document).encode()
                if self.path != "/jwks.json":
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                return

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(ca.cert_file, ca.key_file)
        self._httpd.socket = context.wrap_socket(self._httpd.socket, server_side=True)
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()
        self.running = True

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}/jwks.json"

    def hits(self, path: str = "/jwks.json") -> int:
        with self._lock:
            return self.requests.count(path)

    def stop(self) -> None:
        if self.running:
            self.running = False
            self._httpd.shutdown()
            self._httpd.server_close()
            self._thread.join(5)
