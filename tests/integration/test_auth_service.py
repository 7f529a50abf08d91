"""AuthService end to end: the real server on a Unix socket and TCP, real gRPC clients."""

from __future__ import annotations

import base64
import json
import stat
from pathlib import Path

import grpc
import pytest
from google.protobuf import json_format, struct_pb2

from authsidecar.v1 import auth_pb2
from sidecar.tokens.signing import encode_jws
from tests.support.keys import make_key
from tests.support.sidecar import RunningSidecar, reason_of

U = grpc.StatusCode.UNAUTHENTICATED


async def issue(
    sc: RunningSidecar,
    *,
    sub: str = "alice",
    aud: tuple[str, ...] = ("svc-a",),
    scope: str = "read write",
    refresh: bool = False,
    **claims: str | int | bool,
) -> auth_pb2.IssueResponse:
    extra = struct_pb2.Struct()
    extra.update(claims)
    return await sc.admin.Issue(
        auth_pb2.IssueRequest(
            subject=sub, audience=aud, scope=scope, claims=extra, refresh_token=refresh
        )
    )


async def refused(call: object) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call  # type: ignore[misc]
    return reason_of(caught.value)


async def test_issued_token_verifies_over_unix_socket_and_tcp(sidecar: RunningSidecar) -> None:
    grant = await issue(sidecar, role="admin")
    assert grant.token_type == "Bearer"
    assert grant.expires_in == 900
    assert grant.scope == "read write"
    for stub in (sidecar.public, sidecar.tcp):
        verified = await stub.Verify(auth_pb2.VerifyRequest(token=grant.access_token))
        assert verified.sub == "alice"
        assert list(verified.aud) == ["svc-a"]
        assert verified.iss == "urn:authsidecar:local"
        assert verified.exp - verified.iat == 900
        assert verified.scope == "read write"
        assert verified.claims["role"] == "admin"
        assert verified.kid == sidecar.app.service.ring.signing_key.kid  # type: ignore[union-attr]


async def test_issue_is_refused_on_public_listeners(sidecar: RunningSidecar) -> None:
    for stub in (sidecar.public, sidecar.tcp):
        code, reason = await refused(stub.Issue(auth_pb2.IssueRequest(subject="x", audience=["y"])))
        assert (code, reason) == (grpc.StatusCode.PERMISSION_DENIED, "CALLER_NOT_ALLOWED")


async def test_admin_socket_is_owner_only(sidecar: RunningSidecar) -> None:
    admin = sidecar.app.listeners.admin_socket
    assert admin is not None
    assert stat.S_IMODE(admin.stat().st_mode) == 0o600
    assert stat.S_IMODE(admin.parent.stat().st_mode) == 0o700


async def test_issue_refuses_reserved_claims_and_bad_requests(sidecar: RunningSidecar) -> None:
    for bad in (
        issue(sidecar, iss="evil"),
        issue(sidecar, exp=9999999999),
        issue(sidecar, sub=""),
        issue(sidecar, aud=()),
        issue(sidecar, scope='bad"scope'),
    ):
        assert await refused(bad) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_REQUEST")


async def test_requested_lifetime_is_capped_at_the_maximum(sidecar: RunningSidecar) -> None:
    grant = await sidecar.admin.Issue(
        auth_pb2.IssueRequest(subject="a", audience=["svc-a"], expires_in=10**6)
    )
    assert grant.expires_in == sidecar.settings.tokens.max_access_ttl_s


async def test_verify_refuses_expired_token(sidecar: RunningSidecar) -> None:
    grant = await issue(sidecar)
    sidecar.clock.advance(900 + sidecar.settings.tokens.leeway_s)
    code, reason = await refused(
        sidecar.public.Verify(auth_pb2.VerifyRequest(token=grant.access_token))
    )
    assert (code, reason) == (U, "TOKEN_EXPIRED")


async def test_verify_accepts_token_within_leeway_after_expiry(sidecar: RunningSidecar) -> None:
    grant = await issue(sidecar)
    sidecar.clock.advance(900 + sidecar.settings.tokens.leeway_s - 1)
    await sidecar.public.Verify(auth_pb2.VerifyRequest(token=grant.access_token))


