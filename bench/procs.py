"""Server processes under test and the load-generator processes that drive them."""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

_BANNER = re.compile(r"(?:authsidecar serving|bench-server) .*")
_FIELD = re.compile(r"(unix|tcp|admin)=(\S+)")
_TICKS = os.sysconf("SC_CLK_TCK")
ROOT = Path(__file__).resolve().parent.parent
_T = TypeVar("_T")


@dataclass
class Server:
    name: str
    proc: subprocess.Popen[str]
    unix: str = ""
    tcp: str = ""
    admin: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def target(self, transport: str) -> str:
        """ "uds" (public socket), "tcp" (loopback) or "admin" (the admin socket)."""
        if transport == "admin":
            return f"unix:{self.admin}"
        return f"unix:{self.unix}" if transport == "uds" else self.tcp

    def cpu_s(self) -> float:
        """utime + stime of the process (all threads) and of its live children (a server in
        several processes), from /proc/<pid>/stat."""
        return sum(cpu_of(pid) for pid in (self.pid, *_children(self.pid)))

    def rss_bytes(self) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        return 0

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.communicate(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.communicate(timeout=5)


def cpu_of(pid: int) -> float:
    """utime + stime of one process (all its threads); 0 for one that just exited."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:  # a child that just exited
        return 0.0
    fields = stat.rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS


def _children(pid: int) -> list[int]:
    pids: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        pids += [int(p) for p in (task / "children").read_text().split()]
    return pids


def start(name: str, args: list[str], env: dict[str, str], *, root: Path = ROOT) -> Server:
    """Start `python args...` and wait for its banner line. `root`: the source tree it runs
    from (another version's, exported by `git archive`: bench/verify_compare.py); that
    tree's client package comes before this one's installed copy."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("AUTHSIDECAR_")}
    full_env.update(env)
    full_env["PYTHONPATH"] = (
        str(ROOT) if root == ROOT else os.pathsep.join((str(root), str(root / "clients/python")))
    )
    proc = subprocess.Popen(
        [sys.executable, *args],
        env=full_env,
        cwd=root,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if _BANNER.search(line) is None:
        proc.kill()
        proc.communicate(timeout=10)
        raise RuntimeError(f"{name}: no banner (exit {proc.returncode}): {line!r}")
    server = Server(name, proc)
    for key, value in _FIELD.findall(line):
        setattr(server, key, value)
    return server


def export_tree(ref: str, into: Path) -> str:
    """Another version of the code: `git archive ref` unpacked into `into` (created), for
    before/after runs (bench/revocation_scale.py, bench/verify_compare.py); returns the
    short commit `ref` names."""
    git, tar = shutil.which("git"), shutil.which("tar")
    if git is None or tar is None:
        raise SystemExit("git and tar are needed on PATH for a before/after run")
    into.mkdir(parents=True)
    archive = subprocess.run(
        [git, "-C", str(ROOT), "archive", ref], check=True, capture_output=True
    ).stdout
    subprocess.run([tar, "-x", "-C", str(into)], input=archive, check=True)
    return subprocess.run(
        [git, "-C", str(ROOT), "rev-parse", "--short", f"{ref}^{{commit}}"],
        check=True, capture_output=True, text=True,
    ).stdout.strip()  # fmt: skip


def _spawn_load(spec: dict[str, Any]) -> subprocess.Popen[str]:
    """A `python -m bench.load` process given `spec`; it prints `ready` once connected."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.load"],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdin is not None
    proc.stdin.write(json.dumps(spec) + "\n")
    proc.stdin.flush()
    return proc


def _percentile(sorted_values: list[int], q: float) -> float:
    if not sorted_values:
        return float("nan")
    index = min(len(sorted_values) - 1, int(q * len(sorted_values)))
    return sorted_values[index] / 1000.0  # ms


@dataclass
class Loads:
    """What the load processes of one window reported: every call's latency in µs (sorted),
    failed calls by status, and the processes' own CPU seconds inside the window."""

    latencies_us: list[int]
    errors: dict[str, int]
    client_cpu_s: float


def run_loads(
    specs: list[dict[str, Any]],
    *,
    warmup_s: float,
    duration_s: float,
    sample: Callable[[], _T],
) -> tuple[Loads, _T, _T]:
    """One load process per spec (bench/load.py), every clock started at once after all of
    them connected; `sample()` is taken as the measured window opens and as it closes (CPU
    counters of the processes under test), and returned with what the loads reported."""
    children = [_spawn_load(spec) for spec in specs]
    for child in children:  # every generator connected: then the clock starts for all
        assert child.stdout is not None
        if child.stdout.readline().strip() != "ready":
            raise RuntimeError("load generator did not connect")
    start_at = time.monotonic() + warmup_s
    end_at = start_at + duration_s
    for child in children:
        assert child.stdin is not None
        child.stdin.write(f"{start_at} {end_at}\n")
        child.stdin.close()
    time.sleep(max(0.0, start_at - time.monotonic()))
    first = sample()
    time.sleep(max(0.0, end_at - time.monotonic()))
    last = sample()
    loads = Loads([], {}, 0.0)
    window_end = end_at
    for child in children:
        assert child.stdout is not None
        out = child.stdout.read()
        child.wait(timeout=120)
        if child.returncode != 0:
            raise RuntimeError(f"load generator failed (exit {child.returncode})")
        result = json.loads(out)
        loads.latencies_us.extend(result["latencies_us"])
        loads.client_cpu_s += result["cpu_s"]
        window_end = max(window_end, result.get("window_end", end_at))
        for code, count in result["errors"].items():
            loads.errors[code] = loads.errors.get(code, 0) + count
    if window_end > end_at:  # a generator measured on for `min_calls`: so do the counters
        last = sample()
    loads.latencies_us.sort()
    return loads, first, last


def drive(
    server: Server,
    *,
    transport: str,
    method: str,
    payloads: list[bytes],
    concurrency: int,
    duration_s: float,
    warmup_s: float,
    mode: str = "static",
    items_per_call: int = 1,
    tokens: list[str] | None = None,
    one_shot: bool = False,
    sidecars: tuple[Server, ...] = (),
    min_calls: int = 0,
) -> dict[str, Any]:
    """Run `concurrency` calls in flight from min(concurrency, 2) load processes.

    `tokens`: every call carries a bearer token from this pool, each load process a disjoint
    slice; cycled, or each used once with `one_shot` (bench/load.py). `sidecars`: processes
    the server calls; their CPU is added to the server's and also reported on its own
    (`sidecar_cpu_s_per_1k`). `client_cpu_s_per_1k` is the load processes' own CPU.
    `min_calls`: each load process measures past `duration_s` until it has completed that
    many calls (bench/load.py), so a starved short window still measures something; the
    rates then use the window as it really was."""
    procs = min(concurrency, 2)
    encoded = [base64.b64encode(p).decode("ascii") for p in payloads]
    specs = []
    for i in range(procs):
        spec: dict[str, Any] = {
            "target": server.target(transport),
            "admin_target": f"unix:{server.admin}",
            "method": method,
            "mode": mode,
            # Disjoint slices of the pool, so a token pool larger than the server's verify
            # cache stays cold whatever the interleaving.
            "payloads": encoded[i::procs] or encoded,
            "tasks": concurrency // procs + (1 if i < concurrency % procs else 0),
            "min_calls": min_calls,
        }
        if tokens:
            spec["tokens"] = tokens[i::procs] or tokens
            spec["token_use"] = "once" if one_shot else "cycle"
        specs.append(spec)
    loads, (cpu0, side0, t0), (cpu1, side1, t1) = run_loads(
        specs,
        warmup_s=warmup_s,
        duration_s=duration_s,
        sample=lambda: (server.cpu_s(), sum(s.cpu_s() for s in sidecars), time.monotonic()),
    )
    latencies, errors, client_cpu = loads.latencies_us, loads.errors, loads.client_cpu_s
    calls = len(latencies)
    window = t1 - t0

    def per_1k(cpu_s: float) -> float:
        return cpu_s / calls * 1000 if calls else float("nan")

    result = {
        "calls": calls,
        "calls_per_s": calls / window,
        "items_per_s": calls * items_per_call / window,
        "p50_ms": _percentile(latencies, 0.50),
        "p99_ms": _percentile(latencies, 0.99),
        "p999_ms": _percentile(latencies, 0.999),
        "server_cpu_s_per_1k": per_1k(cpu1 - cpu0 + side1 - side0),
        "client_cpu_s_per_1k": per_1k(client_cpu),
        "errors": errors,
    }
    if sidecars:
        result["sidecar_cpu_s_per_1k"] = per_1k(side1 - side0)
    return result
