"""Unary Verify against the client-side batcher, in the same run (issue 7).

    .venv/bin/python bench/client_batching.py [--callers 64] [--duration 3] [--rounds 2]

Starts a real sidecar process (an HS256 key file by default, the memory store, a verify cache
smaller than the token pool, so every call verifies a signature), mints the token pool
in-process with the sidecar's own code (bench/tokens.py), then runs `callers` asyncio
callers in this process. Each caller verifies its own slice of the pool in a loop: (a) through
`AsyncAuthClient.verify`, one RPC per token, and (b) through `AsyncVerifyBatcher.verify`,
which gathers the callers that wait at the same moment into one VerifyBatch call. The two
modes alternate for `rounds` rounds, and each mode reports its best round.

Latency is measured per caller, from the call to its answer, so the batcher's gathering time
is included. The client and the sidecar share this machine's cores, as a service and its
sidecar do; the CPU columns show where the time goes (ms of CPU per 1000 tokens).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from authsidecar.client import (  # noqa: E402  (needs the path above)
    AsyncAuthClient,
    AsyncVerifyBatcher,
    AuthClientError,
)
from authsidecar.client._transport import channel_options  # noqa: E402
from bench import procs  # noqa: E402
from bench.tokens import AUDIENCE, Minted, make_key  # noqa: E402

# Smaller than the pool, as in bench/run.py: cycling the pool always misses the verify cache.
CACHE_ENTRIES = 256
VERIFY_BATCH = "/authsidecar.v1.AuthService/VerifyBatch"


@dataclass
class Result:
    mode: str
    tokens_per_s: float
    p50_ms: float
    p99_ms: float
    rpcs_per_s: float
    sidecar_cpu_ms_per_1k: float
    client_cpu_ms_per_1k: float
    errors: int


class _CountBatches(grpc.aio.UnaryUnaryClientInterceptor):
    """Counts VerifyBatch calls on the batcher's channel (the unary client has none)."""

    def __init__(self) -> None:
        self.calls = 0

    async def intercept_unary_unary(
        self, continuation: Callable[[Any, Any], Any], client_call_details: Any, request: Any
    ) -> Any:
        method = client_call_details.method
        if (method.decode() if isinstance(method, bytes) else method) == VERIFY_BATCH:
            self.calls += 1
        return await continuation(client_call_details, request)


def _percentile(sorted_s: list[float], q: float) -> float:
    if not sorted_s:
        return float("nan")
    return sorted_s[min(len(sorted_s) - 1, int(q * len(sorted_s)))] * 1000.0


async def _drive(
    mode: str,
    verify: Callable[[str], Awaitable[object]],
    rpcs: Callable[[], int],
    server: procs.Server,
    tokens: list[str],
    *,
    callers: int,
    warmup_s: float,
    duration_s: float,
) -> Result:
    """`callers` loops until the window ends; calls that start inside it are measured."""
    start_at = time.perf_counter() + warmup_s
    end_at = start_at + duration_s
    latencies: list[float] = []
    errors = 0

    async def caller(mine: list[str]) -> None:
        nonlocal errors
        n = 0
        while (began := time.perf_counter()) < end_at:
            try:
                await verify(mine[n % len(mine)])
            except AuthClientError:
                errors += 1
            n += 1
            if began >= start_at:
                latencies.append(time.perf_counter() - began)

    marks: dict[str, tuple[float, float, int]] = {}

    async def sample() -> None:
        for name, at in (("start", start_at), ("end", end_at)):
            await asyncio.sleep(max(0.0, at - time.perf_counter()))
            marks[name] = (server.cpu_s(), time.process_time(), rpcs())

    await asyncio.gather(sample(), *(caller(tokens[i::callers]) for i in range(callers)))
    (s0, c0, r0), (s1, c1, r1) = marks["start"], marks["end"]
    latencies.sort()
    done = len(latencies)
    return Result(
        mode=mode,
        tokens_per_s=done / duration_s,
        p50_ms=_percentile(latencies, 0.50),
        p99_ms=_percentile(latencies, 0.99),
        rpcs_per_s=(r1 - r0) / duration_s,
        sidecar_cpu_ms_per_1k=(s1 - s0) / done * 1e6 if done else float("nan"),
        client_cpu_ms_per_1k=(c1 - c0) / done * 1e6 if done else float("nan"),
        errors=errors,
    )