async def test_verify_refuses_token_not_yet_valid(sidecar: RunningSidecar) -> None:
    grant = await issue(sidecar)
    sidecar.clock.advance(-(sidecar.settings.tokens.leeway_s + 5))
    code, reason = await refused(
        sidecar.public.Verify(auth_pb2.VerifyRequest(token=grant.access_token))
    )
    assert (code, reason) == (U, "TOKEN_NOT_YET_VALID")


async def test_verify_refuses_refresh_token_as_access_token(sidecar: RunningSidecar) -> None:
    grant = await issue(sidecar, refresh=True)
    code, reason = await refused(
        sidecar.public.Verify(auth_pb2.VerifyRequest(token=grant.refresh_token))
    )
    assert (code, reason) == (U, "WRONG_TOKEN_TYPE")


async def test_verify_checks_per_call_audience_and_configured_audiences(
    sidecar: RunningSidecar,
) -> None:
    grant = await issue(sidecar, aud=("svc-a",))
    ok = auth_pb2.VerifyRequest(token=grant.access_token, audience="svc-a")
    await sidecar.public.Verify(ok)
    wrong = auth_pb2.VerifyRequest(token=grant.access_token, audience="svc-b")
    assert await refused(sidecar.public.Verify(wrong)) == (U, "AUDIENCE_MISMATCH")
    # The sidecar only accepts svc-a and svc-b (tokens.audiences): a token for svc-z is foreign.
    foreign = await issue(sidecar, aud=("svc-z",))
    foreign_req = auth_pb2.VerifyRequest(token=foreign.access_token)
    assert await refused(sidecar.public.Verify(foreign_req)) == (U, "AUDIENCE_MISMATCH")


async def test_verify_missing_scope_is_permission_denied(sidecar: RunningSidecar) -> None:
    grant = await issue(sidecar, scope="read")
    request = auth_pb2.VerifyRequest(token=grant.access_token, required_scopes=["read", "admin"])
    code, reason = await refused(sidecar.public.Verify(request))
    assert (code, reason) == (grpc.StatusCode.PERMISSION_DENIED, "SCOPE_MISSING")
    request = auth_pb2.VerifyRequest(token=grant.access_token, required_scopes=["read"])
    await sidecar.public.Verify(request)


async def test_an_empty_required_scope_is_a_malformed_request_naming_the_field(
    sidecar: RunningSidecar,
) -> None:
    grant = await issue(sidecar, scope="read")
    request = auth_pb2.VerifyRequest(token=grant.access_token, required_scopes=["read", ""])
    for _ in range(2):  # the second from the verify cache: still malformed
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await sidecar.public.Verify(request)
        code, reason = reason_of(error.value)
        assert (code, reason) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_REQUEST")
        assert "required_scopes" in (error.value.details() or "")
        await sidecar.public.Verify(auth_pb2.VerifyRequest(token=grant.access_token))
    batch = auth_pb2.VerifyBatchRequest(requests=[request])
    answer = await sidecar.public.VerifyBatch(batch)
    assert answer.results[0].error == auth_pb2.INVALID_REQUEST  # as Verify answers


