"""Hygiene rules enforced when a key is built, whatever file it came from."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from sidecar.errors import KeyMaterialError
from sidecar.jwa import HEADER_NAMES as SUPPORTED_ALGS
from sidecar.keys.loader import parse_jwk
from sidecar.keys.material import asymmetric_key, hmac_key
from sidecar.keys.rsa_key import has_roca_fingerprint
from tests.support.keys import make_key, rsa_key_of_size

# RFC 7638 section 3.1: the example key and its thumbprint.
RFC7638_N = (
    "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJE"
    "CPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2Q"
    "vzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6"
    "WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw"
)
RFC7638_THUMBPRINT = "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"


def test_thumbprint_matches_rfc7638_example() -> None:
    key = parse_jwk(
        {"kty": "RSA", "n": RFC7638_N, "e": "AQAB", "alg": "RS256", "kid": "2011-04-29"}
    )
    assert key.thumbprint == RFC7638_THUMBPRINT


@pytest.mark.parametrize("alg", sorted(SUPPORTED_ALGS))
def test_key_signs_and_verifies_its_own_signature(alg: str) -> None:
    key = make_key(alg)
    signature = key.sign(b"header.payload")
    assert key.verify(b"header.payload", signature)
    assert not key.verify(b"header.payloaD", signature)


@pytest.mark.parametrize("alg", ["RS256", "ES256", "HS256"])
def test_verify_returns_false_for_garbage_signature(alg: str) -> None:
    assert make_key(alg).verify(b"a.b", b"\x00" * 7) is False


def test_rsa_key_below_2048_bits_is_refused() -> None:
    with pytest.raises(KeyMaterialError, match="1024 bits"):
        asymmetric_key(rsa_key_of_size(1024), "RS256", "weak")


def test_ec_key_on_wrong_curve_for_alg_is_refused() -> None:
    with pytest.raises(KeyMaterialError, match="P-256"):
        asymmetric_key(ec.generate_private_key(ec.SECP384R1()), "ES256", "k")


def test_rsa_key_cannot_be_used_with_ec_or_hmac_alg() -> None:
    for alg in ("ES256", "HS256"):
        with pytest.raises(KeyMaterialError, match="cannot be used"):
            asymmetric_key(rsa_key_of_size(2048), alg, "k")


@pytest.mark.parametrize(("alg", "need"), [("HS256", 32), ("HS384", 48), ("HS512", 64)])
def test_hmac_secret_shorter_than_hash_is_refused(alg: str, need: int) -> None:
    with pytest.raises(KeyMaterialError, match=f"at least {need}"):
        hmac_key(b"s" * (need - 1), alg, "short")
    assert hmac_key(b"s" * need, alg, "ok").can_sign


def test_error_message_never_contains_the_secret() -> None:
    secret = b"TOPSECRET-" * 2
    with pytest.raises(KeyMaterialError) as info:
        hmac_key(secret, "HS256", "k")
    assert "TOPSECRET" not in str(info.value)


@pytest.mark.parametrize("kid", ["", "a\nb", "x" * 257])
def test_unprintable_empty_or_huge_kid_is_refused(kid: str) -> None:
    with pytest.raises(KeyMaterialError, match="key id"):
        make_key("HS256", kid)


def test_public_key_is_verification_only() -> None:
    private = make_key("ES256")
    public = parse_jwk(private.public_jwk() or {})
    assert not public.can_sign
    assert public.verify(b"x", private.sign(b"x"))
    with pytest.raises(KeyMaterialError, match="verification-only"):
        public.sign(b"x")


def test_hmac_key_publishes_no_jwk() -> None:
    assert make_key("HS256").public_jwk() is None
    assert make_key("HS256").symmetric


def test_random_rsa_modulus_has_no_roca_fingerprint() -> None:
    assert not has_roca_fingerprint(rsa_key_of_size(2048).public_key().public_numbers().n)
