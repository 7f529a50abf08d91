"""The one verification path: every token, every configuration, cached or not.

A token moves forward through these steps, each owned by one module, and never goes back:

    parse      jws.parse_compact          size, compact form, header, alg allow-list, kid
    key        issuers.Issuers.route      whose keys and rules (only with external issuers)
               jws.checked_key            the kid's key; the key fixes the algorithm
    signature  KeyMaterial.verify         over the segments as received
    claims     strict_json.parse_claims   strict JSON object, I-JSON numbers
               ClaimsPolicy.check_static  typ, required, types, lifetime, iss, aud, ...
    admission  ClaimsPolicy.check_window  exp / nbf / iat against now (+ leeway)
               Verifier._admit            per-call audience, revocation, required scopes
    response   transport/responses.py     (VerifyResponse, built from the VerifiedToken)

A refused token's claimed `sub`/`jti` are attached to the error (`AuthSidecarError.claiming`)
only by the claims and admission steps, from claims this path parsed, for the audit line.

Without external issuers the payload is parsed only after the signature check. With them,
`route` reads `iss` after the header and kid checks (nothing else of the unverified payload
is used); a token whose `iss` is not an external issuer's then takes exactly the steps it
takes without them, so its reason never depends on which issuers are configured.

**What may be cached, and what is checked on every call.** This module decides both; the
stores themselves (tokens/cache.py) have no policy:

* cached: the outcome of parse -> key -> signature -> claims (`check_static`), found by
  the exact token text (its SHA-256 must match: a forged token reusing a valid `jti` has
  other bytes, so it misses), together with the time window as sent, the key object and
  whose key it was; only tokens that passed those steps and were inside their time window
  enter, and only from their second verification on (a one-shot token is never stored:
  the cache's miss path costs what no cache costs), so a failing token cannot fill it.
  Also cached: headers whose token passed the signature check (`HeaderMemo`).
* checked on every call, hit or miss, by the same code in the same order (`_admit`): the
  key is still the one its kid names in its key set (identity: a rotated-out or replaced
  key invalidates its entries; trivially true on a miss), then exp / nbf / iat against now,
  the per-call audience, revocation, the required scopes.

So a hit and a miss give the same outcome for the same token and call
(tests/unit/test_verify_hit_miss.py runs one property suite against both). The refetch of
an external issuer's rotated kid (single flight and rate limited in keys/remote.py) is
here too: `verify_refetching` waits once for it.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import NamedTuple

from sidecar.clock import Clock
from sidecar.errors import (
    AudienceMismatchError,
    AuthSidecarError,
    BadSignatureError,
    InvalidRequestError,
    RevokedTokenError,
    ScopeMissingError,
    TokenError,
    UnknownKeyError,
)
from sidecar.keys.material import KeyMaterial
from sidecar.keys.ring import KeyRing
from sidecar.strict_json import parse_claims
from sidecar.tokens.cache import CachedVerification, HeaderMemo, VerifyCache
from sidecar.tokens.claims import ClaimsPolicy, TimeWindow
from sidecar.tokens.issuers import Issuer, Issuers
from sidecar.tokens.jws import ParsedJws, checked_key, parse_compact
from sidecar.tokens.model import TokenKind, VerifiedToken
from sidecar.tokens.revocation import RevocationMirror

__all__ = ["Verifier", "VerifyItem"]

# One VerifyBatch item: (token, audience or None, required scopes).
VerifyItem = tuple[str, str | None, Collection[str]]
_ACCESS = TokenKind.ACCESS


class _UnknownExternalKey(UnknownKeyError):
    """KEY_UNKNOWN for an external issuer's token: says whose key set to fetch again."""

    def __init__(self, issuer: Issuer, kid: str) -> None:
        super().__init__()
        self.issuer = issuer
        self.kid = kid


