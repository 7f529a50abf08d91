"""One-shot cells of the two-service bench, for two versions of the code in one run.

    .venv/bin/python -m bench.oneshot_ab none=none@. pyjwt=pyjwt@. \\
        before=default@/tmp/base after=default@. --concurrency 1,16,64 --rounds 3

Each `NAME=KIND@ROOT` is a callee of bench/callee.py's KIND (with its own sidecar for
`verify` and `default`) whose processes run the code of the source tree ROOT (`git archive
COMMIT | tar -x -C DIR` makes one), so a change is measured against its base in the same
run, cells interleaved, as bench/two_service.py does for its columns: on a shared machine
the load drifts, and only CPU per call compared within one round means anything. Every
token is used once (issue 15's one-shot target). Per cell: calls/s, CPU per call of callee
and sidecar, and the mean number of tokens per sidecar call (Verify + VerifyBatch calls and
VerifyStream messages, counted by the sidecar's Prometheus counter, so the sidecars here run
with `metrics.listen` set, unlike bench/two_service.py's). The medians end with each
column's CPU over the floor (a column named `none`) and its ratio to the column named
`pyjwt` (the target: <= 1.5).
Not part of `python -m bench`: it is how the one-shot changes were measured.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import sys
import tempfile
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import callee, procs, two_service
from bench.tokens import AUDIENCE, Minted, make_key


@dataclass
class Column:
    name: str
    kind: str
    root: Path
    callee: procs.Server | None = None
    sidecar: procs.Server | None = None
    metrics_port: int = 0
    cells: dict[int, list[dict[str, float]]] = field(default_factory=dict)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _sidecar_calls(port: int) -> float:
    """Verify + VerifyBatch calls + VerifyStream messages the sidecar has served (its
    Prometheus counter counts each VerifyStream message as one request)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
        text = reply.read().decode()
    total = 0.0
    for line in text.splitlines():
        if line.startswith("authsidecar_requests_total{") and (
            'VerifyBatch"' in line or 'Verify"' in line or 'VerifyStream"' in line
        ):
            total += float(line.rsplit(" ", 1)[1])
    return total


def _launch(
    column: Column, workdir: Path, minted: Minted, time_intercept: bool = False
) -> list[procs.Server]:
    started = []
    if column.kind in ("verify", "default", "watching", "nobatch"):
        column.metrics_port = _free_port()
        env = {
            "AUTHSIDECAR_DATA_DIR": str(workdir / f"sidecar-{column.name}"),
            "AUTHSIDECAR_LISTEN__TCP": "127.0.0.1:0",
            "AUTHSIDECAR_KEYS__FILES": str(minted.key_path),
            "AUTHSIDECAR_STORE__BACKEND": "memory",
            "AUTHSIDECAR_LOG_LEVEL": "WARNING",
            "AUTHSIDECAR_METRICS__LISTEN": f"127.0.0.1:{column.metrics_port}",
        }
        column.sidecar = procs.start(
            f"sidecar {column.name}", ["-m", "sidecar", "serve"], env, root=column.root
        )
        started.append(column.sidecar)
    prefix = workdir / f"callee-{column.name}"
    args = ["-m", "bench.callee", column.kind, "--unix", str(prefix)]
    args += ["--key", str(minted.key_path), "--audience", AUDIENCE]
    if column.sidecar is not None:
        args += ["--sidecar", column.sidecar.target("uds")]
    if time_intercept and column.kind != "none":
        args.append("--time-intercept")
    column.callee = procs.start(f"callee {column.name}", args, {}, root=column.root)
    started.append(column.callee)
    return started


def _intercept_times(column: Column) -> dict[str, float]:
    """The callee's `intercept_service` CPU since the last read (bench/callee.py `Timed`)."""
    assert column.callee is not None
    control = f"unix:{column.callee.unix.rpartition('.')[0]}.control"
    first: dict[str, float] = callee.ask(control, callee.INTERCEPT_TIMES)[0]
    return first


def _cell(column: Column, c: int, tokens: list[str], args: argparse.Namespace) -> dict[str, Any]:
    assert column.callee is not None
    if args.time_intercept and column.kind != "none":
        _intercept_times(column)  # clears what earlier cells left
    before = _sidecar_calls(column.metrics_port) if column.metrics_port else 0.0
    sidecars = (column.sidecar,) if column.sidecar is not None else ()
    result = procs.drive(
        column.callee,
        transport="tcp",
        method=callee.METHOD,
        payloads=[two_service.PAYLOAD],
        concurrency=c,
        duration_s=args.duration,
        warmup_s=args.warmup,
        tokens=tokens,
        one_shot=not args.reused,
        sidecars=sidecars,
    )
    if args.time_intercept and column.kind != "none":
        result.update({f"intercept_{k}": v for k, v in _intercept_times(column).items()})
    rpcs = (_sidecar_calls(column.metrics_port) - before) if column.metrics_port else 0.0
    # Counted over warm-up and window alike: the calls of both, at the window's rate.
    calls = result["calls_per_s"] * (args.duration + args.warmup)
    result["tokens_per_sidecar_call"] = calls / rpcs if rpcs else 0.0
    return result


