"""The token engine's values: what a token is, what verifying one yields, what Issue returns."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any, NamedTuple


class TokenKind(enum.Enum):
    """The two kinds of token, told apart by the JOSE `typ` header (RFC 8725 section 3.11)."""

    ACCESS = "at+jwt"  # RFC 9068
    REFRESH = "rt+jwt"  # ours: never accepted where an access token is expected

    def __init__(self, typ: str) -> None:
        # The value as a plain attribute: Enum's `value` (and a property over it) costs
        # ~0.45 µs per read, and every Verify reads it (issue 7).
        self.typ = typ
        # The same as a full media type (RFC 7515 section 4.1.9): `typ` may be spelt
        # either way, in any case (claims.py).
        self.media_type = "application/" + typ

    @classmethod
    def from_typ(cls, typ: object) -> TokenKind | None:
        """The kind a header `typ` names (either spelling, any case), or None."""
        if type(typ) is not str:
            return None
        lowered = typ.lower()
        for kind in cls:
            if lowered in (kind.typ, kind.media_type):
                return kind
        return None


# Claims the sidecar sets itself; a caller's extra claims may not name them (RFC 7519 section
# 4.1 plus the ones RFC 9068 / RFC 8693 / RFC 7800 give meaning to).
RESERVED_CLAIMS = frozenset(
    {
        "iss",
        "sub",
        "aud",
        "exp",
        "nbf",
        "iat",
        "jti",
        "scope",
        "client_id",
        "sid",
        "typ",
        "cnf",
        "act",
    }
)


class Claims(NamedTuple):
    """A verified claim set: registered claims typed, every claim (registered too) in `all`.

    A named tuple rather than a frozen dataclass: as immutable (a cached result is shared by
    every call that hits it), and built once per verification on the hot path, where a
    frozen dataclass's eleven `object.__setattr__` calls cost ~0.9 µs more (issue 12's
    bench). `all` is a dict: treat it as read-only.
    """

    iss: str
    sub: str
    aud: tuple[str, ...]
    exp: int
    iat: int
    nbf: int
    jti: str
    scope: str
    client_id: str
    # The refresh family an access token descends from ("" when issued without one).
    sid: str
    all: dict[str, Any]

    @property
    def scopes(self) -> frozenset[str]:
        return frozenset(self.scope.split())

    def __repr__(self) -> str:  # every claim would be too much for a log line
        return f"Claims(iss={self.iss!r}, sub={self.sub!r}, jti={self.jti!r})"


class VerifiedToken(NamedTuple):
    """What a successful verification yields (a named tuple for the reason `Claims` is)."""

    kind: TokenKind
    kid: str
    claims: Claims


@dataclass(frozen=True, slots=True)
class TokenGrant:
    """RFC 6749 section 5.1: what Issue and Refresh return."""

    access_token: str
    expires_in: int
    scope: str
    refresh_token: str = ""
    token_type: str = "Bearer"  # noqa: S105 - RFC 6750 token type name, not a secret
    # The access token's `sub` and `jti` as signed: the audit line names them without
    # parsing the token again.
    subject: str = ""
    jti: str = ""
    # Refresh only: how the store decided it ("rotated" or "grace"; tokens/refresh.py).
    outcome: str = ""


@dataclass(frozen=True, slots=True)
class Introspection:
    """RFC 7662 section 2.2. `claims` is None when inactive: nothing leaks about why."""

    active: bool
    kind: TokenKind | None = None
    claims: Claims | None = None

    @property
    def token_type(self) -> str:
        if self.kind is TokenKind.ACCESS:
            return "Bearer"
        if self.kind is TokenKind.REFRESH:
            return "refresh_token"
        return ""
