"""Envoy's external authorization API: `envoy.service.auth.v3.Authorization/Check`.

An Envoy (or Istio) `ext_authz` HTTP filter sends the downstream request's headers; we take
the bearer token from `authorization`, run the same verification as Verify, and
answer with an OkHttpResponse that sets the configured claim headers, or a
DeniedHttpResponse:

* no bearer token: 401, `WWW-Authenticate: Bearer` (RFC 6750 section 3.1: no error code
  when the request carried no credentials);
* a refused token: 401, `Bearer error="invalid_token"`;
* a missing scope: 403, `Bearer error="insufficient_scope", scope="..."`;
* the store unavailable (store.on_unavailable = refuse): 503.

The reason code goes in `x-authsidecar-reason` and a small JSON body. The gRPC call itself
succeeds with the decision inside: Envoy treats a failed call as an error, not a denial.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping
from typing import Any, Protocol

import grpc
from google.rpc import code_pb2, status_pb2

from authsidecar.envoy.config.core.v3 import base_pb2
from authsidecar.envoy.service.auth.v3 import external_auth_pb2, external_auth_pb2_grpc
from authsidecar.envoy.type.v3 import http_status_pb2
from sidecar.calls import record_reason
from sidecar.config import EnvoySettings
from sidecar.errors import (
    AuthSidecarError,
    ClaimError,
    PermissionDeniedError,
    StoreUnavailableError,
    TokenError,
)
from sidecar.tokens.model import Claims, VerifiedToken
from sidecar.transport.audit import audit

AUTHORIZATION = "authorization"
REASON_HEADER = "x-authsidecar-reason"
TOKEN_MISSING = "TOKEN_MISSING"  # noqa: S105 - a reason code, not a secret
_OVERWRITE = base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD
# context_extensions keys a route's check_settings may set.
AUDIENCE_EXTENSION = "audience"
SCOPES_EXTENSION = "required_scopes"


class Verifying(Protocol):
    """All Check asks of the token engine: Verify's own call (TokenService is one)."""

    async def verify_refetching(
        self, token: str, *, audience: str | None = None, required_scopes: Collection[str] = ()
    ) -> VerifiedToken: ...