@pytest.mark.parametrize(
    ("token", "expected"),
    [
        ("", (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_REQUEST")),
        ("not-a-token", (U, "TOKEN_MALFORMED")),
        ("a.b.c", (U, "TOKEN_MALFORMED")),
        ("x" * 9000, (U, "TOKEN_TOO_LARGE")),
        ("eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0.", (U, "TOKEN_MALFORMED")),
    ],
    ids=["empty", "garbage", "bad-segments", "oversize", "alg-none-unsigned"],
)
async def test_verify_refuses_malformed_input_with_precise_reason(
    sidecar: RunningSidecar, token: str, expected: tuple[grpc.StatusCode, str]
) -> None:
    assert await refused(sidecar.public.Verify(auth_pb2.VerifyRequest(token=token))) == expected


async def test_verify_refuses_token_signed_by_an_unknown_key(sidecar: RunningSidecar) -> None:
    grant = await issue(sidecar)
    verified = await sidecar.public.Verify(auth_pb2.VerifyRequest(token=grant.access_token))
    claims = json_format.MessageToDict(verified.claims)
    claims["exp"], claims["iat"], claims["nbf"] = verified.exp, verified.iat, verified.nbf
    stranger = encode_jws(claims, make_key("ES256", "stranger"), typ="at+jwt")
    code, reason = await refused(sidecar.public.Verify(auth_pb2.VerifyRequest(token=stranger)))
    assert (code, reason) == (U, "KEY_UNKNOWN")
    # Same kid as ours, different key material: the signature cannot match.
    own_kid = verified.kid
    impostor = encode_jws(claims, make_key("ES256", own_kid), typ="at+jwt")
    code, reason = await refused(sidecar.public.Verify(auth_pb2.VerifyRequest(token=impostor)))
    assert (code, reason) == (U, "SIGNATURE_INVALID")


async def test_refresh_rotates_and_reuse_revokes_the_family(sidecar: RunningSidecar) -> None:
    first = await issue(sidecar, refresh=True, scope="read write")
    second = await sidecar.public.Refresh(
        auth_pb2.RefreshRequest(refresh_token=first.refresh_token)
    )
    assert second.refresh_token and second.refresh_token != first.refresh_token
    assert second.scope == "read write"
    await sidecar.public.Verify(auth_pb2.VerifyRequest(token=second.access_token))

    sidecar.clock.advance(sidecar.settings.tokens.refresh_grace_s)  # past the retry window
    replay = sidecar.public.Refresh(auth_pb2.RefreshRequest(refresh_token=first.refresh_token))
    assert await refused(replay) == (U, "REFRESH_TOKEN_REUSED")
    # The whole family is gone: the successor refresh token and every access token.
    successor = sidecar.public.Refresh(auth_pb2.RefreshRequest(refresh_token=second.refresh_token))
    assert await refused(successor) == (U, "TOKEN_REVOKED")
    for access in (first.access_token, second.access_token):
        verify = sidecar.public.Verify(auth_pb2.VerifyRequest(token=access))
        assert await refused(verify) == (U, "TOKEN_REVOKED")


async def test_refresh_retry_within_grace_gets_the_same_successor(
    sidecar: RunningSidecar,
) -> None:
    first = await issue(sidecar, refresh=True)
    request = auth_pb2.RefreshRequest(refresh_token=first.refresh_token)
    second = await sidecar.public.Refresh(request)
    sidecar.clock.advance(sidecar.settings.tokens.refresh_grace_s - 1)
    retry = await sidecar.public.Refresh(request)  # the client lost `second`
    assert _claims(retry.refresh_token)["jti"] == _claims(second.refresh_token)["jti"]
    await sidecar.public.Verify(auth_pb2.VerifyRequest(token=retry.access_token))
    # Either copy of the successor rotates, once; the family is intact.
    third = await sidecar.public.Refresh(auth_pb2.RefreshRequest(refresh_token=retry.refresh_token))
    await sidecar.public.Verify(auth_pb2.VerifyRequest(token=third.access_token))


def _claims(token: str) -> dict[str, object]:
    payload = token.split(".")[1]
    decoded: dict[str, object] = json.loads(
        base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))
    )
    return decoded


async def test_refresh_can_narrow_but_not_widen_scope(sidecar: RunningSidecar) -> None:
    grant = await issue(sidecar, refresh=True, scope="read write")
    wider = auth_pb2.RefreshRequest(refresh_token=grant.refresh_token, scope="read admin")
    assert await refused(sidecar.public.Refresh(wider)) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_REQUEST",
    )
    # The refused request did not cost the caller its refresh token.
    narrow = auth_pb2.RefreshRequest(refresh_token=grant.refresh_token, scope="read")
    narrowed = await sidecar.public.Refresh(narrow)
    assert narrowed.scope == "read"


async def test_refresh_refuses_access_token(sidecar: RunningSidecar) -> None:
    grant = await issue(sidecar, refresh=True)
    request = auth_pb2.RefreshRequest(refresh_token=grant.access_token)
    assert await refused(sidecar.public.Refresh(request)) == (U, "WRONG_TOKEN_TYPE")


