"""Typed, frozen results of sidecar calls, converted once from the protobuf replies.

Token text is kept out of `repr()` so a logged result never leaks a credential.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from google.protobuf import json_format, struct_pb2

from authsidecar.v1 import auth_pb2


@dataclass(frozen=True)
class TokenGrant:
    """An Issue or Refresh reply (RFC 6749 section 5.1)."""

    access_token: str = field(repr=False)
    token_type: str
    expires_in: int
    refresh_token: str = field(repr=False)
    scope: str


@dataclass(frozen=True)
class VerifiedClaims:
    """The claims of an access token the sidecar verified."""

    sub: str
    iss: str
    aud: tuple[str, ...]
    exp: int
    iat: int
    nbf: int
    jti: str
    scope: str
    client_id: str
    kid: str
    # Every claim of the token, registered ones included (JSON values).
    claims: Mapping[str, object] = field(default_factory=dict)

    @property
    def scopes(self) -> frozenset[str]:
        """The granted scope tokens (RFC 6749 section 3.3)."""
        return frozenset(self.scope.split())


@dataclass(frozen=True)
class Introspection:
    """An Introspect reply (RFC 7662 section 2.2); only `active` is set when inactive."""

    active: bool
    scope: str = ""
    client_id: str = ""
    username: str = ""
    token_type: str = ""
    exp: int = 0
    iat: int = 0
    nbf: int = 0
    sub: str = ""
    aud: tuple[str, ...] = ()
    iss: str = ""
    jti: str = ""
    claims: Mapping[str, object] = field(default_factory=dict)


def _claims(struct: struct_pb2.Struct) -> Mapping[str, object]:
    values: dict[str, object] = json_format.MessageToDict(struct)
    return MappingProxyType(values)


def grant_from(reply: auth_pb2.IssueResponse | auth_pb2.RefreshResponse) -> TokenGrant:
    return TokenGrant(
        access_token=reply.access_token,
        token_type=reply.token_type,
        expires_in=reply.expires_in,
        refresh_token=reply.refresh_token,
        scope=reply.scope,
    )


def claims_from(reply: auth_pb2.VerifyResponse) -> VerifiedClaims:
    return VerifiedClaims(
        sub=reply.sub,
        iss=reply.iss,
        aud=tuple(reply.aud),
        exp=reply.exp,
        iat=reply.iat,
        nbf=reply.nbf,
        jti=reply.jti,
        scope=reply.scope,
        client_id=reply.client_id,
        kid=reply.kid,
        claims=_claims(reply.claims),
    )


def introspection_from(reply: auth_pb2.IntrospectResponse) -> Introspection:
    if not reply.active:
        return Introspection(active=False)
    return Introspection(
        active=True,
        scope=reply.scope,
        client_id=reply.client_id,
        username=reply.username,
        token_type=reply.token_type,
        exp=reply.exp,
        iat=reply.iat,
        nbf=reply.nbf,
        sub=reply.sub,
        aud=tuple(reply.aud),
        iss=reply.iss,
        jti=reply.jti,
        claims=_claims(reply.claims),
    )


def issue_request(
    subject: str,
    audience: tuple[str, ...] | list[str],
    scope: str,
    claims: Mapping[str, object] | None,
    client_id: str,
    expires_in: int,
    refresh_token: bool,
) -> auth_pb2.IssueRequest:
    extra = struct_pb2.Struct()
    if claims:
        json_format.ParseDict(dict(claims), extra)
    return auth_pb2.IssueRequest(
        subject=subject,
        audience=list(audience),
        scope=scope,
        claims=extra,
        client_id=client_id,
        expires_in=expires_in,
        refresh_token=refresh_token,
    )
