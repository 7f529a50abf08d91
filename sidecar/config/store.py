"""The `store` section: which TokenStore keeps refresh families and revocations, and how the
sidecar behaves while it is unreachable (docs/lifecycle.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import NoDecode

from sidecar.addresses import parse_host_port
from sidecar.config.base import Frozen
from sidecar.store.options import RedisOptions


class StoreSettings(Frozen):
    # "redis" for a fleet of sidecars sharing state; see docs/lifecycle.md.
    backend: Literal["sqlite", "memory", "redis"] = "sqlite"
    # Default: data_dir/state.db.
    sqlite_path: Path | None = None
    # How often the revocation mirror is reconciled with the store and the store pinged.
    # At least 0.05 s: each reconciliation is a few store round trips, and a near-zero
    # interval made the poll a busy loop (1e-6 s: ~40% of a core); the smallest any test
    # or doc sets is 0.1 s. Revocations between sidecars on Redis travel by the feed anyway.
    sync_interval_s: float = Field(default=5.0, ge=0.05, le=3600)
    # While the store is unreachable: "degrade" keeps Verify answering from signatures plus
    # the last known revocations (health of AuthService/store says NOT_SERVING); "refuse"
    # fails Verify with UNAVAILABLE and reports the whole server NOT_SERVING. Refresh,
    # Revoke and Issue with a refresh token fail with UNAVAILABLE either way.
    on_unavailable: Literal["degrade", "refuse"] = "degrade"
    # standalone: redis_url is redis://, rediss:// or unix://. cluster: redis_url names any
    # node. sentinel: redis_sentinels + redis_sentinel_master (redis_url: credentials only).
    redis_mode: Literal["standalone", "sentinel", "cluster"] = "standalone"
    redis_url: str = "redis://127.0.0.1:6379/0"
    redis_sentinels: Annotated[tuple[str, ...], NoDecode] = ()
    redis_sentinel_master: str = "mymaster"
    # Inside every key's Cluster hash tag ("{prefix:i:n}", redis_keys); no braces allowed.
    redis_key_prefix: str = "authsidecar"
    # Connect and read timeout of every Redis call: nothing waits longer on a dead server.
    redis_timeout_s: float = Field(default=1.0, gt=0, le=60)
    # Refresh rotations and new families are acknowledged only once this many replicas have
    # them (WAIT, issue 16); otherwise UNAVAILABLE, and the client's retry is safe. 1 with
    # Sentinel keeps a failover from losing an acknowledged rotation. Not with cluster mode.
    redis_wait_replicas: int = Field(default=0, ge=0, le=16)
    # Keep a copy of the revocation snapshot in Redis for new pods (store/redis_snapshot.py,
    # ~30 bytes a revocation, twice that during a write: docs/operations.md). false: the
    # sidecar neither writes nor reads that copy; the local snapshot file is kept either way.
    redis_snapshot: bool = True

    @field_validator("redis_sentinels", mode="before")
    @classmethod
    def _comma_separated(cls, value: Any) -> Any:
        if isinstance(value, str):
            return tuple(part.strip() for part in value.split(",") if part.strip())
        return value

    @field_validator("redis_key_prefix")
    @classmethod
    def _prefix(cls, value: str) -> str:
        if not value or any(ch in value for ch in "{} "):
            raise ValueError("redis_key_prefix must be non-empty, without braces or spaces")
        return value

    @model_validator(mode="after")
    def _redis_address(self) -> StoreSettings:
        if self.backend != "redis":
            return self
        if self.redis_mode == "sentinel":
            if not self.redis_sentinels:
                raise ValueError("redis_mode sentinel needs redis_sentinels (host:port, ...)")
            for node in self.redis_sentinels:
                parse_host_port(node)
        elif not self.redis_url.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("redis_url must start with redis://, rediss:// or unix://")
        elif self.redis_mode == "cluster" and self.redis_url.startswith("unix://"):
            raise ValueError("redis_mode cluster needs a redis:// or rediss:// node address")
        if self.redis_mode == "cluster" and self.redis_wait_replicas:
            raise ValueError("redis_wait_replicas is not supported with redis_mode cluster")
        return self

    def redis_options(self) -> RedisOptions:
        """The Redis connection values (store/options.py), checked together above."""
        return self.to(RedisOptions)
