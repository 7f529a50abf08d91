"""Issue 15's benchmark: a caller, a callee and its authentication, in one run.

    python -m bench --only two_service          this section alone (merged into latest.*)
    python -m bench --only two_service --quick  seconds: proves it works, numbers rough

A caller (bench/load.py processes, as in the rest of the suite) sends unary calls to a callee
(bench/callee.py: grpc.aio, a trivial handler) over loopback TCP, each call carrying a bearer
token, at 1, 16 and 64 calls in flight, with (a) reused tokens: 100 caller identities, one
token each, each serving many calls; (b) one-shot tokens: every token used by one call only,
a fresh pool minted for each cell before its clock starts. Columns, interleaved in each round,
medians over the rounds:

  (1) the callee with no authentication (the floor);
  (2) the callee verifying in-process with PyJWT (pre-built key, aud/iss/exp checks);
  (3) the callee with the interceptor calling Verify for every call;
  (4) the callee with the interceptor's defaults (issue 15: decision cache invalidated by
      the sidecar's Watch stream, misses coalesced into VerifyBatch).

Columns (3) and (4) each have their own sidecar process (defaults, memory store, reached
over its Unix socket); their CPU per call is the callee's plus the sidecar's, measured from
/proc over the same window. (1) and (2) have no sidecar to count. The caller's CPU is
reported apart. Then revocation propagation: interceptors in several callee processes, each
holding a token's decision, and the time from Revoke returning to every callee refusing it,
and to every interceptor dropping the decision (bench/propagation.py). The targets are
computed in bench/two_service_report.py.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from authsidecar.v1 import auth_pb2, auth_pb2_grpc
from bench import callee, procs, propagation, report, two_service_report
from bench.load import MIN_CALLS
from bench.tokens import AUDIENCE, Minted, make_key

ALG = "ES256"  # the sidecar's default signing algorithm (keys.dev_alg)
IDENTITIES = 100
COLUMNS = (
    ("none", "(1) no auth (floor)"),
    ("pyjwt", "(2) in-process PyJWT"),
    ("verify", "(3) interceptor, Verify per call"),
    ("default", "(4) interceptor default: decision cache + Watch"),
)
# Where an interceptor's CPU goes (bench/callee.py): run with reused tokens at DIAGNOSE_AT.
DIAGNOSTICS = (
    ("passthrough", "(d1) interceptor passing the call on, no check"),
    ("wrapping", "(d2) interceptor wrapping the handler, no check"),
)
DIAGNOSE_AT = 16
TOKEN_MODES = ("reused", "one-shot")
PAYLOAD = b"\x08\x01"  # what the caller sends; the handler answers `ok` whatever it is


@dataclass(frozen=True)
class Plan:
    duration_s: float
    warmup_s: float
    rounds: int
    concurrencies: tuple[int, ...]
    # Revocation propagation: processes x interceptors each, revocations per column.
    processes: int
    per_process: int
    revocations: int
    probe_interval_s: float


def plan(*, full: bool, duration_s: float, warmup_s: float, rounds: int) -> Plan:
    if full:
        return Plan(duration_s, warmup_s, rounds, (1, 16, 64), 5, 10, 100, 0.005)
    return Plan(duration_s, warmup_s, rounds, (16,), 2, 3, 3, 0.005)


class Minter:
    """Tokens from the sidecar's own TokenService on the bench key (bench/tokens.py): what
    Issue would have returned, minted before any clock starts. Subjects cycle over the
    caller identities; every token has its own jti."""

    def __init__(self, minted: Minted) -> None:
        self.minted = minted
        self._service = minted.service(cache_entries=0)
        self._n = 0

    def mint(self, count: int) -> list[str]:
        return asyncio.run(self._mint(count))

    async def _mint(self, count: int) -> list[str]:
        tokens = []
        for _ in range(count):
            grant = await self._service.issue(
                subject=f"caller-{self._n % IDENTITIES}",
                audience=[AUDIENCE],
                scope="read",
                client_id="bench-caller",
                expires_in=3600,
            )
            self._n += 1
            tokens.append(grant.access_token)
        return tokens


def start_sidecar(
    workdir: Path, minted: Minted, name: str, *, env_extra: dict[str, str] | None = None
) -> procs.Server:
    """A sidecar with its defaults (verify cache included), as a deployment would run it;
    `env_extra` overrides settings (bench/sidecar_cache.py turns the verify cache off)."""
    env = {
        "AUTHSIDECAR_DATA_DIR": str(workdir / name),
        "AUTHSIDECAR_LISTEN__TCP": "127.0.0.1:0",
        "AUTHSIDECAR_KEYS__FILES": str(minted.key_path),
        "AUTHSIDECAR_STORE__BACKEND": "memory",
        "AUTHSIDECAR_LOG_LEVEL": "WARNING",
        **(env_extra or {}),
    }
    return procs.start(f"sidecar {name}", ["-m", "sidecar", "serve"], env)


def start_callee(
    workdir: Path,
    kind: str,
    minted: Minted,
    sidecar: procs.Server | None,
    *,
    name: str = "",
    servers: int = 1,
    time_refusals: bool = False,
) -> procs.Server:
    """A callee process of `servers` servers; `extra["sockets"]` lists their Unix targets.
    `time_refusals`: its control server answers when each server first refused a token."""
    prefix = workdir / f"callee-{kind}{name}"
    args = ["-m", "bench.callee", kind, "--unix", str(prefix), "--servers", str(servers)]
    if time_refusals:
        args.append("--time-refusals")
    args += ["--key", str(minted.key_path), "--audience", AUDIENCE]
    if sidecar is not None:
        args += ["--sidecar", sidecar.target("uds")]
    server = procs.start(f"callee {kind}{name}", args, {})
    server.extra["sockets"] = [f"unix:{prefix}.{i}" for i in range(servers)]
    server.extra["control"] = f"unix:{prefix}.control"
    return server


def callee_stats(server: procs.Server) -> dict[str, float]:
    """The interceptors' `stats()` of one callee process, summed over its servers (booleans
    counted, per-kind mappings flattened to `key.kind`); {} where the interceptor has none."""
    total: dict[str, float] = {}
    for stats in callee.ask(server.extra["control"], callee.STATS):
        for key, value in stats.items():
            items = value.items() if isinstance(value, dict) else [("", value)]
            for sub, number in items:
                if isinstance(number, bool | int | float):
                    name = f"{key}.{sub}" if sub else key
                    total[name] = total.get(name, 0) + float(number)
    return total


def _decisions(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """What the interceptor did with the calls of one cell (warm-up included)."""
    return {
        f"decision_{k}": after.get(k, 0.0) - before.get(k, 0.0)
        for k in ("hits", "misses", "bypassed")
    }


def watch_status(sidecar: procs.Server) -> str:
    """What the sidecar's Watch answers first: `sync` when the stream is served."""

    async def first() -> str:
        async with grpc.aio.insecure_channel(sidecar.target("uds")) as channel:
            stream = auth_pb2_grpc.AuthServiceStub(channel).Watch(
                auth_pb2.WatchRequest(), timeout=5
            )
            try:
                async for event in stream:
                    return f"first event `{event.WhichOneof('event')}`"
            except grpc.aio.AioRpcError as exc:
                return f"answers {exc.code().name}"
            return "ended without an event"

    return asyncio.run(first())


