"""h2load (Debian's nghttp2-client), a C HTTP/2 load generator, for the unary Verify paths.

A Python client costs about as much CPU per call as the server it drives; h2load costs a
small fraction, so its numbers show what the server can do when the client is cheap. It
speaks only TCP (h2c), and counts every HTTP 200 as success (gRPC puts failures in the
trailers), so bench/run.py checks the token with a real Verify first.
"""

from __future__ import annotations

import re
import shutil
import struct
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.procs import Server

_FINISHED = re.compile(r"finished in ([\d.]+)(m?s), ([\d.]+) req/s")
_REQUESTS = re.compile(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded")
_MEAN = re.compile(r"time for request:\s+\S+\s+\S+\s+(\S+)")


def available() -> bool:
    return shutil.which("h2load") is not None


def _to_ms(value: str) -> float:
    for suffix, scale in (("us", 1e-3), ("ms", 1.0), ("s", 1e3)):
        if value.endswith(suffix):
            return float(value[: -len(suffix)]) * scale
    return float(value)


def drive(
    server: Server,
    method: str,
    body: bytes,
    *,
    clients: int,
    streams: int,
    duration_s: float,
    warmup_s: float,
) -> dict[str, Any]:
    """`clients` connections x `streams` concurrent streams each, for `duration_s`."""
    with tempfile.NamedTemporaryFile(suffix=".grpc", delete=False) as handle:
        # gRPC message framing: 1 byte "not compressed", 4 bytes big-endian length.
        handle.write(struct.pack(">BI", 0, len(body)) + body)
        path = Path(handle.name)
    url = f"http://{server.tcp}{method}"
    command = [
        "h2load",
        url,
        "-c",
        str(clients),
        "-m",
        str(streams),
        "-D",
        f"{max(1, round(duration_s * 1000))}ms",
        "--warm-up-time",
        f"{max(1, round(warmup_s * 1000))}ms",
        "-d",
        str(path),
        "-H",
        "content-type: application/grpc",
        "-H",
        "te: trailers",
    ]
    try:
        cpu0 = server.cpu_s()
        began = time.monotonic()
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=duration_s + warmup_s + 60
        )
        elapsed = time.monotonic() - began
        cpu1 = server.cpu_s()
    finally:
        path.unlink(missing_ok=True)
    finished = _FINISHED.search(done.stdout)
    requests = _REQUESTS.search(done.stdout)
    if finished is None or requests is None:
        return {"error": (done.stdout + done.stderr)[-400:]}
    rate = float(finished.group(3))
    succeeded = int(requests.group(4))
    mean = _MEAN.search(done.stdout)
    # CPU over the whole run (warm-up included) divided by all calls made in it.
    calls_total = succeeded + rate * warmup_s
    return {
        "calls_per_s": rate,
        "succeeded": succeeded,
        "mean_ms": _to_ms(mean.group(1)) if mean else float("nan"),
        "server_cpu_s_per_1k": (cpu1 - cpu0) / calls_total * 1000 if calls_total else 0.0,
        "elapsed_s": elapsed,
    }
