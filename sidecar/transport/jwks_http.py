"""The public keys over HTTP: `/.well-known/jwks.json` and `/.well-known/openid-configuration`.

For verifiers that fetch keys themselves (PyJWT's PyJWKClient, `jose` in Node, Envoy's
jwt_authn `remote_jwks`). Off by default; loopback only unless `http.allow_non_loopback`.

Why a hand-written server on `asyncio.start_server` and not aiohttp: it serves two static
documents to GET/HEAD, so a strict ~150-line handler is less to trust (and to pin, and to
audit) than a framework, and it shares the event loop with gRPC. What it accepts, strictly:

* one request per connection (`Connection: close`): no keep-alive, no pipelining, no
  request smuggling across requests;
* a request head of at most 8 KiB, read within 5 s (slow clients are dropped), at most 64
  connections at once;
* `GET` or `HEAD` of exactly one of the two paths (a query string is ignored); a body,
  `Transfer-Encoding`, obs-fold header lines or a malformed request line are a 400.

Caching (RFC 9111 / RFC 9110 section 13): `Cache-Control: public, max-age=<http.max_age_s>`
and a strong `ETag` naming the key ring's version; `If-None-Match` with that tag (or `*`)
answers 304 without a body. A rotation changes the version, hence the tag. Keep max-age well
below the publish -> promote overlap (docs/keys.md), so caches learn a key before it signs.

The discovery document holds only what is true of this sidecar: `issuer`, `jwks_uri` and,
under the OpenID Connect Discovery name verifiers read, the algorithms our tokens are signed
with. There is no authorization or token endpoint, so none is advertised.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable
from typing import Any

from sidecar.addresses import parse_host_port
from sidecar.config import HttpSettings
from sidecar.errors import ConfigError
from sidecar.keys.ring import KeyRing

__all__ = ["DISCOVERY_PATH", "JWKS_PATH", "JwksHttpServer"]

log = logging.getLogger("authsidecar.http")

JWKS_PATH = "/.well-known/jwks.json"
DISCOVERY_PATH = "/.well-known/openid-configuration"
MAX_HEAD_BYTES = 8192
HEAD_TIMEOUT_S = 5.0
MAX_CONNECTIONS = 64
_REASONS = {
    200: "OK",
    304: "Not Modified",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    431: "Request Header Fields Too Large",
}


class _BadRequest(Exception):
    """Internal: the request is not one this server answers (status in args[0])."""


class JwksHttpServer:
    """Serves the current ring's JWKS (`ring()` is read per request, so reloads show at once)."""

    def __init__(self, ring: Callable[[], KeyRing], *, issuer: str, settings: HttpSettings):
        self._ring = ring
        self._issuer = issuer
        self._settings = settings
        self._host, self._port = parse_host_port(settings.listen)
        self._server: asyncio.Server | None = None
        self._slots = asyncio.Semaphore(MAX_CONNECTIONS)
        self.address = ""

    @property
    def base_url(self) -> str:
        if self._settings.public_url:
            return self._settings.public_url.rstrip("/")
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"http://{host}:{self.address.rpartition(':')[2]}"

    async def start(self) -> None:
        try:
            self._server = await asyncio.start_server(
                self._handle, self._host, self._port, limit=MAX_HEAD_BYTES
            )
        except OSError as exc:
            raise ConfigError(
                f"setting http.listen: cannot listen on {self._settings.listen!r}: {exc.strerror}"
            ) from None
        port = self._server.sockets[0].getsockname()[1]
        self.address = f"{self._host}:{port}"

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    # -- one connection, one request ------------------------------------------------------

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._slots.locked():
            writer.close()  # over the connection cap: drop, do not queue
            return
        async with self._slots:
            try:
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), HEAD_TIMEOUT_S)
                response = self._respond(head)
            except asyncio.LimitOverrunError:
                response = _plain(431)
            except (asyncio.IncompleteReadError, TimeoutError, ConnectionError):
                response = None
            except _BadRequest as exc:
                response = _plain(int(exc.args[0]))
            try:
                if response is not None:
                    writer.write(response)
                    await writer.drain()
            except ConnectionError:
                pass
            finally:
                writer.close()
                with contextlib.suppress(ConnectionError):
                    await writer.wait_closed()

    def _respond(self, head: bytes) -> bytes:
        method, path, headers = _parse_head(head)
        if path not in (JWKS_PATH, DISCOVERY_PATH):
            return _plain(404)
        if method not in ("GET", "HEAD"):
            return _plain(405, extra=(("Allow", "GET, HEAD"),))
        ring = self._ring()
        etag = f'"{ring.version}"'
        cache = (
            ("Cache-Control", f"public, max-age={self._settings.max_age_s}"),
            ("ETag", etag),
        )
        if _matches(headers.get("if-none-match"), etag):
            return _response(304, b"", cache)
        doc = ring.jwks() if path == JWKS_PATH else self._discovery(ring)
        body = json.dumps(doc, separators=(",", ":"), sort_keys=True).encode("utf-8")
        typed = (*cache, ("Content-Type", "application/json"))
        return _response(200, body, typed, send_body=method == "GET")

    def _discovery(self, ring: KeyRing) -> dict[str, Any]:
        published = sorted({jwk["alg"] for jwk in ring.jwks()["keys"]})
        return {
            "issuer": self._issuer,
            "jwks_uri": self.base_url + JWKS_PATH,
            "id_token_signing_alg_values_supported": published,
        }


def _parse_head(head: bytes) -> tuple[str, str, dict[str, str]]:
    try:
        text = head.decode("ascii")
    except UnicodeDecodeError:
        raise _BadRequest(400) from None
    lines = text[:-4].split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or parts[2] not in ("HTTP/1.0", "HTTP/1.1"):
        raise _BadRequest(400)
    method, target, _version = parts
    if not method.isalpha() or not method.isupper() or not target.startswith("/"):
        raise _BadRequest(400)
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip() or name[0] in " \t":
            raise _BadRequest(400)  # includes obs-fold (RFC 9112 section 5.2)
        key = name.lower()
        if key in headers:
            raise _BadRequest(400)  # one of each: no guessing which If-None-Match counts
        headers[key] = value.strip(" \t")
    if "transfer-encoding" in headers or headers.get("content-length", "0") != "0":
        raise _BadRequest(400)  # GET/HEAD carry no body (RFC 9110 section 9.3.1)
    return method, target.partition("?")[0], headers


def _matches(if_none_match: str | None, etag: str) -> bool:
    if if_none_match is None:
        return False
    tags = [tag.strip() for tag in if_none_match.split(",")]
    # Weak comparison (RFC 9110 section 13.1.2): W/"x" matches "x".
    return "*" in tags or any(tag.removeprefix("W/") == etag for tag in tags)


def _response(
    status: int,
    body: bytes,
    headers: tuple[tuple[str, str], ...] = (),
    *,
    send_body: bool = True,
) -> bytes:
    lines = [f"HTTP/1.1 {status} {_REASONS[status]}"]
    lines += [f"{name}: {value}" for name, value in headers]
    if status != 304:
        lines.append(f"Content-Length: {len(body)}")
    lines += ["X-Content-Type-Options: nosniff", "Connection: close", "", ""]
    return "\r\n".join(lines).encode("ascii") + (body if send_body and status != 304 else b"")


def _plain(status: int, extra: tuple[tuple[str, str], ...] = ()) -> bytes:
    body = f"{status} {_REASONS[status]}\n".encode("ascii")
    return _response(status, body, (*extra, ("Content-Type", "text/plain; charset=utf-8")))
