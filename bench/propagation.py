"""Revocation propagation to subscribed interceptors (issue 15): Revoke returns -> how long
until every callee refuses the token.

For each token: every callee accepts it twice (so each interceptor holds its decision, and
nothing else is in flight), the token is revoked at the sidecar, and the moment Revoke's
answer arrives one probe loop per callee starts calling with the token, again every
`probe_interval_s` until it is refused. A callee's refusal time is when its first
UNAUTHENTICATED answer arrives: an upper bound, since the probe's own round trip is
included (50 probes on a 2-core machine queue behind each other: a callee that verifies
every call shows that floor). The delay of one revocation is the latest callee's refusal.
A probe answered with any other error ends the bench; a callee that has not refused after
`give_up_s` is counted in `never_refused`, the worst outcome this measures.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from typing import Any

import grpc

from authsidecar.v1 import auth_pb2, auth_pb2_grpc


def _identity(value: bytes) -> bytes:
    return value


def percentile(sorted_values: list[float], q: float) -> float:
    """The value below which a fraction `q` of `sorted_values` lies (nearest rank)."""
    if not sorted_values:
        return float("nan")
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


async def _revocations(
    sidecar: str,
    callees: list[str],
    tokens: list[str],
    *,
    method: str,
    payload: bytes,
    probe_interval_s: float,
    give_up_s: float,
) -> tuple[list[float], int]:
    channels = [grpc.aio.insecure_channel(target) for target in callees]
    admin = grpc.aio.insecure_channel(sidecar)
    calls = [ch.unary_unary(method, _identity, _identity) for ch in channels]
    stub = auth_pb2_grpc.AuthServiceStub(admin)
    delays: list[float] = []
    never = 0
    try:
        for token in tokens:
            metadata = (("authorization", f"Bearer {token}"),)
            for _ in range(2):  # each interceptor now holds a decision about this token
                await asyncio.gather(
                    *(call(payload, metadata=metadata, timeout=10) for call in calls)
                )
            refused_at: list[float | None] = [None] * len(calls)

            async def probe(i: int) -> None:
                while True:
                    try:
                        await calls[i](payload, metadata=metadata, timeout=10)  # noqa: B023
                    except grpc.aio.AioRpcError as exc:
                        if exc.code() != grpc.StatusCode.UNAUTHENTICATED:
                            raise
                        refused_at[i] = time.perf_counter()  # noqa: B023
                        return
                    await asyncio.sleep(probe_interval_s)

            await stub.Revoke(auth_pb2.RevokeRequest(token=token), timeout=10)
            returned = time.perf_counter()
            probes = [asyncio.create_task(probe(i)) for i in range(len(calls))]
            done, pending = await asyncio.wait(probes, timeout=give_up_s)
            for task in pending:
                task.cancel()
            for task in done:
                task.result()  # a probe's unexpected status ends the bench loudly
            if pending:
                never += len(pending)
                continue
            delays.append(max(t for t in refused_at if t is not None) - returned)
    finally:
        for ch in [*channels, admin]:
            await ch.close()
    return delays, never


def measure(
    sidecar: str,
    callees: list[str],
    tokens: list[str],
    *,
    method: str,
    payload: bytes,
    probe_interval_s: float,
    give_up_s: float = 10.0,
) -> dict[str, Any]:
    """One revocation per token, in turn, against every callee; delays in ms."""
    delays, never = asyncio.run(
        _revocations(
            sidecar,
            callees,
            tokens,
            method=method,
            payload=payload,
            probe_interval_s=probe_interval_s,
            give_up_s=give_up_s,
        )
    )
    ms = sorted(d * 1000 for d in delays)
    return {
        "revocations": len(tokens),
        "p50_ms": statistics.median(ms) if ms else float("nan"),
        "p99_ms": percentile(ms, 0.99),
        "max_ms": ms[-1] if ms else float("nan"),
        "never_refused": never,
        "probe_interval_ms": probe_interval_s * 1000,
        "delays_ms": ms,
    }
