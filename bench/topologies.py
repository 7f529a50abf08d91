"""Refresh/s, Revoke/s and revocation propagation on each Redis topology (issue 16).

    python -m bench --only topologies [--quick] [--label before] [--topologies standalone,...]

For each topology (standalone; Sentinel: a primary, a replica and three sentinels; Redis
Cluster with 1, 2 and 3 primaries, no replicas), all started from the `redis-server` binary on
free loopback ports (tests/support/redis_topologies.py), three sidecar processes share one
key prefix on it and are measured:

propagation  an access token issued at one sidecar (in turn), accepted by all three, then
             Verify polled at all three while Revoke is sent: the delay until the last of
             them refuses (bench/revocation_propagation.py). `store.sync_interval_s` is 60 s,
             so every refusal came through the push feed.
Refresh      one load-generator process per sidecar (bench/load.py), `--concurrency` chains
             each: every call a real rotation (Redis script, two ES256 signatures).
Revoke       the same processes revoking pre-minted ES256 access tokens, each once (the pool
             is split between the load processes and sized so none cycles; `cycled` says
             when one did).

All topologies are up at once (idle, they cost memory, not CPU); after the propagation pass,
`--rounds` rounds run Refresh and Revoke on every topology in turn, each round starting one
topology later, so a drift of a shared machine's load does not land on one topology; each
row is its median round (by calls/s) with every round's calls/s beside it.

Throughput rows carry the CPU seconds every process used during the measured window: each
sidecar, each Redis process (data nodes and sentinels), the load generators, and the whole
machine from /proc/stat (other work on a shared machine included). `bound` names what limits
the figure: a Redis process at a full core (Redis runs commands on one thread), the machine's
cores all busy (then the figure is this machine's, not the design's), or neither (round trips
with that many calls in flight). In a Cluster, `keys` counts each primary's keys at the end:
where the deployment's data landed.

Results merge into bench/results/topologies.json under `--label` (a run replaces only its own
label), and topologies.md shows every label, each compared with the first.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import shutil
import statistics
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import redis

from authsidecar.v1 import auth_pb2, auth_pb2_grpc
from bench import procs
from bench.propagation import percentile
from bench.revocation_propagation import one_delay
from bench.tokens import make_key
from tests.support.redis import RedisServer
from tests.support.redis_topologies import RedisClusterSet, SentinelSet, wait_until

RESULTS = Path(__file__).resolve().parent / "results"
REVOKE = "/authsidecar.v1.AuthService/Revoke"
TOPOLOGIES = ("standalone", "sentinel", "cluster1", "cluster2", "cluster3")
# A Redis process (or a sidecar) using this share of one core is at its limit.
SATURATED = 0.85
_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Plan:
    duration_s: float
    warmup_s: float
    concurrency: int  # calls in flight per sidecar
    sidecars: int
    propagation: int  # revocations timed per topology
    pool: int  # ES256 access tokens for one round's Revoke cells
    topologies: tuple[str, ...]
    rounds: int


FULL = Plan(3.0, 0.7, 8, 3, 100, 8_000, TOPOLOGIES, 3)
QUICK = Plan(0.5, 0.3, 4, 3, 10, 2_000, TOPOLOGIES, 1)


@dataclass
class Deployment:
    """One running Redis topology: the sidecars' store settings, the Redis processes to
    account CPU to (label -> pid), and its primaries (port -> label) for the key count."""

    name: str
    env: dict[str, str]
    processes: dict[str, int]
    primaries: dict[int, str]
    stop: Callable[[], None]
    extra: dict[str, Any] = field(default_factory=dict)


def _client(port: int) -> Any:
    # execute_command is unannotated in redis-py: Any keeps the callers readable.
    return redis.Redis(port=port, socket_timeout=5, decode_responses=True)


def _pid(port: int) -> int:
    client = _client(port)
    try:
        return int(client.info("server")["process_id"])
    finally:
        client.close()


class _Cluster(RedisClusterSet):
    """RedisClusterSet for any number of primaries: `redis-cli --cluster create` refuses
    fewer than three, so one or two primaries (no replicas) are made by hand the same way
    it does it: the slots split evenly with ADDSLOTSRANGE, the nodes joined with MEET."""

    def _create(self) -> None:
        if self.primaries >= 3 or self.replicas:
            super()._create()
            return
        for node in self.nodes:
            node.start()
        span = 16384 // len(self.nodes)
        for index, node in enumerate(self.nodes):
            high = 16383 if index == len(self.nodes) - 1 else (index + 1) * span - 1
            client = _client(node.port)
            try:
                client.execute_command("CLUSTER", "ADDSLOTSRANGE", index * span, high)
                if index:
                    client.execute_command("CLUSTER", "MEET", "127.0.0.1", self.nodes[0].port)
            finally:
                client.close()
        wait_until("every node sees the cluster ok", lambda: self._all_ok() and self.consistent())


def _deploy(name: str, work: Path) -> Deployment:
    path = work / name
    path.mkdir()
    if name == "standalone":
        server = RedisServer(path, persist=False)
        server.start()
        return Deployment(
            name,
            {"STORE__REDIS_URL": server.url},
            {f"redis :{server.port}": _pid(server.port)},
            {server.port: f"redis :{server.port}"},
            server.kill,
        )
    if name == "sentinel":
        sentinel = SentinelSet(path)
        sentinel.start()
        primary = sentinel.primary_port()
        processes = {
            f"redis :{node.port} ({'primary' if node.port == primary else 'replica'})": _pid(
                node.port
            )
            for node in sentinel.nodes
        }
        for port in sentinel.sentinel_ports:
            processes[f"sentinel :{port}"] = _pid(port)
        env = {
            "STORE__REDIS_MODE": "sentinel",
            "STORE__REDIS_SENTINELS": sentinel.sentinels,
            "STORE__REDIS_SENTINEL_MASTER": sentinel.master_name,
        }
        label = next(k for k in processes if k.startswith(f"redis :{primary} "))
        return Deployment(name, env, processes, {primary: label}, sentinel.stop)
    if name.startswith("cluster"):
        cluster = _Cluster(path, primaries=int(name.removeprefix("cluster")), replicas=0)
        cluster.start()
        ports = [node.port for node in cluster.nodes]
        labels = {port: f"primary :{port}" for port in ports}
        return Deployment(
            name,
            {"STORE__REDIS_MODE": "cluster", "STORE__REDIS_URL": cluster.url},
            {labels[port]: _pid(port) for port in ports},
            labels,
            cluster.stop,
        )
    raise ValueError(f"unknown topology {name!r}")


def _machine_busy_ticks() -> int:
    """Ticks every CPU of the machine spent not idle (the first line of /proc/stat)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    return sum(fields) - fields[3] - fields[4]  # minus idle and iowait


