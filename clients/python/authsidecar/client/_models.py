"""Typed, frozen results of sidecar calls, converted once from the protobuf replies.

Token text is kept out of `repr()` so a logged result never leaks a credential.

Claims travel as a protobuf `Struct`, whose only number type is a double, so `exp` arrives
as `1800000900.0`. `json_numbers` turns every whole, finite number back into an `int` (JSON
itself does not tell 1 from 1.0, and every integer a JWT can carry in a double survives
exactly), and leaves other numbers `float`: `claims["exp"]` is an `int`, as in the token.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType

import grpc
from google.protobuf import json_format, struct_pb2

from authsidecar.client._errors import AuthClientError, error_for, error_for_reason
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
    # Every claim of the token, registered ones included (JSON values; whole numbers as
    # `int`, e.g. `claims["exp"]`, though protobuf's Struct carried them as doubles).
    claims: Mapping[str, object] = field(default_factory=dict)

    @property
    def scopes(self) -> frozenset[str]:
        """The granted scope tokens (RFC 6749 section 3.3)."""
        return frozenset(self.scope.split())


@dataclass(frozen=True)
class VerifyItem:
    """One token of a `verify_batch`, with the requirements Verify would be given for it."""

    token: str = field(repr=False)
    audience: str = ""
    required_scopes: tuple[str, ...] = ()


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


def json_numbers(value: object) -> object:
    """`value` with every whole, finite float (at any depth) as an `int`; see the module doc."""
    if isinstance(value, float):
        return int(value) if math.isfinite(value) and value.is_integer() else value
    if isinstance(value, dict):
        return {key: json_numbers(item) for key, item in value.items()}
    if isinstance(value, list):
        return [json_numbers(item) for item in value]
    return value


def _value(value: struct_pb2.Value) -> object:
    """One Struct value as `json_format.MessageToDict` gives it, then `json_numbers`, in one
    pass: a miss of the server interceptors converts every claim of every token it sees, and
    json_format's generic walk costs about twice this (tests/client/test_claim_numbers.py
    pins that both give the same values). A non-finite number raises ValueError, as
    json_format does; an unset value is None, as there."""
    kind = value.WhichOneof("kind")
    if kind == "string_value":
        return value.string_value
    if kind == "number_value":
        number = value.number_value
        if number.is_integer():
            return int(number)
        if not math.isfinite(number):
            raise ValueError("a claims Struct holds a non-finite number")
        return number
    if kind == "bool_value":
        return value.bool_value
    if kind == "struct_value":
        return {key: _value(item) for key, item in value.struct_value.fields.items()}
    if kind == "list_value":
        return [_value(item) for item in value.list_value.values]
    return None  # null_value, or no kind set


def _claims(struct: struct_pb2.Struct) -> Mapping[str, object]:
    return MappingProxyType({key: _value(item) for key, item in struct.fields.items()})


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


def batch_request(
    items: Iterable[str | VerifyItem], audience: str, required_scopes: Sequence[str]
) -> auth_pb2.VerifyBatchRequest:
    """A bare token takes the call's `audience`/`required_scopes`; a `VerifyItem` its own."""
    request = auth_pb2.VerifyBatchRequest()
    add = request.requests.add
    for item in items:
        if isinstance(item, str):
            add(token=item, audience=audience, required_scopes=required_scopes)
        else:
            add(token=item.token, audience=item.audience, required_scopes=item.required_scopes)
    return request


_REASON_NAMES = {number: name for name, number in auth_pb2.ErrorReason.items() if number}


def batch_results(
    reply: auth_pb2.VerifyBatchResponse, expected: int
) -> list[VerifiedClaims | AuthClientError]:
    """Per item, Verify's result or the error Verify would have raised, returned not raised.

    A reply that does not answer each request exactly once breaks the contract that pairs
    results[i] with requests[i]: that is raised, as one INTERNAL error for the whole call,
    rather than guessing which answer belongs to whom.
    """
    if len(reply.results) != expected:
        raise error_for(
            grpc.StatusCode.INTERNAL,
            "",
            f"VerifyBatch answered {len(reply.results)} results for {expected} requests",
        )
    results: list[VerifiedClaims | AuthClientError] = []
    for result in reply.results:
        outcome = result.WhichOneof("outcome")
        if outcome == "ok":
            results.append(claims_from(result.ok))
        elif outcome == "error" and result.error in _REASON_NAMES:
            results.append(error_for_reason(_REASON_NAMES[result.error]))
        else:  # neither set, UNSPECIFIED, or a reason newer than this library
            results.append(error_for(grpc.StatusCode.UNKNOWN, "", "VerifyBatch item unanswered"))
    return results


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