async def test_revoke_stops_an_access_token(sidecar: RunningSidecar) -> None:
    grant = await issue(sidecar)
    await sidecar.tcp.Revoke(auth_pb2.RevokeRequest(token=grant.access_token))
    verify = sidecar.public.Verify(auth_pb2.VerifyRequest(token=grant.access_token))
    assert await refused(verify) == (U, "TOKEN_REVOKED")
    # RFC 7009: revoking again, or revoking garbage, still succeeds.
    await sidecar.tcp.Revoke(auth_pb2.RevokeRequest(token=grant.access_token))
    await sidecar.tcp.Revoke(auth_pb2.RevokeRequest(token="garbage"))


async def test_revoking_a_refresh_token_revokes_its_family(sidecar: RunningSidecar) -> None:
    grant = await issue(sidecar, refresh=True)
    await sidecar.public.Revoke(auth_pb2.RevokeRequest(token=grant.refresh_token))
    verify = sidecar.public.Verify(auth_pb2.VerifyRequest(token=grant.access_token))
    assert await refused(verify) == (U, "TOKEN_REVOKED")
    refresh = sidecar.public.Refresh(auth_pb2.RefreshRequest(refresh_token=grant.refresh_token))
    assert await refused(refresh) == (U, "TOKEN_REVOKED")


async def test_introspect_reports_active_tokens_with_rfc7662_fields(
    sidecar: RunningSidecar,
) -> None:
    grant = await issue(sidecar, refresh=True, username="alice@example.com")
    access = await sidecar.public.Introspect(auth_pb2.IntrospectRequest(token=grant.access_token))
    assert access.active and access.token_type == "Bearer"
    assert access.sub == "alice" and access.username == "alice@example.com"
    assert list(access.aud) == ["svc-a"] and access.scope == "read write"
    refresh = await sidecar.public.Introspect(auth_pb2.IntrospectRequest(token=grant.refresh_token))
    assert refresh.active and refresh.token_type == "refresh_token"


async def test_introspect_says_only_inactive_never_why(sidecar: RunningSidecar) -> None:
    grant = await issue(sidecar, refresh=True)
    rotated = await sidecar.public.Refresh(
        auth_pb2.RefreshRequest(refresh_token=grant.refresh_token)
    )
    inactive_tokens = ["garbage", grant.refresh_token]  # retired by the rotation
    sidecar.clock.advance(10_000)
    inactive_tokens.append(rotated.access_token)  # expired now
    for token in inactive_tokens:
        result = await sidecar.public.Introspect(auth_pb2.IntrospectRequest(token=token))
        assert result == auth_pb2.IntrospectResponse(active=False)


async def test_jwks_publishes_public_verification_keys_only(sidecar: RunningSidecar) -> None:
    response = await sidecar.public.GetJwks(auth_pb2.GetJwksRequest())
    document = json.loads(response.jwks)
    assert len(document["keys"]) == 1
    (key,) = document["keys"]
    assert key["use"] == "sig" and key["alg"] == "ES256" and "kid" in key
    assert "d" not in key


async def test_oversize_metadata_is_refused_with_a_reason(sidecar: RunningSidecar) -> None:
    limit = sidecar.settings.listen.max_metadata_bytes
    big = (("x-padding", "p" * (limit + 100)),)
    call = sidecar.public.GetJwks(auth_pb2.GetJwksRequest(), metadata=big)
    assert await refused(call) == (grpc.StatusCode.INVALID_ARGUMENT, "METADATA_TOO_LARGE")


async def test_stale_socket_from_a_killed_sidecar_is_replaced(data_dir: Path) -> None:
    from tests.support.sidecar import running_sidecar

    stale = data_dir / "run" / "auth.sock"
    stale.parent.mkdir(parents=True)
    import socket

    leftover = socket.socket(socket.AF_UNIX)
    leftover.bind(str(stale))
    leftover.close()  # bound but never listening: what a SIGKILLed process leaves behind
    async with running_sidecar(data_dir) as sc:
        await sc.public.GetJwks(auth_pb2.GetJwksRequest())