class Verifier:
    """Verifies tokens against our ring (swapped whole on reload: `ring`) and, when
    configured, external issuers. `policies` are our own rules per token kind."""

    def __init__(
        self,
        *,
        ring: KeyRing,
        policies: Mapping[TokenKind, ClaimsPolicy],
        clock: Clock,
        revocations: RevocationMirror,
        cache: VerifyCache,
        max_token_bytes: int,
        max_batch: int,
        issuers: Issuers | None = None,
    ) -> None:
        self.ring = ring
        self._policies = dict(policies)
        self._clock = clock
        self._mirror = revocations
        self.cache = cache
        self._headers = HeaderMemo()
        self.max_token_bytes = max_token_bytes
        self._max_batch = max_batch
        self._issuers = issuers

    # -- access tokens: Verify, VerifyBatch, ext_authz -----------------------------------

    def verify(
        self, token: str, *, audience: str | None = None, required_scopes: Collection[str] = ()
    ) -> VerifiedToken:
        """An access token of ours or of a configured external issuer, or an
        `AuthSidecarError` (a `TokenError`, ScopeMissingError, StoreUnavailableError)."""
        if not token:
            raise InvalidRequestError("token required")
        if "" in required_scopes:  # malformed, not a scope the token lacks (SCOPE_MISSING)
            raise InvalidRequestError("required_scopes must not contain an empty scope")
        now = self._clock.now()
        cache = self.cache
        if not cache.enabled or len(token) > self.max_token_bytes:
            checked = self._checked(self._parse(token), _ACCESS, route=True)
            self._admit(checked, now, audience, required_scopes)
            return checked.verified
        entry = cache.get(token)
        if entry is not None:
            issuer = entry.issuer
            keys = self.ring if issuer is None else issuer.keys
            if keys.get(entry.verified.kid) is entry.key:
                cache.hits += 1
                self._admit(entry, now, audience, required_scopes)
                return entry.verified
            cache.discard(token)  # its key was rotated out or replaced: verify afresh
        cache.misses += 1
        checked = self._checked(self._parse(token), _ACCESS, route=True)
        self._admit(checked, now, audience, required_scopes, token)
        return checked.verified

    def verify_batch(self, items: Sequence[VerifyItem]) -> list[VerifiedToken | AuthSidecarError]:
        """`verify` per item; an item's failure is its result, not the call's (VerifyBatch).

        More than `max_batch` items is an InvalidRequestError for the whole call: the cap
        bounds the work one request can ask for.
        """
        if len(items) > self._max_batch:
            raise InvalidRequestError(f"at most {self._max_batch} tokens per batch")
        results: list[VerifiedToken | AuthSidecarError] = []
        for token, audience, scopes in items:
            try:
                results.append(self.verify(token, audience=audience, required_scopes=scopes))
            except AuthSidecarError as error:
                results.append(error)
        return results

    async def verify_refetching(
        self, token: str, *, audience: str | None = None, required_scopes: Collection[str] = ()
    ) -> VerifiedToken:
        """`verify`, except that an external issuer's token naming a kid we do not know waits
        once for that issuer's key set to be fetched again (single flight, rate limited:
        keys/remote.py), so its first token after a rotation is accepted."""
        try:
            return self.verify(token, audience=audience, required_scopes=required_scopes)
        except _UnknownExternalKey as error:
            if not await error.issuer.keys.refetch(error.kid):
                raise UnknownKeyError() from None
        return self.verify(token, audience=audience, required_scopes=required_scopes)

    async def verify_batch_refetching(
        self, items: Sequence[VerifyItem]
    ) -> list[VerifiedToken | AuthSidecarError]:
        """`verify_batch` with `verify_refetching`'s one wait per item, so a batch accepts
        exactly what the same Verify calls would; many such items cost at most one fetch
        per issuer (the first waits for it, the others find the kid or the rate limit)."""
        results = self.verify_batch(items)
        for i, outcome in enumerate(results):
            if not isinstance(outcome, _UnknownExternalKey):
                continue
            results[i] = UnknownKeyError()
            if await outcome.issuer.keys.refetch(outcome.kid):
                token, audience, scopes = items[i]
                try:
                    results[i] = self.verify(token, audience=audience, required_scopes=scopes)
                except AuthSidecarError as error:
                    results[i] = error
        return results

    # -- our own tokens, uncached: Refresh, Introspect ----------------------------------

    def decode(self, token: str, kind: TokenKind, now: float) -> VerifiedToken:
        """One of our own tokens of `kind`, in its time window; revocation is the caller's."""
        checked = self._checked(self._parse(token), kind, route=False)
        self._in_window(checked, self._policies[kind], now)
        return checked.verified

    def introspect(self, token: str, now: float) -> VerifiedToken | None:
        """One of our own tokens of either kind (its `typ` says which), in its time window;
        None for anything else (RFC 7662: the reason is nobody's business)."""
        try:
            parsed = self._parse(token)
            kind = TokenKind.from_typ(parsed.header.get("typ"))
            if kind is None:
                return None
            checked = self._checked(parsed, kind, route=False)
            self._in_window(checked, self._policies[kind], now)
        except TokenError:
            return None
        return checked.verified

    # -- the steps ------------------------------------------------------------------------

    def _parse(self, token: str) -> ParsedJws:
        return parse_compact(token, max_bytes=self.max_token_bytes, known_headers=self._headers)

    def _checked(self, parsed: ParsedJws, kind: TokenKind, *, route: bool) -> _Checked:
        """key -> signature -> claims (static rules): what the cache may keep."""
        issuer: Issuer | None = None
        claims = None
        if route and self._issuers is not None:
            issuer, claims = self._issuers.route(parsed.payload)
        if issuer is None:
            key = checked_key(parsed, self.ring)
            policy = self._policies[kind]
        else:
            try:
                key = checked_key(parsed, issuer)
            except UnknownKeyError:
                raise _UnknownExternalKey(issuer, parsed.kid) from None
            policy = issuer.policy
        if not key.verify(parsed.signing_input, parsed.signature):
            raise BadSignatureError
        self._headers.remember(parsed.header_segment, parsed.header)
        if claims is None:
            claims = parse_claims(parsed.payload)
        try:
            typed, window = policy.check_static(parsed.header, claims, kind=kind)
        except TokenError as error:
            error.claiming(claims.get("sub"), claims.get("jti"))
            raise
        return _Checked(VerifiedToken(kind, key.kid, typed), window, key, issuer)

    def _in_window(
        self, checked: _Checked | CachedVerification, policy: ClaimsPolicy, now: float
    ) -> None:
        try:
            policy.check_window(checked.window, now)
        except TokenError as error:
            claims = checked.verified.claims
            error.claiming(claims.sub, claims.jti)
            raise

    def _admit(
        self,
        checked: _Checked | CachedVerification,
        now: float,
        audience: str | None,
        required_scopes: Collection[str],
        put: str | None = None,
    ) -> None:
        """The checks of every call, hit or miss: the time window (with the issuer's rules:
        its leeway may differ from ours), then, after a miss has been offered to the cache
        (`put`: the token text; stored from its second verification on), the per-call
        audience, revocation and scopes."""
        issuer = checked.issuer
        self._in_window(checked, self._policies[_ACCESS] if issuer is None else issuer.policy, now)
        if put is not None:
            cache = self.cache
            if cache.seen_before(put):
                cache.put(put, checked.verified, checked.key, issuer=issuer, window=checked.window)
        claims = checked.verified.claims
        try:
            if audience is not None and audience not in claims.aud:
                raise AudienceMismatchError
            if self._mirror.is_revoked(claims.iss, claims.jti, claims.sid):
                raise RevokedTokenError()
            if required_scopes and not claims.scopes.issuperset(required_scopes):
                raise ScopeMissingError()
        except AuthSidecarError as error:
            error.claiming(claims.sub, claims.jti)
            raise


class _Checked(NamedTuple):
    """A token past the static steps: the result, its time window as sent, the key that
    verified it and whose key that is (None: ours). Shaped like `CachedVerification`, so
    the checks of every call read a fresh result and a cached one alike."""

    verified: VerifiedToken
    window: TimeWindow
    key: KeyMaterial
    issuer: Issuer | None
