"""The benchmark suite: `python -m bench` (see docs/performance.md).

Starts every server under test as its own process (the sidecar with an HS256, RS256 and ES256
key file, and one per other supported algorithm; the no-op floor; the naive python-jose
sidecar; the pre-issue-7 sidecar), drives each from separate load-generator processes,
measures the in-process references in this process, and writes bench/results/latest.json and
latest.md. All ratios in the report come from this one run.

  python -m bench            full run (a few minutes)
  python -m bench --quick    a few seconds per group: proves the suite works, numbers rough
  python -m bench --soak 60  only the memory soak: RSS of a sidecar under Verify load
  python -m bench --only two_service
                             only issue 15's two-service section (bench/two_service.py),
                             merged into an existing latest.json (the rest kept as it was)
  python -m bench --only verify_cache
                             only the sidecar verify cache's CPU per path (off / miss /
                             stored / hit, thread CPU in-process), merged likewise
  python -m bench --only propagation
                             only the revocation propagation of the two-service section
                             (50 interceptors; minutes), merged likewise
  python -m bench --only revocation_scale   the revocation set at 0 / 100k / 1M (issue 16)
  python -m bench --only topologies   Refresh/s, Revoke/s and revocation propagation on
                             standalone Redis, Sentinel and Cluster (1-3 primaries; issue 16)
  python -m bench --only verify_compare --before-ref REV
                             cold and warm Verify of this tree against REV (issue 12)
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import os
import platform
import shutil
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from authsidecar.v1 import auth_pb2, auth_pb2_grpc
from bench import h2load, inprocess, procs, report, sidecar_cache, two_service
from bench.load import MIN_CALLS
from bench.tokens import ALGORITHMS, AUDIENCE, Minted, make_key

VERIFY = "/authsidecar.v1.AuthService/Verify"
VERIFY_BATCH = "/authsidecar.v1.AuthService/VerifyBatch"
ISSUE = "/authsidecar.v1.AuthService/Issue"
INTROSPECT = "/authsidecar.v1.AuthService/Introspect"
RESULTS = Path(__file__).resolve().parent / "results"
# The bench sidecars' verify cache: smaller than the cold pool, so cold calls always miss.
CACHE_ENTRIES = 256
# The algorithms of the verify group (and of the targets); the "algorithms" group covers the
# rest of ALGORITHMS.
CORE_ALGS = ("HS256", "RS256", "ES256")
# The verify-cache cell alone (`--only verify_cache`): distinct tokens per algorithm, and
# rounds in the full run (each round passes the pool four times; medians over rounds).
CACHE_CELL_POOL = 1000
CACHE_CELL_ROUNDS = 15
OTHER_ALGS = tuple(alg for alg in ALGORITHMS if alg not in CORE_ALGS)


@dataclass(frozen=True)
class Profile:
    duration_s: float
    warmup_s: float
    cold_pool: int
    inprocess_s: float
    batch: int
    full: bool
    # The "algorithms" group (OTHER_ALGS): its token pools and its in-process seconds a row.
    alg_pool: int
    alg_inprocess_s: float
    # Calls each load process completes before a cell's window may end (bench/load.py).
    min_calls: int = MIN_CALLS


FULL = Profile(
    duration_s=3.0,
    warmup_s=0.7,
    cold_pool=2048,
    inprocess_s=1.0,
    batch=100,
    full=True,
    # Two load generators get disjoint halves of the pool: each half twice the cache, so
    # every call misses whatever their relative speed. Not the 2,048 of the core pools:
    # minting is most of this group's setup (RS512/PS512 sign at RSA-4096 speed; the
    # `keys` lines of the output say how long each key took).
    alg_pool=CACHE_ENTRIES * 4,
    # Under half the core rows' window: ten algorithms of six or seven rows each would
    # otherwise add more than a minute; this is still hundreds of RSA-4096 signatures.
    alg_inprocess_s=0.4,
)
QUICK = Profile(
    duration_s=0.4,
    warmup_s=0.2,
    cold_pool=CACHE_ENTRIES * 2,
    inprocess_s=0.05,
    batch=20,
    full=False,
    # No gRPC cells for these in --quick: the pool only has to outnumber the miss cache.
    alg_pool=inprocess.MISS_CACHE_ENTRIES * 4,
    alg_inprocess_s=0.05,
)


def _verify_payload(token: str) -> bytes:
    return auth_pb2.VerifyRequest(token=token, audience=AUDIENCE).SerializeToString()


def _batch_payloads(tokens: list[str], size: int) -> list[bytes]:
    payloads = []
    for i in range(0, len(tokens) - size + 1, size):
        requests = [
            auth_pb2.VerifyRequest(token=t, audience=AUDIENCE) for t in tokens[i : i + size]
        ]
        payloads.append(auth_pb2.VerifyBatchRequest(requests=requests).SerializeToString())
    return payloads


@dataclass
class Cell:
    group: str
    server: procs.Server
    alg: str
    label: str
    core: bool
    loadgen: str
    options: dict[str, Any] = field(default_factory=dict)

    def row(self, result: dict[str, Any]) -> dict[str, Any]:
        return {
            "group": self.group,
            "server": self.label,
            "alg": self.alg,
            "transport": "tcp"
            if self.loadgen == "h2load"
            else self.options.get("transport", "uds"),
            "concurrency": 16 if self.loadgen == "h2load" else self.options.get("concurrency", 16),
            "loadgen": self.loadgen,
            **result,
        }


class Suite:
    def __init__(self, profile: Profile, workdir: Path, h2: bool, rounds: int) -> None:
        self.p = profile
        self.dir = workdir
        self.h2 = h2 and h2load.available()
        self.rows: list[dict[str, Any]] = []
        self.notes: list[str] = []
        self.keys: dict[str, Minted] = {}
        self.alg_keys: dict[str, Minted] = {}
        self.cells: list[Cell] = []
        self.servers: list[procs.Server] = []
        self.redis: subprocess.Popen[bytes] | None = None
        self.rounds = rounds
        self.inprocess: list[dict[str, Any]] = []
        self.cache_cost: list[dict[str, Any]] = []
        self.verify_cache: list[dict[str, Any]] = []
        self.verify_cache_shared: list[dict[str, Any]] = []
        self._n = 0

    # -- servers ---------------------------------------------------------------------------

    def _sidecar_env(self, minted: Minted, store: str, **extra: str) -> dict[str, str]:
        self._n += 1
        data = self.dir / f"s{self._n}"
        env = {
            "AUTHSIDECAR_DATA_DIR": str(data),
            "AUTHSIDECAR_LISTEN__TCP": "127.0.0.1:0",
            "AUTHSIDECAR_KEYS__FILES": str(minted.key_path),
            "AUTHSIDECAR_STORE__BACKEND": store,
            "AUTHSIDECAR_TOKENS__VERIFY_CACHE_ENTRIES": str(CACHE_ENTRIES),
            "AUTHSIDECAR_LOG_LEVEL": "WARNING",
        }
        env.update(extra)
        return env

    def sidecar(self, minted: Minted, store: str = "memory", **extra: str) -> procs.Server:
        env = self._sidecar_env(minted, store, **extra)
        return procs.start(f"sidecar {minted.alg} {store}", ["-m", "sidecar", "serve"], env)

    def legacy(self, minted: Minted) -> procs.Server:
        env = self._sidecar_env(minted, "memory")
        return procs.start(f"legacy {minted.alg}", ["-m", "bench.servers", "legacy"], env)

    def reference(self, kind: str, *args: str) -> procs.Server:
        self._n += 1
        unix = str(self.dir / f"r{self._n}.sock")
        return procs.start(kind, ["-m", "bench.servers", kind, "--unix", unix, *args], {})

    # -- cells -----------------------------------------------------------------------------

    def plan(
        self,
        group: str,
        server: procs.Server,
        alg: str,
        label: str,
        *,
        core: bool = False,
        loadgen: str = "python",
        **options: Any,
    ) -> None:
        """Add a cell; `core` cells (the targets' inputs) run in every round, others once."""
        if loadgen == "h2load" and not self.h2:
            return
        self.cells.append(
            Cell(group, server, alg, label, core=core, loadgen=loadgen, options=options)
        )

    def _measure(self, cell: Cell) -> dict[str, Any]:
        o = cell.options
        if cell.loadgen == "h2load":
            result = h2load.drive(
                cell.server,
                VERIFY,
                o["payloads"][0],
                clients=o.get("connections", 2),
                streams=16 // o.get("connections", 2),
                duration_s=self.p.duration_s,
                warmup_s=self.p.warmup_s,
            )
            if "error" in result:
                raise RuntimeError(f"h2load: {result['error']}")
            return {
                "calls": result["succeeded"],
                "calls_per_s": result["calls_per_s"],
                "items_per_s": result["calls_per_s"],
                "p50_ms": result["mean_ms"],  # h2load reports the mean, not percentiles
                "p99_ms": None,
                "p999_ms": None,
                "server_cpu_s_per_1k": result["server_cpu_s_per_1k"],
                "errors": {},
            }
        return procs.drive(
            cell.server,
            transport=o.get("transport", "uds"),
            method=o.get("method", VERIFY),
            payloads=o.get("payloads") or [b""],
            concurrency=o.get("concurrency", 16),
            duration_s=self.p.duration_s,
            warmup_s=self.p.warmup_s,
            mode=o.get("mode", "static"),
            items_per_call=o.get("items", 1),
            min_calls=self.p.min_calls,
        )

    def execute(self) -> None:
        """Rounds interleave the cells, so slow drifts of a shared machine's load hit every
        cell alike; each row reports medians over its rounds."""
        results: list[list[dict[str, Any]]] = [[] for _ in self.cells]
        for round_ in range(self.rounds):
            for i, cell in enumerate(self.cells):
                if round_ > 0 and not cell.core:
                    continue
                try:
                    result = self._measure(cell)
                except RuntimeError as exc:
                    self.notes.append(f"{cell.label} {cell.alg}: {exc}")
                    continue
                results[i].append(result)
                print(f"[{round_ + 1}/{self.rounds}] " + report.line(cell.row(result)), flush=True)
        for cell, runs in zip(self.cells, results, strict=True):
            if runs:
                self.rows.append(cell.row(report.median_of(runs)))

    # -- groups ----------------------------------------------------------------------------

    def run(self) -> None:
        for alg in CORE_ALGS:
            self.keys[alg] = make_key(self.dir, alg, self.p.cold_pool)
        for alg in OTHER_ALGS:
            self.alg_keys[alg] = self._timed_key(alg, self.p.alg_pool)
        try:
            self.verify_group()
            self.batch_group()
            self.issue_refresh_group()
            self.algorithms_group()
            self.execute()
        finally:
            for server in self.servers:
                server.stop()
            if self.redis is not None:
                self.redis.terminate()
                self.redis.wait(timeout=10)
        self.inprocess_group()

    def _timed_key(self, alg: str, pool: int) -> Minted:
        """make_key, saying how long it took: RSA-4096 key generation and signing dominate
        the setup of the algorithms group, so the pool sizes are chosen from these lines."""
        began = time.perf_counter()
        minted = make_key(self.dir, alg, pool)
        print(f"  keys {alg:6} {pool} tokens in {time.perf_counter() - began:.1f} s", flush=True)
        return minted

    def _check_ok(self, server: procs.Server, token: str) -> None:
        """h2load counts HTTP 200 as success: make sure the call really verifies first."""
        with grpc.insecure_channel(server.tcp) as channel:
            auth_pb2_grpc.AuthServiceStub(channel).Verify(
                auth_pb2.VerifyRequest(token=token, audience=AUDIENCE), timeout=10
            )

    def _start(self, server: procs.Server) -> procs.Server:
        self.servers.append(server)
        return server

    def verify_group(self) -> None:
        full = self.p.full
        hs = self.keys["HS256"]
        warm = [_verify_payload(t) for t in hs.tokens[:16]]
        transports = ("uds", "tcp") if full else ("uds",)
        concurrencies = (1, 16) if full else (16,)

        noop = self._start(self.reference("noop"))
        for transport in transports:
            for c in concurrencies:
                core = transport == "uds"
                self.plan(
                    "floor",
                    noop,
                    "-",
                    "no-op (grpc.aio)",
                    core=core,
                    transport=transport,
                    concurrency=c,
                    payloads=warm,
                )
        self.plan(
            "floor", noop, "-", "no-op (grpc.aio)", core=True, loadgen="h2load", payloads=warm
        )
        if full and self.h2:
            # The server-mode question's last candidate: two processes on one port. The
            # kernel spreads connections, not calls, so both cells use 8 connections.
            pair = self._start(self.reference("noop", "--processes", "2"))
            for server, label in (
                (noop, "no-op (grpc.aio), 8 connections"),
                (pair, "no-op (grpc.aio) x2 processes, SO_REUSEPORT, 8 connections"),
            ):
                self.plan(
                    "floor", server, "-", label, loadgen="h2load", payloads=warm, connections=8
                )
        if full:
            variants = (
                ("--bare", "no-op (grpc.aio, no call layers)"),
                ("--interceptors", "no-op (grpc.aio, layers as interceptors: before)"),
                ("--sync", "no-op (sync grpc, 16 threads)"),
            )
            for flag, label in variants:
                reference = self._start(self.reference("noop", flag))
                for c in concurrencies:
                    self.plan(
                        "floor", reference, "-", label, core=True, concurrency=c, payloads=warm
                    )

        for alg in CORE_ALGS if full else ("HS256",):
            minted = self.keys[alg]
            cold = [_verify_payload(t) for t in minted.tokens]
            hot = [_verify_payload(t) for t in minted.tokens[:16]]
            naive = self._start(self.reference("naive", "--key", str(minted.key_path)))
            for c in concurrencies:
                self.plan(
                    "verify",
                    naive,
                    alg,
                    "naive jose.jwt.decode",
                    core=c == 16,
                    concurrency=c,
                    payloads=cold,
                )
            if full:
                legacy = self._start(self.legacy(minted))
                self.plan(
                    "verify",
                    legacy,
                    alg,
                    "sidecar before issue 7 (JSON Struct, no cache)",
                    core=True,
                    payloads=cold,
                )
            if self.h2:
                # h2load repeats one request body, so "cold" there is a sidecar with the
                # cache off (every call runs the full verification) against the naive one.
                off = self._start(
                    self.sidecar(minted, AUTHSIDECAR_TOKENS__VERIFY_CACHE_ENTRIES="0")
                )
                for reference, label in (
                    (off, "sidecar cache off"),
                    (naive, "naive jose.jwt.decode"),
                ):
                    self._check_ok(reference, minted.tokens[0])
                    self.plan(
                        "verify",
                        reference,
                        alg,
                        label,
                        core=True,
                        loadgen="h2load",
                        payloads=[_verify_payload(minted.tokens[0])],
                    )
            server = self._start(self.sidecar(minted))
            for transport in transports if alg == "HS256" else ("uds",):
                for c in (1, 16):
                    core = transport == "uds"
                    if c in concurrencies:
                        self.plan(
                            "verify",
                            server,
                            alg,
                            "sidecar cold",
                            core=core,
                            transport=transport,
                            concurrency=c,
                            payloads=cold,
                        )
                    self.plan(
                        "verify",
                        server,
                        alg,
                        "sidecar warm",
                        core=core,
                        transport=transport,
                        concurrency=c,
                        payloads=hot,
                    )
            if alg == "HS256" and self.h2:
                self._check_ok(server, minted.tokens[0])
                self.plan(
                    "verify", server, alg, "sidecar warm", core=True, loadgen="h2load", payloads=hot
                )

    def batch_group(self) -> None:
        for alg in ("HS256", "RS256") if self.p.full else ("HS256",):
            minted = self.keys[alg]
            payloads = _batch_payloads(minted.tokens, self.p.batch)
            server = self._start(self.sidecar(minted))
            for c in (1, 4) if self.p.full else (4,):
                self.plan(
                    "batch",
                    server,
                    alg,
                    f"VerifyBatch x{self.p.batch} cold",
                    core=True,
                    concurrency=c,
                    method=VERIFY_BATCH,
                    payloads=payloads,
                    items=self.p.batch,
                )

    def issue_refresh_group(self) -> None:
        issue = auth_pb2.IssueRequest(subject="bench", audience=[AUDIENCE], scope="read")
        for alg in ("ES256", "RS256") if self.p.full else ("ES256",):
            minted = self.keys[alg]
            server = self._start(self.sidecar(minted))
            self.plan(
                "issue",
                server,
                alg,
                "Issue (access token)",
                core=True,
                payloads=[issue.SerializeToString()],
                method=ISSUE,
                transport="admin",
            )
            if alg == "ES256":
                intro = auth_pb2.IntrospectRequest(token=minted.tokens[0])
                self.plan(
                    "introspect",
                    server,
                    alg,
                    "Introspect",
                    method=INTROSPECT,
                    payloads=[intro.SerializeToString()],
                )
                self.plan("refresh", server, alg, "Refresh (memory store)", mode="refresh")
        if not self.p.full:
            return
        minted = self.keys["ES256"]
        server = self._start(self.sidecar(minted, "sqlite"))
        self.plan("refresh", server, "ES256", "Refresh (sqlite store)", mode="refresh")
        self.redis_refresh(minted)

    def algorithms_group(self) -> None:
        """Unary cold Verify (UDS, 16 in flight) for each algorithm the verify group leaves
        out, one sidecar each: what the choice of algorithm costs a call. Run once (no
        target reads them); --quick has only their in-process rows, to stay fast."""
        if not self.p.full:
            self.notes.append(f"{report.ALGORITHMS_CELL}: not run in --quick (in-process only)")
            return
        for alg, minted in self.alg_keys.items():
            server = self._start(self.sidecar(minted))
            payloads = [_verify_payload(t) for t in minted.tokens]
            self.plan("algorithms", server, alg, report.ALGORITHMS_CELL, payloads=payloads)

    def redis_refresh(self, minted: Minted) -> None:
        if importlib.util.find_spec("sidecar.store.redis") is None:
            self.notes.append("Refresh (redis): skipped, sidecar/store/redis.py does not exist")
            return
        redis_server = shutil.which("redis-server")
        if redis_server is None:
            self.notes.append("Refresh (redis): skipped, no redis-server on PATH")
            return
        sock = self.dir / "redis.sock"
        self.redis = subprocess.Popen(
            [
                redis_server,
                "--port",
                "0",
                "--unixsocket",
                str(sock),
                "--save",
                "",
                "--appendonly",
                "no",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for _ in range(100):
            if sock.exists():
                break
            time.sleep(0.05)
        try:
            server = self.sidecar(minted, "redis", AUTHSIDECAR_STORE__REDIS_URL=f"unix://{sock}")
        except RuntimeError as exc:
            self.notes.append(f"Refresh (redis): skipped, sidecar did not start: {exc}")
            return
        self._start(server)
        self.plan("refresh", server, "ES256", "Refresh (redis store)", core=True, mode="refresh")

    def inprocess_group(self) -> None:
        """Every row for the core algorithms; the others without the cache hit (the same
        for every algorithm) and on shorter windows, to keep the full run's growth small."""
        rows: list[dict[str, Any]] = []
        for minted in self.keys.values():
            rows.extend(inprocess.measure(minted, self.p.inprocess_s))
        for minted in self.alg_keys.values():
            rows.extend(inprocess.measure(minted, self.p.alg_inprocess_s, cache_hit=False))
        self.inprocess = rows
        measured = {**self.keys, **self.alg_keys}
        self.notes.extend(inprocess.reference_gaps(a for a in ALGORITHMS if a in measured))
        self.cache_cost = [
            inprocess.cache_cost(self.keys[a], 500 if self.p.full else 50) for a in self.keys
        ]
        self.verify_cache_group()
        for row in rows:
            print(
                f"  in-process {row['alg']:6} {row['name']:34} {row['per_s']:>10.0f}/s "
                f"{row['us_per_call']:8.1f} us",
                flush=True,
            )

    def verify_cache_group(self) -> None:
        """Issue 15's verify-cache cell: thread CPU per Verify, cache off / miss / stored /
        hit, for the core algorithms (`--only verify_cache` runs it alone)."""
        if not self.keys:
            for alg in CORE_ALGS:
                self.keys[alg] = make_key(self.dir, alg, CACHE_CELL_POOL if self.p.full else 200)
        rounds = CACHE_CELL_ROUNDS if self.p.full else 3
        self.verify_cache = []
        for alg in CORE_ALGS:
            rows = inprocess.cache_paths(self.keys[alg], rounds)
            self.verify_cache.extend(rows)
            for row in rows:
                print(
                    f"  verify cache {alg:6} {row['label']:52} "
                    f"{row['cpu_us_median']:8.2f} us CPU (min {row['cpu_us_min']:.2f})",
                    flush=True,
                )
        self.verify_cache_shared = sidecar_cache.shared_tokens(
            self.dir / "sidecar-cache", full=self.p.full, rounds=3 if self.p.full else 1
        )
        for row in self.verify_cache_shared:
            print(
                f"  verify cache, sidecar {row['sidecar_cache']:3}, {row['interceptors']:2} "
                f"interceptors sharing {row['tokens']} tokens: asked {row['asked']:.0f}, "
                f"sidecar {row['sidecar_cpu_us_per_asked']:.0f} us CPU per token asked",
                flush=True,
            )

    def soak(self, seconds: float) -> dict[str, Any]:
        """RSS of an ES256 sidecar under Verify load (cold pool: the cache fills and turns
        over) sampled each second; flat means start and end within a few MiB."""
        minted = make_key(self.dir, "ES256", 4096)
        self.keys["ES256"] = minted
        server = self.sidecar(minted, AUTHSIDECAR_TOKENS__VERIFY_CACHE_ENTRIES="2048")
        payloads = [_verify_payload(t) for t in minted.tokens]
        samples: list[tuple[float, int]] = []
        box: dict[str, Any] = {}

        def load() -> None:
            box.update(
                procs.drive(
                    server,
                    transport="uds",
                    method=VERIFY,
                    payloads=payloads,
                    concurrency=16,
                    duration_s=seconds,
                    warmup_s=1.0,
                )
            )

        try:
            began = time.monotonic()
            worker = threading.Thread(target=load)
            worker.start()
            while worker.is_alive():
                samples.append((round(time.monotonic() - began, 1), server.rss_bytes()))
                worker.join(1.0)
            result = box
        finally:
            server.stop()
        return {"seconds": seconds, "calls_per_s": result["calls_per_s"], "rss": samples}


def _environment() -> dict[str, Any]:
    import cryptography
    import google.protobuf
    import jose
    import jwt

    return {
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpus": __import__("os").cpu_count(),
        "grpcio": grpc.__version__,
        "protobuf": google.protobuf.__version__,
        "python-jose": jose.__version__,
        "PyJWT": jwt.__version__,
        "cryptography": cryptography.__version__,
        "h2load": shutil.which("h2load") is not None,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", help="tiny durations (seconds in all)")
    parser.add_argument("--duration", type=float, help="seconds measured per cell")
    parser.add_argument("--rounds", type=int, help="rounds of the target cells (median)")
    parser.add_argument("--no-h2load", action="store_true", help="skip the h2load cells")
    parser.add_argument("--soak", type=float, metavar="SECONDS", help="run only the RSS soak")
    parser.add_argument("--out", type=Path, default=RESULTS, help="where latest.* are written")
    parser.add_argument(
        "--only",
        choices=[
            "two_service",
            "verify_cache",
            "propagation",
            "revocation_scale",
            "topologies",
            "verify_compare",
        ],
        help="run only this section (two_service, verify_cache, propagation: merged into"
        " latest.*); revocation_scale, topologies and verify_compare are separate benchmarks"
        " (minutes; not in the suite) whose own options follow"
        " (e.g. python -m bench --only topologies --help)",
    )
    args, rest = parser.parse_known_args(argv)
    if args.only == "revocation_scale":
        from bench import revocation_scale

        return revocation_scale.main(rest + _forwarded(args))
    if args.only in ("topologies", "verify_compare"):
        from bench import topologies, verify_compare

        separate = topologies.main if args.only == "topologies" else verify_compare.main
        return separate(rest + _forwarded(args))
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    profile = QUICK if args.quick else FULL
    if args.duration:
        profile = dataclasses.replace(profile, duration_s=args.duration)
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="asb-", dir="/tmp") as tmp:
        rounds = args.rounds or (1 if args.quick else 3)
        suite = Suite(profile, Path(tmp), h2=not args.no_h2load, rounds=rounds)
        if args.soak:
            soak = suite.soak(args.soak)
            args.out.mkdir(parents=True, exist_ok=True)
            (args.out / "soak.json").write_text(json.dumps(report.clean(soak), indent=1))
            print(report.soak_text(soak))
            return 0
        if args.only is None:
            suite.run()
        elif args.only == "verify_cache":
            suite.verify_cache_group()
            command = "python -m bench" + (" --quick" if args.quick else "")
            cell = {
                "command": f"{command} --only verify_cache",
                "started_at": started,
                "load_average": os.getloadavg(),
                "rows": suite.verify_cache,
                "shared": suite.verify_cache_shared,
            }
            return _write_section(args.out, "verify_cache", cell)
        if args.only == "propagation":
            quick_plan = two_service.plan(
                full=profile.full,
                duration_s=profile.duration_s,
                warmup_s=profile.warmup_s,
                rounds=rounds,
            )
            cell = {
                "command": "python -m bench"
                + (" --quick" if args.quick else "")
                + " --only propagation",
                "started_at": started,
                "load_average": os.getloadavg(),
                "revocation": two_service.propagation_only(Path(tmp) / "prop", quick_plan),
            }
            cell["load_average_after"] = os.getloadavg()
            return _write_section(args.out, "propagation", cell)
        plan = two_service.plan(
            full=profile.full,
            duration_s=profile.duration_s,
            warmup_s=profile.warmup_s,
            rounds=rounds,
        )
        section = two_service.run(Path(tmp) / "two-service", plan)
    command = "python -m bench" + (" --quick" if args.quick else "")
    section["command"] = command + (f" --only {args.only}" if args.only else "")
    section["started_at"] = started
    if args.only is not None:
        return _write_section(args.out, "two_service", section)
    if not suite.h2:
        suite.notes.append("h2load: not used (not installed or --no-h2load)")
    document = {
        "command": command,
        "started_at": started,
        "elapsed_s": time.time() - started,
        "profile": profile.__dict__,
        "rounds": suite.rounds,
        "environment": _environment(),
        "rows": suite.rows,
        "inprocess": suite.inprocess,
        "cache_cost": suite.cache_cost,
        "verify_cache": {
            "command": command,
            "started_at": started,
            "load_average": os.getloadavg(),
            "rows": suite.verify_cache,
            "shared": suite.verify_cache_shared,
        },
        "notes": suite.notes,
    }
    document["targets"] = report.targets(document)
    document["algorithms"] = report.algorithms(document, ALGORITHMS)
    document["two_service"] = section
    _write(args.out, document)
    return 0


def _forwarded(args: argparse.Namespace) -> list[str]:
    """The suite's own options, given before or after `--only NAME`, passed on to that
    section's parser (which refuses the ones it does not have)."""
    out = ["--quick"] if args.quick else []
    if args.duration:
        out += ["--duration", str(args.duration)]
    if args.rounds:
        out += ["--rounds", str(args.rounds)]
    if args.out != RESULTS:
        out += ["--out", str(args.out)]
    return out


def _write(out: Path, document: dict[str, Any]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "latest.json").write_text(json.dumps(report.clean(document), indent=1, allow_nan=False))
    markdown = report.markdown(document)
    (out / "latest.md").write_text(markdown)
    print()
    print(markdown)


def _write_section(out: Path, name: str, section: dict[str, Any]) -> int:
    """`--only two_service` / `verify_cache`: replace that section of the existing results,
    keep the rest (the section says which command and when measured it), or start a
    document of its own."""
    path = out / "latest.json"
    if path.exists():
        document = json.loads(path.read_text())
    else:
        document = {"command": section["command"], "environment": _environment()}
    document[name] = section
    _write(out, document)
    return 0
