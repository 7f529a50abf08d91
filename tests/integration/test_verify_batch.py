"""VerifyBatch through real gRPC: Verify's checks per item, each item failing on its own."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from authsidecar.v1 import auth_pb2
from tests.integration.test_auth_service import issue
from tests.support.sidecar import RunningSidecar, reason_of, running_sidecar


def _req(token: str, audience: str = "", scopes: tuple[str, ...] = ()) -> auth_pb2.VerifyRequest:
    return auth_pb2.VerifyRequest(token=token, audience=audience, required_scopes=scopes)


async def test_verify_batch_gives_each_item_its_own_reason(sidecar: RunningSidecar) -> None:
    good = (await issue(sidecar, scope="read")).access_token
    refresh = (await issue(sidecar, refresh=True)).refresh_token
    revoked = (await issue(sidecar)).access_token
    await sidecar.public.Revoke(auth_pb2.RevokeRequest(token=revoked))
    tampered = good[:-4] + ("AAAA" if not good.endswith("AAAA") else "BBBB")
    requests = [
        _req(good),
        _req("not-a-token"),
        _req(good, scopes=("admin",)),
        _req(good, audience="svc-z"),
        _req(refresh),
        _req(revoked),
        _req(""),
        _req(tampered),
        _req(good, audience="svc-a", scopes=("read",)),
    ]
    response = await sidecar.public.VerifyBatch(auth_pb2.VerifyBatchRequest(requests=requests))
    outcomes = [
        auth_pb2.ErrorReason.Name(r.error) if r.WhichOneof("outcome") == "error" else "OK"
        for r in response.results
    ]
    assert outcomes == [
        "OK",
        "TOKEN_MALFORMED",
        "SCOPE_MISSING",
        "AUDIENCE_MISMATCH",
        "WRONG_TOKEN_TYPE",
        "TOKEN_REVOKED",
        "INVALID_REQUEST",
        "SIGNATURE_INVALID",
        "OK",
    ]


async def test_verify_batch_item_equals_the_unary_verify_response(
    sidecar: RunningSidecar,
) -> None:
    token = (await issue(sidecar, tenant="acme", level=3)).access_token
    unary = await sidecar.public.Verify(auth_pb2.VerifyRequest(token=token))
    batch = await sidecar.tcp.VerifyBatch(auth_pb2.VerifyBatchRequest(requests=[_req(token)]))
    assert batch.results[0].ok == unary
    assert unary.claims["tenant"] == "acme" and unary.claims["level"] == 3


async def test_verify_batch_of_nothing_answers_nothing(sidecar: RunningSidecar) -> None:
    response = await sidecar.public.VerifyBatch(auth_pb2.VerifyBatchRequest())
    assert list(response.results) == []


async def test_verify_batch_over_the_cap_is_refused_whole(data_dir: Path) -> None:
    async with running_sidecar(data_dir, tokens={"max_verify_batch": 3}) as sc:
        token = (await issue(sc, aud=("svc",))).access_token
        ok = await sc.public.VerifyBatch(auth_pb2.VerifyBatchRequest(requests=[_req(token)] * 3))
        assert len(ok.results) == 3
        with pytest.raises(grpc.RpcError) as caught:
            await sc.public.VerifyBatch(auth_pb2.VerifyBatchRequest(requests=[_req(token)] * 4))
        assert reason_of(caught.value) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_REQUEST")
