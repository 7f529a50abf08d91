"""Which methods need a token, and which scopes each one requires.

Method patterns are full gRPC method names, `/package.Service/Method`, or a prefix ending in
`*` (`/package.Service/*`). The most specific pattern wins: an exact name, then the longest
prefix. grpc.health.v1 and server reflection are exempt by default, so probes and tooling
work without tokens; pass `exempt=()` to protect them too.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

DEFAULT_EXEMPT = ("/grpc.health.v1.Health/*", "/grpc.reflection.*")


@dataclass(frozen=True)
class MethodRule:
    """What one method requires: nothing (public), or a valid token with these scopes."""

    public: bool = False
    scopes: tuple[str, ...] = ()


def _match(patterns: Mapping[str, object] | tuple[str, ...], method: str) -> str | None:
    if method in patterns:
        return method
    best: str | None = None
    for pattern in patterns:
        if pattern.endswith("*") and method.startswith(pattern[:-1]):
            if best is None or len(pattern) > len(best):
                best = pattern
    return best


@dataclass(frozen=True)
class AuthPolicy:
    """Per-method requirements for the server interceptors.

    Attributes:
        audience: passed to Verify: the token's `aud` must contain it ("" = sidecar rules).
        default_scopes: scopes every protected method requires unless `method_scopes` says.
        method_scopes: pattern -> required scopes (sent to Verify as `required_scopes`, so a
            token lacking one is PERMISSION_DENIED / SCOPE_MISSING from the sidecar).
        public_methods: patterns served without any token.
        exempt: patterns served without any token by default (health, reflection).
        check_expiry_per_message: also refuse a stream with UNAUTHENTICATED / TOKEN_EXPIRED
            when the token's `exp` (plus `expiry_leeway_s`) passes mid-stream; checked on
            each message received and each message yielded. Off: checked once at start.
        expiry_leeway_s: grace after `exp` for the per-message check.
    """

    audience: str = ""
    default_scopes: tuple[str, ...] = ()
    method_scopes: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    public_methods: tuple[str, ...] = ()
    exempt: tuple[str, ...] = DEFAULT_EXEMPT
    check_expiry_per_message: bool = False
    expiry_leeway_s: float = 0.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "method_scopes", MappingProxyType(dict(self.method_scopes)))

    def rule(self, method: str) -> MethodRule:
        """The rule for a full method name as grpc reports it (`/pkg.Svc/Method`)."""
        if _match(self.public_methods + self.exempt, method) is not None:
            return MethodRule(public=True)
        pattern = _match(self.method_scopes, method)
        scopes = self.method_scopes[pattern] if pattern is not None else self.default_scopes
        return MethodRule(scopes=tuple(scopes))
