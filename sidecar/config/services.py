"""The sections of what the public listener serves besides the AuthService: `envoy`
(ext_authz), `tracing` (OpenTelemetry spans) and `watch` (the Watch stream)."""

from __future__ import annotations

import re

from pydantic import Field, field_validator

from sidecar.config.base import Frozen

_HEADER_NAME = re.compile(r"[a-z0-9!#$%&'*+.^_`|~-]+")
_RESERVED_HEADERS = frozenset({"authorization", "host", "content-length", "te", "cookie"})


class EnvoySettings(Frozen):
    """Envoy's ext_authz gRPC API (envoy.service.auth.v3.Authorization/Check) on the public
    listener, so a mesh can delegate bearer-token checks without a client library."""

    enabled: bool = False
    # claim -> request header set on allowed requests (overwriting any the client sent; a
    # header whose claim is absent is removed). In the environment: a JSON object.
    forward_claims_headers: dict[str, str] = Field(
        default_factory=lambda: {"sub": "x-authsidecar-sub", "scope": "x-authsidecar-scope"}
    )
    # Verify's audience and required scopes; a route's check_settings.context_extensions
    # `audience` / `required_scopes` (space-separated) override them for that route.
    audience: str | None = None
    required_scopes: tuple[str, ...] = ()
    # Remove the Authorization header before the request goes upstream.
    strip_authorization: bool = False

    @field_validator("forward_claims_headers")
    @classmethod
    def _header_names(cls, value: dict[str, str]) -> dict[str, str]:
        for claim, header in value.items():
            if not claim or not _HEADER_NAME.fullmatch(header):
                raise ValueError(f"{header!r} is not a lower-case HTTP header name")
            if header in _RESERVED_HEADERS:
                raise ValueError(f"header {header!r} may not carry a claim")
        return value


class TracingSettings(Frozen):
    # OpenTelemetry SERVER spans per RPC (sidecar/transport/tracing.py, docs/operations.md).
    # Needs opentelemetry-api (and an SDK set up by the operator); off: not even imported.
    enabled: bool = False


class WatchSettings(Frozen):
    """The Watch stream (issue 15, docs/lifecycle.md "Watch")."""

    # A heartbeat carrying the latest sequence is sent this often on every stream;
    # subscribers derive their staleness bound from it.
    heartbeat_interval_ms: int = Field(default=1000, ge=50, le=60_000)
    # Events kept for resuming subscribers (epoch + after_sequence); one further back is a
    # reset. About 200 bytes each.
    replay_buffer_size: int = Field(default=4096, ge=0, le=1_000_000)
    # Unread live events one subscriber may hold; beyond it the subscriber is dropped
    # (its stream ends UNAVAILABLE / WATCH_SUBSCRIBER_DROPPED) and resubscribes.
    subscriber_queue_size: int = Field(default=1024, ge=1, le=1_000_000)
    # Concurrent streams over all listeners; one more is refused RESOURCE_EXHAUSTED /
    # WATCH_SUBSCRIBER_LIMIT. Each costs ~24 KiB (docs/performance.md): the default bounds
    # Watch at ~25 MiB against a local caller opening streams without end.
    max_subscribers: int = Field(default=1000, ge=1, le=100_000)
