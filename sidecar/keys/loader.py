"""PEM, JWK and JWKS files -> `KeyMaterial`, refusing anything ambiguous or weak.

This module reads the file framing (PEM block, JWK, JWK Set, strict JSON) and the members
every JWK has; the registry (keys/algorithms.py) names the algorithms, and each key type
(keys/*_key.py) parses its own members into a `cryptography` key object and applies the
hygiene rules. Strict means (RFC 7517 / RFC 7518 section 6):

* `kid` and `alg` present (a PEM file gets them from the caller or from its key), `alg`
  in the table (sidecar/jwa.py) and served by the key's `kty` (RSA: RS*/PS*; OKP with
  `crv` Ed25519: EdDSA, RFC 8037, or its fully-specified name Ed25519, RFC 9864);
  RFC 7520's `ES521` reads as ES512;
* `use`, if present, is "sig"; `key_ops`, if present, only "sign"/"verify", no duplicates;
* key members are canonical unpadded base64url (one spelling per key), integers without
  leading zero octets (RFC 7518 section 6.3.1.1), EC coordinates at full length (6.2.1.2);
* EC points on their curve; RSA private members all present and consistent with `n`;
  an OKP private `d` whose public key is `x`.

Error messages name the file, the kid and the member, never a key value.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.serialization import load_pem_private_key, load_pem_public_key

from sidecar.errors import KeyMaterialError
from sidecar.jwa import JWK_ALIASES
from sidecar.keys import algorithms
from sidecar.keys.material import KeyMaterial, build_key
from sidecar.strict_json import JsonRefused, parse_json

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
_PEM_LABEL = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----")


def _ident(obj: Mapping[str, Any]) -> str:
    kid = obj.get("kid")
    return f"key {kid!r}" if isinstance(kid, str) else "key without kid"


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
    alg = JWK_ALIASES.get(alg, alg)
    if default is not None and alg != JWK_ALIASES.get(default, default):
        raise KeyMaterialError(f"{who}: 'alg' {alg!r} conflicts with the configured {default!r}")
    return algorithms.lookup(alg, who).name


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
    kind = algorithms.key_type(kty)
    if kind is None:
        raise KeyMaterialError(f"{who}: key type {kty!r} is not supported")
    _check_usage(obj, who)
    alg = _resolve_alg(obj, who, alg)
    if alg not in algorithms.names_for(kind.kty):
        raise KeyMaterialError(f"{who}: key type {kty!r} cannot be used with {alg!r}")
    # A private key whose key_ops leave out "sign" is loaded for verification only. A
    # secret (`k`) is always "private": it both signs and verifies.
    ops = obj.get("key_ops")
    private = "d" in obj and (ops is None or "sign" in ops)
    if kind.kty != "oct" and "d" not in obj and ops is not None and "verify" not in ops:
        raise KeyMaterialError(f"{who}: a public key must allow 'verify'")
    return build_key(kind.from_jwk(obj, who, private), alg, obj["kid"])


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
    """A key file, JWKS or manifest by the one strict parser (sidecar/strict_json.py): no
    duplicate members, no NaN/Infinity, bounded nesting, no lone surrogates."""
    try:
        return parse_json(text.encode("utf-8"))
    except JsonRefused as exc:
        raise KeyMaterialError(f"{exc} in JSON" if str(exc) else "not valid JSON") from exc
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, UnicodeError
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
        alg = algorithms.pem_alg(key)
        if alg is None:
            raise KeyMaterialError("only RSA, P-256/P-384/P-521 EC and Ed25519 keys are supported")
    alg = JWK_ALIASES.get(alg, alg)
    # Without a kid the key is built twice: the first build computes the thumbprint.
    material = build_key(key, alg, kid if kid is not None else "PEM key")
    return material if kid is not None else build_key(key, alg, material.thumbprint)


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
    """The bytes of a key file, refusing files larger than `MAX_KEY_FILE_BYTES` and anything
    that is not a regular file.

    Opened non-blocking: a FIFO (or a device) put where a key file was would otherwise block
    `open` until a writer came, holding the reload's worker thread for ever (no later reload,
    and a process that logs "stopped" but never exits, waiting for that thread). O_NONBLOCK
    changes nothing for a regular file's reads; anything else is refused after `fstat`.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise KeyMaterialError(f"{path}: cannot read key file ({exc.strerror})") from exc
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise KeyMaterialError(f"{path}: not a regular file")
        with os.fdopen(fd, "rb", closefd=False) as handle:
            data = handle.read(MAX_KEY_FILE_BYTES + 1)
    except OSError as exc:
        raise KeyMaterialError(f"{path}: cannot read key file ({exc.strerror})") from exc
    finally:
        os.close(fd)
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
