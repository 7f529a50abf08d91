"""Revocation propagation to subscribed interceptors (issue 15): from Revoke returning, how
long until every callee stops accepting the token. Two passes, each with its own tokens, so
neither measurement loads the other:

refused  (issue 15's definition) every callee accepts the token twice (so each interceptor
         holds its decision), the token is revoked at the sidecar, and the moment Revoke's
         answer arrives one probe loop per callee calls with the token, again every
         `probe_interval_s`, until refused. Two times per callee, both from Revoke
         returning to the prober, both on CLOCK_MONOTONIC:
         - prober-side (`p50_ms`, `p99_ms`, `first_*`...): when its first UNAUTHENTICATED
           answer reaches the prober. An upper bound: it includes the refusal's trip back
           and the prober's own queue (50 probe loops in this one process).
         - at the callee (`callee_p50_ms`, `callee_p99_ms`, `callee_first_*`...): when the
           callee's interceptor decided to refuse its first call with the token (timed in
           the callee process, bench/callee.py `--time-refusals`, read through its control
           server once the prober has seen every refusal, as `dropped` reads its times).
           Still includes the wait for the next probe to arrive after the event (up to
           `probe_interval_s` plus the probe's trip there), not its way back.
         Column 4 refuses a revoked decision itself, with no Verify, once the event has
         arrived; column 3 asks Verify every time. 50 probes at once on a 2-core machine
         queue behind each other; the callee that verifies every call (column 3) shows
         that floor. (One prober process per callee process was tried: slower rounds on
         2 cores, docs/performance.md, issue 15's fourth pass.)
dropped  the push alone: the same set-up, but nobody calls the callees after Revoke; each
         interceptor's time is when its watcher dropped the decision, taken in the callee
         process itself on CLOCK_MONOTONIC (bench/callee.py, `Dropped`), which every process
         on the host shares, and read after the fact (the control servers are asked every
         `DROP_POLL_S` whether every interceptor has one yet; that polling is not in the
         figure). Only for callees with a control server. Also reported: the first
         interceptor's time (`first_*`): the spread between first and last is the fan-out
         (the sidecar writing 50 streams, 5 processes woken on 2 cores).

First, the refused pass's own floor (`probe round, nothing revoked`): rounds of one probe
per callee at once while every decision is held, first and last answer of each round; what
the prober and 50 callees on this machine cost before any revocation is involved.

Both passes wait `SETTLE_S` between the set-up calls and Revoke. The delay of one
revocation is the latest callee's (or interceptor's) time. A probe answered
with any other error ends the bench; a probe loop (one per callee when refusing, one per
callee process when polling) that has not seen the change after `give_up_s` is counted in
`never`, the worst outcome this measures.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import json
import statistics
import time
from collections.abc import Callable, Coroutine
from typing import Any

import grpc

from authsidecar.v1 import auth_pb2
from bench.prober import Call, Prober

# The probe-round floor: rounds of one probe per callee with nothing revoked.
PROBE_ROUND = "probe round, nothing revoked"
PROBE_ROUNDS = 30
# After the set-up calls and before Revoke: the callees finish the set-up's work first.
SETTLE_S = 0.05
# How often the `dropped` pass asks whether every time is in: not part of the figure (the
# times are taken in the callees), so slow enough not to load the machine it measures.
DROP_POLL_S = 0.02


def percentile(sorted_values: list[float], q: float) -> float:
    """The value below which a fraction `q` of `sorted_values` lies (nearest rank)."""
    if not sorted_values:
        return float("nan")
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


async def _until_all(
    watchers: list[Callable[[], Coroutine[Any, Any, list[float]]]], give_up_s: float
) -> tuple[tuple[float, float] | None, int]:
    """Run every watcher (each returns the times its targets changed); the earliest and
    latest times, or None with the count of targets that never changed."""
    tasks = [asyncio.create_task(w()) for w in watchers]
    done, pending = await asyncio.wait(tasks, timeout=give_up_s)
    for task in pending:
        task.cancel()
    times = [t for task in done for t in task.result()]
    if pending:
        return None, len(pending)
    return (min(times), max(times)), 0


def _jti(token: str) -> str:
    """The token's jti, read from its payload (the prober's own token: no check needed)."""
    payload = token.split(".")[1]
    return str(json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))["jti"])


async def _one(
    prober: Prober,
    token: str,
    payload: bytes,
    kind: str,
    interval_s: float,
    give_up_s: float,
) -> tuple[tuple[float, float] | None, int, tuple[float, float] | None]:
    """One revocation: (the prober's first and last time, how many never changed, and for
    `refused` with controls, the first and last refusal as timed at the callees)."""
    metadata = (("authorization", f"Bearer {token}"),)
    for _ in range(2):  # each interceptor now holds a decision about this token
        await asyncio.gather(
            *(call(payload, metadata=metadata, timeout=10) for call in prober.calls)
        )
    # How many interceptors each callee process runs: the drops to wait for there.
    counts = [len(await prober.dropped(c)) for c in prober.controls] if kind == "dropped" else []
    await asyncio.sleep(SETTLE_S)  # the set-up's calls' tails are not measured
    jti = _jti(token).encode()

    async def refusal(call: Call) -> list[float]:
        while True:
            try:
                await call(payload, metadata=metadata, timeout=10)
            except grpc.aio.AioRpcError as exc:
                if exc.code() != grpc.StatusCode.UNAUTHENTICATED:
                    raise
                return [time.monotonic()]
            await asyncio.sleep(interval_s)

    async def drop(i: int) -> list[float]:
        while True:
            times: list[float] = json.loads(await prober.drop_times[i](jti, timeout=10))
            if len(times) >= counts[i]:
                return times
            await asyncio.sleep(DROP_POLL_S)

    watchers: list[Callable[[], Coroutine[Any, Any, list[float]]]]
    if kind == "refused":
        watchers = [functools.partial(refusal, call) for call in prober.calls]
    else:
        watchers = [functools.partial(drop, i) for i in range(len(prober.controls))]
    await prober.stub.Revoke(auth_pb2.RevokeRequest(token=token), timeout=10)
    returned = time.monotonic()  # CLOCK_MONOTONIC, as the callees' drop times
    span, never = await _until_all(watchers, give_up_s)
    if span is None:
        return None, never, None
    at_callee = None
    if kind == "refused" and prober.controls:
        first, last = await prober.refused_at(jti)
        at_callee = (first - returned, last - returned)
    return (span[0] - returned, span[1] - returned), never, at_callee


async def _probe_rounds(prober: Prober, token: str, payload: bytes) -> dict[str, Any]:
    """The `refused` pass's floor: one probe of every callee at once, every decision held
    and nothing revoked, PROBE_ROUNDS times; each round's first and last answer."""
    metadata = (("authorization", f"Bearer {token}"),)
    for _ in range(2):
        await asyncio.gather(
            *(call(payload, metadata=metadata, timeout=10) for call in prober.calls)
        )

    async def probe(call: Call) -> float:
        await call(payload, metadata=metadata, timeout=10)
        return time.monotonic()

    spans = []
    for _ in range(PROBE_ROUNDS):
        await asyncio.sleep(SETTLE_S)
        began = time.monotonic()
        answered = await asyncio.gather(*(probe(call) for call in prober.calls))
        spans.append((min(answered) - began, max(answered) - began))
    return _summary(spans, 0, PROBE_ROUNDS)


