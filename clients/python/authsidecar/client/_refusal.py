"""How the server interceptors refuse a call: a status with ErrorInfo, as the sidecar does.

The reason is always one of auth.proto's `ErrorReason` names, in a `google.rpc.ErrorInfo`
with domain `authsidecar.v1` in `grpc-status-details-bin`, so a caller reads a refusal by a
service exactly as it reads one by the sidecar (`errors.error_reason`).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple

import grpc
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2

from authsidecar.client._errors import (
    ERROR_DOMAIN,
    STATUS_DETAILS_KEY,
    AuthClientError,
    InvalidRequestError,
    PermissionDeniedError,
    SidecarUnavailableError,
    TokenInvalidError,
    error_for_reason,
)

# An absent or non-Bearer authorization header, or "Bearer " with nothing after it: the caller
# sent no token at all, which its developer must be able to tell from a bad one (RFC 6750
# section 3.1 leaves the error code out in that case; the ErrorInfo reason says it).
MISSING_TOKEN_REASON = "TOKEN_MISSING"  # noqa: S105 -- a reason code, not a secret


class Refusal(NamedTuple):
    code: grpc.StatusCode
    reason: str
    message: str

    def trailing_metadata(self) -> tuple[tuple[str, str | bytes], ...]:
        if not self.reason:
            return ()
        info = error_details_pb2.ErrorInfo(reason=self.reason, domain=ERROR_DOMAIN)
        detail = any_pb2.Any()
        detail.Pack(info)
        status = status_pb2.Status(code=self.code.value[0], message=self.message, details=[detail])
        return ((STATUS_DETAILS_KEY, status.SerializeToString()),)

    def status(self) -> grpc.Status:
        return _Status(self.code, self.message, self.trailing_metadata())


class _StatusFields(NamedTuple):
    code: grpc.StatusCode
    details: str
    trailing_metadata: tuple[tuple[str, str | bytes], ...]


class _Status(_StatusFields, grpc.Status):
    """grpc.Status is abstract; what `ServicerContext.abort_with_status` takes."""


MISSING_TOKEN = Refusal(
    grpc.StatusCode.UNAUTHENTICATED, MISSING_TOKEN_REASON, "missing bearer token"
)
EXPIRED_MID_STREAM = Refusal(grpc.StatusCode.UNAUTHENTICATED, "TOKEN_EXPIRED", "token expired")


def refusal_for(error: AuthClientError) -> Refusal:
    """The status a service answers with when the sidecar refused (or failed) a Verify."""
    if isinstance(error, TokenInvalidError):
        return Refusal(grpc.StatusCode.UNAUTHENTICATED, error.reason, "invalid token")
    if isinstance(error, InvalidRequestError):  # e.g. "Bearer " with nothing after it
        return Refusal(grpc.StatusCode.UNAUTHENTICATED, MISSING_TOKEN_REASON, "invalid token")
    if isinstance(error, PermissionDeniedError):
        return Refusal(grpc.StatusCode.PERMISSION_DENIED, error.reason, "permission denied")
    if isinstance(error, SidecarUnavailableError):
        # No reason when the sidecar is unreachable; STORE_UNAVAILABLE when it said so.
        return Refusal(grpc.StatusCode.UNAVAILABLE, error.reason, "authentication unavailable")
    return Refusal(grpc.StatusCode.INTERNAL, "INTERNAL_ERROR", "internal error")


# A cached decision that a revocation event voided (`_decisions.REVOKED`): answered exactly as
# the sidecar's own refusal of that token is answered, built by the same function from the
# error that Verify and VerifyBatch both raise for it.
REVOKED = refusal_for(error_for_reason("TOKEN_REVOKED"))


def bearer_token(metadata: Iterable[tuple[str, str | bytes]] | None) -> str | None:
    """The token of `authorization: Bearer <token>` (scheme case-insensitive, RFC 7235)."""
    for key, value in metadata or ():
        if key == "authorization" and isinstance(value, str):
            if value.startswith("Bearer "):  # as nearly every caller spells it
                token = value[7:]
            else:
                scheme, _, token = value.partition(" ")
                if scheme.lower() != "bearer":
                    return None
            return token.strip() or None
    return None
