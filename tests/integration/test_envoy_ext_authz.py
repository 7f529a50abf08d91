"""Envoy ext_authz over real gRPC, with messages built and read by a third party.

The requests are serialised and the replies parsed by `envoy-data-plane` (betterproto classes
generated from Envoy's own protos), and travel as raw bytes over a generic gRPC call: if our
subset of Envoy's protos disagreed with upstream on a field number or type, these would fail.
"""

from __future__ import annotations

import json
import logging
import warnings
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from authsidecar.v1 import auth_pb2
from tests.support.sidecar import RunningSidecar, running_sidecar

# envoy-data-plane 2.2.0 declares pydantic validators in a form pydantic 2.12 deprecates.
with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    from envoy_data_plane.envoy.config.core.v3 import HeaderMap, HeaderValue
    from envoy_data_plane.envoy.service.auth.v3 import (
        AttributeContext,
        AttributeContextHttpRequest,
        AttributeContextPeer,
        AttributeContextRequest,
        CheckRequest,
        CheckResponse,
    )

CHECK = "/envoy.service.auth.v3.Authorization/Check"
OVERWRITE_IF_EXISTS_OR_ADD = 2
FORWARD = {"sub": "x-authsidecar-sub", "scope": "x-authsidecar-scope", "aud": "x-aud"}
FORWARD["client_id"] = "x-client-id"


@pytest.fixture
async def envoy_sidecar(data_dir: Path) -> AsyncIterator[RunningSidecar]:
    async with running_sidecar(
        data_dir,
        tokens={"audiences": ["svc-a", "svc-b"]},
        envoy={"enabled": True, "forward_claims_headers": FORWARD},
    ) as running:
        yield running


async def _token(sidecar: RunningSidecar, *, scope: str = "read", aud: str = "svc-a") -> str:
    grant = await sidecar.admin.Issue(
        auth_pb2.IssueRequest(subject="alice", audience=[aud], scope=scope)
    )
    return grant.access_token


async def _check(
    target: str,
    headers: dict[str, str] | None = None,
    *,
    extensions: dict[str, str] | None = None,
    header_map: HeaderMap | None = None,
) -> CheckResponse:
    request = CheckRequest(
        attributes=AttributeContext(
            source=AttributeContextPeer(principal="spiffe://example.org/ns/web/sa/frontend"),
            request=AttributeContextRequest(
                http=AttributeContextHttpRequest(
                    id="req-1",
                    method="GET",
                    path="/orders",
                    host="orders.internal",
                    headers=headers or {},
                    header_map=header_map,
                )
            ),
            context_extensions=extensions or {},
        )
    )
    async with grpc.aio.insecure_channel(target) as channel:
        check = channel.unary_unary(
            CHECK, request_serializer=_identity, response_deserializer=_identity
        )
        raw = await check(bytes(request), timeout=10)
    return CheckResponse.parse(raw)


def _identity(data: bytes) -> bytes:
    """Raw bytes both ways: only the third-party classes encode and decode."""
    return data


def _headers(options: list) -> dict[str, str]:  # type: ignore[type-arg]
    return {o.header.key: o.header.value for o in options}


async def test_check_allows_a_valid_token_and_forwards_claims_as_headers(
    envoy_sidecar: RunningSidecar,
) -> None:
    token = await _token(envoy_sidecar, scope="read write")
    reply = await _check(envoy_sidecar.unix_target, {"authorization": f"Bearer {token}"})
    assert reply.status is not None and reply.status.code == 0
    assert reply.ok_response is not None and reply.denied_response is None
    forwarded = _headers(reply.ok_response.headers)
    assert forwarded == {"x-authsidecar-sub": "alice", "x-authsidecar-scope": "read write",
                         "x-aud": "svc-a"}  # fmt: skip
    # Overwrite, so a client cannot smuggle its own x-authsidecar-sub past the check.
    assert {int(o.append_action) for o in reply.ok_response.headers} == {OVERWRITE_IF_EXISTS_OR_ADD}
    # An absent claim's header is removed rather than left as the client sent it.
    assert reply.ok_response.headers_to_remove == ["x-client-id"]


async def test_check_denies_a_request_without_a_bearer_token_with_401(
    envoy_sidecar: RunningSidecar,
) -> None:
    for headers in ({}, {"authorization": "Basic YWxpY2U6c2VjcmV0"}, {"authorization": "Bearer "}):
        reply = await _check(envoy_sidecar.tcp_target, headers)
        denied = reply.denied_response
        assert denied is not None and denied.status is not None
        assert int(denied.status.code) == 401
        assert (
            reply.status is not None
            and reply.status.code == grpc.StatusCode.UNAUTHENTICATED.value[0]
        )
        sent = _headers(denied.headers)
        # RFC 6750 section 3.1: no error code when the request carried no credentials.
        assert sent["www-authenticate"] == 'Bearer realm="authsidecar"'
        assert sent["x-authsidecar-reason"] == "TOKEN_MISSING"


