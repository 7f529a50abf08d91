"""The verify cache never changes an answer: only the cost of giving it (issue 7).

Every check that can change between two calls (time, revocation, per-call audience and
scopes, the key ring) runs on a hit; a token that differs in any byte misses. A token is
stored from its second verification on (issue 15: a one-shot token costs no entry), so the
tests below verify twice (`_cached`) before they expect a hit.
"""

from __future__ import annotations

import base64
import dataclasses
import json

import pytest

from sidecar.clock import FixedClock
from sidecar.config import TokenSettings
from sidecar.errors import (
    AudienceMismatchError,
    BadSignatureError,
    ExpiredTokenError,
    NotYetValidError,
    RevokedTokenError,
    ScopeMissingError,
    TokenError,
)
from sidecar.keys.ring import KeyRing
from sidecar.store.base import Revocation
from sidecar.store.memory import MemoryTokenStore
from sidecar.tokens.cache import VerifyCache, entry_bytes
from sidecar.tokens.claims import ClaimsPolicy
from sidecar.tokens.issuers import Issuer, Issuers
from sidecar.tokens.model import VerifiedToken
from sidecar.tokens.service import TokenService
from sidecar.tokens.signing import encode_jws
from tests.support.issuers import FixedExternalKeys
from tests.support.keys import make_key

NOW = 1_800_000_000
ISSUER = "urn:authsidecar:test"


def _service(clock: FixedClock, ring: KeyRing | None = None, **settings: int) -> TokenService:
    return TokenService(
        ring=ring or KeyRing([make_key("ES256", "a")]),
        store=MemoryTokenStore(),
        settings=TokenSettings(issuer=ISSUER, **settings).options(),  # type: ignore[arg-type]
        clock=clock,
    )


def _token(ring: KeyRing, *, jti: str = "j1", **claims: object) -> str:
    body: dict[str, object] = {
        "iss": ISSUER,
        "sub": "alice",
        "aud": ["orders"],
        "iat": NOW,
        "exp": NOW + 600,
        "jti": jti,
        "scope": "read write",
    }
    body.update(claims)
    key = ring.signing_key
    assert key is not None
    return encode_jws(body, key, typ="at+jwt")


def _cached(service: TokenService, token: str) -> VerifiedToken:
    """Verify `token` until the cache holds it (twice), and return what it holds."""
    service.verify(token)
    verified = service.verify(token)
    assert len(service.verify_cache) >= 1
    return verified


@pytest.fixture
def clock() -> FixedClock:
    return FixedClock(float(NOW))


def test_a_token_is_stored_on_its_second_verification_and_then_served(clock: FixedClock) -> None:
    service = _service(clock)
    token = _token(service.ring)
    first = service.verify(token)
    assert len(service.verify_cache) == 0  # seen once: not stored
    stored = service.verify(token)
    assert stored is not first
    assert service.verify(token) is stored
    assert (service.verify_cache.hits, service.verify_cache.misses) == (1, 2)


def test_cached_token_is_refused_once_expired(clock: FixedClock) -> None:
    service = _service(clock, leeway_s=0)
    token = _token(service.ring)
    _cached(service, token)
    clock.set(NOW + 600)
    with pytest.raises(ExpiredTokenError):
        service.verify(token)


def test_cached_token_rechecks_fractional_nbf_as_sent(clock: FixedClock) -> None:
    # Claims keeps floored times; the hit path must compare the value as sent (100.5 > 100).
    service = _service(clock, leeway_s=0)
    token = _token(service.ring, nbf=NOW + 0.5)
    clock.set(NOW + 1)
    _cached(service, token)
    clock.set(NOW + 0.25)  # the clock stepped back (NTP): the token is not yet valid again
    with pytest.raises(NotYetValidError):
        service.verify(token)


def test_cached_token_is_refused_once_revoked(clock: FixedClock) -> None:
    service = _service(clock)
    token = _token(service.ring)
    _cached(service, token)
    service.revocations.add(Revocation("jti", ISSUER, "j1", NOW + 3600))
    with pytest.raises(RevokedTokenError):
        service.verify(token)


def test_cached_token_rechecks_audience_and_scopes_per_call(clock: FixedClock) -> None:
    service = _service(clock)
    token = _token(service.ring)
    _cached(service, token)
    service.verify(token, audience="orders", required_scopes=("read",))
    with pytest.raises(AudienceMismatchError):
        service.verify(token, audience="billing")
    with pytest.raises(ScopeMissingError):
        service.verify(token, required_scopes=("admin",))
    assert service.verify_cache.hits == 3


def test_forged_token_reusing_a_cached_jti_misses_the_cache(clock: FixedClock) -> None:
    service = _service(clock)
    token = _token(service.ring)
    _cached(service, token)
    header, payload, signature = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["scope"] = "read write admin"
    forged_payload = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=")
    forged = f"{header}.{forged_payload.decode()}.{signature}"
    with pytest.raises(BadSignatureError):
        service.verify(forged, required_scopes=("admin",))


