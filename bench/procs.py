"""Server processes under test and the load-generator processes that drive them."""

from __future__ import annotations

import base64
import json
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

_BANNER = re.compile(r"(?:authsidecar serving|bench-server) .*")
_FIELD = re.compile(r"(unix|tcp|admin)=(\S+)")
_TICKS = os.sysconf("SC_CLK_TCK")
ROOT = Path(__file__).resolve().parent.parent


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
        return sum(_cpu_s(pid) for pid in (self.pid, *_children(self.pid)))

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


def _cpu_s(pid: int) -> float:
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


def start(name: str, args: list[str], env: dict[str, str], root: Path | None = None) -> Server:
    """Start `python args...` and wait for its banner line. `root`: run the code of that
    source tree (its client package first on the path) instead of this one's
    (bench/oneshot_ab.py compares two)."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("AUTHSIDECAR_")}
    full_env.update(env)
    full_env["PYTHONPATH"] = str(ROOT) if root is None else f"{root / 'clients/python'}:{root}"
    proc = subprocess.Popen(
        [sys.executable, *args],
        env=full_env,
        cwd=ROOT if root is None else root,
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


def _spawn_load(spec: dict[str, Any]) -> subprocess.Popen[str]:
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
    children = []
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
        children.append(_spawn_load(spec))
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
    side0 = sum(s.cpu_s() for s in sidecars)
    cpu0, t0 = server.cpu_s(), time.monotonic()
    time.sleep(max(0.0, end_at - time.monotonic()))
    cpu1, t1 = server.cpu_s(), time.monotonic()
    side1 = sum(s.cpu_s() for s in sidecars)
    latencies: list[int] = []
    errors: dict[str, int] = {}
    client_cpu = 0.0
    window_end = end_at
    for child in children:
        assert child.stdout is not None
        out = child.stdout.read()
        child.wait(timeout=120)
        if child.returncode != 0:
            raise RuntimeError(f"load generator failed (exit {child.returncode})")
        result = json.loads(out)
        latencies.extend(result["latencies_us"])
        client_cpu += result["cpu_s"]
        window_end = max(window_end, result["window_end"])
        for code, count in result["errors"].items():
            errors[code] = errors.get(code, 0) + count
    if window_end > end_at:  # a generator measured on for `min_calls`: so does the server
        cpu1, t1 = server.cpu_s(), window_end
        side1 = sum(s.cpu_s() for s in sidecars)
    latencies.sort()
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
