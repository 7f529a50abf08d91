"""Does the sidecar's own verify cache still pay once callees cache decisions (issue 15)?

    python -m bench --only verify_cache   (with the in-process paths of bench/inprocess.py)

With a decision cache in every interceptor, a token reaches the sidecar once per
interceptor that has not yet cached it (and again after an invalidation or a stream lapse),
so the sidecar's cache can only help where several interceptors share tokens. This cell
measures that case: one callee process (bench/callee.py, column (4)'s defaults) running
`interceptors` grpc.aio servers, each with its own client, decision cache and Watch
subscription, all on one sidecar; every token of a fresh pool is sent once to every server
(the servers called at once, token after token), so the sidecar sees each token
`interceptors` times. The same run against a sidecar with `tokens.verify_cache_entries: 0`,
the two interleaved in each round. Reported: the sidecar's CPU (utime + stime from /proc)
per token it verified, and the interceptors' misses (how many tokens reached the sidecar).
"""

from __future__ import annotations

import asyncio
import statistics
from pathlib import Path
from typing import Any

import grpc

from bench import callee, procs
from bench.tokens import make_key
from bench.two_service import ALG, PAYLOAD, Minter, callee_stats, start_callee, start_sidecar

MODES: tuple[tuple[str, dict[str, str]], ...] = (
    ("on", {}),
    ("off", {"AUTHSIDECAR_TOKENS__VERIFY_CACHE_ENTRIES": "0"}),
)


def _identity(value: bytes) -> bytes:
    return value


async def _send_each(sockets: list[str], tokens: list[str]) -> None:
    """Every token to every server once: the servers at once, one token after another."""
    channels = [grpc.aio.insecure_channel(s) for s in sockets]
    try:
        calls = [ch.unary_unary(callee.METHOD, _identity, _identity) for ch in channels]
        for token in tokens:
            metadata = (("authorization", f"Bearer {token}"),)
            await asyncio.gather(*(call(PAYLOAD, metadata=metadata, timeout=30) for call in calls))
    finally:
        for channel in channels:
            await channel.close()


def _one(workdir: Path, minter: Minter, mode: str, n: int, tokens: int) -> dict[str, float]:
    env = dict(MODES)[mode]
    minted = minter.minted
    servers: list[procs.Server] = []
    try:
        sidecar = start_sidecar(workdir, minted, f"cache-{mode}-{n}", env_extra=env)
        servers.append(sidecar)
        host = start_callee(
            workdir, "default", minted, sidecar, name=f"-cache-{mode}-{n}", servers=n
        )
        servers.append(host)
        pool = minter.mint(tokens)
        asyncio.run(_send_each(host.extra["sockets"], pool[:2]))  # connections, Watch up
        before_cpu, before = sidecar.cpu_s(), callee_stats(host)
        asyncio.run(_send_each(host.extra["sockets"], pool[2:]))
        cpu = sidecar.cpu_s() - before_cpu
        misses = callee_stats(host).get("misses", 0.0) - before.get("misses", 0.0)
    finally:
        for server in reversed(servers):
            server.stop()
    return {"sidecar_cpu_s": cpu, "misses": misses}


# (interceptors sharing the tokens, tokens per cell): one interceptor, where the sidecar
# sees every token once (its cache can only cost), and ten sharing every token.
FULL_CELLS = ((1, 600), (10, 150))
QUICK_CELLS = ((1, 60), (10, 12))


def shared_tokens(workdir: Path, *, full: bool, rounds: int) -> list[dict[str, Any]]:
    """Rows per cell and sidecar-cache mode: the sidecar's CPU µs per token it was asked
    about (the interceptors' misses), modes interleaved in each round, medians."""
    minter = Minter(make_key(workdir, ALG, 0))
    rows = []
    for interceptors, tokens in FULL_CELLS if full else QUICK_CELLS:
        runs: dict[str, list[dict[str, float]]] = {mode: [] for mode, _ in MODES}
        for _ in range(rounds):
            for mode, _env in MODES:
                runs[mode].append(_one(workdir, minter, mode, interceptors, tokens + 2))
        rows.extend(_rows(runs, interceptors, tokens, rounds))
    return rows


def _rows(
    runs: dict[str, list[dict[str, float]]], interceptors: int, tokens: int, rounds: int
) -> list[dict[str, Any]]:
    rows = []
    for mode, results in runs.items():
        per_token = [r["sidecar_cpu_s"] * 1e6 / max(r["misses"], 1.0) for r in results]
        rows.append(
            {
                "sidecar_cache": mode,
                "alg": ALG,
                "interceptors": interceptors,
                "tokens": tokens,
                "rounds": rounds,
                "asked": statistics.median(r["misses"] for r in results),
                "sidecar_cpu_us_per_asked": statistics.median(per_token),
                "sidecar_cpu_s": statistics.median(r["sidecar_cpu_s"] for r in results),
            }
        )
    return rows