async def _run(server: procs.Server, minted: Minted, args: argparse.Namespace) -> list[Result]:
    target = server.target("uds")
    unary = AsyncAuthClient(target)
    counter = _CountBatches()
    options = channel_options(4, 0.1)
    channel = grpc.aio.insecure_channel(target, options=options, interceptors=[counter])
    batcher = AsyncVerifyBatcher(
        AsyncAuthClient(channel=channel),
        max_batch=args.max_batch,
        max_delay_s=args.max_delay_ms / 1000.0,
    )
    unary_calls = 0

    async def via_unary(token: str) -> object:
        nonlocal unary_calls
        unary_calls += 1
        return await unary.verify(token, audience=AUDIENCE)

    async def via_batcher(token: str) -> object:
        return await batcher.verify(token, audience=AUDIENCE)

    modes: list[tuple[str, Callable[[str], Awaitable[object]], Callable[[], int]]] = [
        ("unary Verify", via_unary, lambda: unary_calls),
        ("AsyncVerifyBatcher", via_batcher, lambda: counter.calls),
    ]
    best: dict[str, Result] = {}
    for _ in range(args.rounds):
        for mode, verify, rpcs in modes:
            result = await _drive(
                mode,
                verify,
                rpcs,
                server,
                minted.tokens,
                callers=args.callers,
                warmup_s=args.warmup,
                duration_s=args.duration,
            )
            if mode not in best or result.tokens_per_s > best[mode].tokens_per_s:
                best[mode] = result
    await batcher.close()
    await channel.close()
    await unary.close()
    return [best[mode] for mode, _, _ in modes]


def _table(results: list[Result], args: argparse.Namespace) -> str:
    head = (
        f"{'mode':<20} {'tokens/s':>9} {'p50 ms':>7} {'p99 ms':>7} {'RPCs/s':>8} "
        f"{'tokens/RPC':>10} {'sidecar CPU ms/1k':>17} {'client CPU ms/1k':>16} {'errors':>6}"
    )
    lines = [head, "-" * len(head)]
    for r in results:
        per_rpc = r.tokens_per_s / r.rpcs_per_s if r.rpcs_per_s else float("nan")
        lines.append(
            f"{r.mode:<20} {r.tokens_per_s:>9.0f} {r.p50_ms:>7.2f} {r.p99_ms:>7.2f} "
            f"{r.rpcs_per_s:>8.0f} {per_rpc:>10.1f} {r.sidecar_cpu_ms_per_1k:>17.1f} "
            f"{r.client_cpu_ms_per_1k:>16.1f} {r.errors:>6}"
        )
    unary, batched = results
    lines.append(
        f"batcher / unary: throughput x{batched.tokens_per_s / unary.tokens_per_s:.2f}, "
        f"p50 x{batched.p50_ms / unary.p50_ms:.2f}, p99 x{batched.p99_ms / unary.p99_ms:.2f}"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--callers", type=int, default=64, help="concurrent asyncio callers")
    parser.add_argument("--duration", type=float, default=3.0, help="measured seconds per mode")
    parser.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds first")
    parser.add_argument("--rounds", type=int, default=2, help="alternations; best one kept")
    parser.add_argument("--alg", default="HS256", choices=["HS256", "RS256", "ES256"])
    parser.add_argument("--pool", type=int, default=CACHE_ENTRIES * 8, help="distinct tokens")
    parser.add_argument("--max-batch", type=int, default=100)
    parser.add_argument("--max-delay-ms", type=float, default=0.0, help="0: next loop turn")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="bench-batching-") as tmp:
        workdir = Path(tmp)
        minted = make_key(workdir, args.alg, args.pool)
        env = {
            "AUTHSIDECAR_DATA_DIR": str(workdir / "data"),
            "AUTHSIDECAR_LISTEN__TCP": "127.0.0.1:0",
            "AUTHSIDECAR_KEYS__FILES": str(minted.key_path),
            "AUTHSIDECAR_STORE__BACKEND": "memory",
            "AUTHSIDECAR_TOKENS__VERIFY_CACHE_ENTRIES": str(CACHE_ENTRIES),
            "AUTHSIDECAR_LOG_LEVEL": "WARNING",
        }
        server = procs.start(f"sidecar {args.alg}", ["-m", "sidecar", "serve"], env)
        try:
            results = asyncio.run(_run(server, minted, args))
        finally:
            server.stop()
    print(
        f"{args.callers} callers, {args.alg}, {args.pool} distinct tokens (verify cache "
        f"{CACHE_ENTRIES}), {args.duration:g} s x {args.rounds} rounds per mode, best round; "
        f"max_batch={args.max_batch}, max_delay={args.max_delay_ms:g} ms; "
        f"{os.cpu_count()} CPUs, Python {platform.python_version()}, grpcio {grpc.__version__}"
    )
    print(_table(results, args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
