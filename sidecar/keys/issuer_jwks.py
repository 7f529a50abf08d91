"""An external issuer's published JWK Set -> the keys we may verify its tokens with.

The document is strict JSON (no duplicate names, no NaN) holding a non-empty `keys` list.
Each key goes through `loader.parse_jwk`, the parser and hygiene of our own key files (RSA
>= 2048 bits and not ROCA, EC points on their curve, Ed25519 only, `use`/`key_ops` allowing
verification). Per key, not all-or-nothing: IdPs routinely publish keys we must not or
cannot use (`use: enc` keys, algorithms we do not implement), so a key that fails is
**skipped** (keys/remote.py logs one line naming its kid and the problem), and the rest
are kept. Also skipped: `oct` keys (a published secret is no secret), keys with
private members, keys whose algorithm is not in the issuer's `algorithms`. A key without
`alg` is used only when `algorithms` names exactly one algorithm (Azure AD publishes RSA
keys without `alg`). The **whole fetch is refused** when the document is not a JWK Set,
when two usable keys share a kid, or when no usable key is left.

The algorithms come from the registry: an issuer's default allow-list is every algorithm
whose key can be published (`algorithms.PUBLIC_NAMES`), and the members no public JWK may
carry are the key types' private members (`algorithms.PRIVATE_MEMBERS`).
"""

from __future__ import annotations

from collections.abc import Mapping

from sidecar.errors import KeyMaterialError
from sidecar.keys.algorithms import PRIVATE_MEMBERS
from sidecar.keys.loader import parse_jwk, strict_json
from sidecar.keys.material import KeyMaterial

__all__ = ["parse_remote_jwks"]


def parse_remote_jwks(
    data: bytes, *, algorithms: frozenset[str]
) -> tuple[list[KeyMaterial], list[str]]:
    """(usable keys, reasons for skipped keys); raises KeyMaterialError to refuse the set."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise KeyMaterialError("not UTF-8") from exc
    doc = strict_json(text)
    keys = doc.get("keys") if isinstance(doc, dict) else None
    if not isinstance(keys, list) or not keys:
        raise KeyMaterialError("not a JWK Set with a non-empty 'keys' list")
    only = next(iter(algorithms)) if len(algorithms) == 1 else None
    loaded: list[KeyMaterial] = []
    skipped: list[str] = []
    for index, jwk in enumerate(keys):
        try:
            loaded.append(_usable_key(jwk, index, algorithms, only))
        except KeyMaterialError as exc:
            skipped.append(str(exc))
    if not loaded:
        raise KeyMaterialError(
            "no usable key in the JWK Set" + (f" ({skipped[0]})" if skipped else "")
        )
    kids = [key.kid for key in loaded]
    duplicates = sorted({kid for kid in kids if kids.count(kid) > 1})
    if duplicates:
        raise KeyMaterialError(f"duplicate kid {duplicates[0]!r} in the JWK Set")
    return loaded, skipped


def _usable_key(
    jwk: object, index: int, algorithms: frozenset[str], only: str | None
) -> KeyMaterial:
    if not isinstance(jwk, Mapping):
        raise KeyMaterialError(f"keys[{index}]: not a JSON object")
    kid = jwk.get("kid")
    who = f"key {kid!r}" if isinstance(kid, str) else f"keys[{index}]"
    if jwk.get("kty") == "oct":
        raise KeyMaterialError(f"{who}: symmetric (oct) keys are never trusted from a JWKS")
    if PRIVATE_MEMBERS & jwk.keys():
        raise KeyMaterialError(f"{who}: has private key members; only public keys are used")
    key = parse_jwk(jwk, alg=only if "alg" not in jwk else None)
    if key.header_algs.isdisjoint(algorithms):  # "EdDSA" and "Ed25519" name one algorithm
        raise KeyMaterialError(f"{who}: algorithm {key.alg!r} is not allowed for this issuer")
    return key
