"""External issuers (issue 5, "Trusting other issuers"): a second, independent issuer whose
tokens are signed by PyJWT and whose JWK Set is served over real HTTPS (test CA) on
127.0.0.1, verified through the real sidecar over gRPC."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import jwt
import pytest

from authsidecar.v1 import auth_pb2
from sidecar.app import external_issuers
from sidecar.clock import FixedClock
from sidecar.config import load_settings
from sidecar.errors import AuthSidecarError, ConfigError
from sidecar.keys.material import KeyMaterial
from sidecar.keys.remote import RemoteKeySet
from sidecar.keys.ring import KeyRing
from sidecar.store.base import Revocation
from sidecar.store.memory import MemoryTokenStore
from sidecar.tokens.service import TokenService
from sidecar.tokens.signing import encode_jws
from tests.support.jose import b64url as _b64
from tests.support.jwks_server import ExternalIssuer, JwksServer, LocalCa
from tests.support.keys import make_key
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


async def test_token_of_an_unconfigured_issuer_is_refused_as_without_issuers(setup: Setup) -> None:
    # Not an external issuer's token, so our keys and rules apply, exactly as if no issuer
    # were configured: their key is unknown to us (issue 12; it was ISSUER_MISMATCH before
    # any key was looked at, a reason no configuration without issuers gives).
    token = setup.idp.token("idp-1", issuer="https://other-idp.example.test")
    assert await _refused(setup.sc, token) == "KEY_UNKNOWN"
    # Our own issuer's name does not let the external keys in either.
    ours = setup.idp.token("idp-1", issuer="urn:authsidecar:local", audience="svc-a")
    assert await _refused(setup.sc, ours) == "KEY_UNKNOWN"
    # Signed by our key with a foreign iss: our rules refuse the issuer.
    key = setup.sc.app.service.ring.signing_key
    assert key is not None
    foreign = encode_jws(
        {
            **_claims("https://other-idp.example.test"),
            "iat": int(time.time()),
            "exp": int(time.time()) + 60,
        },
        key,
        typ="at+jwt",
    )
    assert await _refused(setup.sc, foreign) == "ISSUER_MISMATCH"
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


# --- one corpus, two configurations (issue 12, "Done when") ------------------------------

OURS = "urn:authsidecar:local"
NOW = 1_800_000_000


def _json(value: object) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def _ours(
    key: KeyMaterial, payload: bytes | dict[str, Any], header: dict[str, Any] | None = None
) -> str:
    """Signed with our key, any header and any payload bytes (encode_jws would refuse some)."""
    head = {"alg": key.alg, "kid": key.kid, "typ": "at+jwt"} if header is None else header
    raw = payload if isinstance(payload, bytes) else _json(payload)
    signing_input = f"{_b64(_json(head))}.{_b64(raw)}"
    return f"{signing_input}.{_b64(key.sign(signing_input.encode('ascii')))}"


def _theirs(idp: ExternalIssuer, kid: str, payload: bytes | dict[str, Any], **header: Any) -> str:
    """Signed by the external issuer's key (PyJWT), any payload bytes."""
    raw = payload if isinstance(payload, bytes) else _json(payload)
    headers = {"kid": kid, "typ": "at+jwt", **header}
    return jwt.api_jws.encode(raw, idp.keys[kid], algorithm="ES256", headers=headers)


def _raw(header: dict[str, Any], payload: bytes | str, signature: str) -> str:
    body = payload if isinstance(payload, str) else _b64(payload)
    return f"{_b64(_json(header))}.{body}.{signature}"


def _claims(iss: object = OURS, **more: object) -> dict[str, Any]:
    claims: dict[str, Any] = {
        "sub": "mallory",
        "aud": ["svc-a", AUDIENCE],
        "iat": NOW - 10,
        "exp": NOW + 600,
        "jti": "j-corpus",
    }
    for name, value in {"iss": iss, **more}.items():
        if value is _ABSENT:
            claims.pop(name, None)
        else:
            claims[name] = value
    return claims


_ABSENT = object()