class _Snapshot:
    def __init__(self, sidecars: list[procs.Server], redis_pids: dict[str, int]) -> None:
        self.at = time.monotonic()
        self.machine = _machine_busy_ticks()
        self.cpu = {f"sidecar {i + 1}": s.cpu_s() for i, s in enumerate(sidecars)}
        self.cpu.update({label: procs.cpu_of(pid) for label, pid in redis_pids.items()})


def _bound(cores: dict[str, float], machine: float, cpus: int, in_flight: int) -> str:
    """What limits a throughput figure, from the cores each process used (see the module)."""
    redis_side = {k: v for k, v in cores.items() if not k.startswith(("sidecar", "load"))}
    label, top = max(redis_side.items(), key=lambda kv: kv[1])
    if top >= SATURATED:
        return f"Redis: {label} at {top:.2f} of one core (commands run on one thread)"
    if machine >= SATURATED * cpus:
        sidecars = sum(v for k, v in cores.items() if k.startswith("sidecar"))
        others = machine - sum(cores.values())
        return (
            f"this machine's {cpus} cores ({machine:.2f} cores busy: sidecars {sidecars:.2f},"
            f" Redis {sum(redis_side.values()):.2f}, load generators"
            f" {cores.get('load generators', 0.0):.2f}, other processes {max(0.0, others):.2f})"
        )
    side_label, side_top = max(
        ((k, v) for k, v in cores.items() if k.startswith("sidecar")), key=lambda kv: kv[1]
    )
    if side_top >= SATURATED:
        return f"{side_label} at {side_top:.2f} of one core (its event loop)"
    return (
        f"no CPU limit reached ({machine:.2f} of {cpus} cores busy):"
        f" round trips with {in_flight} calls in flight"
    )


