"""Where the sidecar is and how a channel to it retries.

Retries are grpc's own (gRFC A6): a service config on the channel retries UNAVAILABLE, and
only UNAVAILABLE, with exponential backoff, inside the call's deadline. Refresh is left out
on purpose: it rotates the refresh token, and if the sidecar did the rotation but the reply
was lost, a resend would present a retired token and revoke the whole family (RFC 9700
section 4.14.2). grpc still retries transparently when a call never left this process.
"""

from __future__ import annotations

import json
import os

ADDRESS_ENV = "AUTHSIDECAR_ADDR"
# The sidecar's default public TCP listener (sidecar/config/listeners.py ListenSettings.tcp).
DEFAULT_ADDRESS = "127.0.0.1:50051"
SERVICE = "authsidecar.v1.AuthService"
# VerifyBatch only reads, like Verify, and is retried like it: a batched verify must fail
# exactly when the unary one would (issue 7).
_RETRIED = ("Issue", "Verify", "VerifyBatch", "Introspect", "Revoke", "GetJwks")


def resolve_address(address: str | None) -> str:
    """`unix:/path` or `host:port`; default `$AUTHSIDECAR_ADDR`, then 127.0.0.1:50051."""
    resolved = address or os.environ.get(ADDRESS_ENV) or DEFAULT_ADDRESS
    return resolved.strip()


def channel_options(max_attempts: int, initial_backoff_s: float) -> list[tuple[str, str | int]]:
    """Channel options carrying the retry policy; `max_attempts` counts the first try."""
    options: list[tuple[str, str | int]] = [("grpc.enable_retries", 1)]
    if max_attempts > 1:
        policy = {
            "maxAttempts": min(max_attempts, 5),  # grpc caps attempts at 5 anyway
            "initialBackoff": f"{initial_backoff_s:.3f}s",
            "maxBackoff": f"{max(initial_backoff_s * 16, 1.0):.3f}s",
            "backoffMultiplier": 2,
            "retryableStatusCodes": ["UNAVAILABLE"],
        }
        config = {
            "methodConfig": [
                {
                    "name": [{"service": SERVICE, "method": m} for m in _RETRIED],
                    "retryPolicy": policy,
                }
            ]
        }
        options.append(("grpc.service_config", json.dumps(config)))
    return options
