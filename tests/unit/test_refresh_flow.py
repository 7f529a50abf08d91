"""The refresh flow (tokens/refresh.py) through TokenService, on the memory store (issues 12, 13).

Everything the store's one transaction decides is visible here as the caller sees it: a refused
refresh does not consume the token, a reuse kills the family's access tokens past the family's
end, the outcome is reported in the domain's words, and a write that reaches the store after
its deadline is UNAVAILABLE and changes nothing.
"""

from __future__ import annotations

import base64
import json

import pytest

from sidecar.calls import CallInfo, current_call
from sidecar.clock import FixedClock
from sidecar.config import TokenSettings
from sidecar.errors import (
    ClaimError,
    InvalidRequestError,
    RefreshReuseError,
    RevokedTokenError,
    StoreDeadlineError,
)
from sidecar.keys.ring import KeyRing
from sidecar.store.base import Revocation
from sidecar.store.memory import MemoryTokenStore
from sidecar.tokens import minting
from sidecar.tokens.model import TokenGrant, TokenKind
from sidecar.tokens.service import TokenService
from sidecar.tokens.signing import encode_jws
from tests.support.keys import make_key

NOW = 1_800_000_000
ISSUER = "urn:authsidecar:test"


class Fixture:
    def __init__(self, **settings: int) -> None:
        self.clock = FixedClock(float(NOW))
        # The store's own clock: moved ahead, it sees every write arrive after its deadline.
        self.store_clock = FixedClock(float(NOW))
        self.ring = KeyRing([make_key("ES256", "a")])
        self.store = MemoryTokenStore(clock=self.store_clock)
        self.settings = TokenSettings(issuer=ISSUER, **settings).options()  # type: ignore[arg-type]
        self.service = TokenService(
            ring=self.ring, store=self.store, settings=self.settings, clock=self.clock
        )

    async def login(self, scope: str = "read write") -> TokenGrant:
        return await self.service.issue(
            subject="alice", audience=["orders"], scope=scope, refresh_token=True
        )

    def forged_refresh_token(self, family_of: str, subject: str) -> str:
        """A refresh token we signed for `family_of`'s family and current jti, naming
        another subject: what a bug or a swapped family id would present."""
        claims = self._payload(family_of)
        body = minting.refresh_claims(
            issuer=ISSUER, subject=subject, client_id="", jti=claims["jti"],
            family_id=claims["sid"], now=NOW, exp=NOW + 60,
        )  # fmt: skip
        key = self.ring.signing_key
        assert key is not None
        return encode_jws(body, key, typ=TokenKind.REFRESH.typ)

    def _payload(self, token: str) -> dict[str, str]:
        return _claims_of(token)


def _claims_of(token: str) -> dict[str, str]:
    """The payload of a token we just minted (read, not verified: it is ours)."""
    payload = token.split(".")[1]
    claims: dict[str, str] = json.loads(
        base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))
    )
    return claims


def jti_of(token: str) -> str:
    return _claims_of(token)["jti"]


async def test_a_token_that_is_not_its_familys_is_refused_without_consuming_it() -> None:
    f = Fixture()
    grant = await f.login()
    with pytest.raises(ClaimError):
        await f.service.refresh(f.forged_refresh_token(grant.refresh_token, "mallory"))
    rotated = await f.service.refresh(grant.refresh_token)  # still the current token
    assert rotated.outcome == "rotated"


async def test_a_widened_scope_is_refused_and_the_token_still_works() -> None:
    f = Fixture()
    grant = await f.login(scope="read")
    with pytest.raises(InvalidRequestError):
        await f.service.refresh(grant.refresh_token, scope="read admin")
    narrowed = await f.service.refresh(grant.refresh_token, scope="read")
    assert narrowed.scope == "read"


async def test_reuse_revokes_the_familys_access_tokens_past_the_familys_end() -> None:
    """The access token minted at the family's last refresh outlives the family; the reuse
    revocation (one write, in the rotation's transaction) covers it to its end."""
    f = Fixture(family_ttl_s=120, refresh_ttl_s=120, access_ttl_s=900, refresh_grace_s=0)
    first = await f.login()
    f.clock.advance(100)
    last = await f.service.refresh(first.refresh_token)
    with pytest.raises(RefreshReuseError):
        await f.service.refresh(first.refresh_token)
    f.clock.advance(30)  # the family has ended; `last.access_token` has 870 s to go
    await f.service.sync_revocations()
    with pytest.raises(RevokedTokenError):
        f.service.verify(last.access_token)
    horizon = NOW + 120 + f.settings.max_access_ttl_s + f.settings.leeway_s
    sid = f._payload(first.refresh_token)["sid"]
    assert await f.store.revocations(NOW + 130) == [Revocation("family", ISSUER, sid, horizon)]


async def test_outcomes_are_reported_in_the_domains_words() -> None:
    f = Fixture(refresh_grace_s=5)
    grant = await f.login()
    seen = []
    for _ in range(2):  # the rotation, then the lost-response retry within the window
        call = CallInfo("rid", "/authsidecar.v1.AuthService/Refresh", "peer")
        token = current_call.set(call)
        try:
            result = await f.service.refresh(grant.refresh_token)
        finally:
            current_call.reset(token)
        seen.append((call.outcome, result.outcome, jti_of(result.refresh_token)))
    assert [s[:2] for s in seen] == [("rotated", "rotated"), ("grace", "grace")]
    assert seen[0][2] == seen[1][2]  # one successor
    f.clock.advance(5)
    call = CallInfo("rid", "/authsidecar.v1.AuthService/Refresh", "peer")
    token = current_call.set(call)
    try:
        with pytest.raises(RefreshReuseError):
            await f.service.refresh(grant.refresh_token)
        assert call.outcome == "reused"
        with pytest.raises(RevokedTokenError):
            await f.service.refresh(grant.refresh_token)
        assert call.outcome == "revoked"
    finally:
        current_call.reset(token)


async def test_writes_that_reach_the_store_after_their_deadline_change_nothing() -> None:
    f = Fixture(refresh_grace_s=0)
    grant = await f.login()
    f.store_clock.advance(f.store.timeout_s + 0.001)  # every write now arrives late
    with pytest.raises(StoreDeadlineError):
        await f.service.refresh(grant.refresh_token)
    with pytest.raises(StoreDeadlineError):
        await f.login()
    with pytest.raises(StoreDeadlineError):
        await f.service.revoke(grant.access_token)
    f.service.verify(grant.access_token)  # not revoked, not even in this sidecar's mirror
    f.store_clock.set(float(NOW))
    # Nothing was applied: the retry is an ordinary rotation (grace 0: a consumed token
    # would now be reuse).
    assert (await f.service.refresh(grant.refresh_token)).outcome == "rotated"


async def test_the_calls_remaining_time_bounds_the_deadline() -> None:
    f = Fixture()
    grant = await f.login()
    f.store_clock.advance(0.5)  # half a second late: within the store timeout (1 s) ...
    with pytest.raises(StoreDeadlineError):  # ... but not within the call's 0.2 s
        await f.service.refresh(grant.refresh_token, time_left_s=0.2)
    assert (await f.service.refresh(grant.refresh_token, time_left_s=5)).outcome == "rotated"