def _per_call(cpu_s: float, calls: int) -> float:
    return cpu_s / calls * 1000 if calls else float("nan")


def _drive(
    op: str,
    specs: list[dict[str, Any]],
    sidecars: list[procs.Server],
    deployment: Deployment,
    plan: Plan,
) -> dict[str, Any]:
    """Run one load process per spec over the same window; latencies, errors and the CPU of
    every process involved over that window."""
    loads, before, after = procs.run_loads(
        specs,
        warmup_s=plan.warmup_s,
        duration_s=plan.duration_s,
        sample=lambda: _Snapshot(sidecars, deployment.processes),
    )
    latencies, errors, client_cpu = loads.latencies_us, loads.errors, loads.client_cpu_s
    window = after.at - before.at
    cpu_s = {label: after.cpu[label] - before.cpu[label] for label in after.cpu}
    cpu_s["load generators"] = client_cpu
    cores = {label: value / window for label, value in cpu_s.items()}
    machine = (after.machine - before.machine) / _TICKS / window
    in_flight = sum(spec["tasks"] for spec in specs)
    calls = len(latencies)
    redis_side = {k: v for k, v in cpu_s.items() if not k.startswith(("sidecar", "load"))}
    busiest, busiest_s = max(redis_side.items(), key=lambda kv: kv[1])
    return {
        "topology": deployment.name,
        "op": op,
        "calls": len(latencies),
        "calls_per_s": len(latencies) / window,
        "p50_ms": percentile([v / 1000 for v in latencies], 0.50),
        "p99_ms": percentile([v / 1000 for v in latencies], 0.99),
        "errors": errors,
        "window_s": window,
        "in_flight": in_flight,
        "cpu_s": cpu_s,
        "machine_busy_cores": machine,
        # Per call, for sizing: what one call costs each side (CPU-s are in clock ticks).
        "sidecar_cpu_ms_per_call": _per_call(
            sum(v for k, v in cpu_s.items() if k.startswith("sidecar")), calls
        ),
        "redis_cpu_ms_per_call": _per_call(sum(redis_side.values()), calls),
        "busiest_redis": busiest,
        # The rate at which the busiest Redis process would use a whole core, if its cost
        # per call stays what it is here (None: too few ticks in the window to say).
        "redis_core_at_per_s": 1000 / _per_call(busiest_s, calls) if busiest_s > 0 else None,
        "bound": _bound(cores, machine, os.cpu_count() or 1, in_flight),
    }


async def _propagation(sidecars: list[procs.Server], count: int) -> dict[str, Any]:
    channels = [grpc.aio.insecure_channel(s.tcp) for s in sidecars]
    admins = [grpc.aio.insecure_channel(f"unix:{s.admin}") for s in sidecars]
    try:
        stubs = [auth_pb2_grpc.AuthServiceStub(ch) for ch in channels]
        admin_stubs = [auth_pb2_grpc.AuthServiceStub(ch) for ch in admins]
        delays = []
        for i in range(count):
            k = i % len(sidecars)
            delays.append(await one_delay(stubs[k], admin_stubs[k], stubs))
    finally:
        for channel in channels + admins:
            await channel.close()
    ms = sorted(d * 1000 for d in delays)
    return {
        "revocations": len(ms),
        "sidecars": len(sidecars),
        "p50_ms": statistics.median(ms),
        "p99_ms": percentile(ms, 0.99),
        "max_ms": ms[-1],
    }


def _keys_per_primary(deployment: Deployment) -> dict[str, int]:
    counts = {}
    for port, label in deployment.primaries.items():
        client = _client(port)
        try:
            counts[label] = int(client.dbsize())
        finally:
            client.close()
    return counts


def _sidecar(
    work: Path,
    index: int,
    key_file: Path,
    prefix: str,
    deployment: Deployment,
    *,
    root: Path = procs.ROOT,
) -> procs.Server:
    data = work / f"s{index}"
    data.mkdir()
    env = {
        "AUTHSIDECAR_DATA_DIR": str(data),
        "AUTHSIDECAR_LISTEN__TCP": "127.0.0.1:0",
        "AUTHSIDECAR_KEYS__FILES": str(key_file),
        "AUTHSIDECAR_LOG_LEVEL": "WARNING",
        "AUTHSIDECAR_STORE__BACKEND": "redis",
        "AUTHSIDECAR_STORE__REDIS_KEY_PREFIX": prefix,
        "AUTHSIDECAR_STORE__REDIS_TIMEOUT_S": "2",
        # Propagation measures the push feed alone (bench/revocation_propagation.py).
        "AUTHSIDECAR_STORE__SYNC_INTERVAL_S": "60",
    }
    env.update({f"AUTHSIDECAR_{k}": v for k, v in deployment.env.items()})
    name = f"sidecar {index} on {deployment.name}"
    return procs.start(name, ["-m", "sidecar", "serve"], env, root=root)


