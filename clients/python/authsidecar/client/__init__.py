"""authsidecar.client: talk to the sidecar, and make any gRPC service a one-line integration.

Needs only grpcio, protobuf and googleapis-common-protos (for google.rpc.Status/ErrorInfo).
Never imports the sidecar itself.

* `AuthClient` / `AsyncAuthClient`: Issue, Verify, VerifyBatch, Refresh, Introspect, Revoke,
  GetJwks.
* `VerifyBatcher` / `AsyncVerifyBatcher`: `verify` as the client's, but concurrent callers
  share one VerifyBatch call.
* `BearerClientInterceptor` / `async_bearer_interceptors()`: outgoing calls carry a bearer
  token from a `TokenSource`; one retry with a renewed token on UNAUTHENTICATED.
* `AuthServerInterceptor` / `AsyncAuthServerInterceptor`: incoming calls are verified at the
  sidecar under an `AuthPolicy`; handlers read `current_claims()`. Decisions are cached and
  kept consistent by the sidecar's Watch stream, misses coalesced (`DecisionStats` from
  `stats()`).

Every implementation module is private (a leading underscore, as in httpx): import from
`authsidecar.client` only; `__all__` below is the public API, pinned by
tests/client/test_public_api.py.
"""

from authsidecar.client._async_batcher import AsyncVerifyBatcher
from authsidecar.client._async_client import AsyncAuthClient
from authsidecar.client._async_server import AsyncAuthServerInterceptor
from authsidecar.client._batcher import VerifyBatcher
from authsidecar.client._bearer import BearerClientInterceptor, async_bearer_interceptors
from authsidecar.client._client import AuthClient
from authsidecar.client._context import current_claims
from authsidecar.client._credentials import (
    AsyncCallableTokenSource,
    AsyncTokenSource,
    CallableTokenSource,
    StaticTokenSource,
    TokenSource,
    async_sidecar_token_source,
    bearer_call_credentials,
    sidecar_token_source,
)
from authsidecar.client._errors import (
    AuthClientError,
    InvalidRequestError,
    PermissionDeniedError,
    SidecarError,
    SidecarUnavailableError,
    TokenInvalidError,
    error_reason,
)
from authsidecar.client._models import Introspection, TokenGrant, VerifiedClaims, VerifyItem
from authsidecar.client._policy import DEFAULT_EXEMPT, AuthPolicy, MethodRule
from authsidecar.client._renewal import AsyncRenewingTokenSource, RenewingTokenSource
from authsidecar.client._server import AuthServerInterceptor
from authsidecar.client._stats import DecisionStats

__all__ = [
    "DEFAULT_EXEMPT",
    "AsyncAuthClient",
    "AsyncAuthServerInterceptor",
    "AsyncCallableTokenSource",
    "AsyncRenewingTokenSource",
    "AsyncTokenSource",
    "AsyncVerifyBatcher",
    "AuthClient",
    "AuthClientError",
    "AuthPolicy",
    "AuthServerInterceptor",
    "BearerClientInterceptor",
    "CallableTokenSource",
    "DecisionStats",
    "Introspection",
    "InvalidRequestError",
    "MethodRule",
    "PermissionDeniedError",
    "RenewingTokenSource",
    "SidecarError",
    "SidecarUnavailableError",
    "StaticTokenSource",
    "TokenGrant",
    "TokenInvalidError",
    "TokenSource",
    "VerifiedClaims",
    "VerifyBatcher",
    "VerifyItem",
    "async_bearer_interceptors",
    "async_sidecar_token_source",
    "bearer_call_credentials",
    "current_claims",
    "error_reason",
    "sidecar_token_source",
]
