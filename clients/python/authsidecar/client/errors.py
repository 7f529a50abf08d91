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


def from_rpc_error(error: grpc.RpcError) -> AuthClientError:
    """The typed error for a failed sidecar call."""
    if isinstance(error, grpc.Call | grpc.aio.AioRpcError):
        code = error.code()
        message = error.details() or ""
    else:
        code, message = grpc.StatusCode.UNKNOWN, "call failed"
    cls = _CLASSES.get(code, SidecarError)
    return cls(code, error_reason(error), message)