@dataclass
class _Fleet:
    """One topology with its sidecars, up for the whole run so rounds can interleave."""

    deployment: Deployment
    sidecars: list[procs.Server]
    setup_s: float
    samples: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    @classmethod
    def start(cls, name: str, work: Path, plan: Plan, key_file: Path) -> _Fleet:
        began = time.monotonic()
        fleet = cls(_deploy(name, work), [], 0.0)
        fleet.setup_s = time.monotonic() - began
        try:
            prefix = f"bench-{uuid.uuid4().hex[:8]}"  # one fleet: every sidecar shares it
            for i in range(plan.sidecars):
                fleet.sidecars.append(_sidecar(work / name, i, key_file, prefix, fleet.deployment))
        except BaseException:
            fleet.stop()
            raise
        return fleet

    def stop(self) -> None:
        for server in self.sidecars:
            server.stop()
        self.deployment.stop()

    def refresh(self, plan: Plan) -> dict[str, Any]:
        specs = [
            {"target": s.target("uds"), "admin_target": f"unix:{s.admin}", "method": "",
             "mode": "refresh", "payloads": [], "tasks": plan.concurrency}
            for s in self.sidecars
        ]  # fmt: skip
        return _drive("Refresh", specs, self.sidecars, self.deployment, plan)

    def revoke(self, plan: Plan, pool: list[str]) -> dict[str, Any]:
        """Each token of `pool` revoked at most once: split between the sidecars."""
        share = len(pool) // len(self.sidecars)
        specs = []
        for i, s in enumerate(self.sidecars):
            payloads = [
                base64.b64encode(auth_pb2.RevokeRequest(token=t).SerializeToString()).decode()
                for t in pool[i * share : (i + 1) * share]
            ]
            specs.append(
                {"target": s.target("uds"), "admin_target": f"unix:{s.admin}", "method": REVOKE,
                 "mode": "static", "payloads": payloads, "tasks": plan.concurrency}
            )  # fmt: skip
        row = _drive("Revoke", specs, self.sidecars, self.deployment, plan)
        # Calls before the window (warm-up) used tokens too: the rate over the whole run.
        row["cycled"] = row["calls_per_s"] * (plan.warmup_s + plan.duration_s) > len(pool)
        return row


