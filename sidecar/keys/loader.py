"""PEM, JWK and JWKS files -> `KeyMaterial`, refusing anything ambiguous or weak.

JWK members are parsed here, strictly, into `cryptography` key objects; `material` then
applies the hygiene rules. Strict means (RFC 7517 / RFC 7518 section 6):

* `kid` and `alg` present (a PEM file gets them from the caller or from its key), `alg`
  one of HS/RS/PS/ES 256/384/512, EdDSA or Ed25519 and of the family of `kty` (RSA: RS*/PS*;
  OKP with `crv` Ed25519: EdDSA, RFC 8037, or its fully-specified name Ed25519, RFC 9864);
  RFC 7520's `ES521` reads as ES512;
* `use`, if present, is "sig"; `key_ops`, if present, only "sign"/"verify", no duplicates;
* key members are canonical unpadded base64url (one spelling per key), integers without
  leading zero octets (RFC 7518 section 6.3.1.1), EC coordinates at full length (6.2.1.2);
* EC points on their curve; RSA private members all present and consistent with `n`;
  an OKP private `d` whose public key is `x`.

Error messages name the file, the kid and the member, never a key value.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.serialization import load_pem_private_key, load_pem_public_key

from sidecar.errors import KeyMaterialError
from sidecar.keys.algorithms import PSS_ALGS
from sidecar.keys.material import (
    DEFAULT_EC_ALG,
    EC_ALGS,
    HMAC_ALGS,
    OKP_ALGS,
    RSA_ALGS,
    SUPPORTED_ALGS,
    KeyMaterial,
    asymmetric_key,
    hmac_key,
)

__all__ = [
    "MAX_KEY_FILE_BYTES",
    "load_key_data",
    "load_key_file",
    "parse_jwk",
    "parse_jwks",
    "read_key_file",
    "strict_json",
]

MAX_KEY_FILE_BYTES = 1 << 20
_ALG_ALIASES = {"ES521": "ES512"}  # RFC 7520 section 3.2's P-521 key
_KTY_ALGS = {"oct": HMAC_ALGS, "RSA": RSA_ALGS | PSS_ALGS, "EC": EC_ALGS, "OKP": OKP_ALGS}
_ED25519_BYTES = 32  # RFC 8032 section 5.1.5: public and private keys are 32 octets
_CURVES: dict[str, ec.EllipticCurve] = {
    "P-256": ec.SECP256R1(),
    "P-384": ec.SECP384R1(),
    "P-521": ec.SECP521R1(),
}
_RSA_PRIVATE = ("p", "q", "dp", "dq", "qi")
_B64URL = re.compile(r"[A-Za-z0-9_-]*")
_PEM_LABEL = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----")


def _ident(obj: Mapping[str, Any]) -> str:
    kid = obj.get("kid")
    return f"key {kid!r}" if isinstance(kid, str) else "key without kid"


def _b64(obj: Mapping[str, Any], name: str, who: str) -> bytes:
    value = obj.get(name)
    if not isinstance(value, str):
        raise KeyMaterialError(f"{who}: member {name!r} missing or not a string")
    if not _B64URL.fullmatch(value) or len(value) % 4 == 1:
        raise KeyMaterialError(f"{who}: member {name!r} is not unpadded base64url")
    try:
        raw = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
    except (binascii.Error, ValueError) as exc:
        raise KeyMaterialError(f"{who}: member {name!r} is not base64url") from exc
    if base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii") != value:
        raise KeyMaterialError(f"{who}: member {name!r} is non-canonical base64url")
    return raw


def _uint(obj: Mapping[str, Any], name: str, who: str, size: int | None = None) -> int:
    raw = _b64(obj, name, who)
    if not raw:
        raise KeyMaterialError(f"{who}: member {name!r} is empty")
    if size is not None and len(raw) != size:
        raise KeyMaterialError(f"{who}: member {name!r} must be {size} octets long")
    if size is None and raw[0] == 0:
        raise KeyMaterialError(f"{who}: member {name!r} has leading zero octets")
    return int.from_bytes(raw, "big")


def _check_usage(obj: Mapping[str, Any], who: str) -> None:
    use = obj.get("use")
    if use is not None and use != "sig":
        raise KeyMaterialError(f"{who}: 'use' must be \"sig\" for a signing key")
    ops = obj.get("key_ops")
    if ops is None:
        return
    if not isinstance(ops, list) or not all(isinstance(op, str) for op in ops):
        raise KeyMaterialError(f"{who}: 'key_ops' must be a list of strings")
    if len(set(ops)) != len(ops) or not ops or not set(ops) <= {"sign", "verify"}:
        raise KeyMaterialError(f'{who}: \'key_ops\' must hold only "sign" and/or "verify"')


def _resolve_alg(obj: Mapping[str, Any], who: str, default: str | None) -> str:
    alg = obj.get("alg", default)
    if not isinstance(alg, str):
        raise KeyMaterialError(f"{who}: member 'alg' missing or not a string")
    alg = _ALG_ALIASES.get(alg, alg)
    if default is not None and alg != _ALG_ALIASES.get(default, default):
        raise KeyMaterialError(f"{who}: 'alg' {alg!r} conflicts with the configured {default!r}")
    if alg not in SUPPORTED_ALGS:
        raise KeyMaterialError(f"{who}: algorithm {alg!r} is not supported")
    return alg


def parse_jwk(
    obj: Mapping[str, Any], *, kid: str | None = None, alg: str | None = None
) -> KeyMaterial:
    """One JWK. A private JWK (`d`, or `k` for `oct`) gives a signing key, a public one
    a verification-only key. `kid`/`alg` fill in members the JWK lacks (RFC 7520's keys
    carry no `alg`) and must agree with members it has.
    """
    if not isinstance(obj, Mapping):
        raise KeyMaterialError("a JWK must be a JSON object")
    if kid is not None:
        if obj.get("kid", kid) != kid:
            raise KeyMaterialError(f"{_ident(obj)}: 'kid' conflicts with the configured {kid!r}")
        obj = {**obj, "kid": kid}
    who = _ident(obj)
    if not isinstance(obj.get("kid"), str):
        raise KeyMaterialError(f"{who}: member 'kid' missing or not a string")
    kty = obj.get("kty")
    if kty not in _KTY_ALGS:
        raise KeyMaterialError(f"{who}: key type {kty!r} is not supported")
    _check_usage(obj, who)
    alg = _resolve_alg(obj, who, alg)
    if alg not in _KTY_ALGS[kty]:
        raise KeyMaterialError(f"{who}: key type {kty!r} cannot be used with {alg!r}")
    kid = obj["kid"]
    if kty == "oct":
        return hmac_key(_b64(obj, "k", who), alg, kid)
    # A private key whose key_ops leave out "sign" is loaded for verification only.
    ops = obj.get("key_ops")
    private = "d" in obj and (ops is None or "sign" in ops)
    if "d" not in obj and ops is not None and "verify" not in ops:
        raise KeyMaterialError(f"{who}: a public key must allow 'verify'")
    key: object
    if kty == "RSA":
        key = _rsa(obj, who, private)
    elif kty == "EC":
        key = _ec(obj, who, private)
    else:
        key = _okp(obj, who, private)
    return asymmetric_key(key, alg, kid)


def _rsa(obj: Mapping[str, Any], who: str, private: bool) -> rsa.RSAPrivateKey | rsa.RSAPublicKey:
    if "oth" in obj:
        raise KeyMaterialError(f"{who}: multi-prime RSA keys ('oth') are not supported")
    n, e = _uint(obj, "n", who), _uint(obj, "e", who)
    if e < 3 or e % 2 == 0 or e >= n:
        raise KeyMaterialError(f"{who}: RSA public exponent 'e' is not valid")
    public = rsa.RSAPublicNumbers(e, n)
    try:
        if not private:
            return public.public_key()
        d = _uint(obj, "d", who)
        present = [m for m in _RSA_PRIVATE if m in obj]
        if not present:  # RFC 7518 section 6.3.2: the CRT members are optional as a set
            p, q = rsa.rsa_recover_prime_factors(n, e, d)
            dp, dq, qi = rsa.rsa_crt_dmp1(d, p), rsa.rsa_crt_dmq1(d, q), rsa.rsa_crt_iqmp(p, q)
        elif len(present) != len(_RSA_PRIVATE):
            raise KeyMaterialError(f"{who}: RSA private key needs all of p, q, dp, dq, qi")
        else:
            p, q, dp, dq, qi = (_uint(obj, m, who) for m in _RSA_PRIVATE)
        if p * q != n or dp != d % (p - 1) or dq != d % (q - 1) or (qi * q) % p != 1:
            raise KeyMaterialError(f"{who}: RSA private members are inconsistent")
        return rsa.RSAPrivateNumbers(p, q, d, dp, dq, qi, public).private_key()
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise KeyMaterialError(f"{who}: RSA key is not valid") from exc


def _ec(
    obj: Mapping[str, Any], who: str, private: bool
) -> ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey:
    crv = obj.get("crv")
    if not isinstance(crv, str) or crv not in _CURVES:
        raise KeyMaterialError(f"{who}: curve {crv!r} is not supported")
    curve = _CURVES[crv]
    size = (curve.key_size + 7) // 8
    x, y = _uint(obj, "x", who, size), _uint(obj, "y", who, size)
    try:
        # cryptography refuses a point that is not on the curve (invalid-curve attacks).
        public = ec.EllipticCurvePublicNumbers(x, y, curve).public_key()
        if not private:
            return public
        key = ec.derive_private_key(_uint(obj, "d", who, size), curve)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise KeyMaterialError(f"{who}: EC key is not a valid {crv} key") from exc
    if key.public_key().public_numbers() != public.public_numbers():
        raise KeyMaterialError(f"{who}: EC private key 'd' does not match 'x'/'y'")
    return key


def _okp(
    obj: Mapping[str, Any], who: str, private: bool
) -> ed25519.Ed25519PrivateKey | ed25519.Ed25519PublicKey:
    crv = obj.get("crv")
    if crv != "Ed25519":  # RFC 8037 also names Ed448, X25519, X448: not signature keys we use
        raise KeyMaterialError(f"{who}: OKP curve {crv!r} is not supported (only Ed25519)")
    x = _b64(obj, "x", who)
    if len(x) != _ED25519_BYTES:
        raise KeyMaterialError(f"{who}: member 'x' must be {_ED25519_BYTES} octets long")
    try:
        public = ed25519.Ed25519PublicKey.from_public_bytes(x)
        if not private:
            return public
        d = _b64(obj, "d", who)
        if len(d) != _ED25519_BYTES:
            raise KeyMaterialError(f"{who}: member 'd' must be {_ED25519_BYTES} octets long")
        key = ed25519.Ed25519PrivateKey.from_private_bytes(d)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise KeyMaterialError(f"{who}: OKP key is not a valid Ed25519 key") from exc
    if key.public_key() != public:
        raise KeyMaterialError(f"{who}: OKP private key 'd' does not match 'x'")
    return key


def parse_jwks(obj: Mapping[str, Any]) -> list[KeyMaterial]:
    """A JWK Set (RFC 7517 section 5); duplicate kids are refused, not "first wins"."""
    keys = obj.get("keys") if isinstance(obj, Mapping) else None
    if not isinstance(keys, list) or not keys:
        raise KeyMaterialError("a JWK Set needs a non-empty 'keys' list")
    loaded = [parse_jwk(jwk) for jwk in keys]
    seen: set[str] = set()
    for key in loaded:
        if key.kid in seen:
            raise KeyMaterialError(f"key {key.kid!r}: duplicate kid in JWK Set")
        seen.add(key.kid)
    return loaded


def strict_json(text: str) -> Any:
    def no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        result = dict(pairs)
        if len(result) != len(pairs):
            raise KeyMaterialError("duplicate member names in JSON")
        return result

    def no_constants(name: str) -> Any:
        raise KeyMaterialError(f"non-finite number {name} in JSON")

    try:
        return json.loads(text, object_pairs_hook=no_duplicates, parse_constant=no_constants)
    except (ValueError, RecursionError) as exc:
        raise KeyMaterialError("not valid JSON") from exc


def _load_pem(data: bytes, kid: str | None, alg: str | None) -> KeyMaterial:
    labels = _PEM_LABEL.findall(data)
    if len(labels) != 1:
        raise KeyMaterialError("a PEM key file must hold exactly one PEM block")
    label = labels[0].decode("ascii")
    if "ENCRYPTED" in label or b"Proc-Type: 4,ENCRYPTED" in data:
        raise KeyMaterialError("encrypted PEM keys are not supported; store the key unencrypted")
    if label not in (
        "PRIVATE KEY",
        "RSA PRIVATE KEY",
        "EC PRIVATE KEY",
        "PUBLIC KEY",
        "RSA PUBLIC KEY",
    ):
        raise KeyMaterialError(f"PEM block {label!r} is not a key (certificates are not read)")
    try:
        if "PRIVATE" in label:
            key: object = load_pem_private_key(data, password=None)
        else:
            key = load_pem_public_key(data)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise KeyMaterialError("PEM key could not be parsed") from exc
    if alg is None:
        if isinstance(key, rsa.RSAPrivateKey | rsa.RSAPublicKey):
            alg = "RS256"
        elif isinstance(key, ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey):
            alg = DEFAULT_EC_ALG.get(key.curve.name)
        elif isinstance(key, ed25519.Ed25519PrivateKey | ed25519.Ed25519PublicKey):
            alg = "EdDSA"
        if alg is None:
            raise KeyMaterialError("only RSA, P-256/P-384/P-521 EC and Ed25519 keys are supported")
    alg = _ALG_ALIASES.get(alg, alg)
    # Without a kid the key is built twice: the first build computes the thumbprint.
    material = asymmetric_key(key, alg, kid if kid is not None else "PEM key")
    return material if kid is not None else asymmetric_key(key, alg, material.thumbprint)


def load_key_file(
    path: Path, *, kid: str | None = None, alg: str | None = None
) -> list[KeyMaterial]:
    """Load a PEM key, a JWK or a JWK Set from `path`, recognised by content.

    `kid`/`alg` apply to single-key files: for PEM they name the key (default: its RFC 7638
    thumbprint and RS256, the curve's algorithm, or EdDSA for Ed25519; pass `alg` for
    PS256/384/512); for a JWK they fill missing members.
    """
    return load_key_data(read_key_file(path), name=str(path), kid=kid, alg=alg)


def read_key_file(path: Path) -> bytes:
    """The bytes of a key file, refusing files larger than `MAX_KEY_FILE_BYTES`."""
    try:
        with path.open("rb") as handle:
            data = handle.read(MAX_KEY_FILE_BYTES + 1)
    except OSError as exc:
        raise KeyMaterialError(f"{path}: cannot read key file ({exc.strerror})") from exc
    if len(data) > MAX_KEY_FILE_BYTES:
        raise KeyMaterialError(f"{path}: larger than {MAX_KEY_FILE_BYTES} bytes")
    return data


def load_key_data(
    data: bytes, *, name: str, kid: str | None = None, alg: str | None = None
) -> list[KeyMaterial]:
    """`load_key_file` for bytes already read (`name` labels errors): a reload parses exactly
    the bytes it fingerprinted, never a file that changed in between."""
    try:
        if len(data) > MAX_KEY_FILE_BYTES:
            raise KeyMaterialError(f"larger than {MAX_KEY_FILE_BYTES} bytes")
        if data.lstrip().startswith(b"-----BEGIN"):
            return [_load_pem(data, kid, alg)]
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise KeyMaterialError("neither PEM nor UTF-8 JSON") from exc
        doc = strict_json(text)
        if not isinstance(doc, dict):
            raise KeyMaterialError("neither PEM nor a JSON object")
        if "keys" not in doc:
            return [parse_jwk(doc, kid=kid, alg=alg)]
        if kid is None and alg is None:
            return parse_jwks(doc)
        keys = doc["keys"]
        if not isinstance(keys, list) or len(keys) != 1:
            raise KeyMaterialError("kid/alg can only be given for a single-key file")
        return [parse_jwk(keys[0], kid=kid, alg=alg)]
    except KeyMaterialError as exc:
        raise KeyMaterialError(f"{name}: {exc}") from exc