def _summary(
    spans: list[tuple[float, float]],
    never: int,
    revocations: int,
    at_callee: list[tuple[float, float]] | None = None,
) -> dict[str, Any]:
    """Each revocation's delay is its last callee's (or interceptor's); `first_*` are its
    first one's. With `at_callee` (the `refused` pass, timed where each callee refused),
    the same figures again under `callee_*`."""
    ms = sorted(last * 1000 for _, last in spans)
    first = sorted(early * 1000 for early, _ in spans)
    out = {
        "revocations": revocations,
        "p50_ms": statistics.median(ms) if ms else float("nan"),
        "p99_ms": percentile(ms, 0.99),
        "max_ms": ms[-1] if ms else float("nan"),
        "first_p50_ms": statistics.median(first) if first else float("nan"),
        "first_p99_ms": percentile(first, 0.99),
        "never": never,
        "delays_ms": ms,
    }
    if at_callee is not None:
        for key, value in _summary(at_callee, never, revocations).items():
            if key not in ("revocations", "never"):
                out[f"callee_{key}"] = value
    return out


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
    dropped: bool,
) -> dict[str, Any]:
    prober = Prober(sidecar, callees, controls)
    prober.bind(method, len(callees))
    passes = ["refused"] + (["dropped"] if dropped and controls else [])
    out: dict[str, Any] = {}
    try:
        out[PROBE_ROUND] = await _probe_rounds(prober, tokens[0], payload)
        for k, kind in enumerate(passes):
            delays: list[tuple[float, float]] = []
            at_callee: list[tuple[float, float]] = []
            never = 0
            for token in tokens[k :: len(passes)]:
                delay, missing, where = await _one(
                    prober, token, payload, kind, probe_interval_s, give_up_s
                )
                never += missing
                if delay is not None:
                    delays.append(delay)
                if where is not None:
                    at_callee.append(where)
            timed = at_callee if kind == "refused" and controls else None
            out[kind] = _summary(delays, never, len(tokens[k :: len(passes)]), timed)
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
    dropped: bool = True,
) -> dict[str, Any]:
    """The `refused` pass (timed at the callees too when `controls` are given: callees
    started with `--time-refusals`), and the `dropped` pass when `dropped` and `controls`
    are (the tokens are shared out between the passes); delays in ms."""
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
            dropped=dropped,
        )
    )
