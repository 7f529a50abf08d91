"""The load generator: one process, `tasks` concurrent calls on one channel (grpc.aio).

Run as `python -m bench.load`: reads a JSON spec line on stdin, connects, prints `ready`,
reads a second line `start_at end_at`, runs, and prints one JSON result line on stdout.
It is always a separate process from the server under test (bench/run.py starts several),
so the server's CPU and the client's are never the same interpreter's.

Requests are pre-serialised bytes sent through a generic stub (no client-side protobuf work
on the static paths). Only calls that *complete* inside [start_at, end_at] (CLOCK_MONOTONIC,
which is system-wide on Linux, so every process and the parent agree) are counted; calls
before `start_at` are the warm-up. The window is a floor, not a fixed length: a process that
has completed fewer than `min_calls` calls (spec, default 0) by `end_at` (a loaded machine
can starve a short --quick window) keeps calling until it has them, or until `end_at` +
`GIVE_UP_S`, and reports where its window really ended as `window_end`.

Modes:
  static   cycle through `payloads` (a token pool) calling `method` on `target`
  refresh  each task Issues a refresh token on `admin_target`, then Refreshes in a chain

With `tokens` in the spec, each static call also carries `authorization: Bearer <token>`
(metadata built before the clock starts): `token_use` "cycle" reuses the pool (each task
starting at its own offset), "once" hands every token to exactly one call and ends a task
when the pool runs out (counted as TOKENS_EXHAUSTED: the pool was sized too small).

The result also carries `cpu_s`: this process's CPU time inside [start_at, end_at].
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import sys
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import grpc

from authsidecar.v1 import auth_pb2

_REFRESH = "/authsidecar.v1.AuthService/Refresh"
# The calls each process completes before a cell's window may end (bench/run.py passes it as
# `min_calls`): the window runs past `end_at` only when a loaded machine starved it.
MIN_CALLS = 10
# How far past `end_at` a process that has not reached `min_calls` keeps calling: a bound for a
# stuck server, far beyond what a loaded machine needs.
GIVE_UP_S = 60.0
_ISSUE = "/authsidecar.v1.AuthService/Issue"


def _identity(value: bytes) -> bytes:
    return value


class _Tally:
    def __init__(self, start_at: float, end_at: float, min_calls: int = 0) -> None:
        self.start_at = start_at
        self.end_at = end_at
        self.min_calls = min_calls
        self.window_end = end_at
        self.latencies_us: list[int] = []
        self.errors: Counter[str] = Counter()

    def counted(self) -> int:
        return len(self.latencies_us) + sum(self.errors.values())

    def done(self, now: float) -> bool:
        """Whether a task should stop: the window is over and it holds `min_calls` calls (or
        the give-up bound has passed)."""
        if now < self.end_at:
            return False
        return self.counted() >= self.min_calls or now >= self.end_at + GIVE_UP_S

    def record(self, began: float, ended: float, error: str | None) -> None:
        if ended < self.start_at:
            return
        if ended > self.end_at:
            if self.counted() >= self.min_calls:
                return
            self.window_end = max(self.window_end, ended)
        if error is None:
            self.latencies_us.append(int((ended - began) * 1e6))
        else:
            self.errors[error] += 1


_Metadata = tuple[tuple[str, str], ...]


async def _static(
    call: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes],
    payloads: list[bytes],
    offset: int,
    tally: _Tally,
) -> None:
    n = len(payloads)
    i = offset
    clock = time.monotonic
    while True:
        began = clock()
        if tally.done(began):
            return
        error = None
        try:
            await call(payloads[i % n], timeout=30)
        except grpc.aio.AioRpcError as exc:
            error = exc.code().name
        tally.record(began, clock(), error)
        i += 1


async def _with_tokens(
    call: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes],
    payload: bytes,
    metadata: list[_Metadata],
    next_index: Callable[[], int],
    tally: _Tally,
) -> None:
    """Static calls, each with the bearer token of `metadata[next_index()]`."""
    n = len(metadata)
    clock = time.monotonic
    while True:
        began = clock()
        if tally.done(began):
            return
        i = next_index()
        if i >= n:  # "once" and the pool is spent: say so rather than reuse a token
            tally.errors["TOKENS_EXHAUSTED"] += 1
            return
        error = None
        try:
            await call(payload, metadata=metadata[i], timeout=30)
        except grpc.aio.AioRpcError as exc:
            error = exc.code().name
        tally.record(began, clock(), error)


def _cycle_from(start: int, n: int) -> Callable[[], int]:
    counter = itertools.count(start)
    return lambda: next(counter) % n


def _token_tasks(
    spec: dict[str, Any], call: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes], tally: _Tally
) -> list[asyncio.Task[None]]:
    metadata: list[_Metadata] = [(("authorization", f"Bearer {t}"),) for t in spec["tokens"]]
    payload = base64.b64decode(spec["payloads"][0])
    tasks = spec["tasks"]
    if spec.get("token_use", "cycle") == "once":
        shared = itertools.count()
        indexes = [shared.__next__ for _ in range(tasks)]
    else:
        n = len(metadata)
        step = max(1, n // max(1, tasks))
        indexes = [_cycle_from(t * step, n) for t in range(tasks)]
    return [
        asyncio.create_task(_with_tokens(call, payload, metadata, index, tally))
        for index in indexes
    ]


async def _cpu_window(tally: _Tally, box: dict[str, float]) -> None:
    """This process's CPU time over the measured window (the caller's cost per call); `run`
    measures it again at the end if the window was extended for `min_calls`."""
    await asyncio.sleep(max(0.0, tally.start_at - time.monotonic()))
    box["began"] = time.process_time()
    await asyncio.sleep(max(0.0, tally.end_at - time.monotonic()))
    box["cpu_s"] = time.process_time() - box["began"]


async def _refresh_chain(
    refresh: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes],
    issue: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes],
    tally: _Tally,
) -> None:
    first = auth_pb2.IssueRequest(subject="bench", audience=["svc"], refresh_token=True)
    grant = auth_pb2.IssueResponse.FromString(await issue(first.SerializeToString(), timeout=30))
    token = grant.refresh_token
    clock = time.monotonic
    while True:
        began = clock()
        if tally.done(began):
            return
        error = None
        try:
            raw = await refresh(
                auth_pb2.RefreshRequest(refresh_token=token).SerializeToString(), timeout=30
            )
            token = auth_pb2.RefreshResponse.FromString(raw).refresh_token
        except grpc.aio.AioRpcError as exc:
            error = exc.code().name
            grant = auth_pb2.IssueResponse.FromString(
                await issue(first.SerializeToString(), timeout=30)
            )
            token = grant.refresh_token
        tally.record(began, clock(), error)


async def run(spec: dict[str, Any]) -> dict[str, Any]:
    channel = grpc.aio.insecure_channel(spec["target"])
    channels = [channel]
    await channel.channel_ready()
    print("ready", flush=True)
    start_at, end_at = (float(x) for x in sys.stdin.readline().split())
    tally = _Tally(start_at, end_at, spec.get("min_calls", 0))
    cpu: dict[str, float] = {}
    tasks: list[asyncio.Task[None]] = [asyncio.create_task(_cpu_window(tally, cpu))]
    if spec.get("tokens"):
        call = channel.unary_unary(spec["method"], _identity, _identity)
        tasks.extend(_token_tasks(spec, call, tally))
    elif spec["mode"] == "refresh":
        admin = grpc.aio.insecure_channel(spec["admin_target"])
        channels.append(admin)
        refresh = channel.unary_unary(_REFRESH, _identity, _identity)
        issue = admin.unary_unary(_ISSUE, _identity, _identity)
        for _ in range(spec["tasks"]):
            tasks.append(asyncio.create_task(_refresh_chain(refresh, issue, tally)))
    else:
        payloads = [base64.b64decode(p) for p in spec["payloads"]]
        call = channel.unary_unary(spec["method"], _identity, _identity)
        step = max(1, len(payloads) // max(1, spec["tasks"]))
        for t in range(spec["tasks"]):
            tasks.append(asyncio.create_task(_static(call, payloads, t * step, tally)))
    await asyncio.gather(*tasks)
    if tally.window_end > end_at and "began" in cpu:
        cpu["cpu_s"] = time.process_time() - cpu["began"]
    for ch in channels:
        await ch.close()
    return {
        "latencies_us": tally.latencies_us,
        "errors": dict(tally.errors),
        "cpu_s": cpu.get("cpu_s", 0.0),
        "window_end": tally.window_end,
    }


def main() -> None:
    spec = json.loads(sys.stdin.readline())
    result = asyncio.run(run(spec))
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
