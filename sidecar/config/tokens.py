"""The `tokens` section: what our own tokens say and how long they live, and Verify's limits."""

from __future__ import annotations

from pydantic import Field, model_validator

from sidecar.config.base import Frozen, IssuerName
from sidecar.tokens.options import TokenOptions


class TokenSettings(Frozen):
    issuer: IssuerName = "urn:authsidecar:local"
    # Verify accepts a token only if its `aud` names one of these (when any are set).
    audiences: tuple[str, ...] = ()
    # Issue uses this audience when the request names none.
    default_audience: tuple[str, ...] = ()
    access_ttl_s: int = Field(default=900, ge=1, le=86400)
    max_access_ttl_s: int = Field(default=3600, ge=1, le=86400)
    refresh_ttl_s: int = Field(default=86400, ge=60, le=90 * 86400)
    # No refresh token of a family is honoured after this, however often it rotated.
    family_ttl_s: int = Field(default=30 * 86400, ge=60, le=365 * 86400)
    leeway_s: int = Field(default=30, ge=0, le=300)
    max_token_bytes: int = Field(default=8192, ge=512, le=65536)
    # A retired refresh token presented again within this many seconds of its rotation gets
    # the same successor instead of revoking the family (a client that lost the response and
    # retries; docs/lifecycle.md). 0 disables the window: every replay is reuse.
    refresh_grace_s: int = Field(default=5, ge=0, le=300)
    # Verify's result cache (sidecar/tokens/cache.py; docs/performance.md): keyed by the
    # token's SHA-256, bounded by entries and estimated bytes; 0 entries disables it.
    verify_cache_entries: int = Field(default=10_000, ge=0, le=1_000_000)
    verify_cache_bytes: int = Field(default=32 << 20, ge=0, le=4 << 30)
    # Most tokens one VerifyBatch call may carry; more is INVALID_ARGUMENT / INVALID_REQUEST.
    max_verify_batch: int = Field(default=256, ge=1, le=10_000)
    # Threads that compute costly signatures (RSA, PS*, ES384, ES512) off the event loop's
    # thread (tokens/signing.py). Worth 1-2 only with an RSA/ES384/ES512 signing key AND a
    # spare core: each hand-off costs CPU, so on a CPU-bound host it is a loss (measured,
    # docs/performance.md). HMAC, ES256 and EdDSA keys sign in place whatever this says.
    # 0 (default): every signature on the event loop's thread.
    signing_threads: int = Field(default=0, ge=0, le=32)

    @model_validator(mode="after")
    def _ttls(self) -> TokenSettings:
        if self.access_ttl_s > self.max_access_ttl_s:
            raise ValueError("access_ttl_s may not exceed max_access_ttl_s")
        if self.refresh_ttl_s > self.family_ttl_s:
            raise ValueError("refresh_ttl_s may not exceed family_ttl_s")
        return self

    def options(self) -> TokenOptions:
        """The token engine's values (tokens/options.py); `signing_threads` sizes the signer
        the composition root builds, so it is not among them."""
        return self.to(TokenOptions)
