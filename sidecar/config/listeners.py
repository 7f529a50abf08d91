"""The listener sections: `listen` (gRPC), `metrics` (Prometheus) and `http` (JWKS and
discovery). Every address is `host:port` on loopback unless the section's
`allow_non_loopback` says otherwise (one check, `base.loopback_only`): the sidecar is
plaintext."""

from __future__ import annotations

from pydantic import Field, model_validator

from sidecar.config.base import Address, Frozen, loopback_only


class ListenSettings(Frozen):
    # Public listener for Verify, Introspect, Refresh, Revoke, GetJwks. Empty: no Unix socket.
    unix_socket: str | None = None
    # File mode of the public socket: open to every local user by default, since Verify is.
    unix_socket_mode: int = Field(default=0o666, ge=0, le=0o777)
    # "host:port" on loopback; "" disables TCP; port 0 picks a free port.
    tcp: Address = "127.0.0.1:50051"
    # A TCP address off loopback is refused unless this is set (the sidecar is plaintext).
    allow_non_loopback: bool = False
    # The only listener that serves Issue. Lives in its own owner-only (0700) directory.
    admin_socket: str | None = None
    # In-flight calls get this long to finish after SIGTERM.
    grace_period_s: float = Field(default=10.0, ge=0, le=600)
    # After SIGTERM: health NOT_SERVING but every call still served for this long, while
    # callers move away; then new calls get UNAVAILABLE / SHUTTING_DOWN (docs/operations.md,
    # "Stopping"). 5 s: Istio's default drain; 5 + 10 s grace fits Kubernetes' default 30 s.
    drain_s: float = Field(default=5.0, ge=0, le=600)
    # Calls whose metadata is larger are refused with METADATA_TOO_LARGE.
    max_metadata_bytes: int = Field(default=16384, ge=1024, le=1 << 20)
    max_message_bytes: int = Field(default=1 << 20, ge=4096, le=64 << 20)
    # A TCP listener serving only grpc.health.v1, for kubelet gRPC probes (which dial the
    # pod IP, not loopback). It may bind any address: health reveals nothing. "" disables it.
    health_tcp: Address = ""

    @model_validator(mode="after")
    def _loopback_only(self) -> ListenSettings:
        loopback_only(
            self.tcp,
            allowed=self.allow_non_loopback,
            label="tcp address",
            flag="listen.allow_non_loopback",
            beyond="serve plaintext gRPC beyond this host",
        )
        return self


class MetricsSettings(Frozen):
    # "host:port" for Prometheus' text format over HTTP at /metrics; "" disables it.
    listen: str = ""
    # An address off loopback is refused unless this is set (e.g. 0.0.0.0 in a pod).
    allow_non_loopback: bool = False

    @model_validator(mode="after")
    def _loopback_only(self) -> MetricsSettings:
        loopback_only(
            self.listen,
            allowed=self.allow_non_loopback,
            label="address",
            flag="metrics.allow_non_loopback",
            beyond="expose metrics beyond this host",
        )
        return self


class HttpSettings(Frozen):
    # "host:port" for /.well-known/jwks.json and /.well-known/openid-configuration over
    # plain HTTP; "" (the default) serves neither.
    listen: str = ""
    # An address off loopback is refused unless this is set.
    allow_non_loopback: bool = False
    # Cache-Control max-age of both documents; keep it well below the rotation overlap.
    max_age_s: int = Field(default=300, ge=0, le=86400)
    # Base URL clients reach this listener at (for jwks_uri); default http://<listen>.
    public_url: str = ""

    @model_validator(mode="after")
    def _loopback_only(self) -> HttpSettings:
        loopback_only(
            self.listen,
            allowed=self.allow_non_loopback,
            label="address",
            flag="http.allow_non_loopback",
            beyond="publish keys beyond this host",
        )
        if self.public_url and not self.public_url.startswith(("http://", "https://")):
            raise ValueError("public_url must start with http:// or https://")
        return self
