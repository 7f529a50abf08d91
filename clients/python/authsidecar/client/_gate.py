"""What both server interceptors share: policy, decision cache, Verify's answer, refusals.

`Gate` decides each protected call up to the point where the sidecar must be asked: no
token is a refusal; while the Watch stream is current a cached decision is a hit, and a
decision a revocation voided is refused here as the sidecar would refuse it; anything
else is a `Miss` carrying what Verify is asked and where the cache stood (`Position`), so
that `finish` keeps the answer only if nothing voided it meanwhile (`_watch_state.py`).
`InterceptorBase` holds the options and the `stats()` both interceptors offer, and leaves
to each flavour (`_server.py`, `_async_server.py`) how it waits for Verify and aborts.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeAlias, TypeVar

import grpc

from authsidecar.client._decisions import (
    DEFAULT_MAX_BYTES,
    DEFAULT_MAX_ENTRIES,
    DecisionCache,
    Key,
    Refused,
    key_for,
    scopes_key,
)
from authsidecar.client._models import VerifiedClaims
from authsidecar.client._policy import AuthPolicy, MethodRule
from authsidecar.client._refusal import MISSING_TOKEN, REVOKED, Refusal, bearer_token
from authsidecar.client._stats import DecisionStats
from authsidecar.client._watch_state import Position, WatchState

Handler: TypeAlias = "grpc.RpcMethodHandler[Any, Any]"
KINDS = ("unary_unary", "unary_stream", "stream_unary", "stream_stream")
# Method names whose rule is remembered (`Gate.rule`): a server has a few dozen methods, but
# a generic handler may accept any name a caller sends, so the memo stops growing here.
RULES_MEMO = 1024
V = TypeVar("V")


def rebuild(handler: Handler, **behaviours: Any) -> Handler:
    """`handler` with its behaviour replaced, serializers kept."""
    return handler._replace(**behaviours)  # type: ignore[attr-defined, no-any-return]


def behaviour(handler: Handler) -> tuple[str, Callable[..., Any]]:
    """The handler's one behaviour, and its kind (`KINDS`)."""
    for kind in KINDS:
        inner = getattr(handler, kind)
        if inner is not None:
            return kind, inner
    raise ValueError("a method handler without a behaviour")


@dataclass(frozen=True, slots=True)
class Miss:
    """A call to send to Verify, and how to keep its answer (`key` None: not caching)."""

    token: str
    audience: str
    scopes: tuple[str, ...]
    key: Key | None = None
    position: Position | None = None


class Gate:
    """The policy, the decisions, the expiry clock."""

    def __init__(
        self,
        policy: AuthPolicy | None,
        now: Callable[[], float],
        cache_decisions: bool,
        max_entries: int,
        max_bytes: int,
        staleness_s: float | None,
    ) -> None:
        self.policy = policy or AuthPolicy()
        self.now = now
        self._rules: dict[str, MethodRule] = {}
        # Each rule's scopes as the decision key holds them; as many as the policy has.
        self._scope_keys: dict[tuple[str, ...], tuple[str, ...]] = {}
        self.state: WatchState | None = None
        if cache_decisions:
            cache = DecisionCache(max_entries=max_entries, max_bytes=max_bytes)
            self.state = WatchState(cache, staleness_s=staleness_s)

    def rule(self, method: str) -> MethodRule:
        """`policy.rule(method)`, remembered: the policy is frozen, and matching its patterns
        and building the rule cost every call more than the rest of a cache hit."""
        rule = self._rules.get(method)
        if rule is None:
            rule = self.policy.rule(method)
            if len(self._rules) < RULES_MEMO:
                self._rules[method] = rule
        return rule

    def start(self, token: str | None, rule: MethodRule) -> VerifiedClaims | Refusal | Miss:
        """A refusal (no token, or revoked since its decision was cached), a hit, or the
        Verify to send."""
        if token is None:
            return MISSING_TOKEN
        audience = self.policy.audience
        if self.state is None:
            return Miss(token, audience, rule.scopes)
        scopes = self._scope_keys.get(rule.scopes)
        if scopes is None:
            scopes = self._scope_keys[rule.scopes] = scopes_key(rule.scopes)
        key = key_for(token, audience, scopes)
        found, position = self.state.consult(key, self.now())
        if found is None:
            return Miss(token, audience, rule.scopes, key, position)
        return REVOKED if isinstance(found, Refused) else found

    def finish(self, miss: Miss, claims: VerifiedClaims) -> VerifiedClaims:
        """Verify said yes: keep the answer if nothing since `miss.position` voids it."""
        if self.state is not None and miss.key is not None:
            self.state.admit(miss.position, miss.key, claims, len(miss.token), self.now())
        return claims

    def stats(self) -> DecisionStats:
        return DecisionStats() if self.state is None else self.state.stats()

    def expired(self, claims: VerifiedClaims) -> bool:
        if not self.policy.check_expiry_per_message:
            return False
        return self.now() >= claims.exp + self.policy.expiry_leeway_s


class InterceptorBase(Generic[V]):
    """The options and `stats()`; `V` is what verifies (a client, or a batcher around one)."""

    def __init__(
        self,
        client: V,
        policy: AuthPolicy | None = None,
        *,
        cache_decisions: bool = True,
        coalesce_misses: bool = True,
        max_entries: int = DEFAULT_MAX_ENTRIES,
        max_bytes: int = DEFAULT_MAX_BYTES,
        staleness_s: float | None = None,
        now: Callable[[], float] = time.time,
    ) -> None:
        """
        Args:
            client: the sidecar client (or a batcher around one) that Verify and Watch use;
                never closed by the interceptor.
            policy: which methods need which scopes (default: every method, no scope).
            cache_decisions: keep the sidecar's decisions while the Watch stream is current
                (default True). False: every call is verified, no watcher runs.
            coalesce_misses: send the calls that miss at the same moment as one VerifyBatch
                (default True); ignored when `client` is already a batcher.
            max_entries / max_bytes: bounds of the decision cache (least recently used out).
            staleness_s: no hit is served when the stream was silent this long (default 3x
                the heartbeat interval the sidecar announces).
            now: the epoch clock that `exp`/`nbf` are compared with.
        """
        self._gate = Gate(policy, now, cache_decisions, max_entries, max_bytes, staleness_s)
        self._client: V = self._connect(client, coalesce_misses)

    def _connect(self, client: V, coalesce_misses: bool) -> V:
        """Start the watcher (if caching); what Verify goes through: `client`, or a batcher
        around it that the interceptor owns."""
        raise NotImplementedError

    def _wrap(self, handler: Handler, token: str | None, rule: MethodRule) -> Handler:
        raise NotImplementedError

    def _protect(self, handler: Handler | None, details: grpc.HandlerCallDetails) -> Handler | None:
        """The handler itself for a public method, else one that authenticates first."""
        if handler is None:
            return None
        rule = self._gate.rule(details.method)
        if rule.public:
            return handler
        return self._wrap(handler, bearer_token(details.invocation_metadata), rule)

    def stats(self) -> DecisionStats:
        """Counters of the decision cache and its stream (all zero when not caching)."""
        return self._gate.stats()
