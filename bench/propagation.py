"""Revocation propagation to subscribed interceptors (issue 15): from Revoke returning, how
long until every callee stops accepting the token. Two passes, each with its own tokens, so
neither measurement loads the other:

refused  (issue 15's definition) every callee accepts the token twice (so each interceptor
         holds its decision), the token is revoked at the sidecar, and the moment Revoke's
         answer arrives one probe loop per callee calls with the token, again every
         `probe_interval_s`, until refused. A callee's time is when its first UNAUTHENTICATED
         answer arrives: an upper bound that includes the probe's round trip, and for a
         decision already dropped, the Verify that the miss costs. 50 of those at once on a
         2-core machine queue behind each other; the callee that verifies every call
         (column 3) shows that floor.
dropped  the push alone: the same set-up, but instead of calling the callees the prober
         polls each callee process's control server (bench/callee.py) every
         `probe_interval_s` for its interceptors' `stats()`, and an interceptor's time is
         the first poll answer whose `dropped` counter (entries removed by Watch events)
         went up. Only for interceptors that report stats.

The delay of one revocation is the latest callee's (or interceptor's) time. A probe answered
with any other error ends the bench; a probe loop (one per callee when refusing, one per
callee process when polling) that has not seen the change after `give_up_s` is counted in
`never`, the worst outcome this measures.
"""

from __future__ import annotations

import asyncio
import functools
import json
import statistics
import time
from collections.abc import Callable, Coroutine
from typing import Any

import grpc

from authsidecar.v1 import auth_pb2, auth_pb2_grpc

STATS = "/bench.CalleeControl/Stats"


def _identity(value: bytes) -> bytes:
    return value


def percentile(sorted_values: list[float], q: float) -> float:
    """The value below which a fraction `q` of `sorted_values` lies (nearest rank)."""
    if not sorted_values:
        return float("nan")
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


_Call = grpc.aio.UnaryUnaryMultiCallable[bytes, bytes]


class _Prober:
    def __init__(self, sidecar: str, callees: list[str], controls: list[str]) -> None:
        self.channels = [grpc.aio.insecure_channel(t) for t in [sidecar, *callees, *controls]]
        self.stub = auth_pb2_grpc.AuthServiceStub(self.channels[0])
        self.calls: list[_Call] = []
        self.controls: list[_Call] = []

    def bind(self, method: str, n_callees: int) -> None:
        channels = self.channels[1:]
        self.calls = [ch.unary_unary(method, _identity, _identity) for ch in channels[:n_callees]]
        self.controls = [ch.unary_unary(STATS, _identity, _identity) for ch in channels[n_callees:]]

    async def close(self) -> None:
        for channel in self.channels:
            await channel.close()

    async def dropped(self, control: _Call) -> list[float]:
        """Each interceptor's `dropped` counter in one callee process."""
        stats = json.loads(await control(b"", timeout=10))
        return [float(s.get("dropped", 0)) for s in stats]


async def _until_all(
    watchers: list[Callable[[], Coroutine[Any, Any, list[float]]]], give_up_s: float
) -> tuple[float | None, int]:
    """Run every watcher (each returns the times its targets changed); the latest time, or
    None with the count of targets that never changed."""
    tasks = [asyncio.create_task(w()) for w in watchers]
    done, pending = await asyncio.wait(tasks, timeout=give_up_s)
    for task in pending:
        task.cancel()
    times = [t for task in done for t in task.result()]
    if pending:
        return None, len(pending)
    return max(times), 0


async def _one(
    prober: _Prober,
    token: str,
    payload: bytes,
    kind: str,
    interval_s: float,
    give_up_s: float,
) -> tuple[float | None, int]:
    metadata = (("authorization", f"Bearer {token}"),)
    for _ in range(2):  # each interceptor now holds a decision about this token
        await asyncio.gather(
            *(call(payload, metadata=metadata, timeout=10) for call in prober.calls)
        )
    before = [await prober.dropped(c) for c in prober.controls] if kind == "dropped" else []

    async def refusal(call: _Call) -> list[float]:
        while True:
            try:
                await call(payload, metadata=metadata, timeout=10)
            except grpc.aio.AioRpcError as exc:
                if exc.code() != grpc.StatusCode.UNAUTHENTICATED:
                    raise
                return [time.perf_counter()]
            await asyncio.sleep(interval_s)

    async def drop(i: int) -> list[float]:
        seen: list[float | None] = [None] * len(before[i])
        while any(t is None for t in seen):
            counts = await prober.dropped(prober.controls[i])
            now = time.perf_counter()
            for j, count in enumerate(counts):
                if seen[j] is None and count > before[i][j]:
                    seen[j] = now
            await asyncio.sleep(interval_s)
        return [t for t in seen if t is not None]

    watchers: list[Callable[[], Coroutine[Any, Any, list[float]]]]
    if kind == "refused":
        watchers = [functools.partial(refusal, call) for call in prober.calls]
    else:
        watchers = [functools.partial(drop, i) for i in range(len(prober.controls))]
    await prober.stub.Revoke(auth_pb2.RevokeRequest(token=token), timeout=10)
    returned = time.perf_counter()
    latest, never = await _until_all(watchers, give_up_s)
    return (None if latest is None else latest - returned), never


def _summary(delays: list[float], never: int, revocations: int) -> dict[str, Any]:
    ms = sorted(d * 1000 for d in delays)
    return {
        "revocations": revocations,
        "p50_ms": statistics.median(ms) if ms else float("nan"),
        "p99_ms": percentile(ms, 0.99),
        "max_ms": ms[-1] if ms else float("nan"),
        "never": never,
        "delays_ms": ms,
    }


async def _measure(
    sidecar: str,
    callees: list[str],
    controls: list[str],
    tokens: list[str],
    *,
    method: str,
    payload: bytes,
    probe_interval_s: float,
    give_up_s: float,
) -> dict[str, Any]:
    prober = _Prober(sidecar, callees, controls)
    prober.bind(method, len(callees))
    passes = ["refused"] + (["dropped"] if controls else [])
    out: dict[str, Any] = {}
    try:
        for k, kind in enumerate(passes):
            delays, never = [], 0
            for token in tokens[k :: len(passes)]:
                delay, missing = await _one(
                    prober, token, payload, kind, probe_interval_s, give_up_s
                )
                never += missing
                if delay is not None:
                    delays.append(delay)
            out[kind] = _summary(delays, never, len(tokens[k :: len(passes)]))
    finally:
        await prober.close()
    return out


def measure(
    sidecar: str,
    callees: list[str],
    controls: list[str],
    tokens: list[str],
    *,
    method: str,
    payload: bytes,
    probe_interval_s: float,
    give_up_s: float = 10.0,
) -> dict[str, Any]:
    """The `refused` pass, and the `dropped` pass when `controls` are given (the tokens are
    shared out between the passes); delays in ms."""
    return asyncio.run(
        _measure(
            sidecar,
            callees,
            controls,
            tokens,
            method=method,
            payload=payload,
            probe_interval_s=probe_interval_s,
            give_up_s=give_up_s,
        )
    )
