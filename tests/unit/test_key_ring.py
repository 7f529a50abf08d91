"""KeyRing invariants: one key per kid, no oct/asymmetric mix, an explicit signing key."""

from __future__ import annotations

import pytest

from sidecar.errors import KeyMaterialError
from sidecar.keys.loader import parse_jwk
from sidecar.keys.material import KeyMaterial
from sidecar.keys.ring import KeyRing
from tests.support.keys import make_key

_PRIVATE_MEMBERS = {"d", "p", "q", "dp", "dq", "qi", "k", "oth"}


def _public(key: KeyMaterial) -> KeyMaterial:
    return parse_jwk(key.public_jwk() or {})


def test_get_returns_key_by_exact_kid() -> None:
    ring = KeyRing([make_key("ES256", "a"), _public(make_key("RS256", "b"))])
    assert ring.get("a") is ring.keys[0]
    assert ring.get("b") is ring.keys[1]
    assert ring.get("A") is None and ring.get("") is None


def test_duplicate_kid_is_refused() -> None:
    with pytest.raises(KeyMaterialError, match="duplicate kid"):
        KeyRing([make_key("ES256", "dup"), make_key("RS256", "dup")])


def test_mixing_hmac_with_asymmetric_keys_is_refused() -> None:
    with pytest.raises(KeyMaterialError, match="mix"):
        KeyRing([make_key("HS256", "h"), _public(make_key("RS256", "r"))], signing_kid="h")


def test_single_signing_capable_key_becomes_signing_key() -> None:
    signer = make_key("ES256", "current")
    ring = KeyRing([_public(make_key("ES256", "old")), signer])
    assert ring.signing_key is signer


def test_verification_only_ring_has_no_signing_key() -> None:
    ring = KeyRing([_public(make_key("ES256", "a")), _public(make_key("RS256", "b"))])
    assert ring.signing_key is None


def test_several_signing_keys_without_choice_is_refused() -> None:
    with pytest.raises(KeyMaterialError, match="signing_kid"):
        KeyRing([make_key("ES256", "a"), make_key("ES384", "b")])


def test_explicit_signing_kid_picks_that_key() -> None:
    ring = KeyRing([make_key("ES256", "a"), make_key("ES384", "b")], signing_kid="b")
    assert ring.signing_key is not None and ring.signing_key.kid == "b"


def test_signing_kid_missing_or_verification_only_is_refused() -> None:
    with pytest.raises(KeyMaterialError, match="not in the key ring"):
        KeyRing([make_key("ES256", "a")], signing_kid="zzz")
    with pytest.raises(KeyMaterialError, match="verification-only"):
        KeyRing([_public(make_key("ES256", "a"))], signing_kid="a")


def test_algorithms_lists_every_key_alg() -> None:
    ring = KeyRing([make_key("ES256", "a"), _public(make_key("RS512", "b"))])
    assert ring.algorithms == frozenset({"ES256", "RS512"})


def test_jwks_publishes_public_members_with_kid_alg_use() -> None:
    ring = KeyRing([make_key("ES256", "a"), _public(make_key("RS256", "b"))], signing_kid="a")
    doc = ring.jwks()
    assert [jwk["kid"] for jwk in doc["keys"]] == ["a", "b"]
    for jwk in doc["keys"]:
        assert jwk["use"] == "sig" and jwk["alg"] in ("ES256", "RS256")
        assert not _PRIVATE_MEMBERS & set(jwk)
    # What we publish loads back as verification-only keys.
    assert all(not parse_jwk(jwk).can_sign for jwk in doc["keys"])


def test_jwks_never_exposes_hmac_keys() -> None:
    ring = KeyRing([make_key("HS256", "h1"), make_key("HS512", "h2")], signing_kid="h1")
    assert ring.jwks() == {"keys": []}


def test_version_is_stable_and_order_independent() -> None:
    a, b = make_key("ES256", "a"), _public(make_key("RS256", "b"))
    assert KeyRing([a, b]).version == KeyRing([b, a]).version
    assert len(KeyRing([a, b]).version) == 16


def test_version_changes_when_a_key_changes_under_the_same_kid() -> None:
    before = KeyRing([make_key("ES256", "same")])
    after = KeyRing([make_key("ES256", "other")])
    renamed = KeyRing([make_key("ES256", "other")])
    assert before.version != after.version
    assert after.version == renamed.version
    changed = KeyRing([make_key("ES384", "same")])  # new key material, same kid
    assert changed.version != before.version


def test_empty_ring_is_verification_only() -> None:
    ring = KeyRing([])
    assert ring.signing_key is None and ring.jwks() == {"keys": []} and len(ring) == 0