def _corpus(own: KeyMaterial, idp: ExternalIssuer) -> dict[str, str]:
    """Bad tokens whose `iss` is not a configured external issuer (or that have none)."""
    theirs = ExternalIssuer.issuer
    idp.add_key("ghost")  # signs, but is not published
    good = _ours(own, _claims())
    head, body, sig = good.split(".")
    junk = b"\x00not json at all"
    return {
        "foreign iss, their key": _theirs(idp, "idp-1", _claims("https://other.example")),
        "foreign iss, our key": _ours(own, _claims("https://other.example")),
        "iss missing, our key": _ours(own, _claims(iss=_ABSENT)),
        "iss missing, their key": _theirs(idp, "idp-1", _claims(iss=_ABSENT)),
        "iss a number, our key": _ours(own, _claims(iss=42)),
        "iss null, their key": _theirs(idp, "idp-1", _claims(iss=None)),
        "iss a list naming them": _theirs(idp, "idp-1", _claims(iss=[theirs])),
        "iss an object naming them": _ours(own, _claims(iss={"iss": theirs})),
        "iss theirs in upper case": _theirs(idp, "idp-1", _claims(theirs.upper())),
        "iss theirs with a slash": _theirs(idp, "idp-1", _claims(theirs + "/")),
        "iss theirs, padded": _ours(own, _claims(" " + theirs)),
        "iss ours, their key": _theirs(idp, "idp-1", _claims(OURS)),
        "iss twice (theirs, ours)": _ours(
            own, b'{"iss":"' + theirs.encode() + b'","iss":"urn:authsidecar:local"}'
        ),
        "unknown kid, junk payload": _ours(own, junk, {"alg": "ES256", "kid": "nobody"}),
        "unknown kid, foreign iss": _theirs(idp, "ghost", _claims("https://x")),
        "unknown kid, payload an array": _raw({"alg": "ES256", "kid": "ghost"}, b"[1]", sig),
        "kid missing": _ours(own, _claims(), {"alg": "ES256", "typ": "at+jwt"}),
        "kid a number": _ours(own, _claims(), {"alg": "ES256", "kid": 7}),
        "junk payload, our kid, bad signature": f"{head}.{_b64(junk)}.{sig}",
        "junk payload, our key": _ours(own, junk),
        "payload an array, our key": _ours(own, b"[]"),
        "payload with a 400-digit number": _ours(
            own, b'{"iss":"' + OURS.encode() + b'","n":' + b"9" * 400 + b"}"
        ),
        "out-of-range number, foreign iss, their key": _theirs(
            idp, "idp-1", b'{"iss":"https://x","n":1e400}'
        ),
        "wrong alg for our key": _raw({"alg": "HS256", "kid": own.kid, "typ": "at+jwt"}, body, sig),
        "alg none": _raw({"alg": "none", "kid": own.kid}, body, sig),
        "jku header": _ours(own, _claims(), {"alg": "ES256", "kid": own.kid, "jku": "https://x"}),
        "bad signature": f"{head}.{body}.{_b64(b'x' * 64)}",
        "tampered payload": f"{head}.{_b64(_json(_claims(sub='admin')))}.{sig}",
        "expired": _ours(own, _claims(iat=NOW - 7200, exp=NOW - 3600)),
        "not yet valid": _ours(own, _claims(nbf=NOW + 3600)),
        "refresh typ": _ours(own, _claims(), {"alg": "ES256", "kid": own.kid, "typ": "rt+jwt"}),
        "wrong audience": _ours(own, _claims(aud="elsewhere")),
        "sub missing": _ours(own, _claims(sub=_ABSENT)),
        "lifetime too long": _ours(own, _claims(exp=NOW + 10**7)),
        "revoked": _ours(own, _claims(jti="j-revoked")),
        "two segments": f"{head}.{body}",
        "padded base64url": f"{head}.{body}.{sig}=",
        "too large": _ours(own, _claims(pad="x" * 9000)),
    }


def _reason(outcome: object) -> str:
    return outcome.reason if isinstance(outcome, AuthSidecarError) else "OK"


async def _reasons(service: TokenService, corpus: dict[str, str]) -> dict[str, str]:
    reasons = {}
    for name, token in corpus.items():
        try:
            await service.verify_refetching(token)
        except AuthSidecarError as error:
            reasons[name] = error.reason
        else:
            reasons[name] = "OK"
    return reasons


async def test_a_bad_token_gets_the_same_reason_with_and_without_external_issuers(
    data_dir: Path, local_ca: LocalCa, jwks_server: JwksServer
) -> None:
    idp = ExternalIssuer()
    idp.add_key("idp-1")
    jwks_server.document = idp.jwks()
    settings = load_settings(
        None,
        data_dir=data_dir,
        tokens={"audiences": ["svc-a"]},
        issuers=[_issuer_settings(jwks_server, local_ca)],
    )
    issuers, remotes = await external_issuers(settings)
    assert issuers is not None
    own = make_key("ES256", "own-1")

    def service(with_issuers: bool) -> TokenService:
        built = TokenService(
            ring=KeyRing([own]),
            store=MemoryTokenStore(),
            settings=settings.tokens.options(),
            clock=FixedClock(float(NOW)),
            issuers=issuers if with_issuers else None,
        )
        built.revocations.add(Revocation("jti", OURS, "j-revoked", NOW + 3600))
        return built

    try:
        corpus = _corpus(own, idp)
        without, with_ = service(False), service(True)
        reasons_without = await _reasons(without, corpus)
        reasons_with = await _reasons(with_, corpus)
        assert reasons_with == reasons_without
        # VerifyBatch is the same path: the same reasons, item by item.
        items = [(token, None, ()) for token in corpus.values()]
        for svc in (without, with_):
            batch = await svc.verify_batch_refetching(items)
            assert dict(zip(corpus, map(_reason, batch), strict=True)) == reasons_without
        # Not vacuous: each was refused, and for many different reasons.
        assert "OK" not in reasons_without.values()
        assert len(set(reasons_without.values())) >= 10
        assert reasons_without["iss missing, our key"] == "CLAIM_MISSING"
        assert reasons_without["unknown kid, junk payload"] == "KEY_UNKNOWN"
        assert reasons_without["foreign iss, their key"] == "KEY_UNKNOWN"
        assert reasons_without["payload with a 400-digit number"] == "CLAIM_INVALID"
        # ...while the configuration is live: their own tokens do differ.
        theirs = idp.token("idp-1", iat=NOW - 10, exp=NOW + 600)
        assert (await with_.verify_refetching(theirs)).claims.iss == idp.issuer
        with pytest.raises(AuthSidecarError) as caught:
            await without.verify_refetching(theirs)
        assert caught.value.reason == "KEY_UNKNOWN"
        # No token of the corpus made the sidecar fetch the issuer's keys again.
        assert jwks_server.hits() == 1
    finally:
        for remote in remotes:
            await remote.close()
