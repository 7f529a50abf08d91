"""An external issuer's JWK Set: per-key hygiene, whole-set refusals (keys/remote.py)."""

from __future__ import annotations

import json
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from sidecar.errors import KeyMaterialError
from sidecar.keys.algorithms import PUBLIC_NAMES as ASYMMETRIC_ALGS
from sidecar.keys.issuer_jwks import parse_remote_jwks
from tests.support.keys import rsa_key_of_size


def _ec_jwk(kid: str, **extra: Any) -> dict[str, Any]:
    key = ec.generate_private_key(ec.SECP256R1())
    jwk = jwt.algorithms.ECAlgorithm.to_jwk(key.public_key(), as_dict=True)
    return {**jwk, "kid": kid, "alg": "ES256", **extra}


def _parse(keys: list[Any], algorithms: frozenset[str] = ASYMMETRIC_ALGS) -> Any:
    return parse_remote_jwks(json.dumps({"keys": keys}).encode(), algorithms=algorithms)


def test_unusable_keys_are_skipped_and_the_rest_kept() -> None:
    private = ec.generate_private_key(ec.SECP256R1())
    private_jwk = jwt.algorithms.ECAlgorithm.to_jwk(private, as_dict=True)
    weak = rsa_key_of_size(1024).public_key()
    keys = [
        _ec_jwk("good"),
        _ec_jwk("enc", use="enc"),
        {"kty": "oct", "k": "c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0", "kid": "hmac", "alg": "HS256"},
        {**private_jwk, "kid": "private", "alg": "ES256"},
        {**jwt.algorithms.RSAAlgorithm.to_jwk(weak, as_dict=True), "kid": "weak", "alg": "RS256"},
        {"kty": "RSA", "kid": "oaep", "alg": "RSA-OAEP", "n": "AQAB", "e": "AQAB"},
        "not a key",
    ]
    loaded, skipped = _parse(keys)
    assert [key.kid for key in loaded] == ["good"]
    assert len(skipped) == 6
    assert all("good" not in reason for reason in skipped)


def test_algorithm_allow_list_and_missing_alg() -> None:
    with pytest.raises(KeyMaterialError, match="not allowed for this issuer"):
        _parse([_ec_jwk("a")], frozenset({"RS256"}))
    loaded, skipped = _parse([_ec_jwk("a"), _ec_jwk("b")], frozenset({"ES256"}))
    assert ([key.kid for key in loaded], skipped) == (["a", "b"], [])
    jwk = _ec_jwk("no-alg")
    del jwk["alg"]
    with pytest.raises(KeyMaterialError):
        _parse([jwk])  # ambiguous without an alg
    loaded, _ = _parse([jwk], frozenset({"ES256"}))
    assert loaded[0].alg == "ES256"


@pytest.mark.parametrize(
    "document",
    [
        b"",
        b"[]",
        b'{"keys": []}',
        b'{"keys": [], "keys": []}',
        b'{"keys": NaN}',
        b"\xff",
    ],
)
def test_documents_that_are_not_a_jwk_set_are_refused(document: bytes) -> None:
    with pytest.raises(KeyMaterialError):
        parse_remote_jwks(document, algorithms=ASYMMETRIC_ALGS)


def test_duplicate_kids_refuse_the_whole_set() -> None:
    with pytest.raises(KeyMaterialError, match="duplicate kid"):
        _parse([_ec_jwk("same"), _ec_jwk("same")])
