"""What the Redis store is told at start: plain frozen values (config `store.redis_*`).

The configuration schema (sidecar/config/store.py, `StoreSettings.redis_options()`) checks
the combination (a sentinel list for sentinel mode, no WAIT with cluster, ...) and builds
one of these; nothing under sidecar/store sees the parser.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True, slots=True, kw_only=True)
class RedisOptions:
    redis_mode: Literal["standalone", "sentinel", "cluster"]
    redis_url: str
    redis_sentinels: tuple[str, ...]
    redis_sentinel_master: str
    redis_timeout_s: float
    redis_wait_replicas: int
