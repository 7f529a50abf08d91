"""Redis clients for the three addressing modes: one server, Sentinel, Cluster.

* `standalone`: `store.redis_url` is `redis://[user:password@]host:port/db`,
  `rediss://...` (TLS) or `unix:///path/to/redis.sock?db=0`.
* `sentinel`: `store.redis_sentinels` lists the sentinels (`host:port`), and
  `store.redis_sentinel_master` names the monitored master. The master is looked up on every
  new connection, so a failover is followed. Username, password and db for the master are
  taken from `store.redis_url` when set (its host is ignored).
* `cluster`: `store.redis_url` names any node of the cluster (`redis://` or `rediss://`); the
  client discovers the others. Every key carries one hash tag (see `redis_keys`).

Nothing may hang: every socket has a connect and a read timeout (`store.redis_timeout_s`).
The driver retries a command once, immediately, and only after a ConnectionError: that is
what a pooled connection broken by a Redis restart, a failover or `CLIENT KILL` gives, and
without the retry the first call after every reconnection would fail. A timeout is never
retried. If a connection breaks after the server ran a rotation but before the reply, the
retry carries the same successor jti, which the rotation script recognises and answers ROTATED
again without changing anything (issue 13). The retry keeps the first attempt's deadline, so a
retry that reaches the server too late does nothing (StoreDeadlineError).
"""

from __future__ import annotations

import os
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError

from sidecar.addresses import parse_host_port
from sidecar.store.options import RedisOptions

RedisClient = Redis | RedisCluster


class RedisConnector:
    """Makes clients for the configured deployment; constructing one never connects."""

    def __init__(self, settings: RedisOptions) -> None:
        self._settings = settings
        self._sentinel: Sentinel | None = None

    @property
    def mode(self) -> str:
        return self._settings.redis_mode

    @property
    def wait_replicas(self) -> int:
        """Replicas that must have a rotation before it is acknowledged (0: none)."""
        return self._settings.redis_wait_replicas

    @property
    def timeout_s(self) -> float:
        """The read timeout of a command: after it the caller is told UNAVAILABLE."""
        return self._settings.redis_timeout_s

    def client(self, *, read_timeout_s: float | None = None, decode: bool = True) -> RedisClient:
        """A client with its own connections; `read_timeout_s` overrides the read timeout
        (the revocation feed blocks server-side longer than a command may take); `decode`
        False leaves replies as bytes (the first load's scan, redis_grouped_scan)."""
        s = self._settings
        options: dict[str, Any] = {
            "decode_responses": decode,
            "socket_timeout": read_timeout_s or s.redis_timeout_s,
            "socket_connect_timeout": s.redis_timeout_s,
            # CLIENT LIST then tells an operator which sidecar process holds a connection.
            "client_name": f"authsidecar-{os.getpid()}",
        }
        options["retry"] = Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,))
        if s.redis_mode == "cluster":
            return RedisCluster.from_url(s.redis_url, **options)
        if s.redis_mode == "sentinel":
            master: Redis = self._sentinels().master_for(
                s.redis_sentinel_master, **options, **_credentials(s.redis_url)
            )
            return master
        return Redis.from_url(s.redis_url, **options)

    def _sentinels(self) -> Sentinel:
        if self._sentinel is None:
            s = self._settings
            timeouts = {
                "socket_timeout": s.redis_timeout_s,
                "socket_connect_timeout": s.redis_timeout_s,
            }
            nodes = [parse_host_port(node) for node in s.redis_sentinels]
            # redis-py leaves Sentinel.__init__ unannotated.
            self._sentinel = Sentinel(nodes, sentinel_kwargs=timeouts)  # type: ignore[no-untyped-call]
        return self._sentinel

    async def close(self) -> None:
        if self._sentinel is not None:
            for node in self._sentinel.sentinels:
                await node.aclose()


def _credentials(url: str) -> dict[str, Any]:
    """Username, password and db of a `redis://` URL, for Sentinel's master connections."""
    if not url:
        return {}
    parts = urlsplit(url)
    found: dict[str, Any] = {}
    if parts.username:
        found["username"] = unquote(parts.username)
    if parts.password:
        found["password"] = unquote(parts.password)
    db = parts.path.strip("/") or parse_qs(parts.query).get("db", [""])[0]
    if db.isdigit():
        found["db"] = int(db)
    return found
