"""Building the claim sets the sidecar signs, and refusing what a caller may not ask for.

The caller chooses subject, audience, scope and extra claims; the sidecar alone chooses the
registered claims (RFC 7519 section 4.1), `typ` and the key. Caller headers never reach the
JWS encoder (python-jose lets `headers=` override `alg`; we never pass any).
"""

from __future__ import annotations

import json
import math
import re
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sidecar.errors import InvalidRequestError
from sidecar.tokens.model import RESERVED_CLAIMS

# RFC 6749 section 3.3: scope-token = 1*( %x21 / %x23-5B / %x5D-7E )
_SCOPE_TOKEN = re.compile(r"[\x21\x23-\x5b\x5d-\x7e]+")
MAX_SUBJECT_CHARS = 256
MAX_AUDIENCES = 16
MAX_SCOPE_CHARS = 2048
MAX_CLAIMS_BYTES = 4096
_MAX_SAFE_INT = 2**53


def new_id() -> str:
    """A 128-bit random identifier for `jti` and family ids (RFC 7519 section 4.1.7)."""
    return secrets.token_urlsafe(16)


@dataclass(frozen=True, slots=True)
class IssueRequest:
    """What a caller asks Issue for, already checked (see `checked_request`)."""

    subject: str
    audience: tuple[str, ...]
    scope: str
    client_id: str
    # Canonical JSON text of the extra claims: stored with a refresh family as it is.
    claims_json: str
    expires_in: int
    refresh: bool

    @property
    def extra_claims(self) -> dict[str, Any]:
        loaded: dict[str, Any] = json.loads(self.claims_json)
        return loaded


def normalise_scope(scope: str) -> str:
    """Space-delimited, de-duplicated, order kept; refuses characters RFC 6749 forbids."""
    if len(scope) > MAX_SCOPE_CHARS:
        raise InvalidRequestError("scope too long")
    seen: dict[str, None] = {}
    for token in scope.split(" "):
        if not token:
            continue
        if not _SCOPE_TOKEN.fullmatch(token):
            raise InvalidRequestError("scope contains a character RFC 6749 section 3.3 forbids")
        seen.setdefault(token, None)
    return " ".join(seen)


def checked_request(
    *,
    subject: str,
    audience: Sequence[str],
    scope: str,
    claims: Mapping[str, Any],
    client_id: str,
    expires_in: int,
    refresh: bool,
    default_audience: Sequence[str],
    default_ttl_s: int,
    max_ttl_s: int,
) -> IssueRequest:
    if not subject or len(subject) > MAX_SUBJECT_CHARS or not subject.isprintable():
        raise InvalidRequestError(f"subject must be 1-{MAX_SUBJECT_CHARS} printable characters")
    audiences = tuple(dict.fromkeys(audience or default_audience))
    if not audiences:
        raise InvalidRequestError("audience required (no default audience is configured)")
    if len(audiences) > MAX_AUDIENCES or any(not a or not a.isprintable() for a in audiences):
        raise InvalidRequestError(f"audience must be 1-{MAX_AUDIENCES} non-empty strings")
    if client_id and (len(client_id) > MAX_SUBJECT_CHARS or not client_id.isprintable()):
        raise InvalidRequestError("client_id must be printable and at most 256 characters")
    if expires_in < 0:
        raise InvalidRequestError("expires_in may not be negative")
    reserved = sorted(RESERVED_CLAIMS.intersection(claims))
    if reserved:
        raise InvalidRequestError(f"claims may not set reserved claims: {', '.join(reserved)}")
    claims_json = json.dumps(
        {key: _json_value(value) for key, value in claims.items()},
        separators=(",", ":"),
        sort_keys=True,
        allow_nan=False,
        ensure_ascii=False,
    )
    if len(claims_json.encode("utf-8")) > MAX_CLAIMS_BYTES:
        raise InvalidRequestError(f"claims larger than {MAX_CLAIMS_BYTES} bytes")
    return IssueRequest(
        subject=subject,
        audience=audiences,
        scope=normalise_scope(scope),
        client_id=client_id,
        claims_json=claims_json,
        expires_in=min(expires_in or default_ttl_s, max_ttl_s),
        refresh=refresh,
    )


def _json_value(value: Any) -> Any:
    """protobuf Struct numbers are doubles: give whole numbers back their integer form."""
    if isinstance(value, bool) or value is None or isinstance(value, str | int):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise InvalidRequestError("claims may not contain NaN or infinity")
        if value.is_integer() and abs(value) <= _MAX_SAFE_INT:
            return int(value)
        return value
    if isinstance(value, Mapping):
        return {str(k): _json_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_value(v) for v in value]
    raise InvalidRequestError("claims must be JSON values")


def access_claims(
    *,
    issuer: str,
    request: IssueRequest,
    extra: Mapping[str, Any],
    jti: str,
    now: int,
    ttl_s: int,
    family_id: str,
) -> dict[str, Any]:
    """RFC 9068 section 2.2 claims; reserved names always win over `extra`."""
    claims: dict[str, Any] = dict(extra)
    claims.update(
        iss=issuer,
        sub=request.subject,
        aud=list(request.audience),
        exp=now + ttl_s,
        iat=now,
        nbf=now,
        jti=jti,
    )
    if request.scope:
        claims["scope"] = request.scope
    if request.client_id:
        claims["client_id"] = request.client_id
    if family_id:
        claims["sid"] = family_id
    return claims


def refresh_claims(
    *, issuer: str, subject: str, client_id: str, jti: str, family_id: str, now: int, exp: int
) -> dict[str, Any]:
    """A refresh token is addressed to the sidecar itself (`aud` = issuer), so no resource
    server that checks its own audience can be fooled into taking it as an access token."""
    claims: dict[str, Any] = {
        "iss": issuer,
        "sub": subject,
        "aud": issuer,
        "exp": exp,
        "iat": now,
        "nbf": now,
        "jti": jti,
        "sid": family_id,
    }
    if client_id:
        claims["client_id"] = client_id
    return claims
