"""One property suite, two paths: a cached token gets exactly the answer a fresh verification
gives (tokens/verifier.py, "What may be cached, and what is checked on every call").

Each example mints a token valid at priming time (ours, or an external issuer's with its
own, tighter leeway), verifies it once on a service with a cache (so the next call can hit)
and then changes the world: the clock (back or forward, fractional), the call's audience
and scopes, revocations (the jti, the family, someone else's), and the key sets (unchanged,
the same key in a new ring, another key under the same kid, the kid gone). The same call then
goes to the primed service (the hit path) and to a service with no cache (the miss path), and
the outcomes must be equal: the same claims, or the same reason with the same claimed ids.
The suite also checks that the hit path really was taken whenever the key is still trusted,
so it cannot pass by never hitting.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sidecar.clock import FixedClock
from sidecar.config import TokenSettings
from sidecar.errors import AuthSidecarError
from sidecar.keys.material import KeyMaterial
from sidecar.keys.ring import KeyRing
from sidecar.store.base import Revocation
from sidecar.store.memory import MemoryTokenStore
from sidecar.tokens.claims import EXTERNAL_ACCESS_TYPS, ClaimsPolicy
from sidecar.tokens.issuers import Issuer, Issuers
from sidecar.tokens.service import TokenService
from sidecar.tokens.signing import encode_jws
from tests.support.issuers import FixedExternalKeys
from tests.support.keys import make_key

NOW = 1_800_000_000
OURS = "urn:authsidecar:test"
THEIRS = "https://idp.example.test"
OWN_KEY = make_key("ES256", "k1")
OWN_OTHER = make_key("ES256", "k2")
OWN_IMPOSTOR = dataclasses.replace(make_key("ES256", "impostor"), kid="k1")
EXT_KEY = make_key("ES256", "e1")
EXT_IMPOSTOR = dataclasses.replace(make_key("ES256", "ext-impostor"), kid="e1")
SCOPES = ("read", "write", "admin")


@dataclasses.dataclass
class World:
    """One service and the handles the test changes it through."""

    service: TokenService
    clock: FixedClock
    external: FixedExternalKeys


def _world(cache_entries: int) -> World:
    external = FixedExternalKeys(KeyRing([EXT_KEY]))
    policy = ClaimsPolicy(
        issuer=THEIRS, audiences=("orders",), leeway_s=0, accepted_typs=EXTERNAL_ACCESS_TYPS
    )
    clock = FixedClock(float(NOW))
    service = TokenService(
        ring=KeyRing([OWN_KEY], signing_kid="k1"),
        store=MemoryTokenStore(),
        settings=TokenSettings(
            issuer=OURS,
            audiences=("orders", "billing"),
            leeway_s=30,
            verify_cache_entries=cache_entries,
        ).options(),
        clock=clock,
        issuers=Issuers(OURS, [Issuer(THEIRS, external, policy)]),
    )
    return World(service, clock, external)


times = st.integers(min_value=-4000, max_value=4000) | st.floats(min_value=-4000, max_value=4000)


@st.composite
def tokens(draw: st.DrawFn) -> tuple[str, str]:
    """(issuer, token) valid at NOW for both issuers' rules."""
    issuer = draw(st.sampled_from([OURS, THEIRS]))
    iat = NOW - draw(st.integers(min_value=0, max_value=3000) | st.floats(0, 3000))
    claims: dict[str, Any] = {
        "iss": issuer,
        "sub": draw(st.sampled_from(["alice", "bob"])),
        "aud": draw(st.sampled_from(["orders", ["orders", "billing"], ["billing", "x"]])),
        "iat": iat,
        "exp": NOW + draw(st.integers(min_value=1, max_value=3600) | st.floats(0.5, 3600)),
        "jti": draw(st.sampled_from(["j1", "j2"])),
        "scope": " ".join(draw(st.lists(st.sampled_from(SCOPES), unique=True))),
    }
    if issuer == THEIRS:
        claims["aud"] = "orders"
    if draw(st.booleans()):
        claims["nbf"] = draw(st.floats(min_value=iat, max_value=NOW))
    if draw(st.booleans()):
        claims["sid"] = "fam-1"
    key = OWN_KEY if issuer == OURS else EXT_KEY
    return issuer, encode_jws(claims, key, typ=draw(st.sampled_from(["at+jwt", "AT+JWT"])))


