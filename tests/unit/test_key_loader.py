"""PEM / JWK / JWKS loading: what loads, what is refused, and that errors name, not leak."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization as ser
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from sidecar.errors import KeyMaterialError
from sidecar.keys import loader
from sidecar.keys.loader import MAX_KEY_FILE_BYTES, load_key_file, parse_jwk, parse_jwks
from sidecar.strict_json import parse_json
from tests.support.jose import b64url as _b64
from tests.support.keys import make_key, make_private_jwk, private_key, write_jwk_file
from tests.support.vectors import vectors_dir

VECTORS = vectors_dir()
COOKBOOK = VECTORS / "jose-cookbook"


_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


def _refused(jwk: dict[str, Any], match: str) -> None:
    with pytest.raises(KeyMaterialError, match=match):
        parse_jwk(jwk)


def _rsa() -> rsa.RSAPrivateKey:
    key = private_key("RS256", "loader")
    assert isinstance(key, rsa.RSAPrivateKey)
    return key


def _write_pem(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


# --- JWK members ------------------------------------------------------------------------


@pytest.mark.parametrize("alg", ["HS256", "HS512", "RS256", "RS512", "ES256", "ES384", "ES512"])
def test_private_jwk_loads_as_signing_key_and_public_jwk_verifies(alg: str) -> None:
    signer = parse_jwk(make_private_jwk(alg, "jwk-rt"))
    assert signer.can_sign and signer.alg == alg and signer.kid == "jwk-rt"
    signature = signer.sign(b"input")
    verifier = parse_jwk(signer.public_jwk() or make_private_jwk(alg, "jwk-rt"))
    assert verifier.verify(b"input", signature)
    assert verifier.can_sign == (alg.startswith("HS"))


def test_jwk_with_use_enc_is_refused() -> None:
    _refused({**make_private_jwk("ES256"), "use": "enc"}, "'use'")


@pytest.mark.parametrize(
    "ops", [["encrypt"], ["sign", "encrypt"], ["verify", "verify"], [], "sign"]
)
def test_jwk_key_ops_other_than_sign_verify_are_refused(ops: object) -> None:
    _refused({**make_private_jwk("ES256"), "key_ops": ops}, "key_ops")


def test_private_jwk_with_key_ops_verify_loads_verification_only() -> None:
    key = parse_jwk({**make_private_jwk("ES256"), "key_ops": ["verify"]})
    assert not key.can_sign


def test_public_jwk_with_key_ops_sign_only_is_refused() -> None:
    public = make_key("ES256").public_jwk() or {}
    _refused({**public, "key_ops": ["sign"]}, "verify")


@pytest.mark.parametrize("kty", ["okp", "ec", None, 1])
def test_unknown_kty_is_refused(kty: object) -> None:
    _refused({**make_private_jwk("ES256"), "kty": kty}, "key type")


@pytest.mark.parametrize(("alg", "kty"), [("ES256", "RSA"), ("RS256", "oct"), ("HS256", "EC")])
def test_kty_inconsistent_with_alg_is_refused(alg: str, kty: str) -> None:
    _refused({**make_private_jwk(alg), "kty": kty}, "cannot be used")


@pytest.mark.parametrize("alg", ["none", "PS257", "ES256K", "A256GCM", "Ed448", 256])
def test_unsupported_alg_is_refused(alg: object) -> None:
    _refused({**make_private_jwk("RS256"), "alg": alg}, "alg")


@pytest.mark.parametrize("member", ["kid", "alg"])
def test_jwk_without_kid_or_alg_is_refused(member: str) -> None:
    jwk = make_private_jwk("ES256")
    del jwk[member]
    _refused(jwk, f"'{member}'")


def test_missing_alg_can_be_supplied_but_not_contradicted() -> None:
    jwk = make_private_jwk("ES384")
    del jwk["alg"]
    assert parse_jwk(jwk, alg="ES384").alg == "ES384"
    with pytest.raises(KeyMaterialError, match="conflicts"):
        parse_jwk(make_private_jwk("ES384"), alg="ES256")
    with pytest.raises(KeyMaterialError, match="conflicts"):
        parse_jwk(make_private_jwk("ES384", "a"), kid="b")


def test_es521_alias_reads_as_es512() -> None:
    assert parse_jwk({**make_private_jwk("ES512"), "alg": "ES521"}).alg == "ES512"


@pytest.mark.parametrize(
    "spell",
    [
        lambda v: v + "=",  # padding
        lambda v: v.replace("_", "/").replace("-", "+") if ("_" in v or "-" in v) else v + " ",
        lambda v: " " + v,
        lambda v: v[:-1] + _ALPHABET[_ALPHABET.index(v[-1]) ^ 1],  # an unused bit set
    ],
    ids=["padding", "standard-alphabet", "space", "trailing-bits"],
)
def test_non_canonical_base64url_member_is_refused(spell: Any) -> None:
    jwk = make_private_jwk("ES256")
    x = jwk["x"]
    assert len(x) == 43  # 32 octets: the last character carries 2 unused bits
    spelled = spell(x)
    assert spelled != x
    _refused({**jwk, "x": spelled}, "'x'")


def test_rsa_modulus_with_leading_zero_octet_is_refused() -> None:
    jwk = make_private_jwk("RS256")
    n = base64.urlsafe_b64decode(jwk["n"] + "==")
    _refused({**jwk, "n": _b64(b"\x00" + n)}, "leading zero")


def test_ec_point_off_the_curve_is_refused() -> None:
    public = make_key("ES256").public_jwk() or {}
    y = int.from_bytes(base64.urlsafe_b64decode(public["y"] + "="), "big")
    _refused({**public, "y": _b64((y ^ 1).to_bytes(32, "big"))}, "not a valid P-256")


def test_ec_coordinate_of_wrong_length_is_refused() -> None:
    public = make_key("ES256").public_jwk() or {}
    _refused({**public, "crv": "P-384", "alg": "ES384"}, "48 octets")


def test_ec_private_d_not_matching_public_point_is_refused() -> None:
    other = make_private_jwk("ES256", "other")
    _refused({**make_private_jwk("ES256"), "d": other["d"]}, "does not match")


def test_rsa_private_jwk_with_inconsistent_crt_params_is_refused() -> None:
    jwk = make_private_jwk("RS256")
    other = make_private_jwk("RS256", "other")
    _refused({**jwk, "dp": other["dp"]}, "inconsistent")
    _refused({**jwk, "p": other["p"]}, "inconsistent")


def test_rsa_private_jwk_with_some_crt_params_missing_is_refused() -> None:
    jwk = make_private_jwk("RS256")
    del jwk["qi"]
    _refused(jwk, "all of p, q")


def test_rsa_private_jwk_with_only_d_recovers_the_primes() -> None:
    jwk = {
        k: v for k, v in make_private_jwk("RS256").items() if k not in ("p", "q", "dp", "dq", "qi")
    }
    key = parse_jwk(jwk)
    assert key.can_sign and key.verify(b"m", key.sign(b"m"))


def test_multi_prime_rsa_is_refused() -> None:
    _refused({**make_private_jwk("RS256"), "oth": []}, "oth")


def test_rsa_exponent_one_is_refused() -> None:
    public = make_key("RS256").public_jwk() or {}
    _refused({**public, "e": "AQ"}, "exponent")


def test_error_messages_never_include_key_values() -> None:
    jwk = make_private_jwk("HS256")
    with pytest.raises(KeyMaterialError) as info:
        parse_jwk({**jwk, "alg": "HS512"})  # 32-byte secret too short for HS512
    assert jwk["k"] not in str(info.value)
    assert "test-hs256" in str(info.value)


# --- JWKS -------------------------------------------------------------------------------


def test_jwks_loads_every_key() -> None:
    keys = parse_jwks({"keys": [make_private_jwk("ES256", "a"), make_private_jwk("RS256", "b")]})
    assert [k.kid for k in keys] == ["a", "b"]


def test_jwks_with_duplicate_kid_is_refused() -> None:
    doc = {"keys": [make_private_jwk("ES256", "same"), make_private_jwk("RS256", "same")]}
    with pytest.raises(KeyMaterialError, match="duplicate kid"):
        parse_jwks(doc)


@pytest.mark.parametrize("doc", [{}, {"keys": []}, {"keys": {}}, {"keys": [1]}])
def test_malformed_jwks_is_refused(doc: dict[str, Any]) -> None:
    with pytest.raises(KeyMaterialError):
        parse_jwks(doc)


# --- files ------------------------------------------------------------------------------

_PRIVATE_FORMATS = [ser.PrivateFormat.PKCS8, ser.PrivateFormat.TraditionalOpenSSL]


@pytest.mark.parametrize("fmt", _PRIVATE_FORMATS, ids=["pkcs8", "traditional"])
def test_rsa_private_pem_defaults_to_rs256_and_thumbprint_kid(tmp_path: Path, fmt: Any) -> None:
    pem = _rsa().private_bytes(ser.Encoding.PEM, fmt, ser.NoEncryption())
    [key] = load_key_file(_write_pem(tmp_path, "k.pem", pem))
    assert key.alg == "RS256" and key.can_sign and key.kid == key.thumbprint


@pytest.mark.parametrize("fmt", [ser.PublicFormat.SubjectPublicKeyInfo, ser.PublicFormat.PKCS1])
def test_rsa_public_pem_verifies_signature_of_private_key(tmp_path: Path, fmt: Any) -> None:
    pem = _rsa().public_key().public_bytes(ser.Encoding.PEM, fmt)
    [public] = load_key_file(_write_pem(tmp_path, "pub.pem", pem), kid="k1", alg="RS384")
    signer = load_key_file(
        _write_pem(
            tmp_path,
            "priv.pem",
            _rsa().private_bytes(ser.Encoding.PEM, ser.PrivateFormat.PKCS8, ser.NoEncryption()),
        ),
        kid="k1",
        alg="RS384",
    )[0]
    assert (public.kid, public.alg, public.can_sign) == ("k1", "RS384", False)
    assert public.verify(b"m", signer.sign(b"m"))


@pytest.mark.parametrize(("curve", "alg"), [(ec.SECP256R1(), "ES256"), (ec.SECP521R1(), "ES512")])
def test_ec_pem_alg_defaults_by_curve(tmp_path: Path, curve: ec.EllipticCurve, alg: str) -> None:
    private = ec.generate_private_key(curve)
    pem = private.private_bytes(
        ser.Encoding.PEM, ser.PrivateFormat.TraditionalOpenSSL, ser.NoEncryption()
    )
    pub = private.public_key().public_bytes(ser.Encoding.PEM, ser.PublicFormat.SubjectPublicKeyInfo)
    [signer] = load_key_file(_write_pem(tmp_path, "ec.pem", pem))
    [verifier] = load_key_file(_write_pem(tmp_path, "ec.pub", pub))
    assert signer.alg == verifier.alg == alg
    assert signer.kid == verifier.kid == verifier.thumbprint
    assert verifier.verify(b"m", signer.sign(b"m"))


def test_encrypted_pem_is_refused_naming_the_file(tmp_path: Path) -> None:
    pem = _rsa().private_bytes(
        ser.Encoding.PEM, ser.PrivateFormat.PKCS8, ser.BestAvailableEncryption(b"pw")
    )
    path = _write_pem(tmp_path, "enc.pem", pem)
    with pytest.raises(KeyMaterialError, match="encrypted") as info:
        load_key_file(path)
    assert str(path) in str(info.value)


def test_certificate_pem_is_refused(tmp_path: Path) -> None:
    body = base64.encodebytes(b"\x30\x82garbage-not-a-certificate" * 4).decode("ascii")
    pem = f"-----BEGIN CERTIFICATE-----\n{body}-----END CERTIFICATE-----\n".encode()
    with pytest.raises(KeyMaterialError, match="not a key"):
        load_key_file(_write_pem(tmp_path, "cert.pem", pem))


def test_garbage_pem_key_is_refused(tmp_path: Path) -> None:
    pem = b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"
    with pytest.raises(KeyMaterialError, match="could not be parsed"):
        load_key_file(_write_pem(tmp_path, "bad.pem", pem))


def test_pem_file_with_two_blocks_is_refused(tmp_path: Path) -> None:
    pem = _rsa().public_key().public_bytes(ser.Encoding.PEM, ser.PublicFormat.SubjectPublicKeyInfo)
    with pytest.raises(KeyMaterialError, match="exactly one"):
        load_key_file(_write_pem(tmp_path, "two.pem", pem + pem))


def test_jwk_file_loads_and_fills_kid(tmp_path: Path) -> None:
    [key] = load_key_file(write_jwk_file(tmp_path, "ES384", "file-kid"))
    assert (key.kid, key.alg, key.can_sign) == ("file-kid", "ES384", True)
    assert key.thumbprint == make_key("ES384", "file-kid").thumbprint


def test_jwks_file_loads_all_keys_and_refuses_kid_override(tmp_path: Path) -> None:
    path = tmp_path / "set.json"
    doc = {"keys": [make_private_jwk("ES256", "a"), make_private_jwk("ES256", "b")]}
    path.write_text(json.dumps(doc))
    assert [k.kid for k in load_key_file(path)] == ["a", "b"]
    with pytest.raises(KeyMaterialError, match="single-key"):
        load_key_file(path, kid="a")


@pytest.mark.parametrize(
    "text",
    ['{"kty": "oct", "kty": "oct"}', '{"x": NaN}', "[1]", "not json", '{"keys": '],
    ids=["duplicate-member", "nan", "array", "text", "truncated"],
)
def test_malformed_json_key_file_is_refused(tmp_path: Path, text: str) -> None:
    path = tmp_path / "k.json"
    path.write_text(text)
    with pytest.raises(KeyMaterialError, match=str(path)):
        load_key_file(path)


def test_oversized_key_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "big.json"
    path.write_bytes(b" " * (MAX_KEY_FILE_BYTES + 1))
    with pytest.raises(KeyMaterialError, match="larger than"):
        load_key_file(path)


def test_missing_key_file_error_names_the_path(tmp_path: Path) -> None:
    with pytest.raises(KeyMaterialError, match="nope.pem"):
        load_key_file(tmp_path / "nope.pem")


# --- RFC 7520 cookbook keys --------------------------------------------------------------

_COOKBOOK_KEYS = [
    ("3_1.ec_public_key.json", "ES512", False),
    ("3_2.ec_private_key.json", "ES512", True),
    ("3_3.rsa_public_key.json", "RS256", False),
    ("3_4.rsa_private_key.json", "RS256", True),
    ("3_5.symmetric_key_mac_computation.json", "HS256", True),
]


def test_cookbook_vectors_are_present() -> None:
    assert (COOKBOOK / "jwk").is_dir(), f"missing test vectors at {COOKBOOK}"


@pytest.mark.parametrize(("name", "alg", "can_sign"), _COOKBOOK_KEYS)
def test_rfc7520_cookbook_key_loads(name: str, alg: str, can_sign: bool) -> None:
    # RFC 7520's RSA/EC keys carry no `alg`: the configuration supplies it.
    [key] = load_key_file(COOKBOOK / "jwk" / name, alg=alg)
    assert (key.alg, key.can_sign) == (alg, can_sign)


def test_rfc7520_encryption_key_is_refused() -> None:
    with pytest.raises(KeyMaterialError, match="'use'"):
        load_key_file(COOKBOOK / "jwk" / "3_6.symmetric_key_encryption.json")


@pytest.mark.parametrize(
    ("example", "key_file", "alg"),
    [
        ("4_1.rsa_v15_signature.json", "3_3.rsa_public_key.json", "RS256"),
        ("4_3.ecdsa_signature.json", "3_1.ec_public_key.json", "ES512"),
        ("4_4.hmac-sha2_integrity_protection.json", "3_5.symmetric_key_mac_computation.json", None),
    ],
)
def test_rfc7520_signatures_verify_with_loaded_keys(
    example: str, key_file: str, alg: str | None
) -> None:
    compact = json.loads((COOKBOOK / "jws" / example).read_text())["output"]["compact"]
    header, payload, signature = compact.split(".")
    [key] = load_key_file(COOKBOOK / "jwk" / key_file, alg=alg)
    raw = base64.urlsafe_b64decode(signature + "=" * (-len(signature) % 4))
    assert key.verify(f"{header}.{payload}".encode(), raw)
    assert not key.verify(f"{header}.{payload}x".encode(), raw)


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ('{"kty": "oct", "kty": "RSA"}', "duplicate member names in JSON"),
        ('{"n": NaN}', "non-finite number NaN in JSON"),
        ('{"n": 1e400}', "non-finite number in JSON"),
        ("[" * 17 + "]" * 17, "nested deeper than 16 in JSON"),
        ('{"k": "\\ud800"}', "not valid JSON"),
        ("{not json", "not valid JSON"),
    ],
)
def test_key_files_are_read_by_the_one_strict_json_parser(document: str, message: str) -> None:
    # Issue 12: key files, JWKS and manifests follow the token parser's rules (sidecar/
    # strict_json.py), each refusal named; there is no second, laxer parser for them.
    with pytest.raises(KeyMaterialError, match=f"^{re.escape(message)}$"):
        loader.strict_json(document)
    with pytest.raises(ValueError):
        parse_json(document.encode())
