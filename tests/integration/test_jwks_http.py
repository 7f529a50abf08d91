"""`/.well-known/jwks.json` and `/.well-known/openid-configuration` over real HTTP (issue 5)."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import jwt
import pytest

from authsidecar.v1 import auth_pb2
from sidecar.clock import FixedClock
from sidecar.errors import ConfigError
from sidecar.keys.keyset import write_manifest
from sidecar.transport.jwks_http import MAX_HEAD_BYTES
from tests.support.keys import write_jwk_file
from tests.support.sidecar import RunningSidecar, running_sidecar

HTTP = {"listen": "127.0.0.1:0", "max_age_s": 120}


@pytest.fixture
async def published(data_dir: Path) -> AsyncIterator[RunningSidecar]:
    keys = data_dir / "keyset"
    keys.mkdir()
    write_jwk_file(keys, "PS256", "ps")
    write_jwk_file(keys, "EdDSA", "ed")
    write_manifest(keys, "ps", 0)
    settings = {"directory": str(keys), "reload_interval_s": 0}
    # Real time: PyJWT checks exp/iat against its own clock.
    clock = FixedClock(time.time())
    audiences = {"audiences": ["svc-a"]}
    async with running_sidecar(
        data_dir, clock=clock, keys=settings, http=HTTP, tokens=audiences
    ) as sc:
        yield sc


def _base(sc: RunningSidecar) -> str:
    assert sc.app.jwks_http is not None
    return sc.app.jwks_http.base_url


def _get(url: str, **headers: str) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url, headers=headers)  # noqa: S310 - http://127.0.0.1 only
    try:
        with urllib.request.urlopen(request, timeout=5) as response:  # noqa: S310 - as above
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


async def _fetch(url: str, **headers: str) -> tuple[int, dict[str, str], bytes]:
    return await asyncio.to_thread(_get, url, **headers)


async def _raw(sc: RunningSidecar, request: bytes) -> bytes:
    assert sc.app.jwks_http is not None
    host, _, port = sc.app.jwks_http.address.rpartition(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(request)
    await writer.drain()
    response = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    return response


async def test_token_issued_by_authsidecar_verifies_in_pyjwt_from_jwks_url_alone(
    published: RunningSidecar,
) -> None:
    grant = await published.admin.Issue(auth_pb2.IssueRequest(subject="alice", audience=["svc-a"]))
    token = grant.access_token

    def verify_with_pyjwt() -> dict[str, Any]:
        client = jwt.PyJWKClient(_base(published) + "/.well-known/jwks.json", cache_keys=False)
        key = client.get_signing_key_from_jwt(token)
        claims: dict[str, Any] = jwt.decode(
            token,
            key,
            algorithms=["PS256", "EdDSA"],
            audience="svc-a",
            issuer="urn:authsidecar:local",
        )
        return claims

    assert (await asyncio.to_thread(verify_with_pyjwt))["sub"] == "alice"
    # After a promotion to the Ed25519 key, the same URL serves what PyJWT needs for it too.
    write_manifest(Path(published.settings.keys.directory or ""), "ed", 0)
    assert published.app.key_watcher is not None and published.app.key_watcher.reload_now()
    grant = await published.admin.Issue(auth_pb2.IssueRequest(subject="bob", audience=["svc-a"]))
    token = grant.access_token
    assert (await asyncio.to_thread(verify_with_pyjwt))["sub"] == "bob"


async def test_jwks_has_cache_headers_and_answers_304_to_its_etag(
    published: RunningSidecar,
) -> None:
    url = _base(published) + "/.well-known/jwks.json"
    status, headers, body = await _fetch(url)
    assert status == 200
    assert headers["Cache-Control"] == "public, max-age=120"
    assert headers["Content-Type"] == "application/json"
    assert headers["ETag"] == f'"{published.app.service.ring.version}"'
    assert json.loads(body) == published.app.service.ring.jwks()
    assert {key["kid"] for key in json.loads(body)["keys"]} == {"ps", "ed"}
    assert all("d" not in key for key in json.loads(body)["keys"])
    status, headers, body = await _fetch(url, **{"If-None-Match": headers["ETag"]})
    assert (status, body, headers["ETag"]) == (304, b"", f'"{published.app.service.ring.version}"')
    status, _, _ = await _fetch(url, **{"If-None-Match": '"stale"'})
    assert status == 200


async def test_jwks_etag_changes_when_a_key_is_published(published: RunningSidecar) -> None:
    url = _base(published) + "/.well-known/jwks.json"
    _, before, _ = await _fetch(url)
    directory = Path(published.settings.keys.directory or "")
    write_jwk_file(directory, "ES256", "next")
    assert published.app.key_watcher is not None and published.app.key_watcher.reload_now()
    status, after, body = await _fetch(url, **{"If-None-Match": before["ETag"]})
    assert status == 200 and after["ETag"] != before["ETag"]
    assert "next" in {key["kid"] for key in json.loads(body)["keys"]}


async def test_discovery_document_names_issuer_jwks_uri_and_algorithms(
    published: RunningSidecar,
) -> None:
    status, headers, body = await _fetch(_base(published) + "/.well-known/openid-configuration")
    assert status == 200 and headers["Cache-Control"] == "public, max-age=120"
    assert json.loads(body) == {
        "issuer": "urn:authsidecar:local",
        "jwks_uri": _base(published) + "/.well-known/jwks.json",
        "id_token_signing_alg_values_supported": ["EdDSA", "PS256"],
    }


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"GET /other HTTP/1.1\r\nHost: x\r\n\r\n", b"404"),
        (b"POST /.well-known/jwks.json HTTP/1.1\r\nHost: x\r\n\r\n", b"405"),
        (b"GET /.well-known/jwks.json HTTP/2.0\r\n\r\n", b"400"),
        (b"GET /.well-known/jwks.json HTTP/1.1\r\n folded: x\r\n\r\n", b"400"),
        (b"GET /.well-known/jwks.json HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc", b"400"),
        (b"GET /.well-known/jwks.json HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n", b"400"),
        (b"GET /.well-known/jwks.json HTTP/1.1\r\nA: 1\r\nA: 2\r\n\r\n", b"400"),
        (
            b"GET /.well-known/jwks.json HTTP/1.1\r\nX: " + b"a" * MAX_HEAD_BYTES + b"\r\n\r\n",
            b"431",
        ),
    ],
)
async def test_http_server_refuses_what_it_does_not_serve(
    published: RunningSidecar, request_bytes: bytes, status: bytes
) -> None:
    response = await _raw(published, request_bytes)
    assert response.split(b" ")[1] == status
    assert b"Connection: close" in response


async def test_head_sends_headers_without_body(published: RunningSidecar) -> None:
    response = await _raw(published, b"HEAD /.well-known/jwks.json HTTP/1.1\r\nHost: x\r\n\r\n")
    head, _, body = response.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK") and b"Content-Length: " in head and body == b""


def test_http_listener_is_off_by_default_and_loopback_only() -> None:
    from sidecar.config import load_settings

    assert load_settings(None).http.listen == ""
    with pytest.raises(ConfigError, match="http.allow_non_loopback"):
        load_settings(None, http={"listen": "0.0.0.0:8080"})  # noqa: S104 - the refused case
    assert load_settings(None, http={"listen": "0.0.0.0:8080", "allow_non_loopback": True})
