"""The algorithm registry: each entry of the table (sidecar/jwa.py) bound to its key type.

Like PyJWT's `algorithms.py` and joserfc's `JWSRegistry`, this is the one place that answers
"what can this algorithm do, and with which key": the key loader (PEM and JWK, loader.py),
`KeyMaterial` (sign, verify, the public JWK), key generation (generate.py), the JWKS an
external issuer publishes (remote.py) and the JWS header check (tokens/jws.py) all ask it,
and none of them holds a list of algorithm names or tests a name's prefix. Adding an
algorithm is a table row (and, for a new `kty`, one key-type module).

The security rules that follow from the table, enforced here for every caller:

* an algorithm is usable only with a key of its own `kty` (no HMAC/RSA confusion: an RSA
  key never verifies an HS256 MAC, CVE-2024-33663), and on its own curve (EC, OKP);
* names not in the table ("none" included, RFC 8725 section 2.1) are refused;
* a key is built once, through its key type's hygiene checks (minimum sizes, ROCA, curve
  membership), into a typed `Verifier` / `Signer` (keys/keytype.py).

python-jose (cryptography backend) stays the signature primitive for HS* signing, RS* and
ES*, behind these protocols; PS* and EdDSA, which it lacks, and HS* verification use
`cryptography` directly (rsa_key.py, okp_key.py, oct_key.py).
"""

from __future__ import annotations

from sidecar.errors import KeyMaterialError
from sidecar.jwa import ALGORITHMS, Algorithm
from sidecar.keys.ec_key import EC
from sidecar.keys.keytype import BuiltKey, KeyType, PrivateKey
from sidecar.keys.oct_key import OCT
from sidecar.keys.okp_key import OKP
from sidecar.keys.rsa_key import RSA

__all__ = [
    "KEY_TYPES",
    "PRIVATE_MEMBERS",
    "PUBLIC_NAMES",
    "Algorithm",
    "bind",
    "generate",
    "header_names",
    "key_type",
    "lookup",
    "names_for",
    "pem_alg",
    "private_members",
]

KEY_TYPES: dict[str, KeyType] = {kind.kty: kind for kind in (OCT, RSA, EC, OKP)}
# Every algorithm whose key can be published (all but HMAC): an issuer's default allow-list.
PUBLIC_NAMES = frozenset(name for name, alg in ALGORITHMS.items() if not alg.symmetric)
# JWK members that only a private key or a secret has, of any key type: never in a JWKS.
PRIVATE_MEMBERS = frozenset().union(*(kind.private_members for kind in KEY_TYPES.values()))


def lookup(name: object, who: str) -> Algorithm:
    """The table entry `name`; KeyMaterialError otherwise (names are exact: a JWK file's
    aliases are the loader's business, `jwa.JWK_ALIASES`)."""
    entry = ALGORITHMS.get(name) if isinstance(name, str) else None
    if entry is None:
        raise KeyMaterialError(f"{who}: algorithm {name!r} is not supported")
    return entry


def key_type(kty: object) -> KeyType | None:
    """The key type of a JWK's `kty` member, or None when we do not support it."""
    return KEY_TYPES.get(kty) if isinstance(kty, str) else None


def names_for(kty: str) -> frozenset[str]:
    """The algorithms a key of type `kty` may serve."""
    return frozenset(name for name, alg in ALGORITHMS.items() if alg.kty == kty)


def header_names(alg: Algorithm) -> frozenset[str]:
    """The JWS `alg` values that name this algorithm's computation: `{alg}`, except that an
    Ed25519 key answers to both "EdDSA" and "Ed25519" (RFC 9864 section 2.2: the same
    signature over the same key, so no algorithm confusion is possible)."""
    canonical = alg.same_as or alg.name
    return frozenset(n for n, a in ALGORITHMS.items() if (a.same_as or a.name) == canonical)


def _type_of(key: object, who: str) -> KeyType:
    for kind in KEY_TYPES.values():
        if kind.owns(key):
            return kind
    raise KeyMaterialError(f"{who}: only RSA, EC and Ed25519 keys and HMAC secrets are supported")


def bind(key: object, name: str, who: str) -> tuple[Algorithm, BuiltKey]:
    """`key` (a `cryptography` key object, or a secret's bytes) bound to algorithm `name`:
    refused unless `name` is in the table, `key` is of its `kty`, and the key passes that
    type's hygiene checks."""
    alg = lookup(name, who)
    kind = _type_of(key, who)
    if kind.kty != alg.kty:
        raise KeyMaterialError(f"{who}: {kind.noun} cannot be used with {name!r}")
    return alg, kind.build(key, alg, who)


def pem_alg(key: object) -> str | None:
    """The algorithm a PEM key implies (RS256, the curve's ES*, EdDSA); None if none does."""
    for kind in KEY_TYPES.values():
        if kind.owns(key):
            return kind.pem_alg(key)
    return None


def generate(name: str) -> bytes | PrivateKey:
    """A fresh private key (or secret) for algorithm `name`."""
    alg = lookup(name, "generate")
    return KEY_TYPES[alg.kty].generate(alg)


def private_members(key: object, name: str) -> dict[str, str]:
    """The private JWK members of `key` for algorithm `name` (without kid/alg/use)."""
    alg = lookup(name, "private JWK")
    return KEY_TYPES[alg.kty].private_jwk(key, alg)
