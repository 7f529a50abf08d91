"""External issuers (issue 5, "Trusting other issuers"): a second, independent issuer whose
tokens are signed by PyJWT and whose JWK Set is served over real HTTPS (test CA) on
127.0.0.1, verified through the real sidecar over gRPC."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest

from authsidecar.v1 import auth_pb2
from sidecar.clock import FixedClock
from sidecar.config import load_settings
from sidecar.errors import ConfigError
from sidecar.keys.remote import RemoteKeySet
from tests.support.jwks_server import ExternalIssuer, JwksServer, LocalCa
from tests.support.sidecar import RunningSidecar, reason_of, running_sidecar

AUDIENCE = "api://orders"


@dataclass
class Setup:
    sc: RunningSidecar
    idp: ExternalIssuer
    server: JwksServer

    @property
    def remote(self) -> RemoteKeySet:
        (remote,) = self.sc.app.remote_keys
        return remote


@pytest.fixture
def local_ca(data_dir: Path) -> LocalCa:
    return LocalCa.create(data_dir)


@pytest.fixture
def jwks_server(local_ca: LocalCa) -> Iterator[JwksServer]:
    server = JwksServer(local_ca)
    try:
        yield server
    finally:
        server.stop()


def _issuer_settings(server: JwksServer, ca: LocalCa, **extra: Any) -> dict[str, Any]:
    return {
        "issuer": ExternalIssuer.issuer,
        "audiences": [AUDIENCE],
        "jwks_url": server.url,
        "ca_file": str(ca.ca_file),
        "refresh_s": 300,
        "min_refetch_interval_s": 30,
        "timeout_s": 2,
        **extra,
    }


@pytest.fixture
async def setup(data_dir: Path, local_ca: LocalCa, jwks_server: JwksServer) -> AsyncIterator[Setup]:
    idp = ExternalIssuer()
    idp.add_key("idp-1")
    jwks_server.document = idp.jwks()
    async with running_sidecar(
        data_dir,
        clock=FixedClock(time.time()),  # PyJWT stamps iat/exp from the real clock
        tokens={"audiences": ["svc-a"]},
        issuers=[_issuer_settings(jwks_server, local_ca)],
    ) as sc:
        yield Setup(sc, idp, jwks_server)


async def _verify(sc: RunningSidecar, token: str) -> auth_pb2.VerifyResponse:
    response: auth_pb2.VerifyResponse = await sc.public.Verify(auth_pb2.VerifyRequest(token=token))
    return response


async def _refused(sc: RunningSidecar, token: str) -> str:
    with pytest.raises(grpc.RpcError) as caught:
        await _verify(sc, token)
    code, reason = reason_of(caught.value)
    assert code == grpc.StatusCode.UNAUTHENTICATED
    return reason


async def test_external_issuer_tokens_are_accepted(setup: Setup) -> None:
    assert setup.server.hits() == 1  # the start-up fetch
    response = await _verify(setup.sc, setup.idp.token("idp-1"))
    assert (response.iss, response.sub, response.kid) == (setup.idp.issuer, "user-1", "idp-1")
    assert list(response.aud) == [AUDIENCE]
    # typ "JWT" and no typ are an IdP's usual access tokens; a refresh-token typ is not.
    assert (await _verify(setup.sc, setup.idp.token("idp-1", typ="JWT"))).sub == "user-1"
    assert (await _verify(setup.sc, setup.idp.token("idp-1", typ=None))).sub == "user-1"
    assert await _refused(setup.sc, setup.idp.token("idp-1", typ="rt+jwt")) == "WRONG_TOKEN_TYPE"
    # The issuer's audiences apply, not ours (and ours do not let its tokens in).
    wrong_aud = setup.idp.token("idp-1", audience="svc-a")
    assert await _refused(setup.sc, wrong_aud) == "AUDIENCE_MISMATCH"
    # Our own tokens keep working beside it.
    grant = await setup.sc.admin.Issue(auth_pb2.IssueRequest(subject="alice", audience=["svc-a"]))
    assert (await _verify(setup.sc, grant.access_token)).sub == "alice"
    # VerifyBatch routes per item.
    batch = await setup.sc.public.VerifyBatch(
        auth_pb2.VerifyBatchRequest(
            requests=[
                auth_pb2.VerifyRequest(token=setup.idp.token("idp-1")),
                auth_pb2.VerifyRequest(token=grant.access_token),
            ]
        )
    )
    assert [item.ok.sub for item in batch.results] == ["user-1", "alice"]
    assert setup.server.hits() == 1


async def test_first_token_after_rotation_is_accepted_without_waiting(setup: Setup) -> None:
    setup.idp.add_key("idp-2")
    setup.server.document = setup.idp.jwks()
    # refresh_s is 300 s: only the unknown kid can make the sidecar look again.
    response = await _verify(setup.sc, setup.idp.token("idp-2"))
    assert response.kid == "idp-2"
    assert setup.server.hits() == 2
    assert setup.remote.status.demand_fetches == 1
    # The old key still verifies while the issuer publishes it.
    assert (await _verify(setup.sc, setup.idp.token("idp-1"))).kid == "idp-1"
    # Made-up kids: refused, and rate limited to one fetch per min_refetch_interval_s.
    setup.idp.add_key("forged")
    for _ in range(5):
        assert await _refused(setup.sc, setup.idp.token("forged")) == "KEY_UNKNOWN"
    assert setup.server.hits() == 2
    # The issuer retires idp-1: the next refresh drops it.
    retired = setup.idp.keys.pop("idp-1")
    setup.server.document = setup.idp.jwks()
    assert await setup.remote.refresh()
    assert await _refused(setup.sc, setup.idp.token("idp-1", key=retired)) == "KEY_UNKNOWN"


async def test_verify_batch_learns_a_rotated_kid_like_verify_with_one_fetch(
    setup: Setup,
) -> None:
    setup.idp.add_key("idp-2")
    setup.server.document = setup.idp.jwks()
    setup.idp.add_key("forged")  # never published
    tokens = [setup.idp.token(kid) for kid in ("idp-2", "idp-1", "idp-2", "forged")]
    request = auth_pb2.VerifyBatchRequest(
        requests=[auth_pb2.VerifyRequest(token=t) for t in tokens]
    )
    response = await setup.sc.public.VerifyBatch(request)
    outcomes = [
        r.ok.kid if r.WhichOneof("outcome") == "ok" else auth_pb2.ErrorReason.Name(r.error)
        for r in response.results
    ]
    assert outcomes == ["idp-2", "idp-1", "idp-2", "KEY_UNKNOWN"]
    assert setup.server.hits() == 2  # start-up, then one fetch for the whole batch
    assert setup.remote.status.demand_fetches == 1


async def test_endpoint_down_keeps_the_last_good_keys(setup: Setup) -> None:
    token = setup.idp.token("idp-1")
    assert (await _verify(setup.sc, token)).kid == "idp-1"
    setup.server.stop()
    assert not await setup.remote.refresh()
    assert setup.remote.status.failures == 1
    assert setup.remote.status.last_error is not None
    assert setup.remote.ring is not None and "idp-1" in setup.remote.ring
    assert (await _verify(setup.sc, setup.idp.token("idp-1"))).kid == "idp-1"
    # A new kid cannot be learnt meanwhile: refused, not an error, old keys still in force.
    setup.idp.add_key("idp-2")
    assert await _refused(setup.sc, setup.idp.token("idp-2")) == "KEY_UNKNOWN"
    assert setup.remote.status.failures == 2
    assert (await _verify(setup.sc, setup.idp.token("idp-1"))).kid == "idp-1"


async def test_a_broken_key_set_is_refused_and_the_last_good_one_kept(setup: Setup) -> None:
    broken_sets: list[dict[str, Any]] = [
        {"keys": []},
        {"keys": [{"kty": "oct", "k": "c2VjcmV0", "kid": "x"}]},
    ]
    for broken in broken_sets:
        setup.server.document = broken
        assert not await setup.remote.refresh()
        assert (await _verify(setup.sc, setup.idp.token("idp-1"))).kid == "idp-1"


async def test_token_of_an_unconfigured_issuer_is_issuer_mismatch(setup: Setup) -> None:
    token = setup.idp.token("idp-1", issuer="https://other-idp.example.test")
    assert await _refused(setup.sc, token) == "ISSUER_MISMATCH"
    # Our own issuer's name does not let the external keys in either.
    ours = setup.idp.token("idp-1", issuer="urn:authsidecar:local", audience="svc-a")
    assert await _refused(setup.sc, ours) == "KEY_UNKNOWN"
    assert setup.server.hits() == 1


async def test_jku_header_is_refused_and_never_fetched(setup: Setup) -> None:
    evil = f"https://127.0.0.1:{setup.server.port}/evil.json"
    setup.idp.add_key("attacker")
    for url in (evil, setup.server.url):
        token = setup.idp.token("attacker", headers={"jku": url})
        assert await _refused(setup.sc, token) == "TOKEN_MALFORMED"
        token = setup.idp.token("attacker", headers={"x5u": url})
        assert await _refused(setup.sc, token) == "TOKEN_MALFORMED"
    assert setup.server.hits("/evil.json") == 0
    assert setup.server.requests == ["/jwks.json"]


async def test_untrusted_certificate_is_refused_but_the_sidecar_starts(
    data_dir: Path, local_ca: LocalCa, jwks_server: JwksServer
) -> None:
    idp = ExternalIssuer()
    idp.add_key("idp-1")
    jwks_server.document = idp.jwks()
    settings = _issuer_settings(jwks_server, local_ca)
    del settings["ca_file"]  # the system trust store does not know the test CA
    async with running_sidecar(data_dir, clock=FixedClock(time.time()), issuers=[settings]) as sc:
        (remote,) = sc.app.remote_keys
        assert remote.ring is None
        assert "certificate" in (remote.status.last_error or "")
        assert await _refused(sc, idp.token("idp-1")) == "KEY_UNKNOWN"


def test_http_jwks_url_is_refused_at_config_time() -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(
            None,
            issuers=[
                {
                    "issuer": "https://idp.example.test",
                    "audiences": [AUDIENCE],
                    "jwks_url": "http://idp.example.test/jwks.json",
                }
            ],
        )
    message = str(caught.value)
    assert "issuers" in message and "jwks_url" in message and "https://" in message


@pytest.mark.parametrize(
    "issuers",
    [
        [{"issuer": "urn:authsidecar:local", "audiences": ["a"], "jwks_file": "/x"}],
        [{"issuer": "https://i", "audiences": ["a"], "jwks_file": "/x"}] * 2,
        [{"issuer": "https://i", "audiences": [], "jwks_file": "/x"}],
        [{"issuer": "https://i", "audiences": ["a"]}],
        [{"issuer": "https://i", "audiences": ["a"], "jwks_file": "/x", "algorithms": ["HS256"]}],
    ],
)
def test_issuer_settings_are_validated(issuers: list[dict[str, Any]]) -> None:
    with pytest.raises(ConfigError, match="issuers"):
        load_settings(None, issuers=issuers)
