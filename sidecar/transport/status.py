"""One table from domain errors to gRPC status codes, and the ErrorInfo detail we attach.

Clients read `google.rpc.ErrorInfo.reason` from `grpc-status-details-bin` (AIP-193); the
status message is a generic, human sentence. Nothing from the token or a library exception
is ever put in either.
"""

from __future__ import annotations

import grpc
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from sidecar.errors import (
    AuthSidecarError,
    InvalidRequestError,
    NoSigningKeyError,
    PermissionDeniedError,
    ShuttingDownError,
    StoreUnavailableError,
    SubscriberDroppedError,
    SubscriberLimitError,
    TokenError,
)

ERROR_DOMAIN = "authsidecar.v1"

_CODES: tuple[tuple[type[AuthSidecarError], grpc.StatusCode], ...] = (
    (InvalidRequestError, grpc.StatusCode.INVALID_ARGUMENT),
    (TokenError, grpc.StatusCode.UNAUTHENTICATED),
    (PermissionDeniedError, grpc.StatusCode.PERMISSION_DENIED),
    (StoreUnavailableError, grpc.StatusCode.UNAVAILABLE),
    (SubscriberDroppedError, grpc.StatusCode.UNAVAILABLE),
    (ShuttingDownError, grpc.StatusCode.UNAVAILABLE),
    (SubscriberLimitError, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (NoSigningKeyError, grpc.StatusCode.FAILED_PRECONDITION),
)


def status_code(error: AuthSidecarError) -> grpc.StatusCode:
    for cls, code in _CODES:
        if isinstance(error, cls):
            return code
    return grpc.StatusCode.INTERNAL


def to_status(error: AuthSidecarError) -> grpc.Status:
    code = status_code(error)
    info = error_details_pb2.ErrorInfo(reason=error.reason, domain=ERROR_DOMAIN)
    claim = getattr(error, "claim", None)
    if isinstance(claim, str):
        info.metadata["claim"] = claim
    detail = any_pb2.Any()
    detail.Pack(info)
    message = error.detail if code is not grpc.StatusCode.INTERNAL else "internal error"
    status: grpc.Status = rpc_status.to_status(
        status_pb2.Status(code=code.value[0], message=message, details=[detail])
    )
    return status


def internal_status() -> grpc.Status:
    return to_status(AuthSidecarError())
