"""Audit log lines: one per Issue, Refresh and Revoke, and one per refused token.

Each is an INFO record on the `authsidecar.audit` logger whose fields ride in `record.audit`
(sidecar/logs.py prints them as JSON keys or `key=value`): event, outcome, sub, jti, reason,
method, peer, and the request id. Never the token: for a refused or revoked token the `sub` and
`jti` are what the token *claims* (`claims_verified: false`), cut to a short length, so an
operator can see who a refused token pretended to be.

A refusal's ids come from the error itself (`AuthSidecarError.claimed_sub/claimed_jti`): the
verifier attaches them once it has parsed the claim set, after the signature check, so the
refused token is not parsed a second time here, and a token refused before that (malformed,
unknown key, bad signature) names nobody. Revoke answers OK for anything (RFC 7009), so its
line parses the token's claims, unverified, within the token size cap (`claimed_ids`).
"""

from __future__ import annotations

import logging
from typing import Any

from sidecar.calls import current_call
from sidecar.errors import AuthSidecarError
from sidecar.tokens.jws import peek

audit_log = logging.getLogger("authsidecar.audit")
_MAX_FIELD = 128


def audit(
    event: str,
    outcome: str,
    *,
    sub: str = "",
    jti: str = "",
    reason: str = "",
    claims_verified: bool = True,
    **more: Any,
) -> None:
    call = current_call.get()
    fields: dict[str, Any] = {
        "event": event,
        "outcome": outcome,
        "sub": sub[:_MAX_FIELD],
        "jti": jti[:_MAX_FIELD],
        "reason": reason,
        "claims_verified": claims_verified,
        "method": call.method if call is not None else "",
        "peer": call.peer if call is not None else "",
        "request_id": call.request_id if call is not None else "",
        **more,
    }
    audit_log.info("audit %s %s", event, outcome, extra={"audit": fields})


def claimed_ids(token: str, max_bytes: int) -> tuple[str, str]:
    """`(sub, jti)` as the token states them, unverified: for audit lines only, never a decision."""
    if not token:
        return "", ""
    try:
        _, claims = peek(token, max_bytes=max_bytes)
    except (AuthSidecarError, ValueError, TypeError, RecursionError):
        return "", ""
    sub, jti = claims.get("sub"), claims.get("jti")
    return (
        sub[:_MAX_FIELD] if isinstance(sub, str) else "",
        jti[:_MAX_FIELD] if isinstance(jti, str) else "",
    )


def audit_refusal(rpc: str, error: AuthSidecarError, request: Any) -> None:
    """A refused call of the AuthService; the token it carried, if any, by the ids the
    verifier attached to the error."""
    sub, jti = error.claimed_sub, error.claimed_jti
    if not sub and isinstance(getattr(request, "subject", None), str):
        sub = request.subject  # Issue: the subject asked for
    audit(rpc.lower(), "refused", sub=sub, jti=jti, reason=error.reason, claims_verified=False)


def audit_issued(rpc: str, *, sub: str, jti: str, refresh: bool) -> None:
    """Issue or Refresh succeeded: the ids of the access token we just signed (from the
    claims we signed, not parsed back out of the token)."""
    audit(rpc.lower(), "ok", sub=sub, jti=jti, refresh_token=refresh)


def audit_revoked(token: str, max_bytes: int) -> None:
    """Revoke answered (RFC 7009: also for a foreign or invalid token, hence unverified ids,
    read only from a token within `max_bytes`, the token size cap)."""
    sub, jti = claimed_ids(token, max_bytes)
    audit("revoke", "ok", sub=sub, jti=jti, claims_verified=False)
