"""Bench instrumentation of the callee process (bench/callee.py): when each interceptor applied
a revocation (`record_drops`) and when each server first refused a token (`time_refusals`),
on CLOCK_MONOTONIC (`time.monotonic`, one clock for every process on the host), for the
control server to answer `Dropped` and `Refused` with (bench/propagation.py reads them).
Wraps client internals: bench only, never the library's code path.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable
from typing import Any

import grpc

from authsidecar.client._decisions import DecisionCache

# jti -> when each interceptor of this process applied its revocation (time.monotonic()).
DROPPED_AT: dict[str, list[float]] = {}


def record_drops() -> None:
    """Time every TokenRevoked event in the watcher that applies it."""
    original = DecisionCache.revoke_token

    def revoke_token(self: DecisionCache, iss: str, jti: str) -> int:
        dropped = original(self, iss, jti)
        DROPPED_AT.setdefault(jti, []).append(time.monotonic())
        return dropped

    DecisionCache.revoke_token = revoke_token  # type: ignore[method-assign]


# jti -> when each server of this process first refused a call with it (time.monotonic()).
REFUSED_AT: dict[str, dict[int, float]] = {}


def jti_of(metadata: Any) -> str:
    """The jti of the call's bearer token (the probe's own token: read, not verified)."""
    for key, value in metadata or ():
        if key == "authorization" and isinstance(value, str) and value.startswith("Bearer "):
            payload = value[7:].split(".")[1]
            claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
            return str(claims.get("jti", ""))
    return ""


def time_refusals(interceptor: Any, server: int, *, own: Callable[..., Any]) -> None:
    """Time the first refusal of each token by this server's interceptor: the handler it
    returns is not the service's own (`own`) but one that refuses. Wraps the instance's
    `intercept_service` (grpc.aio looks it up on the instance on every call)."""
    original = interceptor.intercept_service

    async def intercept_service(continuation: Any, details: grpc.HandlerCallDetails) -> Any:
        handler = await original(continuation, details)
        if handler is not None and handler.unary_unary is not own:
            refused_at = time.monotonic()
            REFUSED_AT.setdefault(jti_of(details.invocation_metadata), {}).setdefault(
                server, refused_at
            )
        return handler

    interceptor.intercept_service = intercept_service
