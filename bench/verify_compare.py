"""Cold and warm Verify of this tree against an older one, in the same run (issue 12).

    python -m bench --only verify_compare --before-ref e400721 [--rounds 3] [--duration 2]
    python -m bench --only verify_compare --before-ref e400721 --quick    (shows it works)

The `--before-ref` tree is exported with `git archive` into a temporary directory (as
bench/revocation_scale.py does). Each tree runs its own sidecar processes, one per algorithm
(HS256, ES256, RS256; memory store, verify cache of 256 entries, as bench/run.py's), started
from that tree with its own client package on PYTHONPATH; the load generators and the tokens
are this tree's, the same bytes for both. So the comparison goes through the gRPC API, which
both versions keep, whatever their internals.

gRPC cells, as bench/run.py's `sidecar cold` / `sidecar warm` (UDS, 16 calls in flight from
two load processes): cold cycles through 2,048 tokens (8x the cache: every call misses),
warm through 16 (every call hits). In-process cells run bench/verify_inprocess.py from each
tree (TokenService.verify with a 16-entry cache for cold, a 1,024-entry one for warm, as
bench/inprocess.py's "cache miss" and "cache hit" rows); a tree whose API differs is reported
as not comparable in-process.

Rounds interleave everything (and alternate which tree goes first), so a drift of a shared
machine's load hits both columns alike; each figure is the median of its rounds, with the
rounds' range beside it. `within noise`: the two ranges overlap.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from authsidecar.v1 import auth_pb2
from bench import procs
from bench.tokens import AUDIENCE, Minted, make_key

RESULTS = Path(__file__).resolve().parent / "results"
VERIFY = "/authsidecar.v1.AuthService/Verify"
ALGS = ("HS256", "ES256", "RS256")
CACHE_ENTRIES = 256  # bench/run.py's: smaller than the cold pool, so cold calls always miss
CELLS = ("gRPC cold", "gRPC warm", "in-process cold", "in-process warm")


@dataclass(frozen=True)
class Plan:
    rounds: int
    duration_s: float
    warmup_s: float
    cold_pool: int
    inprocess_s: float


FULL = Plan(rounds=3, duration_s=2.0, warmup_s=0.5, cold_pool=2048, inprocess_s=1.0)
QUICK = Plan(rounds=1, duration_s=0.3, warmup_s=0.2, cold_pool=CACHE_ENTRIES * 2, inprocess_s=0.05)


def _which(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        raise SystemExit(f"{name} not found on PATH")
    return found


def _payload(token: str) -> bytes:
    return auth_pb2.VerifyRequest(token=token, audience=AUDIENCE).SerializeToString()


def _sidecar(tree: Path, minted: Minted, data: Path, name: str) -> procs.Server:
    env = {
        "AUTHSIDECAR_DATA_DIR": str(data),
        "AUTHSIDECAR_LISTEN__TCP": "127.0.0.1:0",
        "AUTHSIDECAR_KEYS__FILES": str(minted.key_path),
        "AUTHSIDECAR_STORE__BACKEND": "memory",
        "AUTHSIDECAR_TOKENS__VERIFY_CACHE_ENTRIES": str(CACHE_ENTRIES),
        "AUTHSIDECAR_LOG_LEVEL": "WARNING",
    }
    return procs.start(name, ["-m", "sidecar", "serve"], env, root=tree)


def _inprocess(tree: Path, plan: Plan, work: Path) -> dict[str, Any]:
    work.mkdir(parents=True, exist_ok=True)
    spec = {
        "algs": list(ALGS),
        "seconds": plan.inprocess_s,
        "pool": 16 * 16,  # 16x the miss cache: every cold call misses
        "dir": str(work),
    }
    source = (Path(__file__).resolve().parent / "verify_inprocess.py").read_text()
    env = {k: v for k, v in os.environ.items() if not k.startswith("AUTHSIDECAR_")}
    env["PYTHONPATH"] = (
        str(tree)
        if tree == procs.ROOT
        else os.pathsep.join((str(tree), str(tree / "clients/python")))
    )
    done = subprocess.run(
        [sys.executable, "-c", source, json.dumps(spec)],
        cwd=tree, env=env, capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    if done.returncode != 0:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return {"error": f"exit {done.returncode}: {tail[:200]}"}
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def measure(plan: Plan, ref: str) -> dict[str, Any]:
    started = time.time()
    load_before = os.getloadavg()
    samples: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    inprocess_errors: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="vcmp-", dir="/tmp") as tmp:
        work = Path(tmp)
        trees = {"before": work / "before", "after": procs.ROOT}
        commit = procs.export_tree(ref, trees["before"])
        keys = {alg: make_key(work, alg, plan.cold_pool) for alg in ALGS}
        servers: dict[tuple[str, str], procs.Server] = {}
        try:
            for label, tree in trees.items():
                for alg, minted in keys.items():
                    data = work / f"{label}-{alg}"
                    servers[label, alg] = _sidecar(tree, minted, data, f"{label} {alg}")
            for round_ in range(plan.rounds):
                order = list(trees) if round_ % 2 == 0 else list(reversed(trees))
                for alg, minted in keys.items():
                    pools = {
                        "gRPC cold": [_payload(t) for t in minted.tokens],
                        "gRPC warm": [_payload(t) for t in minted.tokens[:16]],
                    }
                    for cell, payloads in pools.items():
                        for label in order:
                            result = procs.drive(
                                servers[label, alg], transport="uds", method=VERIFY,
                                payloads=payloads, concurrency=16,
                                duration_s=plan.duration_s, warmup_s=plan.warmup_s,
                            )  # fmt: skip
                            samples.setdefault((alg, cell, label), []).append(result)
                            print(
                                f"[{round_ + 1}/{plan.rounds}] {label:6} {alg} {cell}:"
                                f" {result['calls_per_s']:.0f}/s errors {result['errors']}",
                                flush=True,
                            )
                for label in order:
                    found = _inprocess(trees[label], plan, work / f"inproc-{label}-{round_}")
                    if "error" in found:
                        inprocess_errors[label] = found["error"]
                        continue
                    for alg, rates in found["rows"].items():
                        for temp in ("cold", "warm"):
                            sample = {"calls_per_s": rates[temp], "errors": {}}
                            samples.setdefault((alg, f"in-process {temp}", label), []).append(
                                sample
                            )
                    print(f"[{round_ + 1}/{plan.rounds}] {label:6} in-process done", flush=True)
        finally:
            for server in servers.values():
                server.stop()
    return {
        "command": "python -m bench --only verify_compare",
        "before_ref": ref,
        "before_commit": commit,
        "after_commit": _head(),
        "started_at": started,
        "elapsed_s": time.time() - started,
        "cpus": os.cpu_count(),
        "loadavg_before": load_before,
        "loadavg_after": os.getloadavg(),
        "plan": plan.__dict__,
        "rows": _rows(samples),
        "inprocess_errors": inprocess_errors,
    }


def _head() -> str:
    return subprocess.run(
        [_which("git"), "-C", str(procs.ROOT), "rev-parse", "--short", "HEAD"],
        check=True, capture_output=True, text=True,
    ).stdout.strip()  # fmt: skip


def _rows(samples: dict[tuple[str, str, str], list[dict[str, Any]]]) -> list[dict[str, Any]]:
    rows = []
    for alg in ALGS:
        for cell in CELLS:
            sides = {label: samples.get((alg, cell, label), []) for label in ("before", "after")}
            if not all(sides.values()):
                continue
            row: dict[str, Any] = {"alg": alg, "cell": cell}
            for label, runs in sides.items():
                rates = [r["calls_per_s"] for r in runs]
                row[label] = {
                    "calls_per_s": statistics.median(rates),
                    "min": min(rates),
                    "max": max(rates),
                    "rounds": len(rates),
                    "errors": sum(sum(r["errors"].values()) for r in runs),
                }
                if "p50_ms" in runs[0]:
                    row[label]["p50_ms"] = statistics.median(r["p50_ms"] for r in runs)
                    row[label]["p99_ms"] = statistics.median(r["p99_ms"] for r in runs)
            before, after = row["before"], row["after"]
            row["ratio"] = after["calls_per_s"] / before["calls_per_s"]
            row["verdict"] = _verdict(before, after)
            rows.append(row)
    return rows


def _verdict(before: dict[str, Any], after: dict[str, Any]) -> str:
    """`within noise` when the rounds' ranges overlap; one round has no range to judge by."""
    if min(before["rounds"], after["rounds"]) < 2:
        return "one round: no noise estimate"
    if after["min"] <= before["max"] and before["min"] <= after["max"]:
        return "within noise"
    return "faster" if after["calls_per_s"] > before["calls_per_s"] else "slower"


