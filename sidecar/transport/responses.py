"""Domain results as AuthService response messages: the protobuf side of every answer.

Pure conversion, no decisions: each function maps a result the token engine already decided
(a verified token, a grant, an introspection) to its message. The one refusal made here is
the backstop for a claim a response cannot carry (`unrepresentable`), so that such a token is
refused with a precise reason, never INTERNAL.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, TypeVar

from google.protobuf import struct_pb2

from authsidecar.v1 import auth_pb2
from sidecar.calls import record_reason
from sidecar.errors import AuthSidecarError, ClaimError
from sidecar.tokens.model import Claims, Introspection, TokenGrant, VerifiedToken
from sidecar.transport.ratelimit import RateLimitedLog
from sidecar.transport.structs import fill_struct

__all__ = [
    "MAX_MEMO_ENTRIES",
    "ResponseMemo",
    "batch_response",
    "grant_response",
    "introspect_response",
    "memo_size",
    "unrepresentable_log",
    "verify_response",
]

log = logging.getLogger(__name__)


def _fill_verify_response(response: auth_pb2.VerifyResponse, verified: VerifiedToken) -> None:
    """In place, so a VerifyBatch item is built inside its parent: no message copies."""
    claims = verified.claims
    response.sub = claims.sub
    response.iss = claims.iss
    response.aud.extend(claims.aud)
    response.exp = claims.exp
    response.iat = claims.iat
    response.nbf = claims.nbf
    response.jti = claims.jti
    response.scope = claims.scope
    response.client_id = claims.client_id
    response.kid = verified.kid
    # The bytes of `response.claims.update(claims.all)`, ~40% cheaper (transport/structs.py).
    fill_struct(response.claims, claims.all)


def verify_response(
    verified: VerifiedToken, refusals: RateLimitedLog | None = None
) -> auth_pb2.VerifyResponse:
    response = auth_pb2.VerifyResponse()
    try:
        _fill_verify_response(response, verified)
    except Exception:
        raise _unrepresentable(verified.claims.all, refusals) from None
    return response


# A verified token whose claims a response cannot carry (issue 13, finding 3): a number a
# protobuf Struct (a double) cannot hold, a string protobuf cannot encode. The verifier
# refuses such claims itself (CLAIM_INVALID); this is the transport's backstop, so that even
# a value it missed is refused with that reason, never INTERNAL, and a VerifyBatch item that
# hits it fails alone. Logged at most once a minute (`unrepresentable_log`).
_CLAIM_NAME_MAX = 64


def unrepresentable_log() -> RateLimitedLog:
    return RateLimitedLog(
        log, "verified token(s) refused CLAIM_INVALID: a claim cannot be carried in a response"
    )


def _unrepresentable(values: dict[str, Any], refusals: RateLimitedLog | None) -> ClaimError:
    """CLAIM_INVALID naming the first claim that cannot be put in a Struct, when its name
    itself is printable and short (it goes into ErrorInfo metadata), else "claims"."""
    culprit = "claims"
    for name, value in values.items():
        try:
            fill_struct(struct_pb2.Struct(), {name: value})
        except Exception:
            if name.isprintable() and len(name) <= _CLAIM_NAME_MAX and name.isascii():
                culprit = name
            break
    if refusals is not None:
        refusals.note(culprit)
    return ClaimError(culprit, "claim value cannot be represented")


# Built responses kept for tokens served from the verify cache: building one (Struct included)
# costs ~3x a cache hit. Bounded by entries; ~2 KiB each (docs/performance.md).
MAX_MEMO_ENTRIES = 1024


def memo_size(verify_cache_entries: int, verify_cache_bytes: int) -> int:
    """The memo's bound for a verify cache of this size: only tokens the cache serves come
    back as the same object, so a memo larger than the cache could never hit, and with the
    cache off (either bound 0) nothing could."""
    if verify_cache_entries <= 0 or verify_cache_bytes <= 0:
        return 0
    return min(verify_cache_entries, MAX_MEMO_ENTRIES)


class ResponseMemo:
    """VerifyResponse by the identity of a VerifiedToken from the verify cache.

    A serialisation memo only, and so kept in transport: it decides nothing. It is consulted
    after the verifier returned, i.e. after every check of the call ran (tokens/verifier.py
    owns what is cached and what is re-checked), and it maps a verified result to its
    protobuf form, a pure function of the (frozen) VerifiedToken. A refused token never
    reaches it; a token the verifier accepts again gets the message built the first time.

    Keyed by `id()` and checked with `is`: the memo holds the VerifiedToken itself, so its id
    cannot be reused by another object while the entry lives. A response is never mutated
    after it is built, so handing the same message to several calls is safe.

    Only results the verify cache holds enter (`holds`): any other result is never handed
    out again, and keeping it (and its response) alive made every cold Verify ~4.7 µs
    dearer (HS256 verify + response, thread CPU in-process: 26.3 vs 21.5 µs; issue 15).
    A plain dict emptied when full, not an LRU: an insert is a dict store. Emptying costs a
    hot token one rebuild per `max_entries` stored tokens, and the tokens that matter (a
    service's few, presented on every call) are back after one call.
    """

    def __init__(
        self,
        max_entries: int,
        refusals: RateLimitedLog | None = None,
        holds: Callable[[VerifiedToken], bool] = lambda _: True,
    ) -> None:
        self._entries: dict[int, tuple[VerifiedToken, auth_pb2.VerifyResponse]] = {}
        self._max_entries = max_entries
        self._refusals = refusals
        self._holds = holds

    def __len__(self) -> int:
        return len(self._entries)

    def response(self, verified: VerifiedToken) -> auth_pb2.VerifyResponse:
        entries = self._entries
        entry = entries.get(id(verified))
        if entry is not None and entry[0] is verified:
            return entry[1]
        response = verify_response(verified, self._refusals)
        if self._max_entries > 0 and self._holds(verified):
            if len(entries) >= self._max_entries:
                entries.clear()
            entries[id(verified)] = (verified, response)
        return response


# ErrorInfo reasons by name -> the enum VerifyBatch carries; anything unlisted is internal.
_REASONS = {name: number for name, number in auth_pb2.ErrorReason.items() if number}


def batch_response(
    outcomes: list[VerifiedToken | AuthSidecarError], refusals: RateLimitedLog | None = None
) -> auth_pb2.VerifyBatchResponse:
    response = auth_pb2.VerifyBatchResponse()
    add = response.results.add
    for outcome in outcomes:
        item = add()
        if isinstance(outcome, AuthSidecarError):
            if outcome.reason not in _REASONS:
                log.error("VerifyBatch item failed with unlisted reason %s", outcome.reason)
            item.error = _REASONS.get(outcome.reason, auth_pb2.INTERNAL_ERROR)
            continue
        try:
            _fill_verify_response(item.ok, outcome)
        except Exception:
            # This item alone fails; the others keep their results.
            item.Clear()
            item.error = _REASONS[_unrepresentable(outcome.claims.all, refusals).reason]
    return response


_GrantResponse = TypeVar("_GrantResponse", auth_pb2.IssueResponse, auth_pb2.RefreshResponse)


def grant_response(cls: type[_GrantResponse], grant: TokenGrant) -> _GrantResponse:
    return cls(
        access_token=grant.access_token,
        token_type=grant.token_type,
        expires_in=grant.expires_in,
        refresh_token=grant.refresh_token,
        scope=grant.scope,
    )


def introspect_response(
    result: Introspection, refusals: RateLimitedLog | None = None
) -> auth_pb2.IntrospectResponse:
    """An active token's claims, or inactive. A token whose claims a response cannot carry
    is refused like any invalid one: inactive, the reason in logs and metrics."""
    if not result.active or result.claims is None:
        return auth_pb2.IntrospectResponse(active=False)
    claims = result.claims
    username = claims.all.get("username")
    try:
        return auth_pb2.IntrospectResponse(
            active=True,
            token_type=result.token_type,
            username=username if isinstance(username, str) else "",
            claims=_struct(claims.all),
            **_claim_fields(claims),
        )
    except Exception:
        record_reason(_unrepresentable(claims.all, refusals).reason)
        return auth_pb2.IntrospectResponse(active=False)


def _struct(values: dict[str, Any]) -> struct_pb2.Struct:
    struct = struct_pb2.Struct()
    # Struct.update gives every JSON value its protobuf form (ints become doubles) and the
    # same bytes as the JSON round trip it replaced, at a quarter of the cost (issue 7).
    struct.update(values)
    return struct


def _claim_fields(claims: Claims) -> dict[str, Any]:
    return {
        "sub": claims.sub,
        "iss": claims.iss,
        "aud": list(claims.aud),
        "exp": claims.exp,
        "iat": claims.iat,
        "nbf": claims.nbf,
        "jti": claims.jti,
        "scope": claims.scope,
        "client_id": claims.client_id,
    }
