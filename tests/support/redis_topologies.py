"""Real multi-process Redis deployments for tests: Sentinel and a multi-node Cluster (issue 16).

Both are built from the `redis-server` binary on free loopback ports (never 6379): a
Sentinel is `redis-server sentinel.conf --sentinel` (what the `redis-sentinel` name links to),
so a machine without the `redis-sentinel` link still runs them. Timeouts are short (down after
1 s, cluster node timeout 2 s) so failovers finish within a test; they are what an operator
would tune, not defaults.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import redis

from tests.support.redis import RedisServer, free_port, redis_problem

__all__ = ["RedisClusterSet", "SentinelSet", "repl_offset", "wait_until"]

MASTER_NAME = "authsidecar-test"
# A log file in the node's own directory (read it when a test fails), and a replica's first
# full sync starts at once instead of after the default 5 s wait for other replicas.
_NODE_ARGS = ("--logfile", "redis.log", "--repl-diskless-sync-delay", "0")


def wait_until(what: str, check: Any, limit_s: float = 30.0) -> Any:
    """Poll `check()` until it returns something truthy (returned); fail past `limit_s`."""
    deadline = time.monotonic() + limit_s
    while True:
        try:
            found = check()
        except (redis.RedisError, OSError):
            found = None
        if found:
            return found
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what}: not reached within {limit_s} s")
        time.sleep(0.05)


def _client(port: int) -> Any:
    # execute_command is unannotated in redis-py: Any keeps the callers readable.
    return redis.Redis(port=port, socket_timeout=5, decode_responses=True)


def _info(port: int, section: str) -> dict[str, Any]:
    client = _client(port)
    try:
        info: dict[str, Any] = client.info(section)
        return info
    finally:
        client.close()


def repl_offset(port: int) -> int:
    """How far a server is in the replication stream (`master_repl_offset`)."""
    return int(_info(port, "replication")["master_repl_offset"])


class SentinelSet:
    """A primary, one replica and three sentinels monitoring them as `MASTER_NAME`.

    `primary_port()` asks the sentinels (the truth after a failover); `nodes` holds both data
    servers by their original role, so a test can kill the one that is primary now.
    """

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.master_name = MASTER_NAME
        # Sentinel logs go to sentinel{i}.log in `workdir`.
        first, second = workdir / "r0", workdir / "r1"
        first.mkdir()
        second.mkdir()
        self.nodes = [RedisServer(first, persist=False, extra_args=_NODE_ARGS)]
        self.nodes.append(RedisServer(second, persist=False))
        self.route_replica_through(self.nodes[0].port)
        self.sentinel_ports = [free_port() for _ in range(3)]
        self._sentinels: list[subprocess.Popen[bytes]] = []

    def route_replica_through(self, port: int) -> None:
        """Before `start`: the replica replicates from `port` (a proxy in front of the
        primary), so a test can stall replication without either server noticing."""
        self.nodes[1].extra_args = (*_NODE_ARGS, "--replicaof", "127.0.0.1", str(port))

    @property
    def sentinels(self) -> str:
        """The `store.redis_sentinels` value."""
        return ",".join(f"127.0.0.1:{port}" for port in self.sentinel_ports)

    def start(self) -> None:
        for node in self.nodes:
            node.start()
        wait_until(
            "replica in sync",
            lambda: _info(self.nodes[1].port, "replication").get("master_link_status") == "up",
        )
        for index, port in enumerate(self.sentinel_ports):
            self._sentinels.append(self._start_sentinel(index, port))
        wait_until("sentinels see each other and the replica", self._settled)

    def _start_sentinel(self, index: int, port: int) -> subprocess.Popen[bytes]:
        conf = self.workdir / f"sentinel{index}.conf"
        conf.write_text(
            f"port {port}\nbind 127.0.0.1\nprotected-mode no\ndir {self.workdir}\n"
            f"logfile {self.workdir / f'sentinel{index}.log'}\n"
            f"sentinel monitor {MASTER_NAME} 127.0.0.1 {self.nodes[0].port} 2\n"
            f"sentinel down-after-milliseconds {MASTER_NAME} 1000\n"
            f"sentinel failover-timeout {MASTER_NAME} 10000\n"
            f"sentinel parallel-syncs {MASTER_NAME} 1\n"
        )
        binary = shutil.which("redis-sentinel")
        args = [binary, str(conf)] if binary else [self.nodes[0].binary, str(conf), "--sentinel"]
        proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        url = f"redis://127.0.0.1:{port}/0"
        wait_until("sentinel answers", lambda: redis_problem(url) is None, limit_s=10)
        return proc

    def _settled(self) -> bool:
        for port in self.sentinel_ports:
            client = _client(port)
            try:
                master = client.execute_command("SENTINEL", "MASTER", MASTER_NAME)
            finally:
                client.close()
            # redis-py parses the reply into a dict with underscored, typed fields.
            if int(master["num-other-sentinels"]) < 2 or int(master["num-slaves"]) < 1:
                return False
        return True

    def primary_port(self) -> int:
        """The primary's port as the first sentinel reports it."""
        client = _client(self.sentinel_ports[0])
        try:
            _host, port = client.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", MASTER_NAME)
        finally:
            client.close()
        return int(port)

    def primary(self) -> RedisServer:
        port = self.primary_port()
        return next(node for node in self.nodes if node.port == port)

    def failover(self) -> None:
        """`SENTINEL FAILOVER`: a coordinated switch (the old primary pauses writes until
        the replica has caught up, then becomes its replica)."""
        client = _client(self.sentinel_ports[0])
        try:
            client.execute_command("SENTINEL", "FAILOVER", MASTER_NAME)
        finally:
            client.close()

    def wait_promoted(self, old_port: int, limit_s: float = 60.0) -> int:
        """Wait until every sentinel names a primary other than `old_port` and that server
        says it is a master; returns its port."""

        def switched() -> int | None:
            ports = set()
            for port in self.sentinel_ports:
                client = _client(port)
                try:
                    _host, found = client.execute_command(
                        "SENTINEL", "GET-MASTER-ADDR-BY-NAME", MASTER_NAME
                    )
                finally:
                    client.close()
                ports.add(int(found))
            if len(ports) != 1 or old_port in ports:
                return None
            (new,) = ports
            return new if _info(new, "replication").get("role") == "master" else None

        try:
            port: int = wait_until("a replica promoted", switched, limit_s)
        except RuntimeError as exc:
            raise RuntimeError(f"{exc}\n{self.logs()}") from None
        return port

    def logs(self) -> str:
        """The last lines of every sentinel's and server's log (for a failure message)."""
        paths = sorted(self.workdir.glob("sentinel*.log")) + sorted(self.workdir.glob("r*/*.log"))
        return "\n".join(
            f"== {path.name}\n" + "\n".join(path.read_text(errors="replace").splitlines()[-15:])
            for path in paths
        )

    def stop(self) -> None:
        for proc in self._sentinels:
            proc.kill()
            proc.wait(timeout=10)
        self._sentinels.clear()
        for node in self.nodes:
            node.kill()


