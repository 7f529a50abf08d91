"""`current_claims()`: the verified claims of the call being handled.

The server interceptors bind the claims in a `contextvars.ContextVar` around the handler
(grpc's own examples hand per-call state to handlers this way). Sync handlers run in a
copied context per call, so claims never leak from one call to the next on a pooled thread;
asyncio handlers run in a task per call, which copies the context anyway.
"""

from __future__ import annotations

from contextvars import ContextVar

from authsidecar.client._models import VerifiedClaims

_claims: ContextVar[VerifiedClaims | None] = ContextVar("authsidecar_claims", default=None)


def current_claims() -> VerifiedClaims | None:
    """The caller's verified claims; None outside a call or in a public method."""
    return _claims.get()


def bind_claims(claims: VerifiedClaims | None) -> None:
    """Set the claims for the current context (the interceptors' job, and tests')."""
    _claims.set(claims)