class TwoService:
    def __init__(self, workdir: Path, plan: Plan) -> None:
        self.dir = workdir
        self.plan = plan
        self.kinds = [k for k, _ in COLUMNS]
        self.notes: list[str] = []
        self.servers: list[procs.Server] = []
        self.callees: dict[str, procs.Server] = {}
        self.sidecars: dict[str, procs.Server] = {}
        self._fastest = 0.0  # calls/s of the fastest cell so far (one-shot pool sizes)
        self.stats: set[str] = set()  # the columns whose interceptor reports stats()

    def _start(self, server: procs.Server) -> procs.Server:
        self.servers.append(server)
        return server

    def run(self) -> dict[str, Any]:
        began = time.time()
        minted = make_key(self.dir, ALG, 0)
        minter = Minter(minted)
        reused = minter.mint(IDENTITIES)
        try:
            for kind in self.kinds + [k for k, _ in DIAGNOSTICS]:
                sidecar = None
                if kind in ("verify", "default"):
                    sidecar = self._start(start_sidecar(self.dir, minted, f"sidecar-{kind}"))
                    self.sidecars[kind] = sidecar
                self.callees[kind] = self._start(start_callee(self.dir, kind, minted, sidecar))
            if "default" in self.sidecars:
                self.notes.append(
                    f"Watch on column (4)'s sidecar: {watch_status(self.sidecars['default'])}"
                )
            self.stats = {k for k, server in self.callees.items() if callee_stats(server)}
            rows = self._execute(reused, minter)
            interceptor_stats = {k: callee_stats(self.callees[k]) for k in sorted(self.stats)}
        finally:
            self._stop()
        revocation = [
            self._propagation(kind, minted, minter)
            for kind in ("verify", "default")
            if kind in self.kinds
        ]
        section: dict[str, Any] = {
            "alg": ALG,
            "identities": IDENTITIES,
            "plan": self.plan.__dict__,
            "columns": [{"kind": k, "label": label} for k, label in COLUMNS],
            "diagnostics": [{"kind": k, "label": label} for k, label in DIAGNOSTICS],
            "rows": two_service_report.derive(rows),
            "revocation": revocation,
            "interceptor_stats": interceptor_stats,
            "notes": self.notes,
        }
        section["targets"] = two_service_report.targets(section)
        section["elapsed_s"] = time.time() - began
        return section

    def _stop(self) -> None:
        for server in reversed(self.servers):
            server.stop()
        self.servers.clear()

    def _drive(self, mode: str, c: int, kind: str, pool: list[str]) -> dict[str, Any]:
        sidecar = self.sidecars.get(kind)
        counted = kind in self.stats
        before = callee_stats(self.callees[kind]) if counted else {}
        result = procs.drive(
            self.callees[kind],
            transport="tcp",
            method=callee.METHOD,
            payloads=[PAYLOAD],
            concurrency=c,
            duration_s=self.plan.duration_s,
            warmup_s=self.plan.warmup_s,
            tokens=pool,
            one_shot=mode == "one-shot",
            sidecars=(sidecar,) if sidecar is not None else (),
            # A starved short window still measures something (as the main suite's cells).
            min_calls=MIN_CALLS,
        )
        if counted:
            result.update(_decisions(before, callee_stats(self.callees[kind])))
        self._fastest = max(self._fastest, result["calls_per_s"])
        return result

    def _cell(self, mode: str, c: int, kind: str, reused: list[str], minter: Minter) -> Any:
        """One measurement. One-shot pools are minted fresh for the cell: enough for the
        fastest rate seen so far with margin, and minted again twice as large when the
        callers ran out (the row keeps TOKENS_EXHAUSTED only if the third pool is short)."""
        if mode == "reused":
            return self._drive(mode, c, kind, reused)
        seconds = self.plan.warmup_s + self.plan.duration_s + 0.5
        for attempt in range(3):
            size = int(max(self._fastest, 2000.0) * seconds * 1.5 * 2**attempt) + 500
            result = self._drive(mode, c, kind, minter.mint(size))
            if "TOKENS_EXHAUSTED" not in result["errors"]:
                break
            print(f"  one-shot pool of {size} ran out: again with a larger one", flush=True)
        return result

    def _kinds(self, mode: str, c: int) -> list[str]:
        if mode == "reused" and c == DIAGNOSE_AT:
            return self.kinds + [k for k, _ in DIAGNOSTICS]
        return self.kinds

    def _execute(self, reused: list[str], minter: Minter) -> list[dict[str, Any]]:
        """Rounds interleave every cell, so a drift of the shared machine's load hits every
        column alike; each row is the median over its rounds (report.median_of)."""
        runs: dict[tuple[str, int, str], list[dict[str, Any]]] = {}
        for round_ in range(self.plan.rounds):
            for c in self.plan.concurrencies:
                for mode in TOKEN_MODES:
                    for kind in self._kinds(mode, c):
                        result = self._cell(mode, c, kind, reused, minter)
                        runs.setdefault((mode, c, kind), []).append(result)
                        row = {"tokens": mode, "concurrency": c, "column": kind, **result}
                        print(f"[{round_ + 1}/{self.plan.rounds}] " + line(row), flush=True)
        return [
            {"tokens": mode, "concurrency": c, "column": kind, **report.median_of(results)}
            for (mode, c, kind), results in runs.items()
        ]

    def _propagation(self, kind: str, minted: Minted, minter: Minter) -> dict[str, Any]:
        p = self.plan
        sidecar = self._start(start_sidecar(self.dir, minted, f"sidecar-revoke-{kind}"))
        try:
            hosts = [
                self._start(
                    start_callee(
                        self.dir,
                        kind,
                        minted,
                        sidecar,
                        name=f"-r{i}",
                        servers=p.per_process,
                        time_refusals=True,
                    )
                )
                for i in range(p.processes)
            ]
            sockets = [socket for host in hosts for socket in host.extra["sockets"]]
            # Every callee times its first refusals; the push alone (`dropped`) only where
            # there is a Watch stream: column (4) (column 3 never drops a decision).
            watching = kind == "default"
            controls = [h.extra["control"] for h in hosts]
            passes = 2 if watching else 1
            result = propagation.measure(
                sidecar.target("uds"),
                sockets,
                controls,
                minter.mint(p.revocations * passes),
                method=callee.METHOD,
                payload=PAYLOAD,
                probe_interval_s=p.probe_interval_s,
                dropped=watching,
            )
            totals: dict[str, float] = {}
            for host in hosts:
                for key, value in callee_stats(host).items():
                    totals[key] = totals.get(key, 0.0) + value
        finally:
            self._stop()
        label = dict(COLUMNS)[kind]
        watch = (
            "own channel, own Watch subscription"
            if kind == "default"
            else "no Watch: every call asks Verify, so its `refused` row is the probe's floor"
        )
        layout = (
            f"{p.processes} callee processes x {p.per_process} grpc.aio servers, each with "
            f"its own interceptor and AsyncAuthClient ({watch}), all on one sidecar; one "
            f"prober (the bench process), every {p.probe_interval_s * 1000:g} ms"
        )
        for what, numbers in result.items():
            at_callee = (
                f" (at the callee: p50 {numbers['callee_p50_ms']:.2f} ms "
                f"p99 {numbers['callee_p99_ms']:.2f} ms max {numbers['callee_max_ms']:.2f} ms)"
                if "callee_p50_ms" in numbers
                else ""
            )
            print(
                f"revocation {label}, {what}: {len(sockets)} interceptors, "
                f"{numbers['revocations']} revocations, p50 {numbers['p50_ms']:.2f} ms "
                f"p99 {numbers['p99_ms']:.2f} ms max {numbers['max_ms']:.2f} ms, "
                f"never {numbers['never']}{at_callee}",
                flush=True,
            )
        return {
            "column": kind,
            "label": label,
            "interceptors": len(sockets),
            "layout": layout,
            "probe_interval_ms": p.probe_interval_s * 1000,
            "passes": result,
            "interceptor_stats": totals,
        }


def line(row: dict[str, Any]) -> str:
    errors = sum(row["errors"].values())
    side = row.get("sidecar_cpu_s_per_1k")
    return (
        f"two-svc {row['tokens']:8} c={row['concurrency']:<3} {row['column']:8} "
        f"{row['calls_per_s']:>7.0f} calls/s p50 {row['p50_ms']:6.2f} p99 {row['p99_ms']:6.2f} ms "
        f"cpu {row['server_cpu_s_per_1k'] * 1000:5.0f} us/call (sidecar "
        f"{'-' if side is None else f'{side * 1000:.0f}'}) caller "
        f"{row['client_cpu_s_per_1k'] * 1000:.0f} us/call"
        + (f" ERRORS {row['errors']}" if errors else "")
    )


def run(workdir: Path, plan: Plan) -> dict[str, Any]:
    return TwoService(workdir, plan).run()


def propagation_only(workdir: Path, plan: Plan) -> list[dict[str, Any]]:
    """The revocation propagation part alone (`python -m bench --only propagation`), columns
    (3) and (4) as in the full section."""
    section = TwoService(workdir, plan)
    minted = make_key(workdir, ALG, 0)
    minter = Minter(minted)
    return [section._propagation(kind, minted, minter) for kind in ("verify", "default")]
