"""PS256/384/512 and EdDSA (Ed25519): vectors, hygiene, loading, generation, JWS round trips."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed448, ed25519, padding
from cryptography.hazmat.primitives.hashes import SHA256

from sidecar.errors import BadSignatureError, KeyMaterialError, UnsupportedAlgorithmError
from sidecar.keys.generate import RSA_BITS, generate_key
from sidecar.keys.loader import load_key_file, parse_jwk
from sidecar.keys.material import asymmetric_key
from sidecar.keys.ring import KeyRing
from sidecar.tokens.jws import decode_jws
from sidecar.tokens.signing import encode_jws
from tests.support.keys import make_key, make_private_jwk, rsa_key_of_size
from tests.support.vectors import load_json

PS_ALGS = ("PS256", "PS384", "PS512")


def _b64(data: str) -> bytes:
    return base64.urlsafe_b64decode(data + "=" * (-len(data) % 4))


def test_rfc8037_ed25519_example_verifies_and_is_reproduced_exactly() -> None:
    doc = load_json("jose-cookbook/curve25519/jws.json")
    key = parse_jwk(doc["input"]["key"], kid="rfc8037", alg="EdDSA")
    signing_input = doc["signing"]["sig-input"].encode("ascii")
    signature = _b64(doc["signing"]["sig"])
    assert key.verify(signing_input, signature)
    # Ed25519 is deterministic (RFC 8032 section 5.1.6): our signer gives the RFC's bytes.
    assert key.sign(signing_input) == signature
    assert not key.verify(signing_input + b"x", signature)
    assert key.public_jwk() == {
        "kty": "OKP",
        "crv": "Ed25519",
        "x": doc["input"]["key"]["x"],
        "kid": "rfc8037",
        "alg": "EdDSA",
        "use": "sig",
    }


def test_rfc8037_thumbprint_matches_appendix_a3() -> None:
    doc = load_json("jose-cookbook/curve25519/jws.json")
    key = parse_jwk(doc["input"]["key"], kid="k", alg="EdDSA")
    assert key.thumbprint == "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k"


@pytest.mark.parametrize("alg", [*PS_ALGS, "EdDSA"])
def test_token_round_trips_and_public_jwk_verifies_it(alg: str) -> None:
    signer = make_key(alg, "rt")
    token = encode_jws({"sub": "a"}, signer, typ="at+jwt")
    verifier = parse_jwk(signer.public_jwk() or {})
    assert not verifier.can_sign
    assert decode_jws(token, KeyRing([verifier])).claims == {"sub": "a"}


@pytest.mark.parametrize("alg", [*PS_ALGS, "EdDSA"])
def test_pyjwt_verifies_our_tokens_and_we_verify_pyjwts(alg: str) -> None:
    ours = make_key(alg, "interop")
    public = jwt.PyJWK(ours.public_jwk() or {})
    token = encode_jws({"sub": "a"}, ours, typ="at+jwt")
    assert jwt.decode(token, public, algorithms=[alg]) == {"sub": "a"}
    theirs = jwt.encode(
        {"sub": "b"}, jwt.PyJWK(make_private_jwk(alg, "interop")), algorithm=alg,
        headers={"kid": "interop"},
    )  # fmt: skip
    assert decode_jws(theirs, KeyRing([ours])).claims == {"sub": "b"}


def test_pss_signature_with_other_salt_length_is_refused() -> None:
    key = make_key("PS256", "salt")
    private = rsa_key_of_size(2048, "salt")
    message = b"a.b"
    zero_salt = private.sign(message, padding.PSS(padding.MGF1(SHA256()), 0), SHA256())
    assert not key.verify(message, zero_salt)
    assert key.verify(message, key.sign(message))


def test_pss_signature_with_leading_zero_octet_is_refused() -> None:
    key = make_key("PS256", "len")
    signature = key.sign(b"a.b")
    assert not key.verify(b"a.b", b"\x00" + signature)
    assert not key.verify(b"a.b", signature[:-1])


def test_token_signed_with_rs256_is_refused_by_ps256_key_of_same_modulus() -> None:
    rs, ps = make_key("RS256", "same"), make_key("PS256", "same")
    assert rs.thumbprint == ps.thumbprint
    token = encode_jws({"sub": "a"}, rs, typ="at+jwt")
    with pytest.raises(UnsupportedAlgorithmError):
        decode_jws(token, KeyRing([parse_jwk({**(ps.public_jwk() or {}), "kid": rs.kid})]))


def test_eddsa_signature_from_another_key_is_refused() -> None:
    a, b = make_key("EdDSA", "a"), make_key("EdDSA", "b")
    token = encode_jws({"sub": "a"}, b, typ="at+jwt")
    a_named_b = parse_jwk({**(a.public_jwk() or {}), "kid": "b"})
    with pytest.raises(BadSignatureError):
        decode_jws(token, KeyRing([a_named_b]))


@pytest.mark.parametrize("alg", PS_ALGS)
def test_pss_rsa_key_below_2048_bits_is_refused(alg: str) -> None:
    with pytest.raises(KeyMaterialError, match="1024 bits"):
        asymmetric_key(rsa_key_of_size(1024), alg, "weak")


@pytest.mark.parametrize("alg", ["RS256", "ES256", "HS256", "PS256"])
def test_ed25519_key_only_serves_eddsa(alg: str) -> None:
    with pytest.raises(KeyMaterialError, match="cannot be used"):
        asymmetric_key(ed25519.Ed25519PrivateKey.generate(), alg, "k")


def test_eddsa_needs_an_ed25519_key() -> None:
    with pytest.raises(KeyMaterialError, match="cannot be used"):
        asymmetric_key(rsa_key_of_size(2048), "EdDSA", "k")
    with pytest.raises(KeyMaterialError, match="Ed448"):
        asymmetric_key(ed448.Ed448PrivateKey.generate(), "EdDSA", "k")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"crv": "Ed448"}, "only Ed25519"),
        ({"crv": "X25519"}, "only Ed25519"),
        ({"x": "AAAA"}, "32 octets"),
        ({"d": "AAAA"}, "32 octets"),
        ({"x": make_private_jwk("EdDSA", "other")["x"]}, "does not match"),
        ({"alg": "ES256"}, "cannot be used"),
        ({"x": make_private_jwk("EdDSA", "okp")["x"] + "="}, "base64url"),
    ],
)
def test_bad_okp_jwk_is_refused(change: dict[str, str], message: str) -> None:
    with pytest.raises(KeyMaterialError, match=message):
        parse_jwk({**make_private_jwk("EdDSA", "okp"), **change})


def test_public_okp_jwk_loads_verification_only() -> None:
    jwk = make_private_jwk("EdDSA", "okp")
    del jwk["d"]
    key = parse_jwk(jwk)
    assert (key.kty, key.alg, key.can_sign) == ("OKP", "EdDSA", False)


def test_ed25519_pem_loads_as_eddsa_and_rsa_pem_as_ps256_when_asked(tmp_path: Path) -> None:
    ed = ed25519.Ed25519PrivateKey.generate()
    pem = ed.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    (tmp_path / "ed.pem").write_bytes(pem)
    [key] = load_key_file(tmp_path / "ed.pem")
    assert (key.alg, key.kid, key.can_sign) == ("EdDSA", key.thumbprint, True)
    rsa_pem = rsa_key_of_size(2048, "pem").private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    (tmp_path / "rsa.pem").write_bytes(rsa_pem)
    [ps] = load_key_file(tmp_path / "rsa.pem", alg="PS384", kid="ps")
    assert (ps.alg, ps.kid) == ("PS384", "ps")


@pytest.mark.parametrize("alg", ["PS256", "EdDSA"])
def test_generated_key_writes_a_jwk_that_loads_back(alg: str) -> None:
    key, jwk = generate_key(alg)
    loaded = parse_jwk(json.loads(json.dumps(jwk)))
    assert (loaded.kid, loaded.alg, loaded.thumbprint) == (key.kid, alg, key.thumbprint)
    assert loaded.verify(b"m", key.sign(b"m"))


def test_generated_pss_keys_grow_with_the_hash() -> None:
    assert [RSA_BITS[alg] for alg in PS_ALGS] == [2048, 3072, 4096]