@st.composite
def changes(draw: st.DrawFn) -> dict[str, Any]:
    """What changes between the priming call and the compared call."""
    return {
        "now": NOW + draw(times),
        "audience": draw(st.sampled_from([None, "orders", "billing", "x"])),
        "scopes": tuple(draw(st.lists(st.sampled_from(SCOPES), unique=True, max_size=2))),
        "revoked": draw(st.sampled_from(["none", "jti", "family", "someone-else"])),
        "own_ring": draw(st.sampled_from(["same", "rebuilt", "impostor", "gone"])),
        "ext_ring": draw(st.sampled_from(["same", "rebuilt", "impostor", "gone"])),
    }


def _ring(state: str, key: KeyMaterial, impostor: KeyMaterial) -> KeyRing | None:
    """The key set after the change: None (unchanged), the same key object in a new ring,
    another key under the same kid, or a ring without the kid."""
    if state == "rebuilt":
        return KeyRing([key, OWN_OTHER], signing_kid=key.kid)
    if state == "impostor":
        return KeyRing([impostor])
    if state == "gone":
        return KeyRing([OWN_OTHER])
    return None


_REVOKED: dict[str, tuple[str, str] | None] = {
    "none": None,
    "jti": ("jti", "j1"),
    "family": ("family", "fam-1"),
    "someone-else": ("jti", "j-other"),
}


def _apply(world: World, change: dict[str, Any]) -> None:
    world.clock.set(change["now"])
    revoked = _REVOKED[change["revoked"]]
    if revoked is not None:
        kind, key = revoked
        for iss in (OURS, THEIRS):
            world.service.revocations.add(Revocation(kind, iss, key, NOW + 10**6))  # type: ignore[arg-type]
    own = _ring(change["own_ring"], OWN_KEY, OWN_IMPOSTOR)
    if own is not None:
        world.service.replace_ring(own)
    ext = _ring(change["ext_ring"], EXT_KEY, EXT_IMPOSTOR)
    if ext is not None:
        world.external.ring = ext


def _outcome(world: World, token: str, change: dict[str, Any]) -> tuple[object, ...]:
    try:
        verified = world.service.verify(
            token, audience=change["audience"], required_scopes=change["scopes"]
        )
    except AuthSidecarError as error:
        return ("refused", error.reason, error.claimed_sub, error.claimed_jti)
    claims = verified.claims
    return ("ok", verified.kind, verified.kid, claims.sub, claims.aud, claims.exp, claims.all)


@settings(
    max_examples=400, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)
@given(token=tokens(), change=changes())
def test_hit_and_miss_paths_give_the_same_outcome(
    token: tuple[str, str], change: dict[str, Any]
) -> None:
    issuer, text = token
    primed = _world(cache_entries=64)
    primed.service.verify(text)  # valid at NOW: seen once,
    primed.service.verify(text)  # and now cached
    assert len(primed.service.verify_cache) == 1
    fresh = _world(cache_entries=0)
    _apply(primed, change)
    _apply(fresh, change)

    cache = primed.service.verify_cache
    hits = cache.hits
    hit = _outcome(primed, text, change)
    miss = _outcome(fresh, text, change)
    assert hit == miss

    key_still_trusted = change["own_ring" if issuer == OURS else "ext_ring"] in ("same", "rebuilt")
    assert cache.hits == hits + (1 if key_still_trusted else 0)


@settings(max_examples=150, deadline=None, database=None)
@given(token=tokens(), change=changes())
def test_a_second_call_answers_as_the_first(token: tuple[str, str], change: dict[str, Any]) -> None:
    """After the world changed, the call that misses (and may fill the cache again) and the
    call that then hits agree as well."""
    _issuer, text = token
    world = _world(cache_entries=64)
    world.service.verify(text)
    world.service.verify(text)
    _apply(world, change)
    assert _outcome(world, text, change) == _outcome(world, text, change)