def _prefill(column: Column, tokens: list[str]) -> None:
    """Each token once, until they run out (errors: TOKENS_EXHAUSTED, expected here)."""
    assert column.callee is not None
    duration_s = len(tokens) / 1000.0  # slower than the default column's one-shot rate at 64
    procs.drive(
        column.callee,
        transport="tcp",
        method=callee.METHOD,
        payloads=[two_service.PAYLOAD],
        concurrency=64,
        duration_s=duration_s,
        warmup_s=0.0,
        tokens=tokens,
        one_shot=True,
    )
    print(f"prefilled {column.name} with {len(tokens)} one-shot calls", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.oneshot_ab", description=__doc__)
    parser.add_argument("columns", nargs="+", help="NAME=KIND@ROOT")
    parser.add_argument("--concurrency", default="1,16,64")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=3.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument(
        "--reused",
        type=int,
        default=0,
        help="reused tokens instead: this many identities, one token each (0: one-shot)",
    )
    parser.add_argument(
        "--time-intercept",
        action="store_true",
        help="also print each cell's median thread CPU of the callee's intercept_service",
    )
    parser.add_argument(
        "--prefill",
        action="append",
        default=[],
        metavar="NAME:N",
        help="before the rounds, send column NAME N one-shot calls at 64 in flight, as "
        "bench/two_service.py's one-shot cells fill column (4)'s decision cache before its "
        "later reused cells (repeatable)",
    )
    args = parser.parse_args(argv)
    prefill = {name: int(n) for name, _, n in (p.partition(":") for p in args.prefill)}
    columns = []
    for spec in args.columns:
        name, _, rest = spec.partition("=")
        kind, _, root = rest.partition("@")
        columns.append(Column(name, kind, Path(root or ".").resolve()))
    levels = [int(c) for c in args.concurrency.split(",")]
    servers: list[procs.Server] = []
    with tempfile.TemporaryDirectory(prefix="asb-ab-", dir="/tmp") as tmp:
        workdir = Path(tmp)
        minted = make_key(workdir, two_service.ALG, 0)
        minter = two_service.Minter(minted)
        try:
            for column in columns:
                servers += _launch(column, workdir, minted, args.time_intercept)
            for column in columns:
                if prefill.get(column.name):
                    _prefill(column, minter.mint(prefill[column.name]))
            fastest = 2000.0
            for round_ in range(args.rounds):
                for c in levels:
                    for column in columns:
                        size = int(fastest * (args.warmup + args.duration + 0.5) * 1.5) + 500
                        tokens = minter.mint(args.reused or size)
                        r = _cell(column, c, tokens, args)
                        fastest = max(fastest, r["calls_per_s"])
                        column.cells.setdefault(c, []).append(r)
                        cpu = r["server_cpu_s_per_1k"] * 1000
                        side = r.get("sidecar_cpu_s_per_1k", 0.0) * 1000
                        print(
                            f"[{round_ + 1}] c={c:<3} {column.name:10} {r['calls_per_s']:6.0f}/s "
                            f"cpu {cpu:5.0f} us/call (callee {cpu - side:4.0f}, sidecar "
                            f"{side:4.0f}) tokens/sidecar call {r['tokens_per_sidecar_call']:4.1f} "
                            f"p50 {r['p50_ms']:.2f} p99 {r['p99_ms']:.2f} ms errors {r['errors']} "
                            f"load {os.getloadavg()[0]:.1f}"
                            + (
                                f" intercept median {r['intercept_median_us']:.1f} us"
                                if "intercept_median_us" in r
                                else ""
                            ),
                            flush=True,
                        )
        finally:
            for server in reversed(servers):
                server.stop()
    _medians(columns, levels)
    return 0


def _median(cells: list[dict[str, Any]], key: str, scale: float = 1.0) -> float:
    return statistics.median(float(cell.get(key, 0.0)) * scale for cell in cells)


def _medians(columns: list[Column], levels: list[int]) -> None:
    print("medians (CPU us per call, callee + sidecar):")
    named = {column.name: column for column in columns}
    for c in levels:
        floor = named["none"] if "none" in named else None
        base = _median(floor.cells[c], "server_cpu_s_per_1k", 1000) if floor else 0.0
        ref = named.get("pyjwt")
        ref_over = _median(ref.cells[c], "server_cpu_s_per_1k", 1000) - base if ref else 0.0
        for column in columns:
            cells = column.cells[c]
            cpu = _median(cells, "server_cpu_s_per_1k", 1000)
            side = _median(cells, "sidecar_cpu_s_per_1k", 1000)
            over = cpu - base
            ratio = (
                f" {over / ref_over:.2f}x (2)'s"
                if ref_over > 0 and column not in (ref, floor)
                else ""
            )
            p50_ms, p99_ms = _median(cells, "p50_ms"), _median(cells, "p99_ms")
            p50, p99 = f"{p50_ms:.2f}", f"{p99_ms:.2f}"
            if floor is not None and column is not floor:
                p99 += f" ({p99_ms / _median(floor.cells[c], 'p99_ms'):.2f}x floor's)"
                p50 += f" ({p50_ms / _median(floor.cells[c], 'p50_ms'):.2f}x)"
            timed = ""
            if "intercept_median_us" in cells[0]:
                timed = f" intercept {_median(cells, 'intercept_median_us'):.1f} us"
            print(
                f"c={c:<3} {column.name:10} cpu {cpu:5.0f} over floor {over:5.0f} "
                f"(callee {cpu - side:4.0f}, sidecar {side:4.0f}) tokens/sidecar call "
                f"{_median(cells, 'tokens_per_sidecar_call'):4.1f}{ratio} "
                f"p50 {p50} p99 {p99} ms{timed}"
            )


if __name__ == "__main__":
    sys.exit(main())