async def test_check_denies_an_invalid_token_with_401_invalid_token(
    envoy_sidecar: RunningSidecar,
) -> None:
    reply = await _check(envoy_sidecar.unix_target, {"authorization": "bearer not.a.jwt"})
    denied = reply.denied_response
    assert denied is not None and denied.status is not None and int(denied.status.code) == 401
    sent = _headers(denied.headers)
    assert sent["www-authenticate"] == 'Bearer error="invalid_token"'
    assert sent["x-authsidecar-reason"] == "TOKEN_MALFORMED"
    assert json.loads(denied.body) == {"error": "invalid_token", "reason": "TOKEN_MALFORMED"}


async def test_check_denies_a_missing_route_scope_with_403_insufficient_scope(
    envoy_sidecar: RunningSidecar,
) -> None:
    token = await _token(envoy_sidecar, scope="read")
    reply = await _check(
        envoy_sidecar.unix_target,
        {"authorization": f"Bearer {token}"},
        extensions={"required_scopes": "read admin"},
    )
    denied = reply.denied_response
    assert denied is not None and denied.status is not None and int(denied.status.code) == 403
    sent = _headers(denied.headers)
    assert sent["www-authenticate"] == 'Bearer error="insufficient_scope", scope="read admin"'
    assert sent["x-authsidecar-reason"] == "SCOPE_MISSING"


async def test_check_denial_audit_names_only_what_the_verifier_parsed(
    envoy_sidecar: RunningSidecar, caplog: pytest.LogCaptureFixture
) -> None:
    """The audit line takes the claimed ids from the error (issue 12): a signed token refused
    by the route's audience names its sub and jti; a forged one (bad signature) names nobody,
    since nothing parsed its claims."""
    caplog.set_level(logging.INFO, logger="authsidecar.audit")
    token = await _token(envoy_sidecar, aud="svc-a")
    forged = token[: token.rindex(".") + 1] + "A" * 86
    for bearer in (token, forged):
        await _check(
            envoy_sidecar.unix_target,
            {"authorization": f"Bearer {bearer}"},
            extensions={"audience": "svc-b"},
        )
    records = [r for r in caplog.records if r.name == "authsidecar.audit"]
    lines = [a for r in records if (a := r.audit)["event"] == "token_refused"]  # type: ignore[attr-defined]
    assert [(a["event"], a["reason"], a["sub"]) for a in lines] == [
        ("token_refused", "AUDIENCE_MISMATCH", "alice"),
        ("token_refused", "SIGNATURE_INVALID", ""),
    ]
    assert len(lines[0]["jti"]) > 8 and lines[1]["jti"] == ""


async def test_check_applies_the_route_audience(envoy_sidecar: RunningSidecar) -> None:
    token = await _token(envoy_sidecar, aud="svc-a")
    header = {"authorization": f"Bearer {token}"}
    ok = await _check(envoy_sidecar.unix_target, header, extensions={"audience": "svc-a"})
    assert ok.ok_response is not None
    other = await _check(envoy_sidecar.unix_target, header, extensions={"audience": "svc-b"})
    assert other.denied_response is not None
    assert _headers(other.denied_response.headers)["x-authsidecar-reason"] == "AUDIENCE_MISMATCH"


async def test_check_denies_a_revoked_token(envoy_sidecar: RunningSidecar) -> None:
    token = await _token(envoy_sidecar)
    await envoy_sidecar.public.Revoke(auth_pb2.RevokeRequest(token=token))
    reply = await _check(envoy_sidecar.unix_target, {"authorization": f"Bearer {token}"})
    assert reply.denied_response is not None
    assert _headers(reply.denied_response.headers)["x-authsidecar-reason"] == "TOKEN_REVOKED"


async def test_check_reads_raw_header_maps(envoy_sidecar: RunningSidecar) -> None:
    """Envoy's encode_raw_headers sends header_map (key + raw_value) instead of headers."""
    token = await _token(envoy_sidecar)
    raw = HeaderMap(
        headers=[HeaderValue(key="authorization", raw_value=f"Bearer {token}".encode())]
    )
    reply = await _check(envoy_sidecar.unix_target, header_map=raw)
    assert reply.ok_response is not None


async def test_check_is_not_served_unless_enabled(sidecar: RunningSidecar) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await _check(sidecar.unix_target, {"authorization": "Bearer x"})
    assert caught.value.code() is grpc.StatusCode.UNIMPLEMENTED
