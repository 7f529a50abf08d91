"""Real Redis for tests: the shared server (with a private key prefix) or a private one.

The shared server (`AUTHSIDECAR_TEST_REDIS_URL`, default redis://127.0.0.1:6379/0) is never
flushed: each test gets its own key prefix and `delete_prefix` removes only those keys. Tests
that stop, restart or kill Redis start a private `redis-server` on a free port instead.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import redis

from sidecar.store.redis_keys import KeyLayout

__all__ = [
    "REDIS_URL",
    "RedisServer",
    "delete_prefix",
    "free_port",
    "key_pattern",
    "redis_problem",
    "revoked_count",
    "unique_prefix",
]

REDIS_URL = os.environ.get("AUTHSIDECAR_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def redis_problem(url: str) -> str | None:
    """Why Redis at `url` cannot be used, or None when it answers PING."""
    client = redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)
    try:
        client.ping()
    except (redis.RedisError, OSError) as exc:
        return f"Redis at {url} is unreachable: {type(exc).__name__}"
    finally:
        client.close()
    return None


def unique_prefix() -> str:
    return f"test-{uuid.uuid4().hex[:12]}"


def key_pattern(prefix: str, name: str) -> str:
    """A SCAN pattern for `name` (e.g. `fam:*`) in every partition of one store prefix."""
    return "{" + prefix + ":*}:" + name


def revoked_count(client: Any, prefix: str) -> int:
    """How many revocations one store prefix holds, over every partition."""
    return sum(int(client.zcard(part.revoked)) for part in KeyLayout(prefix).partitions)


def delete_prefix(url: str, prefix: str) -> None:
    """Delete every key of one store prefix (its partitions `{prefix:i:n}:*` and the
    version-1 layout's `{prefix}:*`), nothing else."""
    client = redis.Redis.from_url(url, socket_timeout=5)
    try:
        for pattern in ("{" + prefix + "}:*", key_pattern(prefix, "*")):
            keys = list(client.scan_iter(match=pattern, count=1000))
            if keys:
                client.delete(*keys)
    finally:
        client.close()


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _bindable(port: int) -> bool:
    if port > 65535:
        return False
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


class RedisServer:
    """A private `redis-server` on a free loopback port, stoppable and restartable in place.

    No persistence: a restart comes back empty unless `persist=True`, in which case the data
    set is saved to `workdir` on shutdown and loaded again (what an operator's Redis does).
    """

    def __init__(
        self,
        workdir: Path,
        *,
        persist: bool = True,
        cluster: bool = False,
        own_slots: bool = True,
        extra_args: tuple[str, ...] = (),
    ) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise FileNotFoundError("redis-server is not on PATH")
        self.binary = binary
        self.workdir = workdir
        self.persist = persist
        self.cluster = cluster
        # A cluster node alone owns every slot; False leaves it empty for a multi-node
        # Cluster (tests/support/redis_topologies.py).
        self.own_slots = own_slots
        # Appended to the command line, e.g. ("--appendonly", "yes") or a renamed CONFIG.
        self.extra_args = extra_args
        self.port = free_port()
        while cluster and not _bindable(self.port + 10_000):  # the Cluster bus port
            self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        args = [
            self.binary,
            "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.workdir),
            "--save", "", "--appendonly", "no", "--protected-mode", "no",
        ]  # fmt: skip
        if self.persist:
            args += ["--dbfilename", "dump.rdb"]
        if self.cluster:
            args += ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"]
        args += list(self.extra_args)
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while redis_problem(self.url) is not None:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("redis-server did not start")
            time.sleep(0.02)
        if self.cluster and self.own_slots:
            self._own_every_slot(deadline)

    def _own_every_slot(self, deadline: float) -> None:
        """A one-node Cluster: this node serves all 16384 slots. Enough to prove the
        client's routing and that no script or command crosses a slot (CROSSSLOT)."""
        # execute_command is unannotated in redis-py.
        client: Any = redis.Redis.from_url(self.url, socket_timeout=5, decode_responses=True)
        try:
            client.execute_command("CLUSTER", "ADDSLOTSRANGE", 0, 16383)
            while "cluster_state:ok" not in client.execute_command("CLUSTER", "INFO"):
                if time.monotonic() > deadline:
                    raise RuntimeError("cluster did not become ready")
                time.sleep(0.05)
        finally:
            client.close()

    def stop(self) -> None:
        """SHUTDOWN (saving when `persist`), then wait for the process to exit."""
        if self.proc is None:
            return
        client = redis.Redis.from_url(self.url, socket_timeout=5)
        try:
            client.shutdown(save=self.persist, nosave=not self.persist)
        except (redis.ConnectionError, OSError):
            pass  # the server closes the connection as it exits
        finally:
            client.close()
        self.proc.wait(timeout=10)
        self.proc = None

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(timeout=10)
            self.proc = None

    def restart_empty(self) -> None:
        """SIGKILL, delete anything it could reload, start again on the same port: a Redis
        that lost its data (no persistence, or a failover to a replica that never had it)."""
        self.kill()
        for leftover in ("dump.rdb", "appendonly.aof", "appendonlydir"):
            path = self.workdir / leftover
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()
        self.start()