def _median_round(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """The round with the median calls/s, whole (its CPU figures belong to its rate), with
    every round's calls/s beside it."""
    ranked = sorted(rounds, key=lambda row: row["calls_per_s"])
    row = dict(ranked[(len(ranked) - 1) // 2])
    row["rounds_calls_per_s"] = [r["calls_per_s"] for r in rounds]
    return row


def _row_line(row: dict[str, Any]) -> str:
    return (
        f"{row['op']:8} {row['calls_per_s']:8.0f}/s p50 {row['p50_ms']:.2f} ms"
        f" p99 {row['p99_ms']:.2f} ms errors {row['errors']} -- {row['bound']}"
    )


def _git(*args: str) -> str:
    git = shutil.which("git")
    if git is None:
        return "unknown"
    done = subprocess.run([git, *args], cwd=procs.ROOT, capture_output=True, text=True, check=False)
    return done.stdout.strip()


def measure(plan: Plan, label: str) -> dict[str, Any]:
    """Every topology of `plan` up at once (idle ones cost memory, not CPU); propagation on
    each, then `plan.rounds` rounds of Refresh and Revoke interleaved over the topologies,
    each round starting one topology later, so a drift of a shared machine's load does not
    land on one topology. Each row is its median round."""
    load_before = os.getloadavg()
    started = time.time()
    fleets: dict[str, _Fleet] = {}
    results = []
    with tempfile.TemporaryDirectory(prefix="topo-", dir="/tmp") as tmp:
        work = Path(tmp)
        minted = make_key(work, "ES256", plan.pool * plan.rounds)
        try:
            for name in plan.topologies:
                fleets[name] = _Fleet.start(name, work, plan, minted.key_path)
                print(f"topology {name} up in {fleets[name].setup_s:.1f} s", flush=True)
            propagation = {}
            for name, fleet in fleets.items():
                propagation[name] = asyncio.run(_propagation(fleet.sidecars, plan.propagation))
                print(f"  {name}: propagation {json.dumps(propagation[name])}", flush=True)
            names = list(fleets)
            for round_ in range(plan.rounds):
                pool = minted.tokens[round_ * plan.pool : (round_ + 1) * plan.pool]
                shift = round_ % len(names)
                for name in names[shift:] + names[:shift]:
                    fleet = fleets[name]
                    for row in (fleet.refresh(plan), fleet.revoke(plan, pool)):
                        fleet.samples.setdefault(row["op"], []).append(row)
                        print(f"[{round_ + 1}/{plan.rounds}] {name}: {_row_line(row)}", flush=True)
            for name, fleet in fleets.items():
                results.append(
                    {
                        "topology": name,
                        "setup_s": fleet.setup_s,
                        "redis_processes": sorted(fleet.deployment.processes),
                        "propagation": propagation[name],
                        "throughput": [_median_round(rows) for rows in fleet.samples.values()],
                        "keys": _keys_per_primary(fleet.deployment),
                    }
                )
        finally:
            for fleet in fleets.values():
                fleet.stop()
    return {
        "label": label,
        "commit": _git("rev-parse", "--short", "HEAD"),
        "branch": _git("rev-parse", "--abbrev-ref", "HEAD"),
        "started_at": started,
        "elapsed_s": time.time() - started,
        "cpus": os.cpu_count(),
        "loadavg_before": load_before,
        "loadavg_after": os.getloadavg(),
        "plan": plan.__dict__,
        "topologies": results,
    }


def _cpu_cells(row: dict[str, Any]) -> tuple[str, str, str]:
    cpu = row["cpu_s"]
    sidecars = " / ".join(f"{v:.2f}" for k, v in cpu.items() if k.startswith("sidecar"))
    redis_side = ", ".join(
        f"{k} {v:.2f}" for k, v in cpu.items() if not k.startswith(("sidecar", "load"))
    )
    return sidecars, redis_side, f"{cpu['load generators']:.2f}"


def markdown(document: dict[str, Any]) -> str:
    runs = list(document["runs"].values())
    out = [
        "# Redis topologies: Refresh/s, Revoke/s, revocation propagation (issue 16)",
        "",
        "Written by `python -m bench --only topologies` (bench/topologies.py: what each"
        " column means). Every figure is from this machine: "
        f"{runs[0]['cpus']} cores shared by the sidecars, Redis, the load generators and other"
        " work; CPU-s are per process over the measured window, `machine busy` counts every"
        " process on the machine (cores in use on average).",
        "",
    ]
    for run in runs:
        plan = run["plan"]
        out += [
            f"## {run['label']}: {run['branch']} @ {run['commit']}",
            "",
            f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime(run['started_at']))},"
            f" {run['elapsed_s']:.0f} s; load average before"
            f" {' '.join(f'{x:.2f}' for x in run['loadavg_before'])}, after"
            f" {' '.join(f'{x:.2f}' for x in run['loadavg_after'])}. {plan['sidecars']} sidecars"
            f" x {plan['concurrency']} calls in flight, {plan['duration_s']} s windows after"
            f" {plan['warmup_s']} s warm-up, {plan.get('rounds', 1)} rounds interleaved over"
            " the topologies (each row: its median round, every round's range beside calls/s);"
            " ES256.",
            "",
            "| topology | op | calls/s | p50 ms | p99 ms | errors | sidecars CPU-s (each) |"
            " Redis CPU-s (each process) | load gen CPU-s | window s | machine busy (cores) |"
            " sidecar CPU ms/call | Redis CPU ms/call | one Redis core at (calls/s) | bound |",
            "|---|---|---:|---:|---:|---|---|---|---:|---:|---:|---:|---:|---:|---|",
        ]
        for topo in run["topologies"]:
            for row in topo["throughput"]:
                sidecars, redis_side, load = _cpu_cells(row)
                errors = ", ".join(f"{k} {v}" for k, v in row["errors"].items()) or "0"
                at = row["redis_core_at_per_s"]
                ceiling = "-" if at is None else f"{at:,.0f} ({row['busiest_redis']})"
                if row.get("cycled"):
                    errors += " (pool cycled)"
                spread = row.get("rounds_calls_per_s", [])
                rate = f"{row['calls_per_s']:.0f}" + (
                    f" ({min(spread):.0f}-{max(spread):.0f})" if len(spread) > 1 else ""
                )
                out.append(
                    f"| {topo['topology']} | {row['op']} | {rate} |"
                    f" {row['p50_ms']:.2f} | {row['p99_ms']:.2f} | {errors} | {sidecars} |"
                    f" {redis_side} | {load} | {row['window_s']:.1f} |"
                    f" {row['machine_busy_cores']:.2f} | {row['sidecar_cpu_ms_per_call']:.2f} |"
                    f" {row['redis_cpu_ms_per_call']:.3f} | {ceiling} | {row['bound']} |"
                )
        out += [
            "",
            "| topology | revocations | sidecars watching | p50 ms | p99 ms | max ms |"
            " keys per primary at the end |",
            "|---|---:|---:|---:|---:|---:|---|",
        ]
        for topo in run["topologies"]:
            p = topo["propagation"]
            keys = ", ".join(f"{k}: {v}" for k, v in topo["keys"].items())
            out.append(
                f"| {topo['topology']} | {p['revocations']} | {p['sidecars']} |"
                f" {p['p50_ms']:.2f} | {p['p99_ms']:.2f} | {p['max_ms']:.2f} | {keys} |"
            )
        out.append("")
    if len(runs) > 1:
        out += _comparison(runs)
    return "\n".join(out)


def _comparison(runs: list[dict[str, Any]]) -> list[str]:
    first = runs[0]
    index = {
        (t["topology"], row["op"]): row for t in first["topologies"] for row in t["throughput"]
    }
    out = []
    for run in runs[1:]:
        out += [
            f"## {run['label']} against {first['label']} (calls/s)",
            "",
            f"| topology | op | {first['label']} | {run['label']} | ratio |",
            "|---|---|---:|---:|---:|",
        ]
        for topo in run["topologies"]:
            for row in topo["throughput"]:
                base = index.get((topo["topology"], row["op"]))
                if base is None:
                    continue
                ratio = row["calls_per_s"] / base["calls_per_s"]
                out.append(
                    f"| {topo['topology']} | {row['op']} | {base['calls_per_s']:.0f} |"
                    f" {row['calls_per_s']:.0f} | {ratio:.2f} |"
                )
        out.append("")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench --only topologies", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--quick", action="store_true", help="short windows (a test run)")
    parser.add_argument("--label", default="", help="this run's name (default: the branch)")
    parser.add_argument("--topologies", help=f"comma-separated subset of {','.join(TOPOLOGIES)}")
    parser.add_argument("--duration", type=float, help="seconds measured per throughput cell")
    parser.add_argument("--concurrency", type=int, help="calls in flight per sidecar")
    parser.add_argument("--propagation", type=int, help="revocations timed per topology")
    parser.add_argument("--rounds", type=int, help="interleaved rounds (each row: the median)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="where topologies.* go")
    args = parser.parse_args(argv)
    plan = QUICK if args.quick else FULL
    changes: dict[str, Any] = {}
    if args.topologies:
        chosen = tuple(args.topologies.split(","))
        unknown = set(chosen) - set(TOPOLOGIES)
        if unknown:
            parser.error(f"unknown topologies: {', '.join(sorted(unknown))}")
        changes["topologies"] = chosen
    for name in ("duration", "concurrency", "propagation", "rounds"):
        if getattr(args, name):
            changes["duration_s" if name == "duration" else name] = getattr(args, name)
    plan = Plan(**{**plan.__dict__, **changes})
    run = measure(plan, args.label or _git("rev-parse", "--abbrev-ref", "HEAD"))
    path = args.out / "topologies.json"
    document: dict[str, Any] = {"runs": {}}
    if path.exists():
        document = json.loads(path.read_text())
    document["runs"][run["label"]] = run
    args.out.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=1, allow_nan=False))
    text = markdown(document)
    (args.out / "topologies.md").write_text(text + "\n")
    print(text)
    return 0
