"""`Ed25519`, RFC 9864's fully-specified name for EdDSA over Ed25519 (issue 14).

RFC 9864 registers "Ed25519" and deprecates the polymorphic "EdDSA" (RFC 8037), whose curve
only the key decides. With an Ed25519 key (Ed448 is refused) both name one computation, so:
  * either name is accepted wherever an algorithm is configured or named in a JWK, and maps
    to the same key type (OKP, crv Ed25519, same RFC 7638 thumbprint);
  * a key signs with the name it was given: "EdDSA" stays the default (PyJWT 2.15, among
    deployed verifiers, knows only "EdDSA"), "Ed25519" is there for who asks for it;
  * a verifier bound to an Ed25519 key answers to both names (`header_algs`); any other key
    still answers to its one algorithm only.
"""

from __future__ import annotations

import json

import pytest

from sidecar.config import load_settings
from sidecar.errors import KeyMaterialError
from sidecar.keys.generate import generate_key
from sidecar.keys.issuer_jwks import parse_remote_jwks
from sidecar.keys.loader import parse_jwk
from sidecar.keys.ring import KeyRing
from sidecar.tokens.jws import decode_jws, peek
from sidecar.tokens.signing import encode_jws
from tests.support.keys import make_key, make_private_jwk


def test_ed25519_is_accepted_wherever_an_algorithm_is_configured() -> None:
    settings = load_settings(
        None,
        keys={"dev_alg": "Ed25519", "files": [{"path": "/k.pem", "alg": "Ed25519"}]},
        issuers=[
            {
                "issuer": "https://idp.example.test",
                "audiences": ["api"],
                "jwks_file": "/jwks.json",
                "algorithms": ["Ed25519", "EdDSA"],
            }
        ],
    )
    assert settings.keys.dev_alg == "Ed25519"
    assert settings.keys.files[0].alg == "Ed25519"
    assert settings.issuers[0].algorithms == ("Ed25519", "EdDSA")


def test_a_key_named_ed25519_signs_with_that_name_and_its_jwk_loads_back() -> None:
    key, private = generate_key("Ed25519")
    assert (key.kty, key.alg, private["crv"], private["alg"]) == (
        "OKP",
        "Ed25519",
        "Ed25519",
        "Ed25519",
    )
    token = encode_jws({"sub": "a"}, key, typ="at+jwt")
    header, _ = peek(token)
    assert header["alg"] == "Ed25519"
    public = parse_jwk(key.public_jwk() or {})
    assert public.alg == "Ed25519" and not public.can_sign
    assert decode_jws(token, KeyRing([public])).claims == {"sub": "a"}


def test_both_names_load_the_same_key_and_eddsa_stays_the_default() -> None:
    jwk = make_private_jwk("EdDSA", "okp")
    eddsa = parse_jwk(jwk)
    ed25519 = parse_jwk({**jwk, "alg": "Ed25519"})
    assert (eddsa.alg, ed25519.alg) == ("EdDSA", "Ed25519")
    assert eddsa.thumbprint == ed25519.thumbprint
    assert eddsa.header_algs == ed25519.header_algs == {"EdDSA", "Ed25519"}
    header, _ = peek(encode_jws({"sub": "a"}, make_key("EdDSA", "d"), typ="at+jwt"))
    assert header["alg"] == "EdDSA"


@pytest.mark.parametrize("alg", ["ES256", "RS256", "PS256", "HS256"])
def test_other_keys_answer_to_their_one_algorithm_only(alg: str) -> None:
    assert make_key(alg, "k").header_algs == {alg}


def test_an_issuer_allowing_ed25519_uses_its_keys_published_as_eddsa() -> None:
    jwk = {k: v for k, v in make_private_jwk("EdDSA", "idp").items() if k != "d"}
    keys, skipped = parse_remote_jwks(
        json.dumps({"keys": [jwk]}).encode(), algorithms=frozenset({"Ed25519"})
    )
    assert [key.kid for key in keys] == ["idp"] and skipped == []
    with pytest.raises(KeyMaterialError, match="'EdDSA' is not allowed"):
        parse_remote_jwks(json.dumps({"keys": [jwk]}).encode(), algorithms=frozenset({"ES256"}))


@pytest.mark.parametrize(("signed_as", "known_as"), [("EdDSA", "Ed25519"), ("Ed25519", "EdDSA")])
def test_a_token_naming_either_name_verifies_with_an_ed25519_key(
    signed_as: str, known_as: str
) -> None:
    jwk = make_private_jwk("EdDSA", "okp")
    signer = parse_jwk({**jwk, "alg": signed_as})
    verifier = parse_jwk({**{k: v for k, v in jwk.items() if k != "d"}, "alg": known_as})
    token = encode_jws({"sub": "a"}, signer, typ="at+jwt")
    assert decode_jws(token, KeyRing([verifier])).claims == {"sub": "a"}
