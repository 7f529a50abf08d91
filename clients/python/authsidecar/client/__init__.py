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
"""

from authsidecar.client._watch_state import DecisionStats
from authsidecar.client.aio import AsyncAuthClient
from authsidecar.client.batching import AsyncVerifyBatcher, VerifyBatcher
from authsidecar.client.client import AuthClient
from authsidecar.client.client_interceptor import (
    BearerClientInterceptor,
    async_bearer_interceptors,
)
from authsidecar.client.context import current_claims
from authsidecar.client.credentials import (
    AsyncCallableTokenSource,
    AsyncTokenSource,
    CallableTokenSource,
    StaticTokenSource,
    TokenSource,
    async_sidecar_token_source,
    bearer_call_credentials,
    sidecar_token_source,
)
from authsidecar.client.errors import (
    AuthClientError,
    InvalidRequestError,
    PermissionDeniedError,
    SidecarError,
    SidecarUnavailableError,
    TokenInvalidError,
    error_reason,
)
from authsidecar.client.models import Introspection, TokenGrant, VerifiedClaims, VerifyItem
from authsidecar.client.policy import DEFAULT_EXEMPT, AuthPolicy, MethodRule
from authsidecar.client.renewal import AsyncRenewingTokenSource, RenewingTokenSource
from authsidecar.client.server_interceptor import (
    AsyncAuthServerInterceptor,
    AuthServerInterceptor,
)

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