def markdown(doc: dict[str, Any]) -> str:
    plan = doc["plan"]
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(doc["started_at"]))
    out = [
        "# Verify before/after, same run (issue 12)",
        "",
        f"`{doc['command']} --before-ref {doc['before_ref']}` (bench/verify_compare.py: what"
        f" each cell is): before = {doc['before_ref']} ({doc['before_commit']}), after = this"
        f" tree ({doc['after_commit']}). {plan['rounds']} interleaved round(s), gRPC windows of"
        f" {plan['duration_s']} s after {plan['warmup_s']} s warm-up, in-process"
        f" {plan['inprocess_s']} s a cell. {when}, {doc['elapsed_s']:.0f} s, on {doc['cpus']} cores"
        f" shared with other work (load average {doc['loadavg_before'][0]:.2f} before,"
        f" {doc['loadavg_after'][0]:.2f} after).",
        "",
        "| alg | cell | before /s (range) | after /s (range) | after/before |"
        " p50 ms before / after | p99 ms before / after | errors | verdict |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for row in doc["rows"]:
        b, a = row["before"], row["after"]
        lat50 = f"{b['p50_ms']:.2f} / {a['p50_ms']:.2f}" if "p50_ms" in b else "-"
        lat99 = f"{b['p99_ms']:.2f} / {a['p99_ms']:.2f}" if "p99_ms" in b else "-"
        out.append(
            f"| {row['alg']} | {row['cell']} | {b['calls_per_s']:,.0f} ({b['min']:,.0f}-"
            f"{b['max']:,.0f}) | {a['calls_per_s']:,.0f} ({a['min']:,.0f}-{a['max']:,.0f}) |"
            f" {row['ratio']:.2f} | {lat50} | {lat99} | {b['errors'] + a['errors']} |"
            f" {row['verdict']} |"
        )
    for label, error in doc["inprocess_errors"].items():
        out += ["", f"In-process, {label}: not comparable ({error})."]
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench --only verify_compare", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--before-ref", required=True, help="git ref of the 'before' code")
    parser.add_argument("--quick", action="store_true", help="one short round (a test run)")
    parser.add_argument("--rounds", type=int, help="interleaved rounds (median)")
    parser.add_argument("--duration", type=float, help="seconds measured per gRPC cell")
    parser.add_argument("--out", type=Path, default=RESULTS, help="where verify_compare.* go")
    args = parser.parse_args(argv)
    plan = QUICK if args.quick else FULL
    if args.rounds:
        plan = Plan(**{**plan.__dict__, "rounds": args.rounds})
    if args.duration:
        plan = Plan(**{**plan.__dict__, "duration_s": args.duration})
    doc = measure(plan, args.before_ref)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "verify_compare.json").write_text(json.dumps(doc, indent=1, allow_nan=False))
    text = markdown(doc)
    (args.out / "verify_compare.md").write_text(text)
    print(text)
    return 0
