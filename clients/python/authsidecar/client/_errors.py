"""Every failure the client library reports, with the sidecar's reason code.

The sidecar puts a `google.rpc.ErrorInfo` (domain `authsidecar.v1`) in the status details of
every failed call; its `reason` is the contract (see `ErrorReason` in auth.proto), the status
message is for humans. One class per status family, so a caller can catch "bad token" apart
from "sidecar down"::

    AuthClientError                  .code (grpc.StatusCode)  .reason (ErrorInfo.reason or "")
    ├─ InvalidRequestError           INVALID_ARGUMENT   INVALID_REQUEST, METADATA_TOO_LARGE
    ├─ TokenInvalidError             UNAUTHENTICATED    TOKEN_EXPIRED, TOKEN_REVOKED, ...
    ├─ PermissionDeniedError         PERMISSION_DENIED  SCOPE_MISSING, CALLER_NOT_ALLOWED
    ├─ SidecarUnavailableError       UNAVAILABLE, DEADLINE_EXCEEDED (after retries)
    └─ SidecarError                  anything else (INTERNAL, UNIMPLEMENTED, ...)
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

import grpc
from google.protobuf.message import DecodeError
from google.rpc import error_details_pb2, status_pb2

ERROR_DOMAIN = "authsidecar.v1"
STATUS_DETAILS_KEY = "grpc-status-details-bin"


class AuthClientError(Exception):
    """Root of every error this library raises on purpose."""

    def __init__(self, code: grpc.StatusCode, reason: str, message: str) -> None:
        label = f"{code.name} {reason}" if reason else code.name
        super().__init__(f"{label}: {message}")
        self.code = code
        self.reason = reason
        self.message = message


class InvalidRequestError(AuthClientError):
    """The sidecar found the request itself malformed (INVALID_ARGUMENT)."""


class TokenInvalidError(AuthClientError):
    """The token was refused (UNAUTHENTICATED); `reason` says why (TOKEN_EXPIRED, ...)."""


class PermissionDeniedError(AuthClientError):
    """A valid token lacking a scope, or a caller not allowed (PERMISSION_DENIED)."""


class SidecarUnavailableError(AuthClientError):
    """The sidecar could not be reached or answered in time, after the retries."""


class SidecarError(AuthClientError):
    """Any other failure (INTERNAL, UNIMPLEMENTED, ...)."""


_CLASSES: dict[grpc.StatusCode, type[AuthClientError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidRequestError,
    grpc.StatusCode.UNAUTHENTICATED: TokenInvalidError,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDeniedError,
    grpc.StatusCode.UNAVAILABLE: SidecarUnavailableError,
    grpc.StatusCode.DEADLINE_EXCEEDED: SidecarUnavailableError,
}


def error_reason(call: grpc.RpcError) -> str:
    """The ErrorInfo reason of a failed call (sync or asyncio), or "" when there is none.

    Reads `grpc-status-details-bin` directly, so it works for `grpc.aio.AioRpcError` as well
    as for sync calls, and ignores ErrorInfo from other domains.
    """
    trailing = None
    if isinstance(call, grpc.Call | grpc.aio.AioRpcError):
        trailing = call.trailing_metadata()
    for key, value in trailing or ():
        if key != STATUS_DETAILS_KEY or not isinstance(value, bytes):
            continue
        status = status_pb2.Status()
        try:
            status.ParseFromString(value)
        except DecodeError:
            return ""
        for detail in status.details:
            info = error_details_pb2.ErrorInfo()
            if detail.Unpack(info) and info.domain == ERROR_DOMAIN:
                return str(info.reason)
    return ""


def error_for(code: grpc.StatusCode, reason: str, message: str) -> AuthClientError:
    """The typed error for a status code: the one place a code picks its class."""
    return _CLASSES.get(code, SidecarError)(code, reason, message)


def from_rpc_error(error: grpc.RpcError) -> AuthClientError:
    """The typed error for a failed sidecar call."""
    if isinstance(error, grpc.Call | grpc.aio.AioRpcError):
        code = error.code()
        message = error.details() or ""
    else:
        code, message = grpc.StatusCode.UNKNOWN, "call failed"
    return error_for(code, error_reason(error), message)


_C = grpc.StatusCode
# The gRPC status each `ErrorReason` comes with, exactly as auth.proto documents it ("[CODE]"
# in each value's comment; a test holds this table to those comments). A VerifyBatch item
# carries only the reason, so this table is what makes its error the one Verify would raise.
REASON_CODES: Mapping[str, grpc.StatusCode] = MappingProxyType(
    {
        "INVALID_REQUEST": _C.INVALID_ARGUMENT,
        "TOKEN_MALFORMED": _C.UNAUTHENTICATED,
        "TOKEN_TOO_LARGE": _C.UNAUTHENTICATED,
        "ALGORITHM_NOT_ALLOWED": _C.UNAUTHENTICATED,
        "KEY_UNKNOWN": _C.UNAUTHENTICATED,
        "SIGNATURE_INVALID": _C.UNAUTHENTICATED,
        "TOKEN_EXPIRED": _C.UNAUTHENTICATED,
        "TOKEN_NOT_YET_VALID": _C.UNAUTHENTICATED,
        "AUDIENCE_MISMATCH": _C.UNAUTHENTICATED,
        "ISSUER_MISMATCH": _C.UNAUTHENTICATED,
        "CLAIM_MISSING": _C.UNAUTHENTICATED,
        "CLAIM_INVALID": _C.UNAUTHENTICATED,
        "TOKEN_REVOKED": _C.UNAUTHENTICATED,
        "WRONG_TOKEN_TYPE": _C.UNAUTHENTICATED,
        "REFRESH_TOKEN_REUSED": _C.UNAUTHENTICATED,
        "SCOPE_MISSING": _C.PERMISSION_DENIED,
        "CALLER_NOT_ALLOWED": _C.PERMISSION_DENIED,
        "STORE_UNAVAILABLE": _C.UNAVAILABLE,
        "METADATA_TOO_LARGE": _C.INVALID_ARGUMENT,
        "INTERNAL_ERROR": _C.INTERNAL,
        "TOKEN_MISSING": _C.UNAUTHENTICATED,
        "WATCH_SUBSCRIBER_LIMIT": _C.RESOURCE_EXHAUSTED,
        "WATCH_SUBSCRIBER_DROPPED": _C.UNAVAILABLE,
        "SHUTTING_DOWN": _C.UNAVAILABLE,
        "NO_SIGNING_KEY": _C.FAILED_PRECONDITION,
    }
)


def error_for_reason(reason: str) -> AuthClientError:
    """The error Verify raises for `reason`, for a VerifyBatch item that failed with it.

    Class, `code` and `reason` are Verify's; the message is generic ("token expired"), as the
    sidecar's own messages are, since only the reason is the contract. A reason this library
    does not know (a newer sidecar) is an INTERNAL `SidecarError` that still carries it.
    """
    code = REASON_CODES.get(reason, _C.INTERNAL)
    return error_for(code, reason, reason.lower().replace("_", " "))