def test_cache_entry_is_not_used_after_its_key_leaves_the_ring(clock: FixedClock) -> None:
    service = _service(clock)
    token = _token(service.ring)
    _cached(service, token)
    # Same kid, another key: the cached result must not vouch for the token any more.
    service.replace_ring(KeyRing([dataclasses.replace(make_key("ES256", "other"), kid="a")]))
    with pytest.raises(BadSignatureError):
        service.verify(token)
    assert len(service.verify_cache) == 0
    assert (service.verify_cache.hits, service.verify_cache.misses) == (0, 3)


def test_failed_verifications_are_not_cached(clock: FixedClock) -> None:
    service = _service(clock)
    expired = _token(service.ring, iat=NOW - 7200, exp=NOW - 3600)
    for _ in range(2):
        with pytest.raises(TokenError):
            service.verify(expired)
    assert len(service.verify_cache) == 0


def test_cache_is_bounded_by_entries(clock: FixedClock) -> None:
    service = _service(clock, verify_cache_entries=3)
    for i in range(10):
        _cached(service, _token(service.ring, jti=f"j{i}"))
    assert len(service.verify_cache) == 3


def test_cache_is_bounded_by_bytes() -> None:
    cache = VerifyCache(max_entries=1000, max_bytes=entry_bytes(500) * 2)
    ring = KeyRing([make_key("HS256", "h")])
    service = TokenService(
        ring=ring,
        store=MemoryTokenStore(),
        settings=TokenSettings(issuer=ISSUER).options(),
        clock=FixedClock(float(NOW)),
    )
    verified = service.verify(_token(ring))
    key = ring.get(verified.kid)
    assert key is not None
    for i in range(5):
        cache.put("t" * 490 + f"{i:010}", verified, key, issuer=None, window=(None, None, None))
    assert len(cache) == 2
    assert cache.current_bytes <= cache.max_bytes


def test_zero_entries_disables_the_cache(clock: FixedClock) -> None:
    service = _service(clock, verify_cache_entries=0)
    token = _token(service.ring)
    results = [service.verify(token) for _ in range(3)]
    assert len({id(r) for r in results}) == 3
    assert len(service.verify_cache) == 0


def test_cached_external_token_is_rechecked_with_its_issuers_rules(clock: FixedClock) -> None:
    # Our leeway is 30 s, the external issuer's 0: a hit must apply the issuer's, as a miss does.
    external_ring = KeyRing([make_key("ES256", "ext")])
    policy = ClaimsPolicy(issuer="https://idp.example", leeway_s=0)
    issuers = Issuers(
        ISSUER, [Issuer("https://idp.example", FixedExternalKeys(external_ring), policy)]
    )
    service = TokenService(
        ring=KeyRing([make_key("ES256", "a")]),
        store=MemoryTokenStore(),
        settings=TokenSettings(issuer=ISSUER, leeway_s=30).options(),
        clock=clock,
        issuers=issuers,
    )
    token = _token(external_ring, iss="https://idp.example")
    _cached(service, token)
    clock.set(NOW + 610)  # 10 s past exp: inside our leeway, outside the issuer's
    with pytest.raises(ExpiredTokenError):
        service.verify(token)
    assert service.verify_cache.hits == 1


# --- the miss path (issue 15): a one-shot token costs no entry ----------------------------


def test_a_token_verified_once_leaves_no_entry(clock: FixedClock) -> None:
    service = _service(clock)
    for i in range(20):
        service.verify(_token(service.ring, jti=f"once-{i}"))
    assert len(service.verify_cache) == 0
    assert service.verify_cache.current_bytes == 0


def test_a_refused_token_is_not_counted_as_seen(clock: FixedClock) -> None:
    # An expired token never reaches the cache; once valid again (the clock stepped back),
    # its next verification is its first sighting, so it is not stored yet.
    service = _service(clock, leeway_s=0)
    token = _token(service.ring)
    clock.set(NOW + 600)
    for _ in range(3):
        with pytest.raises(ExpiredTokenError):
            service.verify(token)
    clock.set(NOW)
    service.verify(token)
    assert len(service.verify_cache) == 0
    service.verify(token)
    assert len(service.verify_cache) == 1


def test_first_sightings_are_bounded_by_the_entry_bound() -> None:
    # Emptied when full: with room for two, a third token makes the first one new again.
    cache = VerifyCache(max_entries=2, max_bytes=10**6)
    assert [cache.seen_before(t) for t in ("a", "b", "a")] == [False, False, True]
    assert [cache.seen_before(t) for t in ("c", "a")] == [False, False]


def test_a_lookup_key_collision_never_serves_another_tokens_entry(clock: FixedClock) -> None:
    # Every token shares one lookup key here: only the SHA-256 of the exact text may hit.
    service = _service(clock)
    service._verifier.cache = VerifyCache(max_entries=10, max_bytes=10**6, key=lambda _: 0)
    cache = service.verify_cache
    first, second = _token(service.ring, jti="j1"), _token(service.ring, jti="j2")
    stored = _cached(service, first)
    assert cache.get(second) is None
    other = service.verify(second)
    assert other.claims.jti == "j2" and other is not stored
    assert (cache.hits, cache.misses) == (0, 3)