class RedisClusterSet:
    """Three primaries with one replica each (six processes), created with
    `redis-cli --cluster create`; cluster-node-timeout 2 s, so a killed primary's replica
    is promoted automatically within seconds."""

    def __init__(self, workdir: Path, *, primaries: int = 3, replicas: int = 1) -> None:
        self.workdir = workdir
        self.primaries = primaries
        self.replicas = replicas
        self.nodes: list[RedisServer] = []
        self._attempt = 0
        self._make_nodes()

    def _make_nodes(self) -> None:
        """Fresh nodes on fresh ports, in a directory of this attempt's own."""
        self._attempt += 1
        self.nodes = []
        for index in range(self.primaries * (1 + self.replicas)):
            path = self.workdir / f"a{self._attempt}n{index}"
            path.mkdir()
            node = RedisServer(
                path,
                persist=False,
                cluster=True,
                own_slots=False,
                extra_args=("--cluster-node-timeout", "2000", *_NODE_ARGS),
            )
            self.nodes.append(node)

    @property
    def url(self) -> str:
        """Any node; the cluster client discovers the rest."""
        return self.nodes[0].url

    def start(self) -> None:
        """Create the cluster and wait until every node agrees and every replica has synced.

        A cluster that has not converged within 60 s is torn down and made again once, on
        fresh ports (seen once in a full CI run, never alone: the nodes' state and log tails
        go into the error so the next occurrence can be diagnosed). The test's own checks
        start only on a converged cluster, so this retries setup, never an assertion.
        """
        try:
            self._create()
        except RuntimeError as first:
            report = self._diagnose()
            self.stop()
            self._make_nodes()
            try:
                self._create()
            except RuntimeError as second:
                raise RuntimeError(
                    f"{second} (twice; first attempt: {first}; {report}; now: {self._diagnose()})"
                ) from None

    def _create(self) -> None:
        for node in self.nodes:
            node.start()
        cli = shutil.which("redis-cli")
        if cli is None:
            raise FileNotFoundError("redis-cli is not on PATH")
        addresses = [f"127.0.0.1:{node.port}" for node in self.nodes]
        subprocess.run(
            [cli, "--cluster", "create", *addresses, "--cluster-replicas", str(self.replicas),
             "--cluster-yes"],
            check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=60,
        )  # fmt: skip
        wait_until("every node sees the cluster ok", self._all_ok, limit_s=60)

    def _diagnose(self) -> str:
        """Each node's cluster state, role and link, and the tail of its log."""
        lines = []
        for node in self.nodes:
            try:
                state = "ok" if self.state_ok(node.port) else "not ok"
                replication = _info(node.port, "replication")
                role = f"{replication.get('role')} link={replication.get('master_link_status')}"
            except (redis.RedisError, OSError) as exc:
                state, role = "unreachable", type(exc).__name__
            log_file = node.workdir / "redis.log"
            tail = (
                log_file.read_text(errors="replace").splitlines()[-3:] if log_file.exists() else []
            )
            lines.append(f"{node.port}: {state} {role} log: {' | '.join(tail)}")
        return "; ".join(lines)

    def _all_ok(self) -> bool:
        if not all(self.state_ok(node.port) for node in self.nodes if node.proc is not None):
            return False
        # And every replica attached (redis-cli returns before they are).
        replicas = [n for n in self.topology() if "slave" in n["flags"]]
        if len(replicas) != len(self.nodes) - len(self.nodes) // (1 + self.replicas):
            return False
        # And synced: a replica that never finished its first sync cannot be promoted.
        return all(
            _info(n["port"], "replication").get("master_link_status") == "up" for n in replicas
        )

    @staticmethod
    def state_ok(port: int) -> bool:
        client = _client(port)
        try:
            info: str = client.execute_command("CLUSTER", "INFO")
        finally:
            client.close()
        return "cluster_state:ok" in info

    def topology(self, port: int | None = None) -> list[dict[str, Any]]:
        """CLUSTER NODES as dicts (id, port, flags, master, epoch, slots), as the node on
        `port` (default: the first live one) sees them."""
        if port is None:
            port = next(node for node in self.nodes if node.proc is not None).port
        client = _client(port)
        try:
            text: str = client.execute_command("CLUSTER", "NODES")
        finally:
            client.close()
        found = []
        for line in text.strip().splitlines():
            parts = line.split()
            found.append(
                {
                    "id": parts[0],
                    "port": int(parts[1].split(":")[1].split("@")[0]),
                    "flags": set(parts[2].split(",")),
                    "master": parts[3],
                    "epoch": int(parts[6]),
                    "slots": parts[8:],
                }
            )
        return found

    def owner_of(self, slot: int) -> dict[str, Any]:
        for node in self.topology():
            if "master" not in node["flags"] or "fail" in node["flags"]:
                continue
            for span in node["slots"]:
                if span.startswith("["):
                    continue
                low, _, high = span.partition("-")
                if int(low) <= slot <= int(high or low):
                    return node
        raise LookupError(f"no primary serves slot {slot}")

    def server(self, port: int) -> RedisServer:
        return next(node for node in self.nodes if node.port == port)

    def migrate_slot(self, slot: int, target: dict[str, Any], *, pause_s: float = 0.0) -> int:
        """Move `slot` to `target` the way `redis-cli --cluster reshard` does: IMPORTING on
        the target, MIGRATING on the source, MIGRATE the keys a few at a time (sleeping
        `pause_s` between batches, so load runs against a half-moved slot), then SETSLOT
        NODE everywhere. Returns how many keys moved."""
        source = self.owner_of(slot)
        src, dst = _client(source["port"]), _client(target["port"])
        moved = 0
        try:
            dst.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", source["id"])
            src.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", target["id"])
            while keys := src.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 2):
                src.execute_command(
                    "MIGRATE", "127.0.0.1", target["port"], "", 0, 5000, "KEYS", *keys
                )
                moved += len(keys)
                time.sleep(pause_s)
            # The target first, then the source (what redis-cli does), then the others.
            primaries = [n for n in self.topology() if "master" in n["flags"]]
            others = [n for n in primaries if n["id"] not in (target["id"], source["id"])]
            for node in [target, source, *others]:
                if "fail" not in node["flags"]:
                    client = _client(node["port"])
                    try:
                        client.execute_command("CLUSTER", "SETSLOT", slot, "NODE", target["id"])
                    finally:
                        client.close()
        finally:
            src.close()
            dst.close()
        wait_until("every node agrees on the new owner", self.consistent)
        return moved

    def consistent(self) -> bool:
        """Every live node has the same view of the primaries, their config epochs and slots.
        A replica that missed its primary's new config epoch can never win an election
        after that primary dies (the other primaries refuse a stale claim), so a test waits
        for this before killing a primary that just took a slot."""
        views = set()
        for node in self.nodes:
            if node.proc is None:
                continue
            view = frozenset(
                (n["id"], n["epoch"], tuple(n["slots"]))
                for n in self.topology(node.port)
                if "master" in n["flags"] and n["slots"]
            )
            views.add(view)
        return len(views) == 1

    def stop(self) -> None:
        for node in self.nodes:
            node.kill()