class ExtAuthzServicer(external_auth_pb2_grpc.AuthorizationServicer):
    def __init__(self, verifier: Verifying, settings: EnvoySettings) -> None:
        self._verifier = verifier
        self._settings = settings

    async def Check(
        self,
        request: external_auth_pb2.CheckRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> external_auth_pb2.CheckResponse:
        attributes = request.attributes
        http = attributes.request.http
        token = bearer_token(http.headers, http.header_map.headers)
        extensions = attributes.context_extensions
        audience = extensions.get(AUDIENCE_EXTENSION) or self._settings.audience
        scopes_text = extensions.get(SCOPES_EXTENSION)
        scopes = tuple(scopes_text.split()) if scopes_text else self._settings.required_scopes
        caller = attributes.source.principal or attributes.source.service
        if token is None:
            return self._deny(TOKEN_MISSING, 401, 'Bearer realm="authsidecar"', caller, "")
        try:
            verified = await self._verifier.verify_refetching(
                token, audience=audience, required_scopes=scopes
            )
        except AuthSidecarError as error:
            return self._refused(error, scopes, caller)
        try:
            return self._allow(verified.claims)
        except Exception:
            # A claim a header or protobuf cannot carry (issue 13, finding 3): the verifier
            # refuses those itself; this backstop refuses the token the same way, never
            # failing the call (Envoy would read that as an error, not a denial).
            unrepresentable = ClaimError("claims", "claim value cannot be represented")
            return self._refused(unrepresentable, scopes, caller)

    def _allow(self, claims: Claims) -> external_auth_pb2.CheckResponse:
        headers = []
        remove = [AUTHORIZATION] if self._settings.strip_authorization else []
        values = claims.all
        for claim, header in self._settings.forward_claims_headers.items():
            value = header_value(values.get(claim))
            if value is None:
                # Absent claim: drop whatever the client sent under that name.
                remove.append(header)
            else:
                headers.append(_header(header, value))
        return external_auth_pb2.CheckResponse(
            status=status_pb2.Status(code=code_pb2.OK),
            ok_response=external_auth_pb2.OkHttpResponse(headers=headers, headers_to_remove=remove),
        )

    def _refused(
        self, error: AuthSidecarError, scopes: tuple[str, ...], caller: str
    ) -> external_auth_pb2.CheckResponse:
        # The ids the refused token claims, as the verifier attached them (transport/audit.py).
        sub, jti = error.claimed_sub, error.claimed_jti
        if isinstance(error, PermissionDeniedError):
            scope = " ".join(scopes).replace('"', "")
            challenge = f'Bearer error="insufficient_scope", scope="{scope}"'
            return self._deny(error.reason, 403, challenge, caller, sub, jti)
        if isinstance(error, StoreUnavailableError):
            return self._deny(error.reason, 503, "", caller, sub, jti)
        if isinstance(error, TokenError):
            challenge = 'Bearer error="invalid_token"'
        else:  # an empty token (INVALID_REQUEST) is a request without credentials
            challenge = 'Bearer realm="authsidecar"'
        return self._deny(error.reason, 401, challenge, caller, sub, jti)

    def _deny(
        self,
        reason: str,
        http_code: int,
        challenge: str,
        caller: str,
        sub: str,
        jti: str = "",
    ) -> external_auth_pb2.CheckResponse:
        record_reason(reason)
        audit("token_refused", "denied", sub=sub, jti=jti, reason=reason,
              claims_verified=False, caller=caller)  # fmt: skip
        headers = [_header(REASON_HEADER, reason), _header("content-type", "application/json")]
        if challenge:
            headers.append(_header("www-authenticate", challenge))
        error = {401: "invalid_token", 403: "insufficient_scope"}.get(http_code, "unavailable")
        if reason == TOKEN_MISSING:
            error = "unauthorized"
        grpc_code = {401: code_pb2.UNAUTHENTICATED, 403: code_pb2.PERMISSION_DENIED}
        return external_auth_pb2.CheckResponse(
            status=status_pb2.Status(
                code=grpc_code.get(http_code, code_pb2.UNAVAILABLE), message=reason
            ),
            denied_response=external_auth_pb2.DeniedHttpResponse(
                status=http_status_pb2.HttpStatus(code=http_code),  # type: ignore[arg-type]
                headers=headers,
                body=json.dumps({"error": error, "reason": reason}),
            ),
        )


def bearer_token(headers: Mapping[str, str], header_map: Any = ()) -> str | None:
    """The token of an `Authorization: Bearer <token>` header (RFC 6750 section 2.1); the
    scheme is case-insensitive (RFC 9110 section 11.1). None when there is no such header."""
    value = headers.get(AUTHORIZATION)
    if value is None:
        for entry in header_map:
            if entry.key.lower() == AUTHORIZATION:
                value = entry.raw_value.decode("latin-1") if entry.raw_value else entry.value
                break
    if not value:
        return None
    scheme, _, token = value.strip().partition(" ")
    if scheme.lower() != "bearer":
        return None
    return token.strip() or None


def header_value(value: Any) -> str | None:
    """A claim as one header value: strings as they are, lists space-joined (as `scope` is),
    numbers and booleans in JSON form, objects as compact JSON. Control characters (which
    could split a header) make the claim unforwardable: None, like an absent claim."""
    if value is None:
        return None
    if isinstance(value, str):
        text = value
    elif isinstance(value, list | tuple) and all(isinstance(v, str) for v in value):
        text = " ".join(value)
    else:
        text = json.dumps(value, separators=(",", ":"), sort_keys=True)
    if any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in text):
        return None
    return text


def _header(key: str, value: str) -> base_pb2.HeaderValueOption:
    return base_pb2.HeaderValueOption(
        header=base_pb2.HeaderValue(key=key, value=value), append_action=_OVERWRITE
    )
